//! IPAM for `ptp` and `bridge`: the `ipam.type` plugin, run in-process when it
//! is `host-local` and that name resolves to this very binary (no second
//! exec on the pod-setup path), else exec-ed as the spec describes.

use kindnet_cni_spec::invoke::{exec_plugin, find_plugin, is_this_binary};
use kindnet_cni_spec::{AttachmentId, CniError, CniResult, Command, Request};
use kindnet_ipam::IpamConfig;
use std::path::PathBuf;

pub enum Ipam {
    InProcess(Box<IpamConfig>),
    Exec(PathBuf),
}

impl Ipam {
    pub fn resolve(req: &Request) -> Result<Ipam, CniError> {
        let ty = req
            .conf
            .ipam
            .as_ref()
            .ok_or_else(|| {
                CniError::invalid_config(
                    "missing \"ipam\": this plugin needs an IPAM configuration",
                )
            })?
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| CniError::invalid_config("missing \"ipam.type\""))?;
        let found = find_plugin(ty, &req.env.path);
        if ty == "host-local" && found.as_ref().is_ok_and(|p| is_this_binary(p)) {
            return Ok(Ipam::InProcess(Box::new(IpamConfig::from_request(req)?)));
        }
        Ok(Ipam::Exec(found?))
    }

    pub fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        match self {
            Ipam::InProcess(cfg) => {
                kindnet_ipam::add(cfg, &req.conf.name, &req.env.container_id, &req.env.ifname)
            }
            Ipam::Exec(path) => {
                let v =
                    exec_plugin(path, Command::Add, &req.env, &req.stdin)?.ok_or_else(|| {
                        CniError::internal(format!("{} returned no result", path.display()))
                    })?;
                CniResult::from_value(&v).map_err(|e| e.context("IPAM result"))
            }
        }
    }

    pub fn del(&self, req: &Request) -> Result<(), CniError> {
        match self {
            Ipam::InProcess(cfg) => {
                kindnet_ipam::del(cfg, &req.conf.name, &req.env.container_id, &req.env.ifname)
            }
            Ipam::Exec(path) => exec_plugin(path, Command::Del, &req.env, &req.stdin).map(|_| ()),
        }
    }

    pub fn check(&self, req: &Request) -> Result<(), CniError> {
        match self {
            Ipam::InProcess(cfg) => {
                kindnet_ipam::check(cfg, &req.conf.name, &req.env.container_id, &req.env.ifname)
            }
            Ipam::Exec(path) => exec_plugin(path, Command::Check, &req.env, &req.stdin).map(|_| ()),
        }
    }

    pub fn status(&self, req: &Request) -> Result<(), CniError> {
        match self {
            Ipam::InProcess(cfg) => kindnet_ipam::status(cfg, &req.conf.name),
            Ipam::Exec(path) => {
                exec_plugin(path, Command::Status, &req.env, &req.stdin).map(|_| ())
            }
        }
    }

    /// The attachments holding an address of this network that are not
    /// valid: what GC will release. Empty for an exec-ed IPAM (its store is
    /// not ours to read).
    pub fn leftovers(
        &self,
        req: &Request,
        valid: &[AttachmentId],
    ) -> Result<Vec<AttachmentId>, CniError> {
        let Ipam::InProcess(cfg) = self else {
            return Ok(Vec::new());
        };
        let mut out: Vec<AttachmentId> = kindnet_ipam::allocations(&cfg.data_dir, &req.conf.name)?
            .into_iter()
            .filter_map(|a| AttachmentId::new(&req.conf.name, &a.container_id, &a.ifname).ok())
            .filter(|a| !valid.contains(a))
            .collect();
        out.sort_by(|a, b| a.container_id().cmp(b.container_id()));
        out.dedup();
        Ok(out)
    }

    pub fn gc(&self, req: &Request) -> Result<(), CniError> {
        match self {
            Ipam::InProcess(cfg) => {
                kindnet_ipam::gc(cfg, &req.conf.name, crate::valid_attachments(req)?).map(|_| ())
            }
            Ipam::Exec(path) => exec_plugin(path, Command::Gc, &req.env, &req.stdin).map(|_| ()),
        }
    }
}

//! `kindnet`: the whole pod in one exec — the veth (ptp layout, or the
//! bridge layout when the configuration names a `bridge`), host-local IPAM
//! in-process, and the `portMappings` capability — so the runtime runs one
//! plugin instead of a chain of two.
//!
//! It keeps exactly the state the classic chain (`ptp`/`bridge` then
//! `portmap`) keeps: the same veth names and owner tags, the same IPAM
//! files, the same nftables elements. So the conflist can switch between
//! the two under running pods: DEL, CHECK and GC of a pod made by either
//! work with either.

use crate::{bridge, portmap, ptp};
use kindnet_cni_spec::{CniError, CniResult, Plugin, Request, code};

/// Which veth layout the configuration asks for.
fn layout(req: &Request) -> &'static dyn Plugin {
    if req.conf.raw.contains_key("bridge") {
        &bridge::Bridge
    } else {
        &ptp::Ptp
    }
}

pub struct Kindnet;

impl Plugin for Kindnet {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        // Validate the mappings before anything is created.
        let maps = portmap::mappings(req)?;
        let res = layout(req).add(req)?;
        let mapped =
            crate::host_nft().and_then(|mut nft| portmap::map_ports(&mut nft, req, &maps, &res));
        if let Err(e) = mapped {
            // All or nothing: the nft batch failed as a whole, so undo the
            // pod (DEL needs nothing but the attachment) before reporting.
            let _ = layout(req)
                .del(req)
                .map_err(|u| kindnet_cni_spec::log_warn!("rollback: {u}"));
            return Err(e);
        }
        Ok(res)
    }

    /// In the reverse order of ADD: the port mappings, then the pod.
    fn del(&self, req: &Request) -> Result<(), CniError> {
        let maps = portmap::mappings(req)?;
        portmap::unmap_ports(&mut crate::host_nft()?, req, &maps)?;
        layout(req).del(req)
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let maps = portmap::mappings(req)?;
        layout(req).check(req)?;
        let prev = req
            .prev_result()?
            .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs \"prevResult\""))?;
        portmap::check_ports(&mut crate::host_nft()?, req, &maps, &prev)
    }

    fn status(&self, req: &Request) -> Result<(), CniError> {
        portmap::mappings(req)?;
        layout(req).status(req)
    }

    fn gc(&self, req: &Request) -> Result<(), CniError> {
        portmap::gc(&mut crate::host_nft()?, req)?;
        layout(req).gc(req)
    }
}

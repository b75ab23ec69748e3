//! `kindnet`: the whole pod in one exec — the veth (ptp layout, or the
//! bridge layout when the configuration names a `bridge`), host-local IPAM
//! in-process, and the `portMappings` capability — so the runtime runs one
//! plugin instead of a chain of two.
//!
//! It keeps exactly the state the classic chain (`ptp`/`bridge` then
//! `portmap`) keeps: the same veth names and owner tags, the same IPAM
//! files, the same nftables elements. So the conflist can switch between
//! the two under running pods: DEL, CHECK and GC of a pod made by either
//! work with either. Every effect, the port mappings' nftables included,
//! goes through one [`Host`].

use crate::host::{Host, OnHost};
use crate::{bridge, portmap, ptp};
use kindnet_cni_spec::{CniError, CniResult, Request, code, log_warn};

/// Which veth layout the configuration asks for.
fn layout(req: &Request) -> &'static dyn OnHost {
    if req.conf.raw.contains_key("bridge") {
        &bridge::Bridge
    } else {
        &ptp::Ptp
    }
}

pub struct Kindnet;

impl OnHost for Kindnet {
    fn add_on(&self, h: &mut dyn Host, req: &Request) -> Result<CniResult, CniError> {
        // Validate the mappings before anything is created.
        let maps = portmap::mappings(req)?;
        let res = layout(req).add_on(h, req)?;
        if let Err(e) = portmap::map_ports(h.nft(), req, &maps, &res) {
            // All or nothing: the nft batch failed as a whole, so undo the
            // pod (DEL needs nothing but the attachment) before reporting.
            let _ = layout(req)
                .del_on(h, req)
                .map_err(|u| log_warn!("rollback: {u}"));
            return Err(e);
        }
        Ok(res)
    }

    /// In the reverse order of ADD: the port mappings, then the pod.
    fn del_on(&self, h: &mut dyn Host, req: &Request) -> Result<(), CniError> {
        let maps = portmap::mappings(req)?;
        portmap::unmap_ports(h.nft(), req, &maps)?;
        layout(req).del_on(h, req)
    }

    fn check_on(&self, h: &mut dyn Host, req: &Request) -> Result<(), CniError> {
        let maps = portmap::mappings(req)?;
        layout(req).check_on(h, req)?;
        let prev = req
            .prev_result()?
            .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs \"prevResult\""))?;
        portmap::check_ports(h.nft(), req, &maps, &prev)
    }

    fn gc_on(&self, h: &mut dyn Host, req: &Request) -> Result<(), CniError> {
        portmap::gc(h.nft(), req)?;
        layout(req).gc_on(h, req)
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        portmap::mappings(req)?;
        layout(req).status(req)
    }
}

#[cfg(test)]
mod tests;

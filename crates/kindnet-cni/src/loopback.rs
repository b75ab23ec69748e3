//! `loopback`: brings `lo` up in the pod (and down on DEL, as the reference does).

use crate::{nl_err, open_netns};
use kindnet_cni_spec::{CniError, CniResult, Interface, IpConfig, Plugin, Request};
use kindnet_netlink::Handle;

pub struct Loopback;

fn lo_index(h: &mut Handle) -> Result<u32, CniError> {
    h.link_by_name("lo")
        .map_err(nl_err("look up lo"))?
        .map(|l| l.index)
        .ok_or_else(|| CniError::internal("the namespace has no lo interface"))
}

impl Plugin for Loopback {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        let ns = open_netns(&req.env.netns)?;
        let mut h = Handle::in_netns(&ns).map_err(nl_err("open netlink in the pod"))?;
        let idx = lo_index(&mut h)?;
        h.set_up(idx).map_err(nl_err("set lo up"))?;
        Ok(CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                mac: "00:00:00:00:00:00".into(),
                sandbox: req.env.netns.clone(),
                ..Default::default()
            }],
            ips: ["127.0.0.1/8", "::1/128"]
                .iter()
                .filter_map(|a| a.parse().ok())
                .map(|address| IpConfig {
                    address,
                    gateway: None,
                    interface: Some(0),
                })
                .collect(),
            ..Default::default()
        })
    }

    fn del(&self, req: &Request) -> Result<(), CniError> {
        let Some(ns) = crate::open_netns_if_any(&req.env.netns)? else {
            return Ok(());
        };
        let mut h = Handle::in_netns(&ns).map_err(nl_err("open netlink in the pod"))?;
        let idx = lo_index(&mut h)?;
        h.set_down(idx).map_err(nl_err("set lo down"))
    }

    fn check(&self, req: &Request) -> Result<(), CniError> {
        let ns = open_netns(&req.env.netns)?;
        let mut h = Handle::in_netns(&ns).map_err(nl_err("open netlink in the pod"))?;
        let lo = h.link_by_name("lo").map_err(nl_err("look up lo"))?;
        match lo {
            Some(l) if l.up => Ok(()),
            _ => Err(CniError::internal("CHECK: lo is not up")),
        }
    }
}

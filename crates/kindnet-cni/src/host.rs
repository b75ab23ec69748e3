//! The seam between the veth plugins' decisions and the kernel: every
//! effect `ptp`, `bridge` and `kindnet` have on the node and the pod —
//! links, addresses, routes, sysctls, the pod's namespace, nftables — goes
//! through [`Host`], as typed values: a [`LinkSetup`] (addresses, up,
//! routes of one link), a [`PodSetup`] (the pod end's sysctls and setup),
//! a [`LinkChange`]. Only [`NetlinkHost`], the real node, turns them into
//! netlink messages. The unit tests use a fake (`host::fake`) that models
//! the namespaces, records every setup and can fail at any step, so the
//! layouts, CHECK and every rollback path are tested without root.

// fork(2) for the detached veth delete: no safe equivalent (see there).
#![allow(unsafe_code)]

use crate::nl_err;
use ipnet::IpNet;
use kindnet_cni_spec::{CniError, CniResult, Request};
use kindnet_netlink::nftables::{ChainState, NfTables};
use kindnet_netlink::{
    AddrFlags, Address, Batch, Family, Handle, Link, Netns, Route, RouteFilter, sysctl,
};
use kindnet_nft::Nft;

pub type NlResult<T> = kindnet_netlink::Result<T>;

/// A pod network namespace the host opened (and holds open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodId(pub usize);

/// One change to a host link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkChange {
    Up,
    Promisc,
    /// Enslave to this bridge.
    Master(u32),
    Hairpin,
}

/// Addresses, up, routes of one link, applied in this order in one netlink
/// round trip (each change acknowledged on its own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkSetup {
    /// The link's ifindex in the namespace the setup is applied in.
    pub index: u32,
    /// Added to the link; one already there is fine.
    pub addresses: Vec<IpNet>,
    pub addr_flags: AddrFlags,
    /// Set the link up, after its addresses.
    pub up: bool,
    /// Routes, after the link is up, in order: a route via a gateway comes
    /// after the route that puts the gateway on the link.
    pub routes: Vec<Route>,
    /// Replace a route to the same destination (a stale route of a reused
    /// address) instead of keeping it.
    pub replace_routes: bool,
}

impl LinkSetup {
    /// The netlink batch of the setup: what only the real host builds.
    pub fn to_batch(&self) -> NlResult<Batch> {
        let mut b = Batch::new();
        for a in &self.addresses {
            b.ensure_address(self.index, *a, self.addr_flags);
        }
        if self.up {
            b.set_up(self.index);
        }
        for r in &self.routes {
            if self.replace_routes {
                b.replace_route(r)?;
            } else {
                b.ensure_route(r)?;
            }
        }
        Ok(b)
    }
}

/// The pod end's setup, in one visit to the pod's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSetup {
    /// Sysctls (keys as [`sysctl::set`] takes them) set first: they must be
    /// in place before the addresses (IPv6 DAD).
    pub sysctls: Vec<(String, &'static str)>,
    pub link: LinkSetup,
}

/// The link group every host veth this plugin makes is born in (set in
/// the creating message): what the anti-spoofing rules match, so they hold
/// from a veth's first packet and touch no one else's interfaces.
pub const POD_VETH_GROUP: u32 = 0x6b6e; // "kn"

/// Queues per end of a pod's veth. The kernel's default is one per
/// possible CPU, which only XDP and veth GRO (NAPI) use, and each costs
/// sysfs objects at creation: a fifth of the pair's creation on 2 CPUs
/// (~0.1 of ~0.45 ms), more on a large node. The pod's traffic takes the per-CPU backlog
/// either way.
pub const POD_VETH_QUEUES: u32 = 1;

/// What CHECK reads of the pod end, in one visit to its namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodView {
    pub link: Option<Link>,
    pub addresses: Vec<IpNet>,
    /// Routes of both families through the link.
    pub routes: Vec<Route>,
}

pub trait Host {
    /// Opens the pod's namespace, proving it is one (see
    /// [`crate::open_netns`] for the codes). `None` with `optional` when it
    /// is gone (DEL).
    fn open_pod(&mut self, path: &str, optional: bool) -> Result<Option<PodId>, CniError>;

    fn link_by_name(&mut self, name: &str) -> NlResult<Option<Link>>;
    fn links(&mut self) -> NlResult<Vec<Link>>;
    /// A veth pair, the peer born in `pod` with its name and MAC, the host
    /// end born in link group [`POD_VETH_GROUP`]; returns
    /// the host end (with the peer's ifindex).
    fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        pod: PodId,
        mtu: Option<u32>,
        peer_mac: [u8; 6],
    ) -> NlResult<Option<Link>>;
    fn create_bridge(&mut self, name: &str, mtu: Option<u32>) -> NlResult<()>;
    fn delete_link(&mut self, index: u32) -> NlResult<()>;
    fn set_alias(&mut self, index: u32, alias: &str) -> NlResult<()>;
    fn change_link(&mut self, index: u32, change: LinkChange) -> NlResult<()>;
    fn addresses(&mut self, index: Option<u32>) -> NlResult<Vec<Address>>;
    fn add_address(&mut self, index: u32, addr: IpNet, flags: AddrFlags) -> NlResult<()>;
    fn del_address(&mut self, index: u32, addr: IpNet) -> NlResult<()>;
    fn routes(&mut self, family: Family, filter: RouteFilter) -> NlResult<Vec<Route>>;
    /// A host link's addresses, up and routes in one round trip.
    fn configure_link(&mut self, setup: &LinkSetup) -> NlResult<()>;

    fn sysctl_get(&mut self, key: &str) -> Option<String>;
    fn sysctl_set(&mut self, key: &str, value: &str) -> Result<(), CniError>;

    /// Inside the pod: the sysctls, then the link's setup in one round trip.
    fn configure_pod(&mut self, pod: PodId, setup: &PodSetup) -> Result<(), CniError>;
    fn pod_view(&mut self, pod: PodId, ifname: &str) -> Result<PodView, CniError>;
    /// Deletes the pod end without making the runtime wait (the host end
    /// and its routes go with it).
    fn delete_pod_link(&mut self, pod: PodId, ifname: &str) -> Result<(), CniError>;

    fn nft(&mut self) -> &mut dyn Nft;
    /// Whether `chain` of `inet table` exists, asked over netlink (no nft
    /// process on the hot path).
    fn nft_chain_state(&mut self, table: &str, chain: &str) -> Result<ChainState, CniError>;
    fn sleep(&mut self, d: std::time::Duration);
}

/// A plugin whose every effect goes through a [`Host`]: [`OnNode`] runs
/// its commands on the real node ([`NetlinkHost`]), the unit tests on a
/// fake.
pub trait OnHost {
    fn add_on(&self, h: &mut dyn Host, req: &Request) -> Result<CniResult, CniError>;
    fn del_on(&self, h: &mut dyn Host, req: &Request) -> Result<(), CniError>;
    fn check_on(&self, h: &mut dyn Host, req: &Request) -> Result<(), CniError>;
    fn gc_on(&self, h: &mut dyn Host, req: &Request) -> Result<(), CniError>;
    /// STATUS: whether ADD could be served (the configuration and IPAM
    /// only; it changes nothing on the host).
    fn status(&self, req: &Request) -> Result<(), CniError>;
}

/// An [`OnHost`] plugin as the CNI plugin the runtime execs: each command
/// on a [`NetlinkHost`] of its own.
pub struct OnNode<P>(pub P);

impl<P: OnHost> kindnet_cni_spec::Plugin for OnNode<P> {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        self.0.add_on(&mut NetlinkHost::new()?, req)
    }
    fn del(&self, req: &Request) -> Result<(), CniError> {
        self.0.del_on(&mut NetlinkHost::new()?, req)
    }
    fn check(&self, req: &Request) -> Result<(), CniError> {
        self.0.check_on(&mut NetlinkHost::new()?, req)
    }
    fn status(&self, req: &Request) -> Result<(), CniError> {
        self.0.status(req)
    }
    fn gc(&self, req: &Request) -> Result<(), CniError> {
        self.0.gc_on(&mut NetlinkHost::new()?, req)
    }
}

/// The real node: one rtnetlink socket, the pod namespaces it opened, and
/// nf_tables over netlink.
pub struct NetlinkHost {
    h: Handle,
    pods: Vec<Netns>,
    nft: kindnet_nft::NftNetlink,
    nf_tables: Option<NfTables>,
}

impl NetlinkHost {
    pub fn new() -> Result<NetlinkHost, CniError> {
        Ok(NetlinkHost {
            h: Handle::new().map_err(nl_err("open netlink"))?,
            pods: Vec::new(),
            nft: crate::host_nft()?,
            nf_tables: None,
        })
    }

    fn pod(&self, id: PodId) -> Result<&Netns, CniError> {
        self.pods
            .get(id.0)
            .ok_or_else(|| CniError::internal("unknown pod namespace"))
    }
}

impl Host for NetlinkHost {
    fn open_pod(&mut self, path: &str, optional: bool) -> Result<Option<PodId>, CniError> {
        let ns = if optional {
            crate::open_netns_if_any(path)?
        } else {
            Some(crate::open_netns(path)?)
        };
        Ok(ns.map(|ns| {
            self.pods.push(ns);
            PodId(self.pods.len() - 1)
        }))
    }

    fn link_by_name(&mut self, name: &str) -> NlResult<Option<Link>> {
        self.h.link_by_name(name)
    }
    fn links(&mut self) -> NlResult<Vec<Link>> {
        self.h.links()
    }
    fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        pod: PodId,
        mtu: Option<u32>,
        peer_mac: [u8; 6],
    ) -> NlResult<Option<Link>> {
        let ns = self
            .pods
            .get(pod.0)
            .ok_or_else(|| kindnet_netlink::Error::Invalid("unknown pod namespace".into()))?;
        self.h.create_veth_as(&kindnet_netlink::VethSpec {
            name,
            peer,
            peer_ns: Some(ns),
            mtu,
            peer_mac: Some(peer_mac),
            group: Some(POD_VETH_GROUP),
            queues: Some(POD_VETH_QUEUES),
        })
    }
    fn create_bridge(&mut self, name: &str, mtu: Option<u32>) -> NlResult<()> {
        self.h.create_bridge(name, mtu)
    }
    fn delete_link(&mut self, index: u32) -> NlResult<()> {
        self.h.delete_link(index)
    }
    fn set_alias(&mut self, index: u32, alias: &str) -> NlResult<()> {
        self.h.set_alias(index, alias)
    }
    fn change_link(&mut self, index: u32, change: LinkChange) -> NlResult<()> {
        match change {
            LinkChange::Up => self.h.set_up(index),
            LinkChange::Promisc => self.h.set_promisc(index, true),
            LinkChange::Master(m) => self.h.set_master(index, m),
            LinkChange::Hairpin => self.h.set_bridge_port_hairpin(index, true),
        }
    }
    fn addresses(&mut self, index: Option<u32>) -> NlResult<Vec<Address>> {
        self.h.addresses(index)
    }
    fn add_address(&mut self, index: u32, addr: IpNet, flags: AddrFlags) -> NlResult<()> {
        self.h.add_address(index, addr, flags)
    }
    fn del_address(&mut self, index: u32, addr: IpNet) -> NlResult<()> {
        self.h.del_address(index, addr)
    }
    fn routes(&mut self, family: Family, filter: RouteFilter) -> NlResult<Vec<Route>> {
        self.h.routes(family, filter)
    }
    fn configure_link(&mut self, setup: &LinkSetup) -> NlResult<()> {
        let b = setup.to_batch()?;
        self.h.apply(b)
    }

    fn sysctl_get(&mut self, key: &str) -> Option<String> {
        sysctl::get(key).ok()
    }
    fn sysctl_set(&mut self, key: &str, value: &str) -> Result<(), CniError> {
        sysctl::set(key, value)
            .map_err(|e| CniError::io(format!("set {}: {e}", key.replace('/', "."))))
    }

    /// Runs on this thread inside the namespace (the plugin is
    /// single-threaded), because `/proc/sys/net` follows the namespace of
    /// the thread that opens it.
    fn configure_pod(&mut self, pod: PodId, setup: &PodSetup) -> Result<(), CniError> {
        let batch = setup
            .link
            .to_batch()
            .map_err(nl_err("configure the pod end"))?;
        let ns = self.pod(pod)?;
        ns.enter(|| -> Result<(), CniError> {
            for (key, val) in &setup.sysctls {
                sysctl::set(key, val)
                    .map_err(|e| CniError::io(format!("set {}: {e}", key.replace('/', "."))))?;
            }
            let mut h = Handle::new().map_err(nl_err("open netlink in the pod"))?;
            h.apply(batch).map_err(nl_err("configure the pod end"))
        })
        .map_err(nl_err("enter the pod's network namespace"))?
    }

    fn pod_view(&mut self, pod: PodId, ifname: &str) -> Result<PodView, CniError> {
        let mut h = Handle::in_netns(self.pod(pod)?).map_err(nl_err("open netlink in the pod"))?;
        let link = h
            .link_by_name(ifname)
            .map_err(nl_err(format!("look up {ifname}")))?;
        let Some(l) = &link else {
            return Ok(PodView::default());
        };
        let addresses = h
            .addresses(Some(l.index))
            .map_err(nl_err("list addresses"))?
            .into_iter()
            .map(|a| a.addr)
            .collect();
        let mut routes = Vec::new();
        for fam in [Family::V4, Family::V6] {
            routes.extend(
                h.routes(
                    fam,
                    RouteFilter {
                        oif: Some(l.index),
                        ..Default::default()
                    },
                )
                .map_err(nl_err("list routes"))?,
            );
        }
        Ok(PodView {
            link,
            addresses,
            routes,
        })
    }

    fn delete_pod_link(&mut self, pod: PodId, ifname: &str) -> Result<(), CniError> {
        delete_pod_link_detached(self.pod(pod)?, ifname)
    }

    fn nft(&mut self) -> &mut dyn Nft {
        &mut self.nft
    }

    fn nft_chain_state(&mut self, table: &str, chain: &str) -> Result<ChainState, CniError> {
        if self.nf_tables.is_none() {
            self.nf_tables = Some(NfTables::open().map_err(nl_err("open nf_tables netlink"))?);
        }
        match self.nf_tables.as_mut() {
            Some(n) => n
                .chain_state(table, chain)
                .map_err(nl_err(format!("look up nft chain {table} {chain}"))),
            None => Err(CniError::internal("nf_tables netlink socket missing")),
        }
    }

    fn sleep(&mut self, d: std::time::Duration) {
        std::thread::sleep(d);
    }
}

/// Deletes the pod's interface without making the runtime wait for it. The
/// kernel's unregister of a veth holds the RTNL lock through RCU grace periods
/// (15-50 ms here), far longer than everything else DEL does; so a detached
/// child does the delete, by name in one request, while DEL returns. If the
/// runtime removes the namespace first, the kernel removes the pair itself.
fn delete_pod_link_detached(ns: &Netns, ifname: &str) -> Result<(), CniError> {
    let delete = || -> Result<(), CniError> {
        let mut h = Handle::in_netns(ns).map_err(nl_err("open netlink in the pod"))?;
        match h.delete_link_by_name(ifname) {
            Err(e) if !e.is_not_found() => Err(nl_err(format!("delete {ifname}"))(e)),
            _ => Ok(()),
        }
    };
    // SAFETY: fork(2) is only sound when no other thread exists (the child
    // gets a copy of memory that other threads may hold locks in). The
    // plugin is single-threaded and no thread is alive here, so the child
    // may run arbitrary code before it exits. No safe equivalent: rustix's
    // fork is `unsafe` for the same reason.
    match unsafe { libc::fork() } {
        0 => {
            detach_stdio();
            let rc = i32::from(delete().is_err());
            // SAFETY: _exit(2) ends the child at once, without running the
            // exit handlers and destructors it inherited from the parent
            // (std::process::exit would run them, twice for that state).
            unsafe { libc::_exit(rc) }
        }
        -1 => delete(),
        _ => Ok(()),
    }
}

/// Points stdin/stdout/stderr at /dev/null and leaves the session, so the
/// runtime, which reads the plugin's stdout to EOF, does not wait for us.
fn detach_stdio() {
    use std::os::fd::{AsRawFd, OwnedFd};
    let _ = rustix::process::setsid();
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null");
    if let Ok(null) = null.map(OwnedFd::from) {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
        if null.as_raw_fd() <= 2 {
            // It landed on a closed stdio slot, which must stay open.
            std::mem::forget(null);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setup_is_one_batch_of_addresses_up_and_routes() {
        let mut r = Route::new("10.0.0.0/8".parse().unwrap());
        r.oif = Some(3);
        let s = LinkSetup {
            index: 3,
            addresses: vec![
                "10.0.0.1/32".parse().unwrap(),
                "fd00::1/128".parse().unwrap(),
            ],
            up: true,
            routes: vec![r.clone()],
            ..Default::default()
        };
        assert_eq!(s.to_batch().unwrap().len(), 4);
        let quiet = LinkSetup {
            up: false,
            ..s.clone()
        };
        assert_eq!(quiet.to_batch().unwrap().len(), 3);
        // what netlink cannot express is refused before anything is sent
        let mut bad = Route::new("fd00::/64".parse().unwrap());
        bad.gateway = Some("10.0.0.1".parse().unwrap());
        let Err(e) = (LinkSetup {
            routes: vec![r, bad],
            ..s
        })
        .to_batch() else {
            panic!("an IPv6 route via an IPv4 gateway was taken");
        };
        assert!(e.to_string().contains("IPv4 gateway"), "{e}");
    }
}

#[cfg(test)]
pub mod bed;
#[cfg(test)]
pub mod fake;

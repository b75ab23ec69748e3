//! The effectful edge: reads the host's routes, links and addresses, applies
//! route operations through rtnetlink (crate `kindnet-netlink`), runs `nft`
//! and touches sysctls. Everything here is synchronous; it runs on the
//! reconciler's own thread, never on the async runtime.

use std::collections::HashMap;
use std::net::IpAddr;

use kindnet_netlink::{Family, Handle, RT_TABLE_MAIN, Route, RouteFilter, Scope};

use crate::routes::{InstalledRoute, KernelRoute, Neighbours, ROUTE_PROTOCOL, RouteOp, Topology};

/// RTPROT_RA: routes learned from IPv6 router advertisements.
pub const RTPROT_RA: u8 = 9;

/// What one reconcile pass reads from the host.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    pub topology: Topology,
    /// kindnetd's routes (protocol [`ROUTE_PROTOCOL`], main table).
    pub ours: Vec<InstalledRoute>,
    /// Every other main-table route.
    pub foreign: Vec<KernelRoute>,
    pub link_mtus: HashMap<u32, u32>,
    pub link_names: HashMap<u32, String>,
    /// Each local address with the index of its link.
    pub addr_links: Vec<(IpAddr, u32)>,
    /// Links carrying an IPv6 default route learned from an RA.
    pub ra_default_oifs: Vec<u32>,
    /// The host's veths, with the index of their master (bridge), if any.
    pub veths: Vec<(crate::reclaim::HostVeth, Option<u32>)>,
}

/// The operations a reconcile pass needs from the host; a fake stands in
/// for it in unit tests.
pub trait Dataplane: Send {
    fn view(&mut self) -> Result<HostView, String>;
    fn apply(&mut self, op: &RouteOp) -> Result<(), String>;
    fn nft(&mut self, batch: &kindnet_nft::Batch) -> Result<(), String>;
    fn sysctl_get(&mut self, key: &str) -> Option<String>;
    fn sysctl_set(&mut self, key: &str, value: &str) -> Result<(), String>;
    /// Makes the neighbour tables learn the MACs of `arp` and the IPv6
    /// link-local addresses of the nodes on link `oif` ([`crate::solicit`]).
    fn solicit(&mut self, oif: u32, arp: &[std::net::Ipv4Addr]) -> Result<(), String>;
    /// The allocations of `network` in host-local's store at `data_dir`.
    fn allocations(
        &mut self,
        data_dir: &std::path::Path,
        network: &str,
    ) -> Result<Vec<crate::reclaim::Allocated>, String>;
    /// Releases a leaked attachment's addresses (those it still holds) and
    /// removes its leftover host veths. Returns the addresses released.
    fn reclaim(
        &mut self,
        data_dir: &std::path::Path,
        network: &str,
        leak: &crate::reclaim::Leak,
    ) -> Result<Vec<IpAddr>, String>;
}

/// The real host, through one rtnetlink socket.
pub struct Netlink {
    h: Handle,
}

impl Netlink {
    pub fn new() -> Result<Netlink, String> {
        Handle::new()
            .map(|h| Netlink { h })
            .map_err(|e| format!("open rtnetlink socket: {e}"))
    }
}

fn unsupported(e: &kindnet_netlink::Error) -> bool {
    matches!(
        e.errno(),
        Some(libc::EAFNOSUPPORT | libc::EOPNOTSUPP | libc::EPROTONOSUPPORT)
    )
}

/// The route kindnetd installs for a desired peer route.
pub fn to_route(dst: ipnet::IpNet, gateway: IpAddr, oif: u32) -> Route {
    let mut r = Route::new(dst);
    r.gateway = Some(gateway);
    r.oif = Some(oif);
    r.protocol = ROUTE_PROTOCOL;
    r.table = RT_TABLE_MAIN;
    r.scope = Scope::Universe;
    r
}

impl Dataplane for Netlink {
    fn view(&mut self) -> Result<HostView, String> {
        let mut v = HostView::default();
        let main = RouteFilter {
            table: Some(RT_TABLE_MAIN),
            ..Default::default()
        };
        for fam in [Family::V4, Family::V6] {
            let routes = match self.h.routes(fam, main) {
                Ok(r) => r,
                Err(e) if fam == Family::V6 && unsupported(&e) => Vec::new(),
                Err(e) => return Err(format!("list routes: {e}")),
            };
            for r in routes {
                let priority = r.priority.unwrap_or(0);
                if r.protocol == ROUTE_PROTOCOL {
                    v.ours.push(InstalledRoute {
                        dst: r.dst,
                        gateway: r.gateway,
                        oif: r.oif,
                        priority,
                    });
                } else {
                    if fam == Family::V6 && r.dst.prefix_len() == 0 && r.protocol == RTPROT_RA {
                        v.ra_default_oifs.extend(r.oif);
                    }
                    v.foreign.push(KernelRoute {
                        dst: r.dst,
                        gateway: r.gateway,
                        oif: r.oif,
                        priority,
                    });
                }
            }
        }
        let links = self.h.links().map_err(|e| format!("list links: {e}"))?;
        for l in links {
            v.link_mtus.insert(l.index, l.mtu);
            if l.kind.as_deref() == Some("veth") {
                v.veths.push((
                    crate::reclaim::HostVeth {
                        index: l.index,
                        name: l.name.clone(),
                        alias: l.alias.clone(),
                        peer_elsewhere: l.link_netnsid.is_some(),
                        on_pod_bridge: false,
                    },
                    l.master,
                ));
            }
            v.link_names.insert(l.index, l.name);
        }
        let addrs = self
            .h
            .addresses(None)
            .map_err(|e| format!("list addresses: {e}"))?;
        v.addr_links = addrs.iter().map(|a| (a.addr.addr(), a.index)).collect();
        // Resolved neighbours only; a failed dump costs the link-local next
        // hops of this pass, nothing else.
        let mut neighbours = Vec::new();
        for fam in [Family::V4, Family::V6] {
            match self.h.neighbours(fam) {
                Ok(n) => neighbours.extend(n),
                Err(e) => tracing::debug!(error = %e, "cannot list neighbours"),
            }
        }
        v.topology = Topology::new(
            v.foreign.clone(),
            v.addr_links.iter().map(|(a, _)| *a).collect(),
        )
        .with_neighbours(Neighbours::new(
            neighbours
                .into_iter()
                .filter(|n| n.is_resolved())
                .filter_map(|n| n.lladdr.map(|l| (n.index, n.addr, l))),
        ));
        Ok(v)
    }

    fn apply(&mut self, op: &RouteOp) -> Result<(), String> {
        match op {
            RouteOp::Replace(p) => self
                .h
                .replace_route(&to_route(p.dst, p.gateway, p.oif))
                .map_err(|e| e.to_string()),
            RouteOp::Delete(r) => {
                let mut route = Route::new(r.dst);
                route.gateway = r.gateway;
                route.oif = r.oif;
                route.protocol = ROUTE_PROTOCOL;
                route.priority = Some(r.priority);
                match self.h.del_route(&route) {
                    Ok(()) => Ok(()),
                    // Already gone: that is what we wanted.
                    Err(e) if e.is_not_found() => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    fn nft(&mut self, batch: &kindnet_nft::Batch) -> Result<(), String> {
        use kindnet_nft::Nft;
        kindnet_nft::NftCli::default()
            .apply(batch)
            .map_err(|e| e.to_string())
    }

    fn sysctl_get(&mut self, key: &str) -> Option<String> {
        kindnet_netlink::sysctl::get(key).ok()
    }

    fn sysctl_set(&mut self, key: &str, value: &str) -> Result<(), String> {
        kindnet_netlink::sysctl::set(key, value).map_err(|e| format!("sysctl {key}={value}: {e}"))
    }

    fn solicit(&mut self, oif: u32, arp: &[std::net::Ipv4Addr]) -> Result<(), String> {
        crate::solicit::solicit(oif, arp)
            .map(|found| {
                tracing::debug!(oif, arp = ?arp, answered = ?found, "solicited all nodes on the uplink");
            })
            .map_err(|e| format!("solicit neighbours on link #{oif}: {e}"))
    }

    fn allocations(
        &mut self,
        data_dir: &std::path::Path,
        network: &str,
    ) -> Result<Vec<crate::reclaim::Allocated>, String> {
        kindnet_ipam::allocations(data_dir, network)
            .map(|v| {
                v.into_iter()
                    .map(|a| crate::reclaim::Allocated {
                        ip: a.ip,
                        container_id: a.container_id,
                        ifname: a.ifname,
                    })
                    .collect()
            })
            .map_err(|e| e.msg)
    }

    fn reclaim(
        &mut self,
        data_dir: &std::path::Path,
        network: &str,
        leak: &crate::reclaim::Leak,
    ) -> Result<Vec<IpAddr>, String> {
        for index in &leak.leftover_links {
            match self.h.delete_link(*index) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(format!("delete leftover veth #{index}: {e}")),
            }
        }
        kindnet_ipam::release_attachment(
            data_dir,
            network,
            &leak.container_id,
            &leak.ifname,
            &leak.ips,
        )
        .map_err(|e| e.msg)
    }
}

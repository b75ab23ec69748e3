//! The effectful edge: reads the host's routes, links and addresses, applies
//! route operations through rtnetlink (crate `kindnet-netlink`), programs
//! nf_tables over netlink (no `nft` binary),
//! touches sysctls and writes the CNI config. Everything here is
//! synchronous; it runs on the reconciler's own thread, never on the async
//! runtime. Failures cross the seam as [`DataplaneError`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use kindnet_netlink::{Family, Handle, RT_TABLE_MAIN, Route, RouteFilter, Scope};

use crate::host::routes::{
    InstalledRoute, KernelRoute, Neighbours, ROUTE_PROTOCOL, RouteOp, Topology,
};

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
    pub veths: Vec<(crate::host::reclaim::HostVeth, Option<u32>)>,
    /// The forwarding sysctls, read only for passes that may write them.
    pub sysctls: Option<crate::host::sysctl::SysctlView>,
}

/// Why a host operation failed: what was being done, with the cause.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A netlink request (listing, route change, link removal) failed.
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: kindnet_netlink::Error,
    },
    /// nf_tables refused a batch (nothing of it was applied).
    #[error(transparent)]
    Nft(#[from] kindnet_nft::NftError),
    /// A sysctl could not be written.
    #[error("sysctl {key}={value}: {source}")]
    Sysctl {
        key: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
    /// The CNI config could not be written.
    #[error("write {}: {source}", path.display())]
    ConfWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// host-local's store could not be read or changed.
    #[error("IPAM store {}: {msg}", dir.display())]
    Ipam { dir: PathBuf, msg: String },
    /// The nodes on an uplink could not be solicited.
    #[error("solicit neighbours on link #{oif}: {source}")]
    Solicit {
        oif: u32,
        #[source]
        source: std::io::Error,
    },
}

impl DataplaneError {
    fn netlink(what: impl Into<String>) -> impl FnOnce(kindnet_netlink::Error) -> DataplaneError {
        let what = what.into();
        move |source| DataplaneError::Netlink { what, source }
    }
}

/// The operations a reconcile pass needs from the host; a fake stands in
/// for it in unit tests.
pub trait Dataplane: Send {
    fn view(&mut self) -> Result<HostView, DataplaneError>;
    fn apply(&mut self, op: &RouteOp) -> Result<(), DataplaneError>;
    fn nft(&mut self, batch: &kindnet_nft::Batch) -> Result<(), DataplaneError>;
    /// A table of kindnetd's as the kernel has it (sets, elements, each
    /// chain's number of rules); `None` when it does not exist.
    fn nft_read(
        &mut self,
        _table: &kindnet_nft::TableRef,
    ) -> Result<Option<crate::host::masquerade::TableRead>, DataplaneError> {
        Err(kindnet_nft::NftError::Failed("reading tables is not supported here".into()).into())
    }
    /// None when the key does not exist (IPv6 disabled) or cannot be read.
    fn sysctl_get(&mut self, key: &str) -> Option<String>;
    fn sysctl_set(&mut self, key: &str, value: &str) -> Result<(), DataplaneError>;
    /// The CNI config kindnetd wrote in `dir` before, if any.
    fn read_conflist(&mut self, dir: &Path) -> Option<String>;
    /// Writes the CNI config in `dir` if it differs ([`crate::host::conffile`]);
    /// returns whether it wrote.
    fn write_conflist(&mut self, dir: &Path, content: &str) -> Result<bool, DataplaneError>;
    /// Makes the neighbour tables learn the MACs of `arp` and the IPv6
    /// link-local addresses of the nodes on link `oif` ([`crate::host::solicit`]).
    fn solicit(&mut self, oif: u32, arp: &[std::net::Ipv4Addr]) -> Result<(), DataplaneError>;
    /// The allocations of `network` in host-local's store at `data_dir`.
    fn allocations(
        &mut self,
        data_dir: &Path,
        network: &str,
    ) -> Result<Vec<crate::host::reclaim::Allocated>, DataplaneError>;
    /// Releases a leaked attachment's addresses (those it still holds) and
    /// removes its leftover host veths. Returns the addresses released.
    fn reclaim(
        &mut self,
        data_dir: &Path,
        network: &str,
        leak: &crate::host::reclaim::Leak,
    ) -> Result<Vec<IpAddr>, DataplaneError>;
}

/// The real host, through one rtnetlink socket and one nf_tables socket.
/// The nf_tables socket lives as long as the daemon: it owns the
/// masquerade table (`NFT_TABLE_F_OWNER`, so no other process can change
/// it) and the table persists across restarts (`NFT_TABLE_F_PERSIST`: the
/// next kindnetd adopts it); a kernel without them (before 6.9) gets a
/// table without flags.
pub struct Netlink {
    h: Handle,
    nft: kindnet_nft::NftNetlink,
}

/// The flags kindnetd asks for on the tables only it writes.
pub fn owned_table_flags() -> kindnet_nft::TableFlags {
    kindnet_nft::TableFlags {
        owner: true,
        persist: true,
    }
}

impl Netlink {
    pub fn new() -> Result<Netlink, DataplaneError> {
        let h = Handle::new().map_err(DataplaneError::netlink("open rtnetlink socket"))?;
        let mut nft = kindnet_nft::NftNetlink::open()?;
        nft.flags
            .insert(crate::host::masquerade::table(), owned_table_flags());
        Ok(Netlink { h, nft })
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
    fn view(&mut self) -> Result<HostView, DataplaneError> {
        let mut v = HostView::default();
        let main = RouteFilter {
            table: Some(RT_TABLE_MAIN),
            ..Default::default()
        };
        for fam in [Family::V4, Family::V6] {
            let routes = match self.h.routes(fam, main) {
                Ok(r) => r,
                Err(e) if fam == Family::V6 && unsupported(&e) => Vec::new(),
                Err(e) => return Err(DataplaneError::netlink("list routes")(e)),
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
        let links = self
            .h
            .links()
            .map_err(DataplaneError::netlink("list links"))?;
        for l in links {
            v.link_mtus.insert(l.index, l.mtu);
            if l.kind.as_deref() == Some("veth") {
                v.veths.push((
                    crate::host::reclaim::HostVeth {
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
            .map_err(DataplaneError::netlink("list addresses"))?;
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

    fn apply(&mut self, op: &RouteOp) -> Result<(), DataplaneError> {
        match op {
            RouteOp::Replace(p) => self
                .h
                .replace_route(&to_route(p.dst, p.gateway, p.oif))
                .map_err(DataplaneError::netlink(format!("replace route {}", p.dst))),
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
                    Err(e) => Err(DataplaneError::netlink(format!("delete route {}", r.dst))(
                        e,
                    )),
                }
            }
        }
    }

    fn nft(&mut self, batch: &kindnet_nft::Batch) -> Result<(), DataplaneError> {
        use kindnet_nft::Nft;
        Ok(self.nft.apply(batch)?)
    }

    /// The listing and the rules per chain, over netlink (a small table).
    fn nft_read(
        &mut self,
        table: &kindnet_nft::TableRef,
    ) -> Result<Option<crate::host::masquerade::TableRead>, DataplaneError> {
        use kindnet_nft::Nft;
        let Some(listing) = self.nft.list(table)? else {
            return Ok(None);
        };
        let rules = self.nft.rule_counts(table)?;
        Ok(rules.map(|rules| crate::host::masquerade::TableRead {
            listing,
            rules: rules.into_iter().collect(),
        }))
    }

    fn sysctl_get(&mut self, key: &str) -> Option<String> {
        kindnet_netlink::sysctl::get(key).ok()
    }

    fn sysctl_set(&mut self, key: &str, value: &str) -> Result<(), DataplaneError> {
        kindnet_netlink::sysctl::set(key, value).map_err(|source| DataplaneError::Sysctl {
            key: key.into(),
            value: value.into(),
            source,
        })
    }

    fn read_conflist(&mut self, dir: &Path) -> Option<String> {
        std::fs::read_to_string(dir.join(crate::host::cniconf::CONFLIST_NAME)).ok()
    }

    fn write_conflist(&mut self, dir: &Path, content: &str) -> Result<bool, DataplaneError> {
        crate::host::conffile::write_if_changed(dir, crate::host::cniconf::CONFLIST_NAME, content)
            .map_err(|source| DataplaneError::ConfWrite {
                path: dir.join(crate::host::cniconf::CONFLIST_NAME),
                source,
            })
    }

    fn solicit(&mut self, oif: u32, arp: &[std::net::Ipv4Addr]) -> Result<(), DataplaneError> {
        crate::host::solicit::solicit(oif, arp)
            .map(|found| {
                tracing::debug!(oif, arp = ?arp, answered = ?found, "solicited all nodes on the uplink");
            })
            .map_err(|source| DataplaneError::Solicit { oif, source })
    }

    fn allocations(
        &mut self,
        data_dir: &Path,
        network: &str,
    ) -> Result<Vec<crate::host::reclaim::Allocated>, DataplaneError> {
        kindnet_ipam::allocations(data_dir, network)
            .map(|v| {
                v.into_iter()
                    .map(|a| crate::host::reclaim::Allocated {
                        ip: a.ip,
                        container_id: a.container_id,
                        ifname: a.ifname,
                    })
                    .collect()
            })
            .map_err(|e| DataplaneError::Ipam {
                dir: data_dir.to_path_buf(),
                msg: e.msg,
            })
    }

    fn reclaim(
        &mut self,
        data_dir: &Path,
        network: &str,
        leak: &crate::host::reclaim::Leak,
    ) -> Result<Vec<IpAddr>, DataplaneError> {
        for index in &leak.leftover_links {
            match self.h.delete_link(*index) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    return Err(DataplaneError::netlink(format!(
                        "delete leftover veth #{index}"
                    ))(e));
                }
            }
        }
        kindnet_ipam::release_attachment(
            data_dir,
            network,
            &leak.container_id,
            &leak.ifname,
            &leak.ips,
        )
        .map_err(|e| DataplaneError::Ipam {
            dir: data_dir.to_path_buf(),
            msg: e.msg,
        })
    }
}

//! Reclaiming leaked pod allocations, as pure decisions.
//!
//! A runtime that never calls GC (containerd) and loses a DEL (killed,
//! timed out, crashed) leaves the pod's addresses allocated in host-local's
//! store, and with them a host veth when the ADD itself was cut short.
//! kindnetd releases such an attachment only on evidence it can check
//! itself, never on a guess:
//!
//! - **its pod namespace is gone**: no host veth tagged with the
//!   attachment (the CNI plugins tag every host veth with its owner) has
//!   its peer in another namespace. The kernel removes a veth pair with
//!   its namespace, so a live pod always has one;
//! - **no host route reaches its addresses** (ptp layouts, also the
//!   reference plugins', route each pod address to its veth);
//! - **no Pod on this node has its addresses**, when a Pod source is known
//!   (with the nodes-file source there is none: the first two criteria
//!   decide);
//! - and all of that **for a whole grace period**, without a break.
//!
//! Anything it cannot attribute is left alone: allocations without an
//! owner or from an older format (no interface name), and, in bridge mode,
//! everything while a port of the pods' bridge leads to a pod namespace
//! without a kindnet tag (it may belong to any attachment: the reference
//! bridge plugin does not tag, and bridge mode has no host routes).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use kindnet_cni_spec::{AttachmentId, OwnerTag};

use crate::host::routes::KernelRoute;

/// One allocated address of the IPAM store and its recorded owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

/// A veth of the host, as far as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVeth {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    /// Its peer lives in another network namespace (a pod's).
    pub peer_elsewhere: bool,
    /// It is a port of the pods' bridge (bridge mode).
    pub on_pod_bridge: bool,
}

/// An attachment whose pod is gone, by the evidence of one pass.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Leak {
    pub container_id: String,
    pub ifname: String,
    /// Its addresses, sorted.
    pub ips: Vec<IpAddr>,
    /// Host veths tagged with it whose peer is not in a pod namespace (an
    /// ADD cut short): removed with it.
    pub leftover_links: Vec<u32>,
}

/// The result of one look.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub leaks: Vec<Leak>,
    /// Attachments with evidence of a live pod.
    pub live: usize,
    /// Why nothing can be decided this time, if so.
    pub undecidable: Option<String>,
    /// Allocations that cannot be attributed (no owner, legacy format).
    pub unattributed: usize,
}

/// The inputs of one look.
pub struct Evidence<'a> {
    pub network: &'a str,
    pub allocations: &'a [Allocated],
    pub veths: &'a [HostVeth],
    /// The host's main-table routes that are not kindnetd's.
    pub routes: &'a [KernelRoute],
    /// Addresses of the Pods on this node, when a Pod source is known.
    pub pod_ips: Option<&'a HashSet<IpAddr>>,
}

fn tag_of(v: &HostVeth) -> Option<OwnerTag> {
    v.alias.as_deref().and_then(OwnerTag::parse)
}

/// Which attachments have lost their pod, by this pass's evidence.
pub fn find_leaks(e: &Evidence<'_>) -> Findings {
    let mut out = Findings::default();
    let untagged_pod_veths = e
        .veths
        .iter()
        .filter(|v| v.on_pod_bridge && v.peer_elsewhere && tag_of(v).is_none())
        .filter(|v| {
            !v.alias
                .as_deref()
                .is_some_and(|a| a.starts_with("kindnet "))
        })
        .count();
    if untagged_pod_veths > 0 {
        out.undecidable = Some(format!(
            "{untagged_pod_veths} pod veth(s) on the bridge without a kindnet tag: their owners cannot be told"
        ));
        return out;
    }
    let host_routes: HashSet<IpAddr> = e
        .routes
        .iter()
        .filter(|r| r.dst.prefix_len() == r.dst.max_prefix_len() && r.oif.is_some())
        .map(|r| r.dst.addr())
        .collect();
    let mut by_owner: HashMap<(&str, &str), Vec<IpAddr>> = HashMap::new();
    for a in e.allocations {
        if a.container_id.is_empty() || a.ifname.is_empty() {
            out.unattributed += 1;
            continue;
        }
        by_owner
            .entry((a.container_id.as_str(), a.ifname.as_str()))
            .or_default()
            .push(a.ip);
    }
    let mut owners: Vec<_> = by_owner.into_iter().collect();
    owners.sort();
    for ((id, ifname), mut ips) in owners {
        ips.sort();
        let Ok(att) = AttachmentId::new(e.network, id, ifname) else {
            out.unattributed += ips.len();
            continue;
        };
        let tag = att.owner();
        let legacy = att.legacy_alias();
        let mine: Vec<&HostVeth> = e
            .veths
            .iter()
            .filter(|v| tag_of(v) == Some(tag) || v.alias.as_deref() == Some(legacy.as_str()))
            .collect();
        let alive = mine.iter().any(|v| v.peer_elsewhere)
            || ips.iter().any(|ip| host_routes.contains(ip))
            || e.pod_ips
                .is_some_and(|p| ips.iter().any(|ip| p.contains(ip)));
        if alive {
            out.live += 1;
            continue;
        }
        out.leaks.push(Leak {
            container_id: id.to_string(),
            ifname: ifname.to_string(),
            ips,
            leftover_links: mine.iter().map(|v| v.index).collect(),
        });
    }
    out
}

/// Keeps the time each leak was first seen; a leak is due once it has been
/// seen in every look for `grace`. Evidence of life (or a change of its
/// addresses) starts it over.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    first_seen: HashMap<(String, String), (Vec<IpAddr>, Instant)>,
}

impl Tracker {
    /// Records this look's leaks; returns those due now.
    pub fn due(&mut self, leaks: &[Leak], now: Instant, grace: Duration) -> Vec<Leak> {
        let current: HashSet<(String, String)> = leaks
            .iter()
            .map(|l| (l.container_id.clone(), l.ifname.clone()))
            .collect();
        self.first_seen.retain(|k, _| current.contains(k));
        let mut due = Vec::new();
        for l in leaks {
            let key = (l.container_id.clone(), l.ifname.clone());
            let entry = self
                .first_seen
                .entry(key)
                .or_insert_with(|| (l.ips.clone(), now));
            if entry.0 != l.ips {
                *entry = (l.ips.clone(), now);
            }
            if now.saturating_duration_since(entry.1) >= grace {
                due.push(l.clone());
            }
        }
        due
    }

    /// Forgets a leak (after it was reclaimed).
    pub fn forget(&mut self, l: &Leak) {
        self.first_seen
            .remove(&(l.container_id.clone(), l.ifname.clone()));
    }

    pub fn pending(&self) -> usize {
        self.first_seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = "kindnet";

    fn alloc(ip: &str, id: &str, ifname: &str) -> Allocated {
        Allocated {
            ip: ip.parse().unwrap(),
            container_id: id.into(),
            ifname: ifname.into(),
        }
    }

    fn veth(index: u32, id: Option<&str>, peer_elsewhere: bool) -> HostVeth {
        port(index, id, peer_elsewhere, false)
    }

    fn port(index: u32, id: Option<&str>, peer_elsewhere: bool, on_pod_bridge: bool) -> HostVeth {
        HostVeth {
            on_pod_bridge,
            index,
            name: format!("veth{index:08x}"),
            alias: id.map(|id| {
                AttachmentId::new(NET, id, "eth0")
                    .unwrap()
                    .owner()
                    .to_string()
            }),
            peer_elsewhere,
        }
    }

    fn host_route(ip: &str) -> KernelRoute {
        let ip: IpAddr = ip.parse().unwrap();
        KernelRoute {
            dst: ipnet::IpNet::from(ip),
            gateway: None,
            oif: Some(9),
            priority: 0,
        }
    }

    fn look(
        allocs: &[Allocated],
        veths: &[HostVeth],
        routes: &[KernelRoute],
        pods: Option<&HashSet<IpAddr>>,
    ) -> Findings {
        find_leaks(&Evidence {
            network: NET,
            allocations: allocs,
            veths,
            routes,
            pod_ips: pods,
        })
    }

    #[test]
    fn a_pod_whose_namespace_is_gone_is_a_leak_a_live_one_never() {
        let allocs = [
            alloc("10.244.1.2", "live", "eth0"),
            alloc("fd00::2", "live", "eth0"),
            alloc("10.244.1.3", "gone", "eth0"),
            alloc("fd00::3", "gone", "eth0"),
            alloc("10.244.1.4", "cut-short", "eth0"),
        ];
        let veths = [
            veth(10, Some("live"), true),
            // An ADD cut short: the veth never reached a pod namespace.
            veth(11, Some("cut-short"), false),
            // Someone else's veth (the node's own uplink, say).
            veth(12, None, true),
        ];
        // ptp: the live pod's address has a host route (to veth 10).
        let f = look(&allocs, &veths, &[host_route("10.244.1.2")], None);
        assert_eq!(f.live, 1);
        assert_eq!(f.undecidable, None);
        let ids: Vec<&str> = f.leaks.iter().map(|l| l.container_id.as_str()).collect();
        assert_eq!(ids, vec!["cut-short", "gone"]);
        assert_eq!(f.leaks[1].ips.len(), 2, "both families together");
        assert_eq!(f.leaks[0].leftover_links, vec![11]);
        assert!(f.leaks[1].leftover_links.is_empty());
    }

    #[test]
    fn any_single_sign_of_life_keeps_an_attachment() {
        let allocs = [
            alloc("10.244.1.2", "p", "eth0"),
            alloc("fd00::2", "p", "eth0"),
        ];
        // Its tagged veth reaches a pod namespace (bridge: no host route).
        assert_eq!(
            look(&allocs, &[port(1, Some("p"), true, true)], &[], None).live,
            1
        );
        // Only a host route to one of its addresses (an untagged veth, e.g.
        // the reference ptp plugin's).
        assert_eq!(look(&allocs, &[], &[host_route("fd00::2")], None).live, 1);
        // Only a Pod on this node with one of its addresses.
        let pods: HashSet<IpAddr> = ["10.244.1.2".parse().unwrap()].into_iter().collect();
        assert_eq!(look(&allocs, &[], &[], Some(&pods)).live, 1);
        // None of them: a leak.
        assert_eq!(
            look(&allocs, &[], &[], Some(&HashSet::new())).leaks.len(),
            1
        );
        // A legacy alias counts as the tag.
        let legacy = HostVeth {
            index: 3,
            name: "vethold".into(),
            alias: Some("kindnet kindnet p eth0".into()),
            peer_elsewhere: true,
            on_pod_bridge: true,
        };
        assert_eq!(look(&allocs, &[legacy], &[], None).live, 1);
    }

    #[test]
    fn what_cannot_be_attributed_is_never_reclaimed() {
        let allocs = [
            alloc("10.244.1.5", "", ""),
            alloc("10.244.1.6", "legacy-only-id", ""),
            alloc("10.244.1.7", "bad/id", "eth0"),
        ];
        let f = look(&allocs, &[], &[], None);
        assert!(f.leaks.is_empty(), "{f:?}");
        assert_eq!(f.unattributed, 3);
        // An untagged port of the pods' bridge leading to a pod namespace:
        // nobody can be told apart.
        let allocs = [alloc("10.244.1.3", "gone", "eth0")];
        let f = look(&allocs, &[port(12, None, true, true)], &[], None);
        assert!(f.leaks.is_empty());
        assert!(f.undecidable.unwrap().contains("without a kindnet tag"));
        // Untagged veths off the bridge (the uplink; ptp pods of the
        // reference plugin, whose host routes count): decidable.
        assert_eq!(
            look(&allocs, &[veth(12, None, true)], &[], None)
                .leaks
                .len(),
            1
        );
    }

    #[test]
    fn a_leak_is_due_only_after_a_whole_grace_period_without_a_break() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let leak = |ips: &[&str]| Leak {
            container_id: "gone".into(),
            ifname: "eth0".into(),
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            leftover_links: vec![],
        };
        let mut t = Tracker::default();
        let l = leak(&["10.244.1.3"]);
        assert!(t.due(std::slice::from_ref(&l), t0, grace).is_empty());
        assert!(
            t.due(
                std::slice::from_ref(&l),
                t0 + Duration::from_secs(59),
                grace
            )
            .is_empty()
        );
        // A sign of life (absent from one look) starts it over.
        assert!(t.due(&[], t0 + Duration::from_secs(59), grace).is_empty());
        assert!(
            t.due(
                std::slice::from_ref(&l),
                t0 + Duration::from_secs(61),
                grace
            )
            .is_empty()
        );
        assert!(
            t.due(
                std::slice::from_ref(&l),
                t0 + Duration::from_secs(120),
                grace
            )
            .is_empty()
        );
        assert_eq!(
            t.due(
                std::slice::from_ref(&l),
                t0 + Duration::from_secs(121),
                grace
            ),
            vec![l.clone()]
        );
        // Its addresses changed: a new attachment as far as we know.
        let l2 = leak(&["10.244.1.3", "fd00::3"]);
        assert!(
            t.due(
                std::slice::from_ref(&l2),
                t0 + Duration::from_secs(122),
                grace
            )
            .is_empty()
        );
        t.forget(&l2);
        assert_eq!(t.pending(), 0);
    }
}

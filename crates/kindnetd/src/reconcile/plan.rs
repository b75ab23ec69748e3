//! The pure half of a reconcile pass: what the host looks like, the node
//! list, the settings and what earlier passes learned in → what to change
//! out. No effects, no clock: every decision of a pass is a unit test here.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kindnet_nft::Batch;

use super::Settings;
use crate::host::cniconf::{self, CniInputs};
use crate::host::dataplane::HostView;
use crate::host::masquerade::{self, MasqInputs};
use crate::host::routes::{self, Desired, InstalledRoute, NodeNetwork, RouteOp};
use crate::host::sysctl;
use crate::inputs::store::NodeStore;

/// What earlier passes learned and the next plan needs.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// This node's last known good pod CIDRs (from its Node, or at start from
    /// the conflist on disk): kept when the Node disappears or loses them.
    pub last_own: Vec<IpNet>,
    /// Peer CIDRs kindnetd routed (until their route is deleted): a
    /// protocol-217 route at one of them is ours even outside --pod-subnet.
    pub known_peer_cidrs: HashSet<IpNet>,
    /// The masquerade batch last applied successfully.
    pub last_masq: Option<Batch>,
    /// The masquerade table was removed (masquerading off).
    pub masq_removed: bool,
}

/// The CNI config to write (if it differs from what is on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflistPlan {
    pub dir: PathBuf,
    pub content: String,
    pub mtu: u32,
}

/// What to do with the masquerade table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MasqPlan {
    /// Nothing: not synced yet, or the ruleset is what was last applied.
    #[default]
    Unchanged,
    /// Replace the table with this batch (one transaction).
    Apply(Batch),
    /// The ruleset applied before, at a full pass: compare the kernel's
    /// table with it and replace the table only when it differs (drift).
    Verify(Batch),
    /// Masquerading is off: remove the table once.
    Remove,
}

/// Everything one pass will change, and what it decided on the way.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The node source delivered a complete list: only then is anything
    /// removed or a conflist written.
    pub synced: bool,
    pub nodes_known: usize,
    pub own: OwnCidrs,
    /// Node names listed more than once.
    pub duplicates: Vec<String>,
    /// Sysctl writes, in order (full passes with --configure-sysctls).
    pub sysctls: Vec<(String, &'static str)>,
    /// None: no conflist may be written (not synced, or no own CIDRs).
    pub conflist: Option<ConflistPlan>,
    /// Route changes: replacements and deletions of kindnetd's own routes.
    pub routes: Vec<RouteOp>,
    pub masquerade: MasqPlan,
    /// The desired routes, the peers skipped and the uplinks to solicit.
    pub desired: Desired,
    /// Protocol-217 routes that are not kindnetd's: reported, never touched.
    pub foreign_routes: Vec<InstalledRoute>,
}

/// Decides one pass. `full` passes re-apply masquerade and write sysctls
/// (from `view.sysctls`, read for them).
pub fn plan(
    view: &HostView,
    store: &NodeStore,
    cfg: &Settings,
    memory: &Memory,
    full: bool,
) -> Plan {
    let synced = store.synced();
    let nodes: Vec<&crate::inputs::store::StoredNode> = store.iter().collect();
    let net = NodeNetwork::new(
        &view.topology,
        &cfg.route_opts.own_ips,
        nodes.iter().map(|s| &s.node),
    );
    let name = &cfg.own_name;
    let own_node = if !synced {
        OwnNode::NotSynced
    } else if store.duplicates().contains(name) {
        OwnNode::Duplicate
    } else {
        match store.get(name) {
            None => OwnNode::Missing,
            Some(n) if n.pod_cidrs.is_empty() => OwnNode::NoCidrs,
            Some(n) => OwnNode::Cidrs(n.pod_cidrs.clone()),
        }
    };
    let own = decide_own_cidrs(
        name,
        &own_node,
        &cfg.static_pod_cidrs,
        &memory.last_own,
        &cfg.pod_subnet,
        &net,
    );
    let desired = routes::desired_routes_in(
        name,
        &own.cidrs,
        nodes,
        &cfg.route_opts,
        &view.topology,
        &net,
    );

    let sysctls = match (&view.sysctls, wants_sysctls(cfg, full)) {
        (Some(sv), true) => sysctl::plan(sv),
        _ => Vec::new(),
    };

    // No conflist before the node list is read, nor without own CIDRs:
    // never the cluster range.
    let conflist = (synced && !own.cidrs.is_empty()).then(|| {
        let mtu = pod_mtu(view, cfg);
        ConflistPlan {
            dir: cfg.cni_conf_dir.clone(),
            content: cniconf::render(&CniInputs {
                chain: cfg.cni_chain,
                pod_cidrs: own.cidrs.clone(),
                mtu,
                bridge: cfg.bridge.clone(),
                ipam_data_dir: cfg.ipam_data_dir.clone(),
            }),
            mtu,
        }
    });

    // Before sync nothing is removed, so nothing newly wanted counts as ours.
    let mut known = memory.known_peer_cidrs.clone();
    if synced {
        known.extend(desired.routes.keys().copied());
    }
    let (owned, foreign) =
        routes::split_owned(&view.ours, &desired.routes, &cfg.pod_subnet, &known);
    let route_ops = if synced {
        routes::diff(&desired.routes, &owned)
    } else {
        Vec::new()
    };

    let masquerade = if !cfg.masquerading {
        if memory.masq_removed {
            MasqPlan::Unchanged
        } else {
            MasqPlan::Remove
        }
    } else if !synced {
        MasqPlan::Unchanged
    } else {
        let routed: Vec<IpNet> = desired.routes.keys().copied().collect();
        let batch = masquerade::ruleset(&masquerade_inputs(
            &own.cidrs,
            &routed,
            &cfg.pod_subnet,
            &cfg.no_masquerade,
        ));
        match (full, memory.last_masq.as_ref() == Some(&batch)) {
            (false, true) => MasqPlan::Unchanged,
            (true, true) => MasqPlan::Verify(batch),
            (_, false) => MasqPlan::Apply(batch),
        }
    };

    Plan {
        synced,
        nodes_known: store.len(),
        duplicates: store.duplicates().iter().cloned().collect(),
        own,
        sysctls,
        conflist,
        routes: route_ops,
        masquerade,
        desired,
        foreign_routes: foreign,
    }
}

/// The pods' MTU: --mtu, else from the default route's interface.
fn pod_mtu(view: &HostView, cfg: &Settings) -> u32 {
    if cfg.mtu != 0 {
        return cfg.mtu;
    }
    cniconf::pick_mtu(
        &view.foreign,
        |i| view.link_mtus.get(&i).copied(),
        |ip| {
            view.addr_links
                .iter()
                .find(|(a, _)| a == ip)
                .map(|(_, i)| *i)
        },
        &cfg.route_opts.own_ips,
    )
}

/// Which uplinks to solicit now: those with a wanted peer whose pause has
/// passed. Returns (oif, the peers on it whose MAC is not known).
pub fn due_solicitations(
    wanted: &[(u32, Ipv4Addr)],
    last: &HashMap<u32, (Instant, Duration)>,
    mac_known: impl Fn(u32, Ipv4Addr) -> bool,
    now: Instant,
) -> Vec<(u32, Vec<Ipv4Addr>)> {
    let mut out: Vec<(u32, Vec<Ipv4Addr>)> = Vec::new();
    for &(oif, peer) in wanted {
        if last
            .get(&oif)
            .is_some_and(|(at, pause)| now.saturating_duration_since(*at) < *pause)
        {
            continue;
        }
        let arp = !mac_known(oif, peer);
        match out.iter_mut().find(|(o, _)| *o == oif) {
            Some((_, v)) => {
                if arp {
                    v.push(peer);
                }
            }
            None => out.push((oif, if arp { vec![peer] } else { Vec::new() })),
        }
    }
    out
}

/// What the node list says about this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnNode {
    /// No complete node list yet.
    NotSynced,
    /// The list does not have this node.
    Missing,
    /// The list names this node more than once: ambiguous.
    Duplicate,
    /// The node has no podCIDRs.
    NoCidrs,
    Cidrs(Vec<IpNet>),
}

/// This node's pod CIDRs as decided for one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnCidrs {
    /// The ranges used for the conflist, masquerade and the overlap check;
    /// empty = none known (no conflist is written).
    pub cidrs: Vec<IpNet>,
    /// They are what the Node (or --static-pod-cidrs) says now.
    pub current: bool,
    /// Where they come from or why they are not current (for /readyz).
    pub note: Option<String>,
}

fn list(cidrs: &[IpNet]) -> String {
    cidrs
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decides this node's pod CIDRs. --static-pod-cidrs wins; else the Node's
/// podCIDRs when they pass [`routes::refuse_own_cidr`]; else (Node missing,
/// duplicated, without podCIDRs, or claiming a refused range) the last known
/// good ones are kept and reported as not current. Never the cluster range:
/// `--pod-subnet` only bounds what is accepted.
pub fn decide_own_cidrs(
    own_name: &str,
    node: &OwnNode,
    static_cidrs: &[IpNet],
    last_known: &[IpNet],
    pod_subnet: &[IpNet],
    net: &NodeNetwork,
) -> OwnCidrs {
    if !static_cidrs.is_empty() {
        return OwnCidrs {
            cidrs: static_cidrs.to_vec(),
            current: true,
            note: Some("from --static-pod-cidrs".into()),
        };
    }
    let problem = match node {
        OwnNode::Cidrs(v) => {
            let refused = v
                .iter()
                .find_map(|c| routes::refuse_own_cidr(c, pod_subnet, net).map(|r| (c, r)));
            match refused {
                None => {
                    return OwnCidrs {
                        cidrs: v.clone(),
                        current: true,
                        note: None,
                    };
                }
                Some((c, r)) => format!("Node {own_name} claims pod CIDR {c}, refused: {r}"),
            }
        }
        OwnNode::NotSynced => "the node list has not been read yet".to_string(),
        OwnNode::Missing => format!("Node {own_name} is not in the node list"),
        OwnNode::Duplicate => {
            format!("Node {own_name} is listed more than once: ambiguous")
        }
        OwnNode::NoCidrs => {
            format!("Node {own_name} has no podCIDRs (node IPAM off? see --static-pod-cidrs)")
        }
    };
    let kept: Vec<IpNet> = last_known
        .iter()
        .filter(|c| routes::refuse_own_cidr(c, pod_subnet, net).is_none())
        .copied()
        .collect();
    let note = if kept.is_empty() {
        format!("{problem}; no CNI config is written")
    } else {
        format!("{problem}; keeping the last known {}", list(&kept))
    };
    OwnCidrs {
        cidrs: kept,
        current: false,
        note: Some(note),
    }
}

/// What masquerade gets: pod sources are this node's CIDRs and
/// --pod-subnet; destinations exempt from masquerade are only what kindnetd
/// accepted: this node's CIDRs, the peer CIDRs it routes, --pod-subnet and
/// --no-masquerade-cidr. A peer CIDR that was refused (or is not routed for
/// any reason) never exempts traffic: a Node claiming `0.0.0.0/1` must not
/// stop the masquerade of pod egress to half of IPv4.
pub fn masquerade_inputs(
    own: &[IpNet],
    routed_peers: &[IpNet],
    pod_subnet: &[IpNet],
    no_masquerade: &[IpNet],
) -> MasqInputs {
    let mut pod_sources: Vec<IpNet> = own.to_vec();
    pod_sources.extend(pod_subnet);
    let mut exempt: Vec<IpNet> = routed_peers.to_vec();
    exempt.extend(pod_subnet);
    exempt.extend(own);
    exempt.extend(no_masquerade);
    MasqInputs {
        pod_sources,
        no_masquerade: exempt,
    }
}

/// Whether a kernel route change may concern kindnetd's routes: any change
/// to a route with its protocol, and additions or removals of non-host
/// routes in the main table (a hand-made replacement of one of ours, or a
/// connected route that changes what is on-link). Host routes (/32, /128:
/// pods' veths) are not: a node with many pods would reconcile on each.
pub fn route_event_matters(table: u32, protocol: u8, dst: &IpNet) -> bool {
    table == routes::MAIN_TABLE
        && (protocol == routes::ROUTE_PROTOCOL || dst.prefix_len() < dst.max_prefix_len())
}

/// Whether a sysctl read is needed this pass (reads are effects: the
/// reconciler does them before planning).
pub fn wants_sysctls(cfg: &Settings, full: bool) -> bool {
    full && cfg.configure_sysctls
}

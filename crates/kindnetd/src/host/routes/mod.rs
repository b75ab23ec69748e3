//! Peer routes as pure decisions: nodes in, desired routes out; desired and
//! installed routes in, the operations that make them equal out.
//!
//! One route per peer pod CIDR via that peer's node address of the same
//! family (InternalIP first, then ExternalIP; for IPv6 optionally a
//! configured prefix + the IPv4 address). Routes carry [`ROUTE_PROTOCOL`] so
//! kindnetd only ever deletes routes it made.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};

use crate::inputs::store::StoredNode;

/// The rtnetlink route protocol number that marks kindnetd's routes
/// (`ip route show proto 217`). Unassigned in the kernel's and iproute2's
/// tables (`/etc/iproute2/rt_protos`), within the 200..250 range free for
/// local use.
pub const ROUTE_PROTOCOL: u8 = 217;
/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// The metric the kernel gives a route added without one.
pub fn default_priority(dst: &IpNet) -> u32 {
    match dst {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1024,
    }
}

/// A route of the kernel's main table that is not kindnetd's, as far as the
/// on-link decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub priority: u32,
}

#[cfg(test)]
impl KernelRoute {
    /// A test route: `dst` via `gw` (None: on-link) out of `oif`, metric 0.
    pub fn test(dst: &str, gw: Option<&str>, oif: u32) -> KernelRoute {
        KernelRoute {
            dst: dst.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            oif: Some(oif),
            priority: 0,
        }
    }
}

/// How the kernel would reach an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Directly on the link with this index.
    OnLink { oif: u32 },
    /// Through a router: not on our L2 segment.
    ViaGateway { gateway: IpAddr },
    /// An address of this host.
    Local,
    /// No route, or a blackhole/unreachable route.
    Unreachable,
}

/// The host's view needed to decide whether a peer is on-link: its own
/// addresses and its non-kindnetd main-table routes.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    routes: Vec<KernelRoute>,
    local: Vec<IpAddr>,
    neighbours: Neighbours,
}

/// The resolved neighbour entries (ARP and NDP) of this host: (link,
/// address, link-layer address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Neighbours {
    entries: Vec<(u32, IpAddr, Vec<u8>)>,
}

/// Why the IPv6 link-local address of an IPv4 neighbour is not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkLocalMiss {
    /// The IPv4 address is not (yet) in the ARP table.
    NoMac,
    /// The MAC is known, but no IPv6 link-local neighbour with that MAC.
    NoLinkLocal { mac: Vec<u8> },
    /// More than one IPv6 link-local neighbour has that MAC: no guessing.
    Ambiguous {
        mac: Vec<u8>,
        candidates: Vec<Ipv6Addr>,
    },
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl fmt::Display for LinkLocalMiss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkLocalMiss::NoMac => write!(f, "its MAC is not in the ARP table yet"),
            LinkLocalMiss::NoLinkLocal { mac } => write!(
                f,
                "no IPv6 link-local neighbour with its MAC {} yet",
                format_mac(mac)
            ),
            LinkLocalMiss::Ambiguous { mac, candidates } => {
                let c: Vec<String> = candidates.iter().map(|a| a.to_string()).collect();
                write!(
                    f,
                    "several IPv6 link-local neighbours have its MAC {}: {}",
                    format_mac(mac),
                    c.join(", ")
                )
            }
        }
    }
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

impl Neighbours {
    /// From resolved entries only (the caller drops incomplete and failed
    /// ones); entries without a link-layer address are ignored.
    pub fn new(entries: impl IntoIterator<Item = (u32, IpAddr, Vec<u8>)>) -> Neighbours {
        let mut entries: Vec<(u32, IpAddr, Vec<u8>)> =
            entries.into_iter().filter(|e| !e.2.is_empty()).collect();
        entries.sort();
        entries.dedup();
        Neighbours { entries }
    }

    pub fn mac_of(&self, oif: u32, ip: IpAddr) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(i, a, _)| *i == oif && *a == ip)
            .map(|(_, _, m)| m.as_slice())
    }

    /// The IPv6 link-local address of the IPv4 neighbour `v4` on link
    /// `oif`: the one IPv6 link-local neighbour on the same link with the
    /// same MAC. Never derived (EUI-64) without that evidence.
    pub fn link_local_of(
        &self,
        oif: u32,
        v4: std::net::Ipv4Addr,
    ) -> Result<Ipv6Addr, LinkLocalMiss> {
        let mac = self
            .mac_of(oif, IpAddr::V4(v4))
            .ok_or(LinkLocalMiss::NoMac)?
            .to_vec();
        let mut candidates: Vec<Ipv6Addr> = self
            .entries
            .iter()
            .filter(|(i, _, m)| *i == oif && *m == mac)
            .filter_map(|(_, a, _)| match a {
                IpAddr::V6(a) if is_link_local(a) => Some(*a),
                _ => None,
            })
            .collect();
        candidates.dedup();
        match candidates.as_slice() {
            [one] => Ok(*one),
            [] => Err(LinkLocalMiss::NoLinkLocal { mac }),
            _ => Err(LinkLocalMiss::Ambiguous { mac, candidates }),
        }
    }
}

impl Topology {
    pub fn new(mut routes: Vec<KernelRoute>, mut local: Vec<IpAddr>) -> Topology {
        // Longest prefix first, then lowest metric: the first match wins.
        routes.sort_by(|a, b| {
            b.dst
                .prefix_len()
                .cmp(&a.dst.prefix_len())
                .then(a.priority.cmp(&b.priority))
        });
        local.sort();
        local.dedup();
        Topology {
            routes,
            local,
            neighbours: Neighbours::default(),
        }
    }

    pub fn with_neighbours(mut self, n: Neighbours) -> Topology {
        self.neighbours = n;
        self
    }

    pub fn neighbours(&self) -> &Neighbours {
        &self.neighbours
    }

    pub fn is_local(&self, ip: &IpAddr) -> bool {
        self.local.binary_search(ip).is_ok()
    }

    pub fn local_addresses(&self) -> &[IpAddr] {
        &self.local
    }

    /// The route the kernel would pick for `ip` (longest prefix match).
    pub fn route_for(&self, ip: IpAddr) -> Option<&KernelRoute> {
        self.routes.iter().find(|r| r.dst.contains(&ip))
    }

    /// Subnets on a link of this host: routes without a gateway that name
    /// an interface (connected and on-link routes), except default routes.
    pub fn connected_subnets(&self) -> impl Iterator<Item = &IpNet> {
        self.routes
            .iter()
            .filter(|r| r.gateway.is_none() && r.oif.is_some_and(|o| o != 0))
            .filter(|r| r.dst.prefix_len() != 0)
            .map(|r| &r.dst)
    }

    /// The gateways of the default routes.
    pub fn default_gateways(&self) -> impl Iterator<Item = &IpAddr> {
        self.routes
            .iter()
            .filter(|r| r.dst.prefix_len() == 0)
            .filter_map(|r| r.gateway.as_ref())
    }

    pub fn lookup(&self, ip: IpAddr) -> Reach {
        if self.is_local(&ip) {
            return Reach::Local;
        }
        match self.route_for(ip) {
            Some(KernelRoute {
                gateway: Some(gw), ..
            }) => Reach::ViaGateway { gateway: *gw },
            Some(KernelRoute {
                gateway: None,
                oif: Some(oif),
                ..
            }) if *oif != 0 => Reach::OnLink { oif: *oif },
            _ => Reach::Unreachable,
        }
    }
}

/// A route kindnetd wants: `dst via gateway dev oif proto 217`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    pub dst: IpNet,
    pub gateway: IpAddr,
    pub oif: u32,
    pub node: String,
}

/// Why a peer pod CIDR gets no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// --pod-subnet is set and the CIDR is not inside it.
    OutsidePodSubnet { pod_subnet: Vec<IpNet> },
    /// The CIDR contains the address of a node (this host's, a flag's, or
    /// any node's): routing it would capture node traffic.
    ContainsNodeAddress { addr: IpAddr, owner: String },
    /// The CIDR contains a default route's gateway.
    ContainsGateway { gateway: IpAddr },
    /// The CIDR overlaps a subnet on one of this host's links.
    OverlapsNodeNetwork { subnet: IpNet },
    /// The node publishes no address at all that could be a next hop.
    NoAddress { v6: bool },
    /// The node publishes only an IPv4 address, no --ipv6-prefix is set,
    /// and the IPv6 link-local address of that IPv4 neighbour is not known.
    LinkLocalUnknown {
        ipv4: std::net::Ipv4Addr,
        why: LinkLocalMiss,
    },
    /// The next hop is reached through a router, not on this L2 segment.
    NotOnLink {
        next_hop: IpAddr,
        via: Option<IpAddr>,
    },
    /// The next hop is one of this host's addresses.
    NextHopLocal { next_hop: IpAddr },
    /// The CIDR contains its own next hop.
    ContainsNextHop { next_hop: IpAddr },
    /// The CIDR overlaps (or equals) this node's pod CIDR.
    OverlapsOwn { own: IpNet },
    /// The CIDR overlaps another node's CIDR, which held it first.
    OverlapsPeer { other: String, other_cidr: IpNet },
}

impl SkipReason {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::OutsidePodSubnet { .. } => "outside-pod-subnet",
            SkipReason::ContainsNodeAddress { .. } => "contains-node-address",
            SkipReason::ContainsGateway { .. } => "contains-default-gateway",
            SkipReason::OverlapsNodeNetwork { .. } => "overlaps-node-network",
            SkipReason::NoAddress { .. } => "no-address-of-family",
            SkipReason::LinkLocalUnknown { .. } => "ipv6-link-local-unknown",
            SkipReason::NotOnLink { .. } => "not-on-link",
            SkipReason::NextHopLocal { .. } => "next-hop-is-local",
            SkipReason::ContainsNextHop { .. } => "cidr-contains-next-hop",
            SkipReason::OverlapsOwn { .. } => "overlaps-own-pod-cidr",
            SkipReason::OverlapsPeer { .. } => "overlaps-peer-pod-cidr",
        }
    }

    pub const LABELS: [&'static str; 11] = [
        "outside-pod-subnet",
        "contains-node-address",
        "contains-default-gateway",
        "overlaps-node-network",
        "no-address-of-family",
        "ipv6-link-local-unknown",
        "not-on-link",
        "next-hop-is-local",
        "cidr-contains-next-hop",
        "overlaps-own-pod-cidr",
        "overlaps-peer-pod-cidr",
    ];
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::OutsidePodSubnet { pod_subnet } if pod_subnet.is_empty() => {
                write!(f, "outside --pod-subnet")
            }
            SkipReason::OutsidePodSubnet { pod_subnet } => {
                let list: Vec<String> = pod_subnet.iter().map(|p| p.to_string()).collect();
                write!(f, "outside --pod-subnet {}", list.join(","))
            }
            SkipReason::ContainsNodeAddress { addr, owner } => {
                write!(f, "contains the node address {addr} ({owner})")
            }
            SkipReason::ContainsGateway { gateway } => {
                write!(f, "contains the default gateway {gateway}")
            }
            SkipReason::OverlapsNodeNetwork { subnet } => {
                write!(f, "overlaps the node network {subnet} (a connected subnet)")
            }
            SkipReason::NoAddress { .. } => write!(f, "no node address"),
            SkipReason::LinkLocalUnknown { ipv4, why } => write!(
                f,
                "no IPv6 node address, and the IPv6 link-local address of {ipv4} is not known: {why} \
                 (soliciting all nodes on the uplink; or set --ipv6-prefix)"
            ),
            SkipReason::NotOnLink {
                next_hop,
                via: Some(gw),
            } => write!(f, "next hop {next_hop} is not on-link (reached via {gw})"),
            SkipReason::NotOnLink {
                next_hop,
                via: None,
            } => {
                write!(f, "next hop {next_hop} is unreachable")
            }
            SkipReason::NextHopLocal { next_hop } => {
                write!(f, "next hop {next_hop} is an address of this host")
            }
            SkipReason::ContainsNextHop { next_hop } => {
                write!(f, "pod CIDR contains its own next hop {next_hop}")
            }
            SkipReason::OverlapsOwn { own } => write!(f, "overlaps this node's pod CIDR {own}"),
            SkipReason::OverlapsPeer { other, other_cidr } => {
                write!(f, "overlaps {other_cidr} of node {other}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub node: String,
    pub cidr: IpNet,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeMap<IpNet, PeerRoute>,
    pub skipped: Vec<Skipped>,
    /// (uplink, peer IPv4 address) whose IPv6 link-local address is wanted
    /// and not known: the neighbours to solicit.
    pub solicit: Vec<(u32, std::net::Ipv4Addr)>,
    /// This node's pod CIDRs (empty when its Node is unknown or has none).
    pub own_cidrs: Vec<IpNet>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteOptions {
    /// --pod-subnet: when set, every pod CIDR must lie inside it.
    pub pod_subnet: Vec<IpNet>,
    /// Prefix for deriving IPv6 next hops from IPv4 node addresses.
    pub ipv6_prefix: Option<Ipv6Net>,
    /// Addresses of this node given by flags (HOST_IP, POD_IP).
    pub own_ips: Vec<IpAddr>,
}

/// What pod CIDRs must stay clear of: the node network as this host sees
/// it (its connected subnets, default gateways and own addresses) and every
/// node address (the flags', and every Node's).
#[derive(Debug, Clone, Default)]
pub struct NodeNetwork {
    connected: Vec<IpNet>,
    gateways: Vec<IpAddr>,
    /// This host's addresses (including pod gateways on its veths), sorted.
    local: Vec<IpAddr>,
    /// Node addresses (flags, Nodes), sorted; the owner names their source.
    node_ips: Vec<(IpAddr, String)>,
}

/// The owner named for this host's own addresses.
pub const THIS_NODE: &str = "this node";

fn first_in<'a, T>(sorted: &'a [T], cidr: &IpNet, key: impl Fn(&T) -> IpAddr) -> Option<&'a T> {
    let start = cidr.network();
    let i = sorted.partition_point(|t| key(t) < start);
    sorted.get(i).filter(|t| key(t) <= cidr.broadcast())
}

impl NodeNetwork {
    pub fn new<'a>(
        topo: &Topology,
        own_ips: &[IpAddr],
        nodes: impl IntoIterator<Item = &'a crate::inputs::node::Node>,
    ) -> NodeNetwork {
        let mut node_ips: Vec<(IpAddr, String)> = own_ips
            .iter()
            .map(|a| (*a, THIS_NODE.to_string()))
            .collect();
        for n in nodes {
            node_ips.extend(n.addresses().map(|a| (*a, format!("node {}", n.name))));
        }
        node_ips.sort();
        node_ips.dedup_by(|a, b| a.0 == b.0);
        let mut connected: Vec<IpNet> = topo.connected_subnets().copied().collect();
        connected.sort();
        connected.dedup();
        let mut gateways: Vec<IpAddr> = topo.default_gateways().copied().collect();
        gateways.sort();
        gateways.dedup();
        NodeNetwork {
            connected,
            gateways,
            local: topo.local_addresses().to_vec(),
            node_ips,
        }
    }

    /// The first node address inside `cidr` and its owner, in O(log n).
    fn node_ip_in(&self, cidr: &IpNet) -> Option<(IpAddr, String)> {
        first_in(&self.node_ips, cidr, |(a, _)| *a).cloned()
    }

    fn local_in(&self, cidr: &IpNet) -> Option<IpAddr> {
        first_in(&self.local, cidr, |a| *a).copied()
    }
}

fn refuse_common(cidr: &IpNet, pod_subnet: &[IpNet], net: &NodeNetwork) -> Option<SkipReason> {
    if !pod_subnet.is_empty() && !pod_subnet.iter().any(|p| p.contains(cidr)) {
        return Some(SkipReason::OutsidePodSubnet {
            pod_subnet: pod_subnet.to_vec(),
        });
    }
    if let Some((addr, owner)) = net.node_ip_in(cidr) {
        return Some(SkipReason::ContainsNodeAddress { addr, owner });
    }
    if let Some(gw) = net.gateways.iter().find(|g| cidr.contains(*g)) {
        return Some(SkipReason::ContainsGateway { gateway: *gw });
    }
    None
}

/// Whether a peer's pod CIDR may be routed at all: it must lie inside
/// --pod-subnet (when set) and stay clear of the node network: no node
/// address (any Node's, the flags', this host's), no default gateway, no
/// overlap with a connected subnet. Pure: the node network and --pod-subnet
/// are inputs.
pub fn refuse_pod_cidr(
    cidr: &IpNet,
    pod_subnet: &[IpNet],
    net: &NodeNetwork,
) -> Option<SkipReason> {
    if let Some(r) = refuse_common(cidr, pod_subnet, net) {
        return Some(r);
    }
    if let Some(addr) = net.local_in(cidr) {
        return Some(SkipReason::ContainsNodeAddress {
            addr,
            owner: THIS_NODE.to_string(),
        });
    }
    if let Some(subnet) = net.connected.iter().find(|c| overlaps(c, cidr)) {
        return Some(SkipReason::OverlapsNodeNetwork { subnet: *subnet });
    }
    None
}

/// Whether this node's own pod CIDR (from its Node, or the last known one)
/// may be used. As for peers, except that this host's own addresses and
/// connected subnets inside it are expected: the pod gateway sits on the
/// host veths (ptp) or the bridge, whose subnet is connected (bridge).
pub fn refuse_own_cidr(
    cidr: &IpNet,
    pod_subnet: &[IpNet],
    net: &NodeNetwork,
) -> Option<SkipReason> {
    refuse_common(cidr, pod_subnet, net)
}

/// `prefix` + the IPv4 address in the low 32 bits.
pub fn embed_ipv4(prefix: &Ipv6Net, v4: std::net::Ipv4Addr) -> Ipv6Addr {
    let p = u128::from(prefix.network());
    Ipv6Addr::from(p | u128::from(u32::from(v4)))
}

fn bounds(n: &IpNet) -> (bool, u128, u128) {
    match n {
        IpNet::V4(n) => (
            false,
            u32::from(n.network()) as u128,
            u32::from(n.broadcast()) as u128,
        ),
        IpNet::V6(n) => (true, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// Disjoint CIDRs indexed by start, for overlap queries in O(log n).
#[derive(Default)]
struct Claims {
    by_start: BTreeMap<(bool, u128), (u128, usize)>,
}

impl Claims {
    fn overlapping(&self, n: &IpNet) -> Option<usize> {
        let (v6, start, end) = bounds(n);
        let (_, (other_end, idx)) = self.by_start.range((v6, 0)..=(v6, end)).next_back()?;
        (*other_end >= start).then_some(*idx)
    }
    fn insert(&mut self, n: &IpNet, idx: usize) {
        let (v6, start, end) = bounds(n);
        self.by_start.insert((v6, start), (end, idx));
    }
}

/// Computes the routes this node should have, taking this node's pod CIDRs
/// from its Node in `nodes` (see [`desired_routes_in`]).
pub fn desired_routes<'a>(
    own_name: &str,
    nodes: impl IntoIterator<Item = &'a StoredNode>,
    opts: &RouteOptions,
    topo: &Topology,
) -> Desired {
    let nodes: Vec<&'a StoredNode> = nodes.into_iter().collect();
    let net = NodeNetwork::new(topo, &opts.own_ips, nodes.iter().map(|s| &s.node));
    let own: Vec<IpNet> = nodes
        .iter()
        .find(|s| s.node.name == own_name)
        .map(|s| s.node.pod_cidrs.clone())
        .unwrap_or_default();
    desired_routes_in(own_name, &own, nodes, opts, topo, &net)
}

/// Computes the routes this node should have, given this node's (decided)
/// pod CIDRs and the node network. The Node named `own_name` is never a peer.
pub fn desired_routes_in<'a>(
    own_name: &str,
    own_cidrs: &[IpNet],
    nodes: impl IntoIterator<Item = &'a StoredNode>,
    opts: &RouteOptions,
    topo: &Topology,
    net: &NodeNetwork,
) -> Desired {
    // (rev, name, cidr, node)
    let mut claims: Vec<(u64, &str, IpNet, &'a StoredNode)> = Vec::new();
    for s in nodes {
        if s.node.name == own_name {
            continue;
        }
        for c in &s.node.pod_cidrs {
            claims.push((s.rev, &s.node.name, *c, s));
        }
    }
    claims.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));

    let mut out = Desired {
        own_cidrs: own_cidrs.to_vec(),
        ..Default::default()
    };
    let mut held = Claims::default();
    let mut held_names: Vec<(&str, IpNet)> = Vec::new();
    for (_, name, cidr, s) in claims {
        let skip = |reason| Skipped {
            node: name.to_string(),
            cidr,
            reason,
        };
        // Refused CIDRs hold no claim: they cannot block a real peer.
        if let Some(reason) = refuse_pod_cidr(&cidr, &opts.pod_subnet, net) {
            out.skipped.push(skip(reason));
            continue;
        }
        if let Some(own) = own_cidrs.iter().find(|o| overlaps(o, &cidr)) {
            out.skipped
                .push(skip(SkipReason::OverlapsOwn { own: *own }));
            continue;
        }
        if let Some(i) = held.overlapping(&cidr) {
            let (other, other_cidr) = held_names[i];
            out.skipped.push(skip(SkipReason::OverlapsPeer {
                other: other.to_string(),
                other_cidr,
            }));
            continue;
        }
        held.insert(&cidr, held_names.len());
        held_names.push((name, cidr));

        let v6 = cidr.addr().is_ipv6();
        let next_hop = match next_hop_for(v6, &s.node, opts, topo) {
            Ok(NextHop::Address(a)) => a,
            Ok(NextHop::LinkLocal { addr, oif }) => {
                out.routes.insert(
                    cidr,
                    PeerRoute {
                        dst: cidr,
                        gateway: IpAddr::V6(addr),
                        oif,
                        node: name.to_string(),
                    },
                );
                continue;
            }
            Err(reason) => {
                if let SkipReason::LinkLocalUnknown { ipv4, .. } = &reason
                    && let Reach::OnLink { oif } = topo.lookup(IpAddr::V4(*ipv4))
                    && !out.solicit.contains(&(oif, *ipv4))
                {
                    out.solicit.push((oif, *ipv4));
                }
                out.skipped.push(skip(reason));
                continue;
            }
        };
        if opts.own_ips.contains(&next_hop) {
            out.skipped
                .push(skip(SkipReason::NextHopLocal { next_hop }));
            continue;
        }
        if cidr.contains(&next_hop) {
            out.skipped
                .push(skip(SkipReason::ContainsNextHop { next_hop }));
            continue;
        }
        match topo.lookup(next_hop) {
            Reach::OnLink { oif } => {
                out.routes.insert(
                    cidr,
                    PeerRoute {
                        dst: cidr,
                        gateway: next_hop,
                        oif,
                        node: name.to_string(),
                    },
                );
            }
            Reach::Local => out
                .skipped
                .push(skip(SkipReason::NextHopLocal { next_hop })),
            Reach::ViaGateway { gateway } => out.skipped.push(skip(SkipReason::NotOnLink {
                next_hop,
                via: Some(gateway),
            })),
            Reach::Unreachable => out.skipped.push(skip(SkipReason::NotOnLink {
                next_hop,
                via: None,
            })),
        }
    }
    out
}

/// A peer's next hop for one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// A node address (or one derived with --ipv6-prefix); still to be
    /// checked for being on-link. For an IPv4 pod CIDR of a node that
    /// publishes only IPv6, its IPv6 address (an IPv4 route via an IPv6
    /// next hop).
    Address(IpAddr),
    /// The peer's IPv6 link-local address, on the uplink its IPv4 address
    /// is on: an IPv6 next hop for an IPv4-only peer, the last resort.
    LinkLocal { addr: Ipv6Addr, oif: u32 },
}

/// Picks the next hop for a peer's pod CIDR of family `v6`: its node
/// address of that family; else, for IPv6, --ipv6-prefix + its IPv4
/// address, else its link-local address found through the MAC of its IPv4
/// neighbour entry (only when the IPv4 address is on-link); else, for IPv4,
/// its IPv6 address (the kernel routes IPv4 via an IPv6 gateway; the reverse
/// does not exist).
pub fn next_hop_for(
    v6: bool,
    node: &crate::inputs::node::Node,
    opts: &RouteOptions,
    topo: &Topology,
) -> Result<NextHop, SkipReason> {
    if let Some(a) = node.address_of_family(v6) {
        return Ok(NextHop::Address(a));
    }
    let other = node.address_of_family(!v6);
    match (v6, other) {
        (false, Some(a6)) => Ok(NextHop::Address(a6)),
        (true, Some(IpAddr::V4(v4))) => {
            if let Some(p) = &opts.ipv6_prefix {
                return Ok(NextHop::Address(IpAddr::V6(embed_ipv4(p, v4))));
            }
            match topo.lookup(IpAddr::V4(v4)) {
                Reach::OnLink { oif } => match topo.neighbours.link_local_of(oif, v4) {
                    Ok(addr) => Ok(NextHop::LinkLocal { addr, oif }),
                    Err(why) => Err(SkipReason::LinkLocalUnknown { ipv4: v4, why }),
                },
                Reach::Local => Err(SkipReason::NextHopLocal {
                    next_hop: IpAddr::V4(v4),
                }),
                Reach::ViaGateway { gateway } => Err(SkipReason::NotOnLink {
                    next_hop: IpAddr::V4(v4),
                    via: Some(gateway),
                }),
                Reach::Unreachable => Err(SkipReason::NotOnLink {
                    next_hop: IpAddr::V4(v4),
                    via: None,
                }),
            }
        }
        _ => Err(SkipReason::NoAddress { v6 }),
    }
}

pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// One of kindnetd's routes as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledRoute {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub priority: u32,
}

impl InstalledRoute {
    fn matches(&self, want: &PeerRoute) -> bool {
        self.gateway == Some(want.gateway)
            && self.oif == Some(want.oif)
            && self.priority == default_priority(&want.dst)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOp {
    /// Create the route, or overwrite the one with the same destination and
    /// metric in place (no moment without a route).
    Replace(PeerRoute),
    /// Remove exactly this route (matched on destination, next hop and metric).
    Delete(InstalledRoute),
}

/// Splits the routes with kindnetd's protocol into those kindnetd owns and
/// the rest. kindnetd owns a protocol-217 route when its destination is a
/// peer CIDR it wants now, lies inside --pod-subnet, or is a peer CIDR it
/// routed before (`known`). The rest (someone else's use of protocol 217,
/// e.g. a default route) is left in place and reported, never deleted.
pub fn split_owned(
    installed: &[InstalledRoute],
    desired: &BTreeMap<IpNet, PeerRoute>,
    pod_subnet: &[IpNet],
    known: &std::collections::HashSet<IpNet>,
) -> (Vec<InstalledRoute>, Vec<InstalledRoute>) {
    installed.iter().cloned().partition(|r| {
        desired.contains_key(&r.dst)
            || known.contains(&r.dst)
            || pod_subnet.iter().any(|p| p.contains(&r.dst))
    })
}

/// The operations that turn `installed` (kindnetd's routes in the kernel)
/// into `desired`. Correct routes are left alone, so a restart changes
/// nothing. Replacements come first, deletions last.
pub fn diff(desired: &BTreeMap<IpNet, PeerRoute>, installed: &[InstalledRoute]) -> Vec<RouteOp> {
    let mut by_dst: HashMap<IpNet, Vec<&InstalledRoute>> = HashMap::with_capacity(installed.len());
    for r in installed {
        by_dst.entry(r.dst).or_default().push(r);
    }
    let mut replaces = Vec::new();
    let mut deletes = Vec::new();
    for (dst, want) in desired {
        let have = by_dst.remove(dst).unwrap_or_default();
        match have.iter().position(|r| r.matches(want)) {
            Some(keep) => {
                for (i, r) in have.iter().enumerate() {
                    if i != keep {
                        deletes.push(RouteOp::Delete((*r).clone()));
                    }
                }
            }
            None => {
                replaces.push(RouteOp::Replace(want.clone()));
                // The replacement overwrites the route with the default
                // metric; others at this destination are extra.
                let prio = default_priority(dst);
                for r in have.iter().filter(|r| r.priority != prio) {
                    deletes.push(RouteOp::Delete((*r).clone()));
                }
            }
        }
    }
    let mut stale: Vec<&InstalledRoute> = by_dst.into_values().flatten().collect();
    stale.sort_by_key(|r| (r.dst, r.priority));
    deletes.extend(stale.into_iter().map(|r| RouteOp::Delete(r.clone())));
    replaces.extend(deletes);
    replaces
}

#[cfg(test)]
mod tests;

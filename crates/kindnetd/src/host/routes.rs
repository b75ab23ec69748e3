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
    /// same MAC (seed 004). Never derived (EUI-64) without that evidence.
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
    /// Prefix for deriving IPv6 next hops from IPv4 node addresses (seed 004).
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
    /// is on (seed 004's last resort).
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
mod tests {
    use super::*;
    use crate::inputs::node::Node;

    fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> Node {
        Node {
            name: name.into(),
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            internal_ips: ips.iter().map(|c| c.parse().unwrap()).collect(),
            external_ips: vec![],
        }
    }

    fn stored(nodes: Vec<Node>) -> Vec<StoredNode> {
        nodes
            .into_iter()
            .enumerate()
            .map(|(i, node)| StoredNode {
                node,
                rev: i as u64 + 1,
            })
            .collect()
    }

    /// A host on 172.18.0.0/16 (dev 2) and fc00::/64 (dev 2), default via 172.18.0.1.
    fn topo() -> Topology {
        Topology::new(
            vec![
                KernelRoute::test("0.0.0.0/0", Some("172.18.0.1"), 2),
                KernelRoute::test("172.18.0.0/16", None, 2),
                KernelRoute {
                    dst: "fc00::/64".parse().unwrap(),
                    gateway: None,
                    oif: Some(2),
                    priority: 256,
                },
                KernelRoute {
                    dst: "192.0.2.0/24".parse().unwrap(),
                    gateway: None,
                    oif: None,
                    priority: 0,
                },
            ],
            vec!["172.18.0.2".parse().unwrap(), "fc00::2".parse().unwrap()],
        )
    }

    fn dst(d: &Desired) -> Vec<(String, String)> {
        d.routes
            .values()
            .map(|r| (r.dst.to_string(), r.gateway.to_string()))
            .collect()
    }

    fn reasons(d: &Desired) -> Vec<(String, &'static str)> {
        d.skipped
            .iter()
            .map(|s| (s.node.clone(), s.reason.label()))
            .collect()
    }

    #[test]
    fn lookup_is_longest_prefix_match() {
        let t = topo();
        assert_eq!(
            t.lookup("172.18.0.9".parse().unwrap()),
            Reach::OnLink { oif: 2 }
        );
        assert_eq!(
            t.lookup("8.8.8.8".parse().unwrap()),
            Reach::ViaGateway {
                gateway: "172.18.0.1".parse().unwrap()
            }
        );
        assert_eq!(t.lookup("172.18.0.2".parse().unwrap()), Reach::Local);
        assert_eq!(t.lookup("192.0.2.1".parse().unwrap()), Reach::Unreachable);
        assert_eq!(t.lookup("fd00::1".parse().unwrap()), Reach::Unreachable);
    }

    #[test]
    fn one_route_per_peer_cidr_dual_stack() {
        let nodes = stored(vec![
            node(
                "me",
                &["10.244.0.0/24", "fd00:10:244::/64"],
                &["172.18.0.2", "fc00::2"],
            ),
            node(
                "b",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["172.18.0.3", "fc00::3"],
            ),
            node(
                "c",
                &["10.244.2.0/24", "fd00:10:244:2::/64"],
                &["172.18.0.4", "fc00::4"],
            ),
        ]);
        let d = desired_routes("me", &nodes, &RouteOptions::default(), &topo());
        assert_eq!(
            dst(&d),
            vec![
                ("10.244.1.0/24".into(), "172.18.0.3".into()),
                ("10.244.2.0/24".into(), "172.18.0.4".into()),
                ("fd00:10:244:1::/64".into(), "fc00::3".into()),
                ("fd00:10:244:2::/64".into(), "fc00::4".into()),
            ]
        );
        assert!(d.skipped.is_empty());
        assert_eq!(d.own_cidrs.len(), 2);
        assert!(d.routes.values().all(|r| r.oif == 2));
    }

    #[test]
    fn ipv6_next_hop_from_prefix_or_skipped() {
        let nodes = stored(vec![node(
            "b",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &["172.18.0.3"],
        )]);
        let d = desired_routes("me", &nodes, &RouteOptions::default(), &topo());
        assert_eq!(dst(&d), vec![("10.244.1.0/24".into(), "172.18.0.3".into())]);
        // Without a prefix: the link-local address, which is not known here.
        assert_eq!(reasons(&d), vec![("b".into(), "ipv6-link-local-unknown")]);
        assert_eq!(d.solicit, vec![(2, "172.18.0.3".parse().unwrap())]);

        let opts = RouteOptions {
            ipv6_prefix: Some("fc00::/96".parse().unwrap()),
            ..Default::default()
        };
        let d = desired_routes("me", &nodes, &opts, &topo());
        let v6 = &d.routes[&"fd00:10:244:1::/64".parse::<IpNet>().unwrap()];
        assert_eq!(v6.gateway, "fc00::ac12:3".parse::<IpAddr>().unwrap());
        assert_eq!(v6.gateway, "fc00::172.18.0.3".parse::<IpAddr>().unwrap());
        assert!(d.skipped.is_empty());
    }

    const MAC_B: [u8; 6] = [0x02, 0x42, 0xac, 0x12, 0, 3];
    const MAC_C: [u8; 6] = [0x02, 0x42, 0xac, 0x12, 0, 4];

    fn nb(oif: u32, ip: &str, mac: &[u8]) -> (u32, IpAddr, Vec<u8>) {
        (oif, ip.parse().unwrap(), mac.to_vec())
    }

    #[test]
    fn ipv6_next_hop_is_the_link_local_address_with_the_ipv4_neighbours_mac() {
        let nodes = stored(vec![
            node(
                "b",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["172.18.0.3"],
            ),
            node(
                "c",
                &["10.244.2.0/24", "fd00:10:244:2::/64"],
                &["172.18.0.4"],
            ),
        ]);
        let t = topo().with_neighbours(Neighbours::new([
            nb(2, "172.18.0.3", &MAC_B),
            nb(2, "172.18.0.4", &MAC_C),
            // Not EUI-64 of the MAC: whatever the peer really uses.
            nb(2, "fe80::1234:5678", &MAC_B),
            nb(2, "fe80::c", &MAC_C),
            // A global address with b's MAC is not a link-local next hop.
            nb(2, "fc00::3", &MAC_B),
            // c's MAC on another link does not count.
            nb(7, "fe80::77", &MAC_C),
        ]));
        let d = desired_routes("me", &nodes, &RouteOptions::default(), &t);
        let b6 = &d.routes[&"fd00:10:244:1::/64".parse::<IpNet>().unwrap()];
        assert_eq!(b6.gateway, "fe80::1234:5678".parse::<IpAddr>().unwrap());
        assert_eq!(b6.oif, 2);
        let c6 = &d.routes[&"fd00:10:244:2::/64".parse::<IpNet>().unwrap()];
        assert_eq!(c6.gateway, "fe80::c".parse::<IpAddr>().unwrap());
        assert!(d.skipped.is_empty(), "{:?}", d.skipped);
        assert!(d.solicit.is_empty());
        // A node address of the family always wins.
        let with_v6 = stored(vec![node(
            "b",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &["172.18.0.3", "fc00::3"],
        )]);
        let d = desired_routes("me", &with_v6, &RouteOptions::default(), &t);
        let b6 = &d.routes[&"fd00:10:244:1::/64".parse::<IpNet>().unwrap()];
        assert_eq!(b6.gateway, "fc00::3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn link_local_is_never_guessed() {
        let nodes = stored(vec![node(
            "b",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &["172.18.0.3"],
        )]);
        let v6dst: IpNet = "fd00:10:244:1::/64".parse().unwrap();
        for (what, entries, want) in [
            ("no ARP entry", vec![], "not in the ARP table"),
            (
                "no IPv6 neighbour with the MAC",
                vec![nb(2, "172.18.0.3", &MAC_B), nb(2, "fe80::c", &MAC_C)],
                "no IPv6 link-local neighbour with its MAC 02:42:ac:12:00:03",
            ),
            (
                "two link-locals with one MAC",
                vec![
                    nb(2, "172.18.0.3", &MAC_B),
                    nb(2, "fe80::1", &MAC_B),
                    nb(2, "fe80::2", &MAC_B),
                ],
                "several IPv6 link-local neighbours",
            ),
        ] {
            let t = topo().with_neighbours(Neighbours::new(entries));
            let d = desired_routes("me", &nodes, &RouteOptions::default(), &t);
            assert!(!d.routes.contains_key(&v6dst), "{what}");
            assert_eq!(d.skipped.len(), 1, "{what}");
            let msg = d.skipped[0].reason.to_string();
            assert!(msg.contains(want), "{what}: {msg}");
            assert_eq!(d.skipped[0].reason.label(), "ipv6-link-local-unknown");
            assert_eq!(
                d.solicit,
                vec![(2, "172.18.0.3".parse().unwrap())],
                "{what}"
            );
        }
        // Not on-link: never solicited, reported as such.
        let far = stored(vec![node("far", &["fd00:10:244:9::/64"], &["10.9.9.9"])]);
        let d = desired_routes("me", &far, &RouteOptions::default(), &topo());
        assert_eq!(reasons(&d), vec![("far".into(), "not-on-link")]);
        assert!(d.solicit.is_empty());
    }

    #[test]
    fn ipv4_pod_cidr_of_an_ipv6_only_node_goes_via_its_ipv6_address() {
        let nodes = stored(vec![
            node("b", &["10.244.1.0/24", "fd00:10:244:1::/64"], &["fc00::3"]),
            // Not on-link over IPv6: skipped.
            node("far", &["10.244.9.0/24"], &["fd99::9"]),
        ]);
        let d = desired_routes("me", &nodes, &RouteOptions::default(), &topo());
        let b4 = &d.routes[&"10.244.1.0/24".parse::<IpNet>().unwrap()];
        assert_eq!(b4.gateway, "fc00::3".parse::<IpAddr>().unwrap());
        assert_eq!(b4.oif, 2);
        let b6 = &d.routes[&"fd00:10:244:1::/64".parse::<IpNet>().unwrap()];
        assert_eq!(b6.gateway, "fc00::3".parse::<IpAddr>().unwrap());
        assert_eq!(reasons(&d), vec![("far".into(), "not-on-link")]);
        // Installed as such, it matches: nothing to do on the next pass.
        let installed: Vec<InstalledRoute> = d
            .routes
            .values()
            .map(|r| InstalledRoute {
                dst: r.dst,
                gateway: Some(r.gateway),
                oif: Some(r.oif),
                priority: default_priority(&r.dst),
            })
            .collect();
        assert!(diff(&d.routes, &installed).is_empty());
    }

    #[test]
    fn external_ip_used_when_no_internal() {
        let mut n = node("b", &["10.244.1.0/24"], &[]);
        n.external_ips = vec!["172.18.0.77".parse().unwrap()];
        let d = desired_routes("me", &stored(vec![n]), &RouteOptions::default(), &topo());
        assert_eq!(
            dst(&d),
            vec![("10.244.1.0/24".into(), "172.18.0.77".into())]
        );
    }

    #[test]
    fn peers_not_on_link_or_local_are_skipped() {
        let nodes = stored(vec![
            node("far", &["10.244.1.0/24"], &["10.9.9.9"]),
            node("blackholed", &["10.244.2.0/24"], &["192.0.2.5"]),
            node("clone", &["10.244.3.0/24"], &["172.18.0.2"]),
            node("flagged", &["10.244.4.0/24"], &["172.18.0.50"]),
            node("self-contained", &["172.18.0.0/24"], &["172.18.0.60"]),
            node("noaddr", &["10.244.6.0/24"], &[]),
            node("nocidr", &[], &["172.18.0.9"]),
        ]);
        let opts = RouteOptions {
            own_ips: vec!["172.18.0.50".parse().unwrap()],
            ..Default::default()
        };
        let d = desired_routes("me", &nodes, &opts, &topo());
        assert!(d.routes.is_empty(), "{:?}", d.routes);
        assert_eq!(
            reasons(&d),
            vec![
                ("far".into(), "not-on-link"),
                ("blackholed".into(), "not-on-link"),
                ("clone".into(), "next-hop-is-local"),
                ("flagged".into(), "next-hop-is-local"),
                ("self-contained".into(), "contains-node-address"),
                ("noaddr".into(), "no-address-of-family"),
            ]
        );
        assert!(d.skipped[0].reason.to_string().contains("via 172.18.0.1"));
    }

    #[test]
    fn overlaps_first_holder_wins_and_own_cidr_is_never_routed() {
        let nodes = stored(vec![
            node("old", &["10.244.1.0/24"], &["172.18.0.3"]),
            node("me", &["10.244.0.0/24"], &["172.18.0.2"]),
            node("dup", &["10.244.1.0/24"], &["172.18.0.4"]),
            node("wide", &["10.244.0.0/16"], &["172.18.0.5"]),
            node("mine", &["10.244.0.0/24"], &["172.18.0.6"]),
            node("inside", &["10.244.1.128/25"], &["172.18.0.7"]),
            node("ok", &["10.245.0.0/24"], &["172.18.0.8"]),
        ]);
        let d = desired_routes("me", &nodes, &RouteOptions::default(), &topo());
        assert_eq!(
            dst(&d),
            vec![
                ("10.244.1.0/24".into(), "172.18.0.3".into()),
                ("10.245.0.0/24".into(), "172.18.0.8".into()),
            ]
        );
        assert_eq!(
            reasons(&d),
            vec![
                ("dup".into(), "overlaps-peer-pod-cidr"),
                ("wide".into(), "overlaps-own-pod-cidr"),
                ("mine".into(), "overlaps-own-pod-cidr"),
                ("inside".into(), "overlaps-peer-pod-cidr"),
            ]
        );
    }

    /// Node objects are untrusted: whatever a Node claims, a pod CIDR that
    /// would capture egress or node traffic is refused, with a reason.
    #[test]
    fn hostile_pod_cidrs_are_refused() {
        let cluster: Vec<IpNet> = vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ];
        // (claimed CIDR, --pod-subnet set?, expected reason)
        let cases: &[(&str, bool, &str)] = &[
            ("192.0.0.0/2", true, "outside-pod-subnet"),
            ("2000::/3", true, "outside-pod-subnet"),
            ("0.0.0.0/1", true, "outside-pod-subnet"),
            ("::/1", true, "outside-pod-subnet"),
            ("172.18.0.0/17", true, "outside-pod-subnet"),
            ("10.0.0.0/8", true, "outside-pod-subnet"),
            ("10.244.200.0/24", true, "contains-node-address"),
            // Without --pod-subnet the node network still protects itself.
            ("128.0.0.0/1", false, "contains-node-address"),
            ("0.0.0.0/1", false, "contains-node-address"),
            ("172.18.0.0/24", false, "contains-node-address"),
            ("10.9.0.0/16", false, "contains-node-address"),
            ("10.244.200.0/24", false, "contains-node-address"),
            ("fc00::/7", false, "contains-node-address"),
            ("172.18.0.0/31", false, "contains-default-gateway"),
            ("172.18.128.0/17", false, "overlaps-node-network"),
            ("172.18.200.0/24", false, "overlaps-node-network"),
            ("fc00:0:0:0:8000::/65", false, "overlaps-node-network"),
        ];
        for (cidr, with_subnet, want) in cases {
            let nodes = stored(vec![
                node("me", &["10.244.0.0/24"], &["172.18.0.2"]),
                node("far", &[], &["10.9.9.9"]),
                node("odd", &[], &["10.244.200.5"]),
                node("evil", &[cidr], &["172.18.0.66", "fc00::66"]),
            ]);
            let opts = RouteOptions {
                pod_subnet: if *with_subnet {
                    cluster.clone()
                } else {
                    vec![]
                },
                ..Default::default()
            };
            let d = desired_routes("me", &nodes, &opts, &topo());
            assert!(d.routes.is_empty(), "{cidr}: routed {:?}", d.routes);
            assert_eq!(
                reasons(&d),
                vec![("evil".to_string(), *want)],
                "{cidr} (pod subnet {with_subnet}): {:?}",
                d.skipped
            );
            assert!(!d.skipped[0].reason.to_string().is_empty());
        }
    }

    #[test]
    fn refused_cidrs_hold_no_claim() {
        // "evil" came first and claims half of IPv4 and IPv6; the real peers
        // after it are routed all the same.
        let nodes = stored(vec![
            node("evil", &["0.0.0.0/1", "::/1"], &["172.18.0.66"]),
            node("wide", &["10.0.0.0/8"], &["172.18.0.67"]),
            node(
                "b",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["172.18.0.3", "fc00::3"],
            ),
        ]);
        let opts = RouteOptions {
            pod_subnet: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:10:244::/56".parse().unwrap(),
            ],
            ..Default::default()
        };
        let d = desired_routes("me", &nodes, &opts, &topo());
        assert_eq!(
            dst(&d),
            vec![
                ("10.244.1.0/24".into(), "172.18.0.3".into()),
                ("fd00:10:244:1::/64".into(), "fc00::3".into()),
            ]
        );
        assert_eq!(
            reasons(&d),
            vec![
                ("evil".into(), "outside-pod-subnet"),
                ("evil".into(), "outside-pod-subnet"),
                ("wide".into(), "outside-pod-subnet"),
            ]
        );
    }

    #[test]
    fn pod_cidr_check_is_pure_over_the_node_network() {
        let net = NodeNetwork::new(
            &topo(),
            &["192.168.5.5".parse().unwrap()],
            std::iter::empty(),
        );
        for (cidr, want) in [
            ("10.244.1.0/24", None),
            ("192.168.5.0/24", Some("contains-node-address")),
            ("192.168.4.0/24", None),
            ("172.18.0.0/16", Some("contains-default-gateway")),
            ("172.18.77.0/24", Some("overlaps-node-network")),
            ("fc00::/64", Some("contains-node-address")),
            ("192.0.2.0/25", None), // a blackhole route is not on-link
        ] {
            let got = refuse_pod_cidr(&cidr.parse().unwrap(), &[], &net);
            assert_eq!(got.as_ref().map(SkipReason::label), want, "{cidr}: {got:?}");
        }
    }

    #[test]
    fn a_newcomer_cannot_steal_a_held_cidr() {
        // "aaa" sorts first by name but arrived later (higher revision).
        let mut nodes = stored(vec![
            node("zzz", &["10.244.1.0/24"], &["172.18.0.3"]),
            node("aaa", &["10.244.1.0/24"], &["172.18.0.4"]),
        ]);
        nodes[1].rev = 10;
        let d = desired_routes("me", &nodes, &RouteOptions::default(), &topo());
        assert_eq!(dst(&d), vec![("10.244.1.0/24".into(), "172.18.0.3".into())]);
    }

    #[test]
    fn unknown_own_node_still_routes_peers() {
        let nodes = stored(vec![node("b", &["10.244.1.0/24"], &["172.18.0.3"])]);
        let d = desired_routes("ghost", &nodes, &RouteOptions::default(), &topo());
        assert_eq!(d.routes.len(), 1);
        assert!(d.own_cidrs.is_empty());
    }

    fn want(dst: &str, gw: &str, oif: u32) -> PeerRoute {
        PeerRoute {
            dst: dst.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            oif,
            node: "n".into(),
        }
    }
    fn have(dst: &str, gw: &str, oif: u32, priority: u32) -> InstalledRoute {
        InstalledRoute {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif: Some(oif),
            priority,
        }
    }

    #[test]
    fn diff_leaves_correct_routes_alone() {
        let mut d = BTreeMap::new();
        let w = want("10.244.1.0/24", "172.18.0.3", 2);
        d.insert(w.dst, w);
        let w6 = want("fd00::/64", "fc00::3", 2);
        d.insert(w6.dst, w6);
        let installed = vec![
            have("10.244.1.0/24", "172.18.0.3", 2, 0),
            have("fd00::/64", "fc00::3", 2, 1024),
        ];
        assert!(diff(&d, &installed).is_empty());
    }

    #[test]
    fn diff_adds_replaces_and_deletes() {
        let mut d = BTreeMap::new();
        for w in [
            want("10.244.1.0/24", "172.18.0.3", 2), // changed next hop
            want("10.244.2.0/24", "172.18.0.4", 2), // missing
            want("10.244.3.0/24", "172.18.0.5", 2), // present twice
            want("10.244.4.0/24", "172.18.0.6", 3), // moved link, odd metric too
        ] {
            d.insert(w.dst, w);
        }
        let installed = vec![
            have("10.244.1.0/24", "172.18.0.9", 2, 0),
            have("10.244.3.0/24", "172.18.0.5", 2, 0),
            have("10.244.3.0/24", "172.18.0.5", 2, 50),
            have("10.244.4.0/24", "172.18.0.6", 2, 0),
            have("10.244.4.0/24", "172.18.0.6", 2, 7),
            have("10.244.9.0/24", "172.18.0.99", 2, 0), // stale
        ];
        let ops = diff(&d, &installed);
        assert_eq!(
            ops,
            vec![
                RouteOp::Replace(want("10.244.1.0/24", "172.18.0.3", 2)),
                RouteOp::Replace(want("10.244.2.0/24", "172.18.0.4", 2)),
                RouteOp::Replace(want("10.244.4.0/24", "172.18.0.6", 3)),
                RouteOp::Delete(have("10.244.3.0/24", "172.18.0.5", 2, 50)),
                RouteOp::Delete(have("10.244.4.0/24", "172.18.0.6", 2, 7)),
                RouteOp::Delete(have("10.244.9.0/24", "172.18.0.99", 2, 0)),
            ]
        );
    }

    #[test]
    fn diff_of_nothing_removes_everything_of_ours() {
        let installed = vec![have("10.244.1.0/24", "172.18.0.3", 2, 0)];
        assert_eq!(
            diff(&BTreeMap::new(), &installed),
            vec![RouteOp::Delete(installed[0].clone())]
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the nodes, desired routes never overlap each other
            /// or our own CIDR, and applying the diff to any installed set
            /// yields exactly the desired set.
            #[test]
            fn desired_routes_are_disjoint_and_diff_converges(
                specs in proptest::collection::vec((0u8..4, 0u8..40, 20u8..=26, 0u8..3, 1u8..250), 0..40),
                installed_seed in proptest::collection::vec((0u8..40, 1u8..250, 0u32..3), 0..20),
            ) {
                let mut nodes = Vec::new();
                for (i, (second, third, len, rev, ip)) in specs.iter().enumerate() {
                    let net: IpNet = format!("10.{}.{}.0/{}", 244 + second, third, len).parse().unwrap();
                    nodes.push(StoredNode {
                        node: Node {
                            name: format!("n{i}"),
                            pod_cidrs: vec![net.trunc()],
                            internal_ips: vec![format!("172.18.1.{ip}").parse().unwrap()],
                            external_ips: vec![],
                        },
                        rev: *rev as u64,
                    });
                }
                let d = desired_routes("n0", &nodes, &RouteOptions::default(), &topo());
                let v: Vec<&IpNet> = d.routes.keys().collect();
                for (i, a) in v.iter().enumerate() {
                    for b in &v[i + 1..] {
                        prop_assert!(!overlaps(a, b), "{a} overlaps {b}");
                    }
                    for o in &d.own_cidrs {
                        prop_assert!(!overlaps(a, o));
                    }
                }
                // Every peer CIDR is either routed or skipped, never both.
                let total: usize = nodes.iter().filter(|s| s.node.name != "n0").map(|s| s.node.pod_cidrs.len()).sum();
                prop_assert_eq!(d.routes.len() + d.skipped.len(), total);

                let mut kernel: Vec<InstalledRoute> = installed_seed.iter().map(|(t, ip, p)| {
                    have(&format!("10.244.{t}.0/24"), &format!("172.18.1.{ip}"), 2, *p)
                }).collect();
                kernel.dedup_by(|a, b| a.dst == b.dst && a.priority == b.priority);
                for op in diff(&d.routes, &kernel) {
                    match op {
                        RouteOp::Replace(w) => {
                            let prio = default_priority(&w.dst);
                            kernel.retain(|r| !(r.dst == w.dst && r.priority == prio));
                            kernel.push(InstalledRoute { dst: w.dst, gateway: Some(w.gateway), oif: Some(w.oif), priority: prio });
                        }
                        RouteOp::Delete(r) => kernel.retain(|k| k != &r),
                    }
                }
                prop_assert!(diff(&d.routes, &kernel).is_empty());
                prop_assert_eq!(kernel.len(), d.routes.len());
            }
        }
    }
}

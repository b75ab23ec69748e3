//! `kindnet-lab trace FROM TO [PORT/PROTO]`: seed 003's "day in the life of
//! a packet", read from the live lab.
//!
//! The walk is a pure function of a [`View`]: the kernel's route lookups
//! per namespace (`ip route get` semantics), the nftables tables kindnet
//! owns, and the lab's topology. When the walk needs an answer the view
//! lacks it says which ([`Need`]); the gatherer (see [`crate::trace_live`])
//! asks the kernel and walks again. Unit tests answer from a fake kernel.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kindnet_nft::{L4Proto, Listing, Value};
use serde::Serialize;

use crate::plan::{self, Family};

pub const MASQ_TABLE: &str = "kindnet-masq";
pub const PORTMAP_TABLE: &str = "kindnet-portmap";
/// Hook: NetworkPolicy will live in this table; trace reports whether it
/// exists and leaves its verdict to [`netpol_verdict`].
pub const NETPOL_TABLE: &str = "kindnet-netpol";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

/// What to send: a port and protocol, or ICMP echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub proto: Proto,
    pub port: Option<u16>,
}

impl Target {
    /// `8080`, `8080/tcp`, `53/udp`; `None` = ICMP.
    pub fn parse(s: Option<&str>) -> Result<Target, String> {
        let Some(s) = s else {
            return Ok(Target {
                proto: Proto::Icmp,
                port: None,
            });
        };
        let (port, proto) = match s.split_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some((_, other)) => return Err(format!("{s:?}: protocol {other:?} is not tcp or udp")),
            None => (s, Proto::Tcp),
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: expected PORT or PORT/tcp|udp (port 1-65535)"))?;
        Ok(Target {
            proto,
            port: Some(port),
        })
    }

    fn l4(self) -> Option<L4Proto> {
        match self.proto {
            Proto::Tcp => Some(L4Proto::Tcp),
            Proto::Udp => Some(L4Proto::Udp),
            Proto::Icmp => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum HostKind {
    Pod { node: String },
    Node,
    External,
}

/// A place a packet can be: a namespace of the lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Host {
    pub name: String,
    pub netns: String,
    pub kind: HostKind,
    /// Its lab addresses of the traced family (the external host: its
    /// "internet" address first, then its gateway address on the segment).
    pub addrs: Vec<IpAddr>,
    /// A node's pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
}

/// One `ip route get` in one namespace. `iif` by name: the gatherer finds
/// its index in that namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Query {
    pub netns: String,
    pub dst: IpAddr,
    pub src: Option<IpAddr>,
    pub iif: Option<String>,
    pub fib_match: bool,
}

impl Query {
    /// The same question as `ip` takes it.
    pub fn command(&self) -> String {
        let mut s = format!("ip route get {}", self.dst);
        if let (Some(src), Some(_)) = (self.src, &self.iif) {
            s.push_str(&format!(" from {src}"));
        }
        if let Some(i) = &self.iif {
            s.push_str(&format!(" iif {i}"));
        }
        if self.fib_match {
            s.push_str(" fibmatch");
        }
        s
    }
}

/// The kernel's answer, devices by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// unicast, local, unreachable, ...
    pub kind: String,
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub dev: Option<String>,
    /// veth, bridge, ... (the link's kind)
    pub dev_kind: Option<String>,
    pub src: Option<IpAddr>,
    pub table: u32,
    pub protocol: u8,
}

impl Answer {
    /// `ip route get` style.
    pub fn text(&self) -> String {
        let mut s = String::new();
        if self.kind != "unicast" {
            s.push_str(&self.kind);
            s.push(' ');
        }
        if self.dst.prefix_len() == 0 {
            s.push_str("default");
        } else if self.dst.prefix_len() == self.dst.max_prefix_len() {
            s.push_str(&self.dst.addr().to_string());
        } else {
            s.push_str(&self.dst.to_string());
        }
        if let Some(g) = self.gateway {
            s.push_str(&format!(" via {g}"));
        }
        if let Some(d) = &self.dev {
            s.push_str(&format!(" dev {d}"));
        }
        if let Some(src) = self.src {
            s.push_str(&format!(" src {src}"));
        }
        s
    }
}

/// kindnet's nftables tables in one namespace (`None`: the table is absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NftTables {
    pub masq: Option<Listing>,
    pub portmap: Option<Listing>,
    pub netpol: bool,
}

/// Everything the walk reads.
#[derive(Clone, Debug)]
pub struct View {
    pub family: Family,
    pub hosts: Vec<Host>,
    pub segment_netns: String,
    /// Bridge mode: pods hang off a bridge instead of one veth each.
    pub bridge: bool,
    pub lookups: HashMap<Query, Result<Answer, String>>,
    pub nft: HashMap<String, NftTables>,
    /// The lab's NetworkPolicy objects as kindnetd sees them, for the
    /// verdict at the forward hook (None: not known).
    pub policy: Option<kindnet_netpol::Cluster>,
}

/// What the walk needs that the view does not have yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    Route(Query),
    Nft(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub n: usize,
    /// The lab host (pod, node, segment, external).
    pub host: String,
    pub netns: String,
    /// The packet as it arrives here: `src -> dst proto/port`.
    pub packet: String,
    /// The lookup asked, as an `ip` command.
    pub lookup: Option<String>,
    /// The route the kernel picked.
    pub route: Option<String>,
    /// The routing table entry behind it, with its protocol.
    pub matched: Option<String>,
    /// The device it leaves by, and what that device is.
    pub leaves_by: Option<String>,
    /// nftables decisions (kindnet's tables) on the way through.
    pub nft: Vec<String>,
    /// One line of explanation.
    pub explain: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "result")]
pub enum Verdict {
    /// Arrived at `host`: the socket there sees `src`.
    Delivered {
        host: String,
        netns: String,
        dst: IpAddr,
        port: Option<u16>,
        src: IpAddr,
    },
    Dropped {
        host: String,
        why: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Walk {
    pub family: &'static str,
    pub from: String,
    pub to: String,
    pub target: Target,
    pub hops: Vec<Hop>,
    pub verdict: Verdict,
}

/// The packet as it travels: addresses and port change with NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pkt {
    src: IpAddr,
    dst: IpAddr,
    port: Option<u16>,
}

impl Pkt {
    fn text(&self, t: Target) -> String {
        match self.port {
            Some(p) => format!("{} -> {} {}/{p}", self.src, self.dst, t.proto.as_str()),
            None => format!("{} -> {} {}", self.src, self.dst, t.proto.as_str()),
        }
    }
}

fn route_kernel(v: &View, q: Query) -> Result<Result<Answer, String>, Need> {
    v.lookups.get(&q).cloned().ok_or(Need::Route(q))
}

fn tables<'a>(v: &'a View, ns: &str) -> Result<&'a NftTables, Need> {
    v.nft.get(ns).ok_or_else(|| Need::Nft(ns.to_string()))
}

fn contains(v: &Value, ip: IpAddr) -> bool {
    match v {
        Value::Addr(a) => *a == ip,
        Value::Prefix(n) => n.contains(&ip),
        Value::AddrRange(lo, hi) => lo.is_ipv6() == ip.is_ipv6() && *lo <= ip && ip <= *hi,
        _ => false,
    }
}

fn suffix(f: Family) -> &'static str {
    if f == Family::V4 { "4" } else { "6" }
}

/// Port-map DNAT of table `inet kindnet-portmap`, as its hostports chain
/// decides: the maps keyed by host IP first, then the ones without.
fn portmap_dnat(l: &Listing, f: Family, t: Target, pkt: &Pkt) -> Option<(IpAddr, u16, String)> {
    let proto = t.l4()?;
    let port = pkt.port?;
    let fam = suffix(f);
    let with_ip = Value::Concat(vec![
        Value::Addr(pkt.dst),
        Value::Proto(proto),
        Value::Port(port),
    ]);
    let plain = Value::Concat(vec![Value::Proto(proto), Value::Port(port)]);
    for (base, key) in [
        (format!("hostports{fam}-ip"), with_ip),
        (format!("hostports{fam}"), plain),
    ] {
        let addr_map = format!("{base}-addr");
        let port_map = format!("{base}-port");
        let addr = l
            .in_set(&addr_map)
            .find(|e| e.key == key)
            .and_then(|e| match e.data {
                Some(Value::Addr(a)) => Some(a),
                _ => None,
            });
        let to_port = l
            .in_set(&port_map)
            .find(|e| e.key == key)
            .and_then(|e| match e.data {
                Some(Value::Port(p)) => Some(p),
                _ => None,
            });
        if let (Some(a), Some(p)) = (addr, to_port) {
            return Some((a, p, addr_map));
        }
    }
    None
}

/// The hairpin rule of `inet kindnet-portmap`: a DNAT-ed packet whose
/// (source, destination) pair is in `hairpin{4,6}` is masqueraded.
fn hairpin(l: &Listing, f: Family, pkt: &Pkt) -> bool {
    l.in_set(&format!("hairpin{}", suffix(f)))
        .any(|e| match &e.key {
            Value::Concat(parts) => match parts.as_slice() {
                [s, d] => contains(s, pkt.src) && contains(d, pkt.dst),
                _ => false,
            },
            _ => false,
        })
}

/// The masquerade decision of `inet kindnet-masq` for a packet leaving
/// this node (not to a local address): `Ok(reason)` = masqueraded,
/// `Err(reason)` = left alone.
fn masq_decision(l: Option<&Listing>, f: Family, pkt: &Pkt) -> Result<String, String> {
    let Some(l) = l else {
        return Err(format!(
            "no table inet {MASQ_TABLE}: nothing is masqueraded (kindnetd not running, or --masquerading=false)"
        ));
    };
    let fam = suffix(f);
    let sources = format!("pod-sources-v{fam}");
    let exempt = format!("no-masquerade-v{fam}");
    if !l.in_set(&sources).any(|e| contains(&e.key, pkt.src)) {
        return Err(format!(
            "{MASQ_TABLE}: source {} is not in @{sources}: not pod traffic, no masquerade",
            pkt.src
        ));
    }
    if let Some(e) = l.in_set(&exempt).find(|e| contains(&e.key, pkt.dst)) {
        return Err(format!(
            "{MASQ_TABLE}: destination {} is in @{exempt} ({}): inside the cluster, the pod address is kept",
            pkt.dst, e.key
        ));
    }
    Ok(format!(
        "{MASQ_TABLE}: source in @{sources}, destination {} not in @{exempt}: masquerade",
        pkt.dst
    ))
}

/// NetworkPolicy at a node's forward hook: this node's share of the
/// semantics the compiler is tested against ([`kindnet_netpol::evaluate_on`]:
/// egress of its own pods, ingress of its own pods) for the packet as it is
/// forwarded (before the masquerade), with the policies that decided.
/// Returns the line and, when denied, why the packet is dropped here.
fn netpol_verdict(
    v: &View,
    node: &Host,
    t: &NftTables,
    pkt: &Pkt,
    target: Target,
) -> (String, Option<String>) {
    if !t.netpol {
        return (
            format!("NetworkPolicy: no table inet {NETPOL_TABLE}: no policy enforced here"),
            None,
        );
    }
    let Some(c) = &v.policy else {
        return (
            format!(
                "NetworkPolicy: table inet {NETPOL_TABLE} present; the lab's policies are not known"
            ),
            None,
        );
    };
    use kindnet_netpol::{Endpoint, Proto as NP};
    let proto = match target.proto {
        Proto::Tcp => NP::Tcp,
        Proto::Udp => NP::Udp,
        Proto::Icmp => NP::Other,
    };
    let here = kindnet_netpol::NodeContext {
        node_name: node.name.clone(),
        node_ips: node.addrs.clone(),
        log_denied: false,
        pod_cidrs: Vec::new(),
    };
    let verdict = kindnet_netpol::evaluate_on(
        c,
        &here,
        &Endpoint::Addr(pkt.src),
        &Endpoint::Addr(pkt.dst),
        target.port.unwrap_or(0),
        proto,
    );
    if verdict.allowed {
        (format!("NetworkPolicy: allowed ({})", verdict.reason), None)
    } else {
        (
            format!(
                "NetworkPolicy: denied ({}): dropped at the forward hook",
                verdict.reason
            ),
            Some(format!("NetworkPolicy: {}", verdict.reason)),
        )
    }
}

fn host_with_addr(v: &View, ip: IpAddr) -> Option<&Host> {
    v.hosts.iter().find(|h| h.addrs.contains(&ip))
}

fn first_addr(h: &Host) -> Option<IpAddr> {
    h.addrs.first().copied()
}

fn cidr_owner(v: &View, ip: IpAddr) -> Option<(&Host, IpNet)> {
    v.hosts.iter().find_map(|h| {
        h.pod_cidrs
            .iter()
            .find(|c| c.contains(&ip))
            .map(|c| (h, *c))
    })
}

fn matched_text(m: &Answer) -> String {
    let what = match m.protocol {
        plan::KINDNETD_ROUTE_PROTOCOL => " (kindnetd's peer route)",
        2 => " (kernel: connected subnet or own address)",
        3 => " (boot: added by hand or by the CNI plugin)",
        9 => " (router advertisement)",
        _ => "",
    };
    let mut s = m.text();
    if m.table != 254 {
        s.push_str(&format!(" table {}", m.table));
    }
    format!("{s} proto {}{what}", m.protocol)
}

fn dev_text(v: &View, a: &Answer, at: &Host, next: Option<&Host>) -> Option<String> {
    let dev = a.dev.as_deref()?;
    let kind = a.dev_kind.as_deref().unwrap_or("device");
    let to = match (&at.kind, next) {
        (_, _) if dev == "lo" => "loopback".to_string(),
        (HostKind::Pod { node }, _) => format!("{kind}: to {node}"),
        (HostKind::Node, Some(n)) if matches!(n.kind, HostKind::Pod { .. }) => {
            if v.bridge {
                format!("{kind}: the node's pod bridge, to {}", n.name)
            } else {
                format!("{kind}: host end of {}'s veth", n.name)
            }
        }
        (_, Some(_)) => format!("{kind}: uplink to the segment"),
        (_, None) => kind.to_string(),
    };
    Some(format!("{dev} ({to})"))
}

/// Walks a packet from `from` to `to`. `Err(need)` = ask the kernel (or
/// nft) first; the walk is then repeated with the answer in the view.
pub fn walk(v: &View, from: &Host, to: &Host, t: Target) -> Result<Walk, Need> {
    let dst = first_addr(to).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let src = first_addr(from).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let mut pkt = Pkt {
        src,
        dst,
        port: t.port,
    };
    let mut hops: Vec<Hop> = Vec::new();
    let mut at = from.clone();
    let mut iif: Option<String> = None;
    let mut dnat_here;
    let done = |hops: Vec<Hop>, verdict: Verdict| Walk {
        family: v.family.label(),
        from: from.name.clone(),
        to: to.name.clone(),
        target: t,
        hops,
        verdict,
    };
    for _ in 0..16 {
        let mut hop = Hop {
            n: hops.len() + 1,
            host: at.name.clone(),
            netns: at.netns.clone(),
            packet: pkt.text(t),
            ..Default::default()
        };
        dnat_here = false;
        let is_node = at.kind == HostKind::Node;
        // nat prerouting / output: host ports of the node's own addresses.
        if is_node && at.addrs.contains(&pkt.dst) && pkt.port.is_some() {
            let nt = tables(v, &at.netns)?;
            match nt
                .portmap
                .as_ref()
                .and_then(|l| portmap_dnat(l, v.family, t, &pkt))
            {
                Some((a, p, map)) => {
                    hop.nft.push(format!(
                        "{PORTMAP_TABLE}: {}/{} is a hostPort (@{map}): DNAT to {}",
                        t.proto.as_str(),
                        pkt.port.unwrap_or_default(),
                        std::net::SocketAddr::new(a, p)
                    ));
                    pkt.dst = a;
                    pkt.port = Some(p);
                    dnat_here = true;
                }
                None => hop.nft.push(format!(
                    "{PORTMAP_TABLE}: no hostPort mapping for {}/{}: the node itself must answer",
                    t.proto.as_str(),
                    pkt.port.unwrap_or_default()
                )),
            }
        }
        let q = Query {
            netns: at.netns.clone(),
            dst: pkt.dst,
            src: iif.as_ref().map(|_| pkt.src),
            iif: iif.clone(),
            fib_match: false,
        };
        hop.lookup = Some(q.command());
        let answer = route_kernel(v, q.clone())?;
        let a = match answer {
            Ok(a) => a,
            Err(e) => {
                let why = format!("the kernel has no way to forward it: {e}");
                hop.explain = if iif.is_some() && e.contains("cross-device") {
                    "dropped by reverse-path filtering (rp_filter): the way back to the source is not through the link it came in on".into()
                } else {
                    why.clone()
                };
                hops.push(hop);
                return Ok(done(
                    hops,
                    Verdict::Dropped {
                        host: at.name.clone(),
                        why,
                    },
                ));
            }
        };
        if let Ok(m) = route_kernel(
            v,
            Query {
                fib_match: true,
                ..q.clone()
            },
        )? {
            hop.matched = Some(matched_text(&m));
        }
        hop.route = Some(a.text());
        if hops.is_empty() {
            // The sender's own source address choice.
            if let Some(s) = a.src {
                pkt.src = s;
                hop.packet = pkt.text(t);
            }
        }
        if a.kind == "local" {
            hop.explain = match &at.kind {
                HostKind::Pod { .. } => format!(
                    "{} is this pod's own address: the pod's network stack takes it (delivered)",
                    pkt.dst
                ),
                _ => format!(
                    "{} is an address of {}: delivered to its socket",
                    pkt.dst, at.name
                ),
            };
            if dnat_here {
                hop.explain = format!("{} (after DNAT)", hop.explain);
            }
            hops.push(hop);
            return Ok(done(
                hops,
                Verdict::Delivered {
                    host: at.name.clone(),
                    netns: at.netns.clone(),
                    dst: pkt.dst,
                    port: pkt.port,
                    src: pkt.src,
                },
            ));
        }
        if a.kind != "unicast" {
            let why = format!("route type {}: the kernel drops it", a.kind);
            hop.explain = why.clone();
            hops.push(hop);
            return Ok(done(
                hops,
                Verdict::Dropped {
                    host: at.name.clone(),
                    why,
                },
            ));
        }
        let nh = a.gateway.unwrap_or(pkt.dst);
        let dev = a.dev.clone().unwrap_or_default();
        // Where the device leads, by the lab's wiring.
        let (next, next_iif, via_segment): (Option<Host>, Option<String>, bool) = match &at.kind {
            HostKind::Pod { node } => {
                let same_bridge = a.gateway.is_none()
                    && host_with_addr(v, pkt.dst)
                        .is_some_and(|h| h.kind == HostKind::Pod { node: node.clone() });
                if same_bridge {
                    (
                        host_with_addr(v, pkt.dst).cloned(),
                        Some(dev.clone()),
                        false,
                    )
                } else {
                    let n = v.hosts.iter().find(|h| &h.name == node).cloned();
                    // The node end: the device the node routes this pod's address to.
                    let iif = match &n {
                        Some(n) => {
                            let back = route_kernel(
                                v,
                                Query {
                                    netns: n.netns.clone(),
                                    dst: pkt.src,
                                    src: None,
                                    iif: None,
                                    fib_match: false,
                                },
                            )?;
                            back.ok().and_then(|b| b.dev)
                        }
                        None => None,
                    };
                    (n, iif, false)
                }
            }
            HostKind::Node if dev != "eth0" => (
                v.hosts
                    .iter()
                    .find(|h| {
                        h.addrs.contains(&pkt.dst)
                            && h.kind
                                == HostKind::Pod {
                                    node: at.name.clone(),
                                }
                    })
                    .cloned(),
                Some("eth0".to_string()),
                false,
            ),
            HostKind::Node | HostKind::External => (
                host_with_addr(v, nh).filter(|h| h.name != at.name).cloned(),
                Some("eth0".to_string()),
                true,
            ),
        };
        hop.leaves_by = dev_text(v, &a, &at, next.as_ref());
        // Where NetworkPolicy drops the packet: (node, why).
        let mut policy_drop: Option<(String, String)> = None;
        // Pod to pod over the node's bridge: br_netfilter hands the frame to
        // the node's forward hook, so NetworkPolicy decides here too.
        if let HostKind::Pod { node } = &at.kind
            && v.bridge
            && next
                .as_ref()
                .is_some_and(|n| matches!(n.kind, HostKind::Pod { .. }))
            && let Some(n) = v.hosts.iter().find(|h| &h.name == node)
        {
            let nt = tables(v, &n.netns)?;
            let (line, denied) = netpol_verdict(v, n, nt, &pkt, t);
            hop.nft
                .push(format!("{}'s bridge, through br_netfilter: {line}", n.name));
            policy_drop = denied.map(|why| (n.name.clone(), why));
        }
        // The forward hook (NetworkPolicy) sees the packet before nat
        // postrouting changes its source.
        let forwarded = pkt;
        // nat postrouting on a node: kindnet-masq, then the port-map hairpin.
        if is_node {
            let nt = tables(v, &at.netns)?;
            match masq_decision(nt.masq.as_ref(), v.family, &pkt) {
                Ok(why) => {
                    let out = route_kernel(
                        v,
                        Query {
                            netns: at.netns.clone(),
                            dst: pkt.dst,
                            src: None,
                            iif: None,
                            fib_match: false,
                        },
                    )?;
                    if let Some(s) = out.ok().and_then(|o| o.src) {
                        hop.nft.push(format!("{why} to {s} (the node's address)"));
                        pkt.src = s;
                    } else {
                        hop.nft.push(why);
                    }
                }
                Err(why) => hop.nft.push(why),
            }
            if dnat_here
                && let Some(l) = nt.portmap.as_ref()
                && hairpin(l, v.family, &pkt)
            {
                hop.nft
                    .push(format!("{PORTMAP_TABLE}: hairpin (the pod reached itself through a host port): masquerade"));
            }
            // Only forwarded packets pass `forward`; the node's own
            // traffic is always allowed anyway.
            let (line, denied) = netpol_verdict(v, &at, nt, &forwarded, t);
            hop.nft.push(line);
            if !at.addrs.contains(&forwarded.src) {
                policy_drop = denied.map(|why| (at.name.clone(), why));
            }
        }
        hop.explain = explain(v, &at, &a, &pkt, next.as_ref());
        hops.push(hop);
        if let Some((host, why)) = policy_drop {
            return Ok(done(hops, Verdict::Dropped { host, why }));
        }
        let Some(next) = next else {
            let why = format!("next hop {nh} via {dev} is no host of this lab");
            return Ok(done(
                hops,
                Verdict::Dropped {
                    host: at.name.clone(),
                    why,
                },
            ));
        };
        if via_segment {
            hops.push(Hop {
                n: hops.len() + 1,
                host: "segment".into(),
                netns: v.segment_netns.clone(),
                packet: pkt.text(t),
                explain: format!(
                    "L2: the segment's bridge switches the frame to {} ({nh}) by its MAC address; nobody routes here",
                    next.name
                ),
                ..Default::default()
            });
        }
        at = next;
        iif = next_iif;
    }
    Ok(done(
        hops,
        Verdict::Dropped {
            host: at.name.clone(),
            why: "more than 16 hops: a routing loop".into(),
        },
    ))
}

fn explain(v: &View, at: &Host, a: &Answer, pkt: &Pkt, next: Option<&Host>) -> String {
    let nh = a.gateway.unwrap_or(pkt.dst);
    match &at.kind {
        HostKind::Pod { node } => match a.gateway {
            Some(gw) if v.bridge => {
                format!(
                    "the pod sends everything off its subnet to its gateway {gw}, on {node}'s bridge"
                )
            }
            Some(gw) => format!(
                "the pod sends everything, even its own subnet, to its gateway {gw}: the host end of its veth on {node}"
            ),
            None => format!(
                "{} is on the pod's subnet: the frame goes over {node}'s bridge straight to it, not routed",
                pkt.dst
            ),
        },
        HostKind::Node => match next {
            Some(n) if matches!(n.kind, HostKind::Pod { .. }) => {
                if v.bridge {
                    format!(
                        "{} is a local pod: the pod subnet's route points at the bridge",
                        pkt.dst
                    )
                } else {
                    format!(
                        "{} is a local pod: one host route per pod points at its veth",
                        pkt.dst
                    )
                }
            }
            Some(n) if n.kind == HostKind::Node => match cidr_owner(v, pkt.dst) {
                Some((owner, cidr)) if owner.name == n.name => format!(
                    "{cidr} is {}'s pod CIDR: kindnetd's route sends it to {}'s address {nh}; no tunnel",
                    owner.name, owner.name
                ),
                _ => format!("{nh} is {} on the segment: sent to it directly", n.name),
            },
            Some(n) => format!(
                "not a cluster address: the default route sends it to the gateway {} ({nh})",
                n.name
            ),
            None => format!("sent towards {nh}, which is no host of this lab"),
        },
        HostKind::External => match next {
            Some(n) => format!("{} is on the segment: sent to {} directly", nh, n.name),
            None => format!("sent towards {nh}"),
        },
    }
}

/// Walks until the view holds every answer the walk needs, asking
/// `answer` for each missing one (the live kernel, or a fake in tests).
pub fn resolve(
    v: &mut View,
    from: &Host,
    to: &Host,
    t: Target,
    mut answer: impl FnMut(&Need) -> Result<Option<(Query, Result<Answer, String>)>, String>,
    mut tables: impl FnMut(&str) -> Result<NftTables, String>,
) -> Result<Walk, String> {
    for _ in 0..256 {
        match walk(v, from, to, t) {
            Ok(w) => return Ok(w),
            Err(Need::Nft(ns)) => {
                let tb = tables(&ns)?;
                v.nft.insert(ns, tb);
            }
            Err(need) => {
                let Some((q, a)) = answer(&need)? else {
                    return Err(format!("no answer for {need:?}"));
                };
                v.lookups.insert(q, a);
            }
        }
    }
    Err("the walk did not settle".into())
}

/// The numbered walk for people.
pub fn render(w: &Walk) -> String {
    let mut s = format!(
        "{} -> {} ({}, {})\n",
        w.from,
        w.to,
        w.family,
        match w.target.port {
            Some(p) => format!("{}/{p}", w.target.proto.as_str()),
            None => "icmp echo".into(),
        }
    );
    for h in &w.hops {
        s.push_str(&format!(
            "{:>2}. {} [{}]  {}\n",
            h.n, h.host, h.netns, h.packet
        ));
        if let (Some(l), Some(r)) = (&h.lookup, &h.route) {
            s.push_str(&format!("      $ {l}\n        {r}\n"));
        } else if let Some(l) = &h.lookup {
            s.push_str(&format!("      $ {l}\n"));
        }
        if let Some(m) = &h.matched {
            s.push_str(&format!("      matched: {m}\n"));
        }
        if let Some(d) = &h.leaves_by {
            s.push_str(&format!("      leaves by {d}\n"));
        }
        for n in &h.nft {
            s.push_str(&format!("      nft: {n}\n"));
        }
        s.push_str(&format!("      -> {}\n", h.explain));
    }
    match &w.verdict {
        Verdict::Delivered {
            host,
            dst,
            port,
            src,
            ..
        } => {
            let at = match port {
                Some(p) => std::net::SocketAddr::new(*dst, *p).to_string(),
                None => dst.to_string(),
            };
            s.push_str(&format!(
                "    delivered to {host} at {at}; the receiver should see the source {src}\n"
            ));
        }
        Verdict::Dropped { host, why } => s.push_str(&format!("    dropped at {host}: {why}\n")),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use kindnet_nft::Listed;

    /// A fake kernel with the lab's routing (ptp mode), IPv4: node i has
    /// 172.18.0.(i+1) and pods 10.244.i.(j+1); node1 runs node1-pod1 with
    /// host port 30080 -> 8080.
    struct Lab {
        hosts: Vec<Host>,
        bridge: bool,
        masq: bool,
        /// NetworkPolicy on (the table on every node) with these objects.
        policy: Option<kindnet_netpol::Cluster>,
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn lab(bridge: bool) -> Lab {
        let mut hosts = Vec::new();
        for i in 1..=2u8 {
            hosts.push(Host {
                name: format!("node{i}"),
                netns: format!("kl-t-node{i}"),
                kind: HostKind::Node,
                addrs: vec![ip(&format!("172.18.0.{}", i + 1))],
                pod_cidrs: vec![format!("10.244.{i}.0/24").parse().unwrap()],
            });
            for j in 1..=2u8 {
                hosts.push(Host {
                    name: format!("node{i}-pod{j}"),
                    netns: format!("kl-t-node{i}-pod{j}"),
                    kind: HostKind::Pod {
                        node: format!("node{i}"),
                    },
                    addrs: vec![ip(&format!("10.244.{i}.{}", j + 1))],
                    pod_cidrs: vec![],
                });
            }
        }
        hosts.push(Host {
            name: "external".into(),
            netns: "kl-t-ext".into(),
            kind: HostKind::External,
            addrs: vec![ip("198.51.100.10"), ip("172.18.0.1")],
            pod_cidrs: vec![],
        });
        Lab {
            hosts,
            bridge,
            masq: true,
            policy: None,
        }
    }

    impl Lab {
        fn host(&self, name: &str) -> Host {
            self.hosts.iter().find(|h| h.name == name).cloned().unwrap()
        }

        fn view(&self) -> View {
            View {
                family: Family::V4,
                hosts: self.hosts.clone(),
                segment_netns: "kl-t-seg".into(),
                bridge: self.bridge,
                lookups: HashMap::new(),
                nft: HashMap::new(),
                policy: self.policy.clone(),
            }
        }

        fn ans(
            kind: &str,
            dst: IpAddr,
            gw: Option<&str>,
            dev: &str,
            dk: &str,
            src: Option<IpAddr>,
            proto: u8,
        ) -> Answer {
            Answer {
                kind: kind.into(),
                dst: IpNet::from(dst),
                gateway: gw.map(ip),
                dev: Some(dev.into()),
                dev_kind: Some(dk.into()),
                src,
                table: if kind == "local" { 255 } else { 254 },
                protocol: proto,
            }
        }

        /// The lab's routing tables, as the kernel would answer.
        fn kernel(&self, q: &Query) -> Result<Answer, String> {
            let h = self.hosts.iter().find(|h| h.netns == q.netns).unwrap();
            let d = q.dst;
            let s = d.to_string();
            if h.addrs.contains(&d) {
                return Ok(Self::ans("local", d, None, "lo", "loopback", Some(d), 2));
            }
            let own = h.addrs[0];
            match &h.kind {
                HostKind::Pod { node } => {
                    let i = &node[4..];
                    let gw = format!("10.244.{i}.1");
                    let on_subnet = s.starts_with(&format!("10.244.{i}."));
                    if self.bridge && on_subnet {
                        return Ok(Self::ans("unicast", d, None, "eth0", "veth", Some(own), 2));
                    }
                    Ok(Self::ans(
                        "unicast",
                        d,
                        Some(&gw),
                        "eth0",
                        "veth",
                        Some(own),
                        3,
                    ))
                }
                HostKind::Node => {
                    let i: u8 = h.name[4..].parse().unwrap();
                    if s.starts_with(&format!("10.244.{i}.")) {
                        let dev = if self.bridge {
                            "kind-br".to_string()
                        } else {
                            format!("veth{}", &s[s.len() - 1..])
                        };
                        let kind = if self.bridge { "bridge" } else { "veth" };
                        return Ok(Self::ans("unicast", d, None, &dev, kind, Some(own), 3));
                    }
                    for p in 1..=2u8 {
                        if p != i && s.starts_with(&format!("10.244.{p}.")) {
                            let gw = format!("172.18.0.{}", p + 1);
                            return Ok(Self::ans(
                                "unicast",
                                d,
                                Some(&gw),
                                "eth0",
                                "veth",
                                Some(own),
                                217,
                            ));
                        }
                    }
                    if s.starts_with("172.18.") {
                        return Ok(Self::ans("unicast", d, None, "eth0", "veth", Some(own), 2));
                    }
                    Ok(Self::ans(
                        "unicast",
                        d,
                        Some("172.18.0.1"),
                        "eth0",
                        "veth",
                        Some(own),
                        3,
                    ))
                }
                HostKind::External => {
                    if s.starts_with("172.18.") {
                        Ok(Self::ans(
                            "unicast",
                            d,
                            None,
                            "eth0",
                            "veth",
                            Some(ip("172.18.0.1")),
                            2,
                        ))
                    } else {
                        Err("Network is unreachable".into())
                    }
                }
            }
        }

        fn tables(&self, ns: &str) -> NftTables {
            let el = |set: &str, key: Value, data: Option<Value>| Listed {
                set: set.into(),
                key,
                data,
                comment: None,
            };
            let net = |s: &str| Value::net(s.parse().unwrap());
            let masq = self.masq.then(|| Listing {
                sets: vec![],
                elements: vec![
                    el("pod-sources-v4", net("10.244.0.0/16"), None),
                    el("no-masquerade-v4", net("10.244.0.0/16"), None),
                ],
            });
            let key = Value::Concat(vec![Value::Proto(L4Proto::Tcp), Value::Port(30080)]);
            let portmap = (ns == "kl-t-node1").then(|| Listing {
                sets: vec![],
                elements: vec![
                    el(
                        "hostports4-addr",
                        key.clone(),
                        Some(Value::Addr(ip("10.244.1.2"))),
                    ),
                    el("hostports4-port", key, Some(Value::Port(8080))),
                    el(
                        "hairpin4",
                        Value::Concat(vec![net("10.244.1.2/32"), net("10.244.1.2/32")]),
                        None,
                    ),
                ],
            });
            NftTables {
                masq,
                portmap,
                netpol: self.policy.is_some(),
            }
        }

        fn trace(&self, from: &str, to: &str, t: Target) -> Walk {
            let mut v = self.view();
            resolve(
                &mut v,
                &self.host(from),
                &self.host(to),
                t,
                |n| match n {
                    Need::Route(q) => Ok(Some((q.clone(), self.kernel(q)))),
                    Need::Nft(_) => Ok(None),
                },
                |ns| Ok(self.tables(ns)),
            )
            .unwrap()
        }
    }

    fn tcp(p: u16) -> Target {
        Target {
            proto: Proto::Tcp,
            port: Some(p),
        }
    }

    fn hosts(w: &Walk) -> Vec<&str> {
        w.hops.iter().map(|h| h.host.as_str()).collect()
    }

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse(None).unwrap().proto, Proto::Icmp);
        assert_eq!(Target::parse(Some("8080")).unwrap(), tcp(8080));
        assert_eq!(
            Target::parse(Some("53/udp")).unwrap(),
            Target {
                proto: Proto::Udp,
                port: Some(53)
            }
        );
        for bad in ["0", "x/tcp", "80/sctp", "70000"] {
            assert!(Target::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    /// node2-pod1 (x/b on node2) under deny-all ingress: the packet from
    /// node1-pod1 (y/a) passes node1 (egress is open) and is dropped at
    /// node2's forward hook, which says which policy isolates it.
    #[test]
    fn network_policy_drops_where_it_is_enforced() {
        let pod = |ns: &str, name: &str, node: &str, ip: &str| -> kindnet_netpol::Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": ns, "name": name},
                "spec": {"nodeName": node},
                "status": {"phase": "Running", "podIPs": [{"ip": ip}]}
            }))
            .unwrap()
        };
        let deny: kindnet_netpol::NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        }))
        .unwrap();
        let ns = |name: &str| -> kindnet_netpol::Namespace {
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
        };
        let nss = [ns("x"), ns("y")];
        let pods = [
            pod("y", "a", "node1", "10.244.1.2"),
            pod("x", "b", "node2", "10.244.2.2"),
        ];
        let mut l = lab(false);
        let nodes: Vec<kindnet_netpol::NodeContext> = l
            .hosts
            .iter()
            .filter(|h| h.kind == HostKind::Node)
            .map(|h| kindnet_netpol::NodeContext {
                node_name: h.name.clone(),
                node_ips: h.addrs.clone(),
                log_denied: false,
                pod_cidrs: Vec::new(),
            })
            .collect();
        let with = |pols: &[kindnet_netpol::NetworkPolicy]| {
            Some(kindnet_netpol::Cluster::new(&pods, &nss, pols, &nodes).0)
        };
        l.policy = with(&[deny]);
        let w = l.trace("node1-pod1", "node2-pod1", tcp(8080));
        let Verdict::Dropped { host, why } = &w.verdict else {
            panic!("{}", render(&w))
        };
        assert_eq!(host, "node2", "{}", render(&w));
        assert!(why.contains("isolated by x/deny"), "{why}");
        let node1 = w.hops.iter().find(|h| h.host == "node1").unwrap();
        assert!(
            node1
                .nft
                .iter()
                .any(|n| n.starts_with("NetworkPolicy: allowed")),
            "{:?}",
            node1.nft
        );
        // The other way round nothing isolates y/a: delivered.
        let w = l.trace("node2-pod1", "node1-pod1", tcp(8080));
        assert!(
            matches!(w.verdict, Verdict::Delivered { .. }),
            "{}",
            render(&w)
        );
        // No policy: delivered, and each node says it allowed.
        l.policy = with(&[]);
        let w = l.trace("node1-pod1", "node2-pod1", tcp(8080));
        assert!(
            matches!(w.verdict, Verdict::Delivered { .. }),
            "{}",
            render(&w)
        );

        // Bridge mode, two pods of node1: the bridge hands the frame to
        // node1's forward hook (br_netfilter), which drops it.
        let mut l = lab(true);
        let pods = [
            pod("y", "a", "node1", "10.244.1.2"),
            pod("x", "b", "node1", "10.244.1.3"),
        ];
        let deny2: kindnet_netpol::NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        }))
        .unwrap();
        l.policy = Some(kindnet_netpol::Cluster::new(&pods, &nss, &[deny2], &nodes).0);
        let w = l.trace("node1-pod1", "node1-pod2", tcp(8080));
        let Verdict::Dropped { host, why } = &w.verdict else {
            panic!("{}", render(&w))
        };
        assert_eq!(host, "node1", "{}", render(&w));
        assert!(why.contains("isolated by x/deny"), "{why}");
        assert!(
            w.hops[0].nft[0].starts_with("node1's bridge, through br_netfilter"),
            "{:?}",
            w.hops[0].nft
        );
    }

    #[test]
    fn cross_node_is_seed_003() {
        let l = lab(false);
        let w = l.trace("node1-pod1", "node2-pod1", tcp(8080));
        assert_eq!(
            hosts(&w),
            ["node1-pod1", "node1", "segment", "node2", "node2-pod1"]
        );
        let h = &w.hops;
        assert_eq!(
            h[0].route.as_deref(),
            Some("10.244.2.2 via 10.244.1.1 dev eth0 src 10.244.1.2")
        );
        assert_eq!(
            h[1].lookup.as_deref(),
            Some("ip route get 10.244.2.2 from 10.244.1.2 iif veth2")
        );
        assert_eq!(
            h[1].route.as_deref(),
            Some("10.244.2.2 via 172.18.0.3 dev eth0 src 172.18.0.2")
        );
        assert!(
            h[1].matched
                .as_deref()
                .unwrap()
                .contains("proto 217 (kindnetd's peer route)")
        );
        assert!(
            h[1].nft.iter().any(|n| n.contains("in @no-masquerade-v4")),
            "{:?}",
            h[1].nft
        );
        assert!(
            h[1].nft
                .iter()
                .any(|n| n.contains("no table inet kindnet-netpol"))
        );
        assert!(
            h[1].explain.contains("node2's pod CIDR"),
            "{}",
            h[1].explain
        );
        assert_eq!(
            h[3].route.as_deref(),
            Some("10.244.2.2 dev veth2 src 172.18.0.3")
        );
        assert_eq!(
            h[3].leaves_by.as_deref(),
            Some("veth2 (veth: host end of node2-pod1's veth)")
        );
        assert!(
            h[4].route
                .as_deref()
                .unwrap()
                .starts_with("local 10.244.2.2")
        );
        assert_eq!(
            w.verdict,
            Verdict::Delivered {
                host: "node2-pod1".into(),
                netns: "kl-t-node2-pod1".into(),
                dst: ip("10.244.2.2"),
                port: Some(8080),
                src: ip("10.244.1.2"),
            },
            "no NAT between pods"
        );
        let text = render(&w);
        assert!(text.contains(" 1. node1-pod1 [kl-t-node1-pod1]"), "{text}");
        assert!(text.contains("the receiver should see the source 10.244.1.2"));
    }

    #[test]
    fn same_node_ptp_goes_through_the_node_bridge_does_not() {
        let w = lab(false).trace("node1-pod1", "node1-pod2", tcp(8080));
        assert_eq!(hosts(&w), ["node1-pod1", "node1", "node1-pod2"]);
        let w = lab(true).trace("node1-pod1", "node1-pod2", tcp(8080));
        assert_eq!(hosts(&w), ["node1-pod1", "node1-pod2"]);
        assert!(
            w.hops[0].explain.contains("bridge"),
            "{}",
            w.hops[0].explain
        );
        // bridge mode across nodes: the node's iif is the bridge
        let w = lab(true).trace("node1-pod1", "node2-pod2", tcp(8080));
        assert_eq!(
            w.hops[1].lookup.as_deref(),
            Some("ip route get 10.244.2.3 from 10.244.1.2 iif kind-br")
        );
    }

    #[test]
    fn pod_to_external_is_masqueraded_to_the_node() {
        let l = lab(false);
        let w = l.trace("node2-pod2", "external", tcp(8080));
        assert_eq!(hosts(&w), ["node2-pod2", "node2", "segment", "external"]);
        assert!(
            w.hops[1].nft[0].contains("masquerade to 172.18.0.3"),
            "{:?}",
            w.hops[1].nft
        );
        assert!(w.hops[1].explain.contains("default route"));
        match &w.verdict {
            Verdict::Delivered { src, host, .. } => {
                assert_eq!(*src, ip("172.18.0.3"));
                assert_eq!(host, "external");
            }
            v => panic!("{v:?}"),
        }
        let mut l = lab(false);
        l.masq = false;
        let w = l.trace("node2-pod2", "external", tcp(8080));
        assert!(w.hops[1].nft[0].contains("no table inet kindnet-masq"));
    }

    #[test]
    fn host_port_is_dnat_to_the_pod() {
        let l = lab(false);
        let w = l.trace("node2", "node1", tcp(30080));
        assert_eq!(hosts(&w), ["node2", "segment", "node1", "node1-pod1"]);
        assert!(
            w.hops[2].nft[0].contains("DNAT to 10.244.1.2:8080"),
            "{:?}",
            w.hops[2].nft
        );
        assert_eq!(
            w.hops[2].lookup.as_deref(),
            Some("ip route get 10.244.1.2 from 172.18.0.3 iif eth0")
        );
        match &w.verdict {
            Verdict::Delivered { src, port, .. } => {
                assert_eq!((*src, *port), (ip("172.18.0.3"), Some(8080)));
            }
            v => panic!("{v:?}"),
        }
        // not a host port: the node itself answers
        let w = l.trace("node2", "node1", tcp(22));
        assert_eq!(hosts(&w), ["node2", "segment", "node1"]);
        assert!(w.hops[2].nft[0].contains("no hostPort mapping"));
    }

    #[test]
    fn failures_are_reported_where_they_happen() {
        let l = lab(false);
        let mut v = l.view();
        let from = l.host("node1-pod1");
        let to = l.host("node2-pod1");
        let w = resolve(
            &mut v,
            &from,
            &to,
            tcp(8080),
            |n| match n {
                Need::Route(q) if q.netns == "kl-t-node2" && q.iif.is_some() => Ok(Some((
                    q.clone(),
                    Err("Invalid cross-device link (os error 18)".into()),
                ))),
                Need::Route(q) => Ok(Some((q.clone(), l.kernel(q)))),
                Need::Nft(_) => Ok(None),
            },
            |ns| Ok(l.tables(ns)),
        )
        .unwrap();
        assert!(matches!(w.verdict, Verdict::Dropped { ref host, .. } if host == "node2"));
        assert!(w.hops.last().unwrap().explain.contains("rp_filter"));
        // external has no route to pods
        let w = l.trace("external", "node1-pod1", tcp(8080));
        assert!(matches!(w.verdict, Verdict::Dropped { ref host, .. } if host == "external"));
    }
}

//! `kindnet-lab trace FROM TO [PORT/PROTO]`: a packet's "day in the life",
//! hop by hop, read from the live lab.
//!
//! The walk is a pure function of a [`View`]: the kernel's route lookups
//! per namespace (`ip route get` semantics), the nftables tables kindnet
//! owns, and the lab's topology. When the walk needs an answer the view
//! lacks it says which ([`Need`]); the gatherer (see [`crate::trace_live`])
//! asks the kernel and walks again. Unit tests answer from a fake kernel.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kindnet_nft::{L4Proto, Listing};
use serde::Serialize;

use crate::plan::Family;

mod hooks;
mod walk;

pub use walk::walk;

pub const MASQ_TABLE: &str = "kindnet-masq";
pub const PORTMAP_TABLE: &str = "kindnet-portmap";
/// NetworkPolicy's table; trace reports whether it exists and takes the
/// verdict from the semantics (see [`hooks`]).
pub const NETPOL_TABLE: &str = "kindnet-netpol";

/// What to send: a port of a protocol, or ICMP echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Echo,
    Port(L4Proto, u16),
}

impl Target {
    /// `8080`, `8080/tcp`, `53/UDP`, `80/sctp` ([`crate::port::parse_port`]);
    /// `None` = ICMP echo.
    pub fn parse(s: Option<&str>) -> Result<Target, String> {
        match s {
            None => Ok(Target::Echo),
            Some(s) => crate::port::parse_port(s).map(|(port, proto)| Target::Port(proto, port)),
        }
    }

    pub fn port(self) -> Option<u16> {
        match self {
            Target::Echo => None,
            Target::Port(_, p) => Some(p),
        }
    }

    /// The protocol's name: `tcp`, `udp`, `sctp`, `icmp`.
    pub fn proto_name(self) -> &'static str {
        self.l4().map_or("icmp", L4Proto::as_str)
    }

    fn l4(self) -> Option<L4Proto> {
        match self {
            Target::Echo => None,
            Target::Port(proto, _) => Some(proto),
        }
    }
}

/// As before the protocol enum went: `{"proto": "tcp", "port": 80}`,
/// `{"proto": "icmp", "port": null}`.
impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Target", 2)?;
        st.serialize_field("proto", self.proto_name())?;
        st.serialize_field("port", &self.port())?;
        st.end()
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
            Some(p) => format!("{} -> {} {}/{p}", self.src, self.dst, t.proto_name()),
            None => format!("{} -> {} {}", self.src, self.dst, t.proto_name()),
        }
    }
}
fn route_kernel(v: &View, q: Query) -> Result<Result<Answer, String>, Need> {
    v.lookups.get(&q).cloned().ok_or(Need::Route(q))
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
        match w.target.port() {
            Some(p) => format!("{}/{p}", w.target.proto_name()),
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
mod tests;

//! The direct semantics of NetworkPolicy: a decision for one packet of a
//! new connection, read straight off the validated model. The compiled
//! ruleset is tested against this.

use kindnet_nft::L4Proto;
use std::net::IpAddr;

use crate::cluster::{Cluster, Direction, NodeContext, PeerSel, PodInfo, PortMatch, RuleSel};

/// One end of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A pod, at its address of one family.
    Pod {
        namespace: String,
        name: String,
        v6: bool,
    },
    /// An address: a pod's when a pod owns it (pod traffic is never
    /// NATed), else a node, a hostNetwork pod or anything outside.
    Addr(IpAddr),
}

impl Endpoint {
    pub fn pod(namespace: &str, name: &str, v6: bool) -> Endpoint {
        Endpoint::Pod {
            namespace: namespace.into(),
            name: name.into(),
            v6,
        }
    }
}

/// The transport protocol of a packet; `Other` has no ports (ICMP…) and
/// matches only rules without ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
    Other,
}

impl Proto {
    pub fn l4(self) -> Option<L4Proto> {
        match self {
            Proto::Tcp => Some(L4Proto::Tcp),
            Proto::Udp => Some(L4Proto::Udp),
            Proto::Sctp => Some(L4Proto::Sctp),
            Proto::Other => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Allowed: the policies that allowed it, per direction. Denied: the
    /// policies that isolate the denying direction (none allowed it).
    pub by: Vec<(String, Direction)>,
    pub reason: String,
}

struct End<'a> {
    addr: Option<IpAddr>,
    /// The pod on the pod network this end is (never a hostNetwork pod).
    pod: Option<&'a PodInfo>,
    shown: String,
}

fn resolve<'a>(c: &'a Cluster, e: &Endpoint) -> End<'a> {
    match e {
        Endpoint::Pod {
            namespace,
            name,
            v6,
        } => {
            let p = c.pod(namespace, name);
            End {
                addr: p.and_then(|p| p.ip(*v6)),
                // a hostNetwork pod is its node: matched by address only
                pod: p.filter(|p| !p.host_network),
                shown: format!("{namespace}/{name}"),
            }
        }
        Endpoint::Addr(a) => End {
            addr: Some(*a),
            pod: c.pod_by_ip(*a),
            shown: a.to_string(),
        },
    }
}

enum Side {
    NotIsolated,
    Allowed(Vec<String>),
    Denied(Vec<String>),
}

/// The decision of `subject`'s policies for direction `d` about `peer`.
fn side(c: &Cluster, d: Direction, subject: &PodInfo, peer: &End, port: u16, proto: Proto) -> Side {
    let (mut isolating, mut allowing) = (Vec::new(), Vec::new());
    for pol in c.policies_for(subject, d) {
        isolating.push(pol.id());
        let rules = pol.rules(d).unwrap_or_default();
        if rules
            .iter()
            .any(|r| rule_matches(c, &pol.namespace, r, d, subject, peer, port, proto))
        {
            allowing.push(pol.id());
        }
    }
    if isolating.is_empty() {
        Side::NotIsolated
    } else if allowing.is_empty() {
        Side::Denied(isolating)
    } else {
        Side::Allowed(allowing)
    }
}

#[allow(clippy::too_many_arguments)]
fn rule_matches(
    c: &Cluster,
    ns: &str,
    r: &RuleSel,
    d: Direction,
    subject: &PodInfo,
    peer: &End,
    port: u16,
    proto: Proto,
) -> bool {
    let peer_ok = r.peers.is_empty()
        || r.peers.iter().any(|sel| match sel {
            PeerSel::Block(ranges) => peer.addr.is_some_and(|a| ranges.contains(a)),
            PeerSel::Pods { .. } => peer.pod.is_some_and(|q| c.peer_matches_pod(ns, sel, q)),
        });
    // a named port is the destination pod's: the subject for ingress, the
    // peer for egress
    let dst_pod = match d {
        Direction::Ingress => Some(subject),
        Direction::Egress => peer.pod,
    };
    let port_ok = r.ports.is_empty()
        || r.ports.iter().any(|ps| {
            proto.l4() == Some(ps.proto)
                && match &ps.port {
                    PortMatch::All => true,
                    PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&port),
                    PortMatch::Named(n) => dst_pod.is_some_and(|q| {
                        q.ports
                            .iter()
                            .any(|cp| &cp.name == n && cp.proto == ps.proto && cp.port == port)
                    }),
                }
        });
    peer_ok && port_ok
}

/// The cluster-wide decision: the egress policies of `src` (enforced by
/// its node) and the ingress policies of `dst` (enforced by its node) must
/// both allow. Traffic between a pod and its own node is always allowed.
pub fn evaluate(c: &Cluster, src: &Endpoint, dst: &Endpoint, port: u16, proto: Proto) -> Verdict {
    decide(c, None, src, dst, port, proto)
}

/// The share of [`evaluate`] that one node enforces: egress of its own
/// pods, ingress of its own pods, and nothing for its own addresses. A
/// packet crossing nodes is allowed when both nodes allow it.
pub fn evaluate_on(
    c: &Cluster,
    node: &NodeContext,
    src: &Endpoint,
    dst: &Endpoint,
    port: u16,
    proto: Proto,
) -> Verdict {
    decide(c, Some(node), src, dst, port, proto)
}

fn decide(
    c: &Cluster,
    node: Option<&NodeContext>,
    src: &Endpoint,
    dst: &Endpoint,
    port: u16,
    proto: Proto,
) -> Verdict {
    let (s, d) = (resolve(c, src), resolve(c, dst));
    let own_node = |pod: &PodInfo, addr: Option<IpAddr>| {
        addr.is_some_and(|a| c.nodes.get(&pod.node).is_some_and(|ips| ips.contains(&a)))
    };
    if let Some(n) = node {
        let mine = |a: Option<IpAddr>| a.is_some_and(|a| n.node_ips.contains(&a));
        if mine(s.addr) || mine(d.addr) {
            return Verdict {
                allowed: true,
                by: Vec::new(),
                reason: format!("traffic of node {} itself", n.node_name),
            };
        }
    }
    let local = |p: &PodInfo| node.is_none_or(|n| p.node == n.node_name);
    let mut by = Vec::new();
    let mut notes = Vec::new();
    let mut check = |dir: Direction, subject: Option<&PodInfo>, peer: &End, who: &str| -> bool {
        let Some(p) = subject.filter(|p| local(p)) else {
            return true;
        };
        if own_node(p, peer.addr) {
            notes.push(format!("{dir} of {who}: its own node"));
            return true;
        }
        match side(c, dir, p, peer, port, proto) {
            Side::NotIsolated => {
                notes.push(format!("{dir} of {who}: no policy selects it"));
                true
            }
            Side::Allowed(ps) => {
                notes.push(format!("{dir} of {who}: allowed by {}", ps.join(", ")));
                by.extend(ps.into_iter().map(|p| (p, dir)));
                true
            }
            Side::Denied(ps) => {
                notes = vec![format!(
                    "{dir} of {who}: isolated by {} and allowed by none",
                    ps.join(", ")
                )];
                by = ps.into_iter().map(|p| (p, dir)).collect();
                false
            }
        }
    };
    let allowed = check(Direction::Egress, s.pod, &d, &s.shown)
        && check(Direction::Ingress, d.pod, &s, &d.shown);
    let reason = if notes.is_empty() {
        "neither end is a pod whose policies apply here".to_string()
    } else {
        notes.join("; ")
    };
    Verdict {
        allowed,
        by,
        reason,
    }
}

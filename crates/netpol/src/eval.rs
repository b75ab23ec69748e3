//! The direct semantics of NetworkPolicy: a decision for one packet of a
//! new connection, read straight off the validated model. The compiled
//! ruleset is tested against this.

use kindnet_nft::L4Proto;
use std::net::IpAddr;

use crate::cluster::{Cluster, Direction, NodeContext, PeerSel, PodInfo, PortMatch, RuleSel};
use crate::cnp::{
    self, Tier,
    eval::{Outcome, PeerEnd},
};

/// One end of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A pod, at its address of one family.
    Pod {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
        /// Its IPv6 address rather than its IPv4 one.
        v6: bool,
    },
    /// An address: a pod's when a pod owns it (pod traffic is never
    /// NATed), else a node, a hostNetwork pod or anything outside.
    Addr(IpAddr),
}

impl Endpoint {
    /// [`Endpoint::Pod`] from borrowed names.
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
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// Any other protocol (ICMP, ...).
    Other,
}

impl Proto {
    /// The protocol as nft knows it; `None` for [`Proto::Other`].
    pub fn l4(self) -> Option<L4Proto> {
        match self {
            Proto::Tcp => Some(L4Proto::Tcp),
            Proto::Udp => Some(L4Proto::Udp),
            Proto::Sctp => Some(L4Proto::Sctp),
            Proto::Other => None,
        }
    }
}

/// The decision for one packet, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the connection is allowed.
    pub allowed: bool,
    /// Allowed: the policies that allowed it, per direction. Denied: the
    /// policies that isolate the denying direction (none allowed it). A
    /// ClusterNetworkPolicy that decided is listed as `cnp:<name>` (the
    /// reason names its tier and rule).
    pub by: Vec<(String, Direction)>,
    /// A sentence saying why, for people.
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
    /// The allowing policies, each with its first matching rule.
    Allowed(Vec<(String, usize)>),
    Denied(Vec<String>),
}

/// The decision of `subject`'s policies for direction `d` about `peer`.
fn side(c: &Cluster, d: Direction, subject: &PodInfo, peer: &End, port: u16, proto: Proto) -> Side {
    let (mut isolating, mut allowing) = (Vec::new(), Vec::new());
    for pol in c.policies_for(subject, d) {
        isolating.push(pol.id());
        let rules = pol.rules(d).unwrap_or_default();
        if let Some(i) = rules
            .iter()
            .position(|r| rule_matches(c, &pol.namespace, r, d, subject, peer, port, proto))
        {
            allowing.push((pol.id(), i));
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
/// both allow. Traffic from a pod's own node to the pod is always allowed;
/// traffic from the pod to its own node is the pod's egress like any other.
pub fn evaluate(c: &Cluster, src: &Endpoint, dst: &Endpoint, port: u16, proto: Proto) -> Verdict {
    decide(c, None, src, dst, port, proto)
}

/// The share of [`evaluate`] that one node enforces: egress of its own
/// pods (to the node's own addresses too), ingress of its own pods, and
/// nothing for traffic the node itself sends. A
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
    // the node's own traffic (to its pods: kubelet probes) leaves through
    // the output hook, which no policy looks at; a pod's traffic to its
    // own node is its egress (input hook), and the node has no ingress
    if let Some(n) = node
        && s.addr.is_some_and(|a| n.node_ips.contains(&a))
    {
        return Verdict {
            allowed: true,
            by: Vec::new(),
            reason: format!("traffic of node {} itself", n.node_name),
        };
    }
    let local = |p: &PodInfo| node.is_none_or(|n| p.node == n.node_name);
    // an address several pods claim is held by none of them; where one of
    // them is isolated this way here, its traffic is dropped (fail closed)
    for (dir, end, peer) in [(Direction::Egress, &s, &d), (Direction::Ingress, &d, &s)] {
        let Some(a) = end.addr.filter(|_| end.pod.is_none()) else {
            continue;
        };
        let isolating: Vec<String> = c
            .claimants(a)
            .filter(|p| local(p) && !(dir == Direction::Ingress && own_node(p, peer.addr)))
            .flat_map(|p| c.policies_for(p, dir).map(|pol| pol.id()))
            .collect();
        if !isolating.is_empty() {
            return Verdict {
                allowed: false,
                by: isolating.iter().map(|p| (p.clone(), dir)).collect(),
                reason: format!(
                    "{dir} of {a}: several pods claim the address and one is isolated by {}",
                    isolating.join(", ")
                ),
            };
        }
    }
    let mut by = Vec::new();
    let mut notes = Vec::new();
    let mut check = |dir: Direction, subject: Option<&PodInfo>, peer: &End, who: &str| -> bool {
        let Some(p) = subject.filter(|p| local(p)) else {
            return true;
        };
        // from its own node (kubelet probes): always allowed; to its own
        // node: the pod's egress decides, as for any other address
        if dir == Direction::Ingress && own_node(p, peer.addr) {
            notes.push(format!("{dir} of {who}: from its own node"));
            return true;
        }
        // the tiers: Admin, NetworkPolicy v1, Baseline (crate::cnp)
        let end = PeerEnd {
            addr: peer.addr,
            pod: peer.pod,
        };
        let tier = |t| cnp::eval::outcome(c, t, dir, p, end, port, proto, who);
        // the Pass rules walked past, named in what decides after them
        let mut passes: Vec<String> = Vec::new();
        let after = |passes: &[String]| -> String {
            passes.iter().map(|p| format!(", after {p}")).collect()
        };
        match tier(Tier::Admin) {
            Outcome::Decided(allowed, id, note) => {
                if allowed {
                    notes.push(note);
                    by.push((id, dir));
                } else {
                    notes = vec![note];
                    by = vec![(id, dir)];
                }
                return allowed;
            }
            Outcome::Next(pass) => passes.extend(pass),
        }
        match side(c, dir, p, peer, port, proto) {
            Side::NotIsolated => match tier(Tier::Baseline) {
                Outcome::Decided(allowed, id, note) => {
                    let note = format!("{note}{}", after(&passes));
                    if allowed {
                        notes.push(note);
                        by.push((id, dir));
                    } else {
                        notes = vec![note];
                        by = vec![(id, dir)];
                    }
                    allowed
                }
                Outcome::Next(pass) => {
                    passes.extend(pass);
                    notes.push(format!(
                        "{dir} of {who}: no policy selects it{}",
                        after(&passes)
                    ));
                    true
                }
            },
            Side::Allowed(ps) => {
                let rules: Vec<String> = ps.iter().map(|(p, i)| format!("{p} rule {i}")).collect();
                notes.push(format!(
                    "{dir} of {who}: NetworkPolicy tier, allowed by {}{}",
                    rules.join(", "),
                    after(&passes)
                ));
                by.extend(ps.into_iter().map(|(p, _)| (p, dir)));
                true
            }
            Side::Denied(ps) => {
                notes = vec![format!(
                    "{dir} of {who}: NetworkPolicy tier, isolated by {} and allowed by none{}",
                    ps.join(", "),
                    after(&passes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{Namespace, NetworkPolicy, Pod};
    use serde_json::json;

    fn cluster() -> Cluster {
        let pod = |ns: &str, name: &str, node: &str, host: bool, ip: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": name, "labels": {"pod": name}},
                "spec": {"nodeName": node, "hostNetwork": host,
                         "containers": [{"ports": [{"name": "web", "containerPort": 8080}]}]},
                "status": {"podIPs": [{"ip": ip}]}
            }))
            .unwrap()
        };
        let pods = [
            pod("x", "a", "n1", false, "10.0.1.2"),
            pod("x", "b", "n2", false, "10.0.2.2"),
            pod("x", "h", "n2", true, "172.18.0.3"),
        ];
        let pols: Vec<NetworkPolicy> = serde_json::from_value(json!([
            {"metadata": {"namespace": "x", "name": "only-b"}, "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": "web"}]}]}},
            {"metadata": {"namespace": "x", "name": "all-pods"}, "spec": {"podSelector": {}}}
        ]))
        .unwrap();
        let nodes = [
            NodeContext {
                node_name: "n1".into(),
                node_ips: vec!["172.18.0.2".parse().unwrap()],
                log_denied: false,
                pod_cidrs: Vec::new(),
            },
            NodeContext {
                node_name: "n2".into(),
                node_ips: vec!["172.18.0.3".parse().unwrap()],
                log_denied: false,
                pod_cidrs: Vec::new(),
            },
        ];
        let ns: Vec<Namespace> = vec![];
        Cluster::new(&pods, &ns, &pols, &nodes).0
    }

    #[test]
    fn named_ingress_ports_resolve_on_the_destination() {
        let c = cluster();
        let v = evaluate(
            &c,
            &Endpoint::pod("x", "b", false),
            &Endpoint::pod("x", "a", false),
            8080,
            Proto::Tcp,
        );
        assert!(v.allowed, "{}", v.reason);
        assert_eq!(v.by, [("x/only-b".to_string(), Direction::Ingress)]);
        let v = evaluate(
            &c,
            &Endpoint::pod("x", "b", false),
            &Endpoint::pod("x", "a", false),
            80,
            Proto::Tcp,
        );
        assert!(!v.allowed);
        assert_eq!(v.by.len(), 2, "both policies isolate x/a: {:?}", v.by);
        assert!(
            !evaluate(
                &c,
                &Endpoint::pod("x", "b", false),
                &Endpoint::pod("x", "a", false),
                8080,
                Proto::Udp
            )
            .allowed
        );
        assert!(
            !evaluate(
                &c,
                &Endpoint::pod("x", "b", false),
                &Endpoint::pod("x", "a", false),
                0,
                Proto::Other
            )
            .allowed
        );
    }

    #[test]
    fn host_network_pods_are_their_node_and_nodes_reach_their_own_pods() {
        let c = cluster();
        // x/h is on n2: for x/a on n1 it is only an address, and no pod peer
        let v = evaluate(
            &c,
            &Endpoint::pod("x", "h", false),
            &Endpoint::pod("x", "a", false),
            8080,
            Proto::Tcp,
        );
        assert!(!v.allowed, "{}", v.reason);
        assert!(
            !c.is_isolated("x", "h", Direction::Ingress),
            "hostNetwork pods are never selected"
        );
        // n1 reaches its own pod x/a, whatever the policies
        let node1 = Endpoint::Addr("172.18.0.2".parse().unwrap());
        let v = evaluate(&c, &node1, &Endpoint::pod("x", "a", false), 22, Proto::Tcp);
        assert!(v.allowed, "{}", v.reason);
        assert!(v.reason.contains("its own node"), "{}", v.reason);
        // but not n2's pod x/b
        assert!(!evaluate(&c, &node1, &Endpoint::pod("x", "b", false), 22, Proto::Tcp).allowed);
        // outside the pod network nothing applies
        let out = Endpoint::Addr("203.0.113.1".parse().unwrap());
        assert!(evaluate(&c, &node1, &out, 1, Proto::Udp).allowed);
    }

    #[test]
    fn each_node_enforces_its_own_pods() {
        let c = cluster();
        let n1 = NodeContext {
            node_name: "n1".into(),
            ..NodeContext::default()
        };
        let n2 = NodeContext {
            node_name: "n2".into(),
            ..NodeContext::default()
        };
        let (a, b) = (
            Endpoint::pod("x", "a", false),
            Endpoint::pod("x", "b", false),
        );
        // a -> b:80 is denied by b's ingress, which only n2 enforces
        assert!(evaluate_on(&c, &n1, &a, &b, 80, Proto::Tcp).allowed);
        assert!(!evaluate_on(&c, &n2, &a, &b, 80, Proto::Tcp).allowed);
        assert!(!evaluate(&c, &a, &b, 80, Proto::Tcp).allowed);
    }
}

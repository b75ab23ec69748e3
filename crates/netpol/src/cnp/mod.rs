//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`,
//! kubernetes-sigs/network-policy-api v0.2.0): the cluster administrator's
//! Admin and Baseline tiers around NetworkPolicy v1.
//!
//! - [`input`]: serde types for ClusterNetworkPolicy and Node.
//! - [`crate::Cluster::set_cluster_network_policies`]: validation into the model
//!   (refusals per policy in a [`crate::Report`], bounded and escaped).
//! - the direct semantics extend [`crate::evaluate`]; the compiler extends
//!   [`crate::compile`] (chains `tai-`/`tae-` and `tbi-`/`tbe-` around the
//!   v1 chains, see the crate docs).
//!
//! # Semantics
//!
//! For each direction of a connection (egress of the source pod, then
//! ingress of the destination pod), the tiers in order: Admin, then
//! NetworkPolicy v1, then Baseline, then the default (allow). Within a
//! tier, policies by `priority` (lower first; equal priorities by name),
//! rules in the order written; the first rule whose peers and protocols
//! match decides:
//!
//! - `Accept`: allowed for this direction, no further tier looked at (an
//!   egress Accept still goes through the destination's ingress);
//! - `Deny`: dropped;
//! - `Pass`: the rest of this tier is skipped, the next tier decides.
//!
//! A pod isolated by a NetworkPolicy v1 for a direction gets its final
//! decision there: Baseline is reached only for pods no v1 policy selects
//! that way. A policy with no rules for a direction does not apply to it.
//! hostNetwork pods are never subjects nor `namespaces`/`pods` peers (they
//! are their node's addresses: `nodes` and `networks` match them).
//! Traffic from a pod's own node to the pod is always allowed; traffic
//! from the pod to its own node is its egress like any other (a `nodes`
//! peer or `networks` covering the node's addresses match it), as for v1.
//!
//! # Fail closed
//!
//! A peer or protocol with no field this crate knows for its direction
//! (a newer CRD, `domainNames`, `networks` on ingress), with more than one
//! field, or with a value that cannot be used (a bad selector, CIDR, port
//! or port name; a named port with `networks`/`nodes`), and a rule with no
//! `from`/`to` or an unknown action: an `Accept` rule then matches
//! nothing; a `Deny` or `Pass` rule (or one with an unknown action) becomes
//! "Deny all". Each is listed in the report. A policy whose tier,
//! priority, subject or apiVersion cannot be read is refused whole.

pub(crate) mod eval;
pub mod input;

use kindnet_nft::L4Proto;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::Direction;
use crate::cidr::Ranges;
pub(crate) use crate::input::shown;
use crate::selector::Selector;

/// The API group and version this crate implements.
pub const API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";
/// The kind.
pub const KIND: &str = "ClusterNetworkPolicy";
/// At most this many refusals are listed per policy (then one line saying
/// how many more).
pub const MAX_REFUSALS_PER_POLICY: usize = 8;
/// Named counters of packets dropped by Deny rules, per tier and direction.
pub const DENIED_COUNTERS: [(Tier, Direction, &str); 4] = [
    (Tier::Admin, Direction::Ingress, "admin-denied-ingress"),
    (Tier::Admin, Direction::Egress, "admin-denied-egress"),
    (
        Tier::Baseline,
        Direction::Ingress,
        "baseline-denied-ingress",
    ),
    (Tier::Baseline, Direction::Egress, "baseline-denied-egress"),
];

/// A ClusterNetworkPolicy tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Before NetworkPolicy v1.
    Admin,
    /// After NetworkPolicy v1, for pods it does not isolate.
    Baseline,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        })
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Allowed for this direction.
    Accept,
    /// Dropped.
    Deny,
    /// On to the next tier.
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        })
    }
}

/// The pods a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodSel {
    pub namespaces: Selector,
    pub pods: Selector,
}

/// One validated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Pods on the pod network matching.
    Pods(PodSel),
    /// CIDRs (of either family).
    Networks(Vec<Ranges>),
    /// The addresses of the Nodes whose labels match.
    Nodes(Selector),
}

/// A rule's peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Peers {
    /// Everything (a fail-closed "Deny all").
    Any,
    /// Any of these (none: the rule matches nothing).
    List(Vec<Peer>),
}

/// A validated `protocols` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PortSel {
    /// `protocol` with a destination port in `lo..=hi`.
    Range(L4Proto, u16, u16),
    /// A container port name of the destination pod (its protocol).
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub name: String,
    pub action: Action,
    pub peers: Peers,
    /// `None`: all traffic.
    pub ports: Option<Vec<PortSel>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    pub name: String,
    pub tier: Tier,
    pub priority: u16,
    pub subject: PodSel,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

impl Policy {
    pub fn rules(&self, d: Direction) -> &[Rule] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// `cnp:<name>`: a policy id that cannot be a v1 `namespace/name`.
    pub fn id(&self) -> String {
        format!("cnp:{}", self.name)
    }
}

/// The set elements a ClusterNetworkPolicy's rules make, counted as a v1
/// policy's are (`cluster::budget::policy_elements`): each network's
/// ranges, one per `pods`/`namespaces`/`nodes` peer (they grow with the
/// cluster, not with the policy) and each port entry; at least one per
/// rule.
pub(crate) fn policy_elements(p: &Policy) -> usize {
    p.ingress
        .iter()
        .chain(&p.egress)
        .map(|r| {
            let peers: usize = match &r.peers {
                Peers::Any => 0,
                Peers::List(l) => l
                    .iter()
                    .map(|x| match x {
                        Peer::Networks(rs) => rs.iter().map(Ranges::len).sum(),
                        Peer::Pods(_) | Peer::Nodes(_) => 1,
                    })
                    .sum(),
            };
            (peers + r.ports.as_ref().map_or(0, Vec::len)).max(1)
        })
        .sum()
}

impl Policy {
    /// Fails closed (over the element budget): each direction the policy
    /// has rules for comes to one rule denying everything to its subjects.
    pub(crate) fn deny_all(&mut self) {
        for rules in [&mut self.ingress, &mut self.egress] {
            if !rules.is_empty() {
                *rules = vec![Rule {
                    name: "over the element budget".into(),
                    action: Action::Deny,
                    peers: Peers::Any,
                    ports: None,
                }];
            }
        }
    }
}

/// A Node as `nodes` peers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    pub labels: crate::input::Labels,
    pub ips: Vec<IpAddr>,
}

/// The validated ClusterNetworkPolicies and Nodes of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tiers {
    /// Per tier, in evaluation order (priority, then name).
    pub admin: Vec<Policy>,
    pub baseline: Vec<Policy>,
    pub nodes: BTreeMap<String, NodeInfo>,
}

impl Tiers {
    pub fn tier(&self, t: Tier) -> &[Policy] {
        match t {
            Tier::Admin => &self.admin,
            Tier::Baseline => &self.baseline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::input::{ClusterNetworkPolicy, Node};
    use super::*;
    use crate::Cluster;
    use serde_json::json;

    /// The one rule of an Admin policy, as validated, and the reasons.
    fn one_rule(dir: &str, rule: serde_json::Value) -> (Rule, Vec<String>) {
        let p: ClusterNetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}}, dir: [rule]}
        }))
        .unwrap();
        let mut c = Cluster::default();
        let r = c.set_cluster_network_policies([&p], []);
        let d = if dir == "ingress" {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let rule = c.tiers.admin[0].rules(d)[0].clone();
        (rule, r.refused.iter().map(|x| x.reason.clone()).collect())
    }

    fn denies_all(r: &Rule) -> bool {
        r.action == Action::Deny && r.peers == Peers::Any && r.ports.is_none()
    }

    #[test]
    fn valid_rules_become_peers_and_ports() {
        let (r, why) = one_rule(
            "egress",
            json!({"name": "n", "action": "Pass",
                "to": [{"networks": ["10.1.2.3/8", "fd00::/64"]}, {"nodes": {}},
                       {"pods": {"podSelector": {}}}],
                "protocols": [{"tcp": {"destinationPort": {"number": 80}}},
                              {"sctp": {"destinationPort": {"range": {"start": 1, "end": 2}}}}]}),
        );
        assert!(why.is_empty(), "{why:?}");
        assert_eq!(r.action, Action::Pass);
        let Peers::List(l) = &r.peers else {
            panic!("{r:?}")
        };
        assert_eq!(l.len(), 3);
        let Peer::Networks(n) = &l[0] else {
            panic!("{l:?}")
        };
        assert!(
            n[0].contains("10.200.0.1".parse().unwrap()),
            "host bits ignored"
        );
        assert!(n[1].v6);
        assert_eq!(
            r.ports,
            Some(vec![
                PortSel::Range(L4Proto::Tcp, 80, 80),
                PortSel::Range(L4Proto::Sctp, 1, 2)
            ])
        );
    }

    #[test]
    fn each_unusable_shape_fails_closed_with_its_reason() {
        for (dir, rule, why) in [
            (
                "egress",
                json!({"action": "Deny", "to": [ns()], "protocols": [{"tcp": {}}]}),
                "destinationPort",
            ),
            (
                "egress",
                json!({"action": "Deny", "to": [ns()], "protocols": [{"tcp": {"destinationPort": {"number": 65536}}}]}),
                "out of range",
            ),
            (
                "egress",
                json!({"action": "Deny", "to": [ns()], "protocols": [{"udp": {"destinationPort": {"range": {"start": 5, "end": 5}}}}]}),
                "not below",
            ),
            (
                "egress",
                json!({"action": "Deny", "to": [ns()], "protocols": [{"udp": {"destinationPort": {"number": 5, "range": {"start": 1, "end": 9}}}}]}),
                "both",
            ),
            (
                "egress",
                json!({"action": "Deny", "to": [ns()], "protocols": [{"tcp": {"destinationPort": {"number": 5}}, "udp": {"destinationPort": {"number": 5}}}]}),
                "more than one",
            ),
            (
                "egress",
                json!({"action": "Deny", "to": [ns()], "protocols": [{"destinationNamedPort": "Not_A_Name"}]}),
                "not a port name",
            ),
            (
                "egress",
                json!({"action": "Pass", "to": [{"networks": ["10.0.0.0/8"]}], "protocols": [{"destinationNamedPort": "http"}]}),
                "cannot be used",
            ),
            (
                "egress",
                json!({"action": "Deny", "to": [{"pods": {"namespaceSelector": {}}}]}),
                "podSelector is required",
            ),
            (
                "egress",
                json!({"action": "Deny", "to": [{"nodes": {}, "networks": ["10.0.0.0/8"]}]}),
                "more than one",
            ),
            ("egress", json!({"action": "Deny", "to": []}), "no to peers"),
            (
                "ingress",
                json!({"action": "Deny", "from": [{"nodes": {}}]}),
                "ingress peer",
            ),
            (
                "ingress",
                json!({"action": "Deny", "to": [ns()]}),
                "no from peers",
            ),
            (
                "ingress",
                json!({"action": "deny", "from": [ns()]}),
                "action",
            ),
        ] {
            let (r, reasons) = one_rule(dir, rule.clone());
            assert!(denies_all(&r), "{rule}: {r:?}");
            assert_eq!(reasons.len(), 1, "{rule}: {reasons:?}");
            assert!(reasons[0].contains(why), "{rule}: {reasons:?}");
        }
        // the same shapes in an Accept rule match nothing
        let (r, reasons) = one_rule(
            "egress",
            json!({"action": "Accept", "to": [ns()], "protocols": [{"tcp": {}}]}),
        );
        assert_eq!((r.peers, r.action), (Peers::List(vec![]), Action::Accept));
        assert!(reasons[0].contains("matches nothing"), "{reasons:?}");
    }

    fn ns() -> serde_json::Value {
        json!({"namespaces": {}})
    }

    #[test]
    fn nodes_keep_their_ip_addresses_only() {
        let n: Node = serde_json::from_value(json!({"metadata": {"name": "n1"},
            "status": {"addresses": [{"address": "172.18.0.2"}, {"address": "n1.example"},
                {"address": "fc00::2"}, {"address": "172.18.0.2"}]}}))
        .unwrap();
        let mut c = Cluster::default();
        let r = c.set_cluster_network_policies([], [&n]);
        assert!(r.refused.is_empty());
        assert_eq!(
            c.tiers.nodes["n1"].ips,
            [
                "172.18.0.2".parse::<IpAddr>().unwrap(),
                "fc00::2".parse().unwrap()
            ]
        );
    }
}

//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`,
//! kubernetes-sigs/network-policy-api v0.2.0): the cluster administrator's
//! Admin and Baseline tiers around NetworkPolicy v1.
//!
//! - [`input`]: serde types for ClusterNetworkPolicy and Node.
//! - [`Cluster::set_cluster_network_policies`]: validation into the model
//!   (refusals per policy in a [`Report`], bounded and escaped).
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

pub(crate) mod compile;
pub(crate) mod eval;
pub mod input;

use ipnet::IpNet;
use kindnet_nft::L4Proto;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::cidr::Ranges;
use crate::cluster::{Cluster, Direction, PodInfo, Refusal, Report, is_port_name};
use crate::input::LabelSelector;
use crate::selector::Selector;
use input::{ClusterNetworkPolicy, Node};

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

impl Cluster {
    /// The valid ClusterNetworkPolicies of tier `t` and their rules (both
    /// directions), for metrics.
    pub fn cnp_counts(&self, t: Tier) -> (usize, usize) {
        let ps = self.tiers.tier(t);
        let rules = ps.iter().map(|p| p.ingress.len() + p.egress.len()).sum();
        (ps.len(), rules)
    }

    /// Adds the ClusterNetworkPolicies (replacing any set before) and the
    /// Nodes their `nodes` peers select; what cannot be used is left out
    /// or fails closed, and is listed in the report.
    pub fn set_cluster_network_policies<'a>(
        &mut self,
        policies: impl IntoIterator<Item = &'a ClusterNetworkPolicy>,
        nodes: impl IntoIterator<Item = &'a Node>,
    ) -> Report {
        let mut r = Report::default();
        let mut t = Tiers::default();
        for n in nodes {
            let mut ips = Vec::new();
            for a in &n.addresses {
                // host names and DNS names are not addresses
                if let Ok(ip) = a.parse::<IpAddr>()
                    && !ips.contains(&ip)
                {
                    ips.push(ip);
                }
            }
            if n.name.is_empty() {
                r.refused.push(Refusal {
                    object: "node".into(),
                    part: "the node".into(),
                    reason: "no name".into(),
                });
                continue;
            }
            t.nodes.insert(
                n.name.clone(),
                NodeInfo {
                    labels: n.labels.clone(),
                    ips,
                },
            );
        }
        let mut seen = BTreeSet::new();
        for p in policies {
            let mut pr = PolicyReport::new(&p.name);
            if let Some(pol) = policy(p, &mut pr) {
                if seen.insert(pol.name.clone()) {
                    match pol.tier {
                        Tier::Admin => t.admin.push(pol),
                        Tier::Baseline => t.baseline.push(pol),
                    }
                } else {
                    // the copy's own refusals do not matter
                    pr = PolicyReport::new(&p.name);
                    pr.refuse("the policy", "listed twice; the first is used");
                }
            }
            pr.finish(&mut r);
        }
        for v in [&mut t.admin, &mut t.baseline] {
            v.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        }
        self.tiers = t;
        r
    }

    /// The number of valid ClusterNetworkPolicies of a tier.
    pub fn cluster_policy_count(&self, t: Tier) -> usize {
        self.tiers.tier(t).len()
    }

    /// Whether a subject selector applies to pod `p` (never hostNetwork).
    pub(crate) fn cnp_selects(&self, s: &PodSel, p: &PodInfo) -> bool {
        !p.host_network
            && s.pods.matches(&p.labels)
            && s.namespaces.matches(&self.namespace_labels(&p.namespace))
    }

    /// The policies of a tier applying to `p` for `d`, in order.
    pub(crate) fn cnps_for<'a>(
        &'a self,
        t: Tier,
        p: &'a PodInfo,
        d: Direction,
    ) -> impl Iterator<Item = &'a Policy> + 'a {
        self.tiers
            .tier(t)
            .iter()
            .filter(move |pol| !pol.rules(d).is_empty() && self.cnp_selects(&pol.subject, p))
    }

    /// The addresses of the Nodes matching `s`.
    pub(crate) fn node_ips_matching<'a>(
        &'a self,
        s: &'a Selector,
    ) -> impl Iterator<Item = IpAddr> + 'a {
        self.tiers
            .nodes
            .values()
            .filter(move |n| s.matches(&n.labels))
            .flat_map(|n| n.ips.iter().copied())
    }
}

/// The refusals of one policy, at most [`MAX_REFUSALS_PER_POLICY`].
struct PolicyReport {
    object: String,
    refused: Vec<Refusal>,
    more: usize,
}

/// A user's string as shown in a reason: escaped, at most 64 characters.
pub(crate) fn shown(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

impl PolicyReport {
    fn new(name: &str) -> PolicyReport {
        PolicyReport {
            object: format!("clusternetworkpolicy {}", shown(name)),
            refused: Vec::new(),
            more: 0,
        }
    }

    fn refuse(&mut self, part: impl Into<String>, reason: impl Into<String>) {
        if self.refused.len() < MAX_REFUSALS_PER_POLICY {
            self.refused.push(Refusal {
                object: self.object.clone(),
                part: part.into(),
                reason: reason.into(),
            });
        } else {
            self.more += 1;
        }
    }

    fn finish(self, r: &mut Report) {
        r.refused.extend(self.refused);
        if self.more > 0 {
            r.refused.push(Refusal {
                object: self.object,
                part: format!("{} more", self.more),
                reason: "not listed".into(),
            });
        }
    }
}

fn selector(s: &LabelSelector, what: &str) -> Result<Selector, String> {
    Selector::parse(s).map_err(|e| format!("{what}: {e}"))
}

fn pod_sel(p: &input::NamespacedPod, what: &str) -> Result<PodSel, String> {
    let Some(pods) = &p.pod_selector else {
        return Err(format!("{what}.podSelector is required"));
    };
    Ok(PodSel {
        namespaces: selector(&p.namespace_selector, &format!("{what}.namespaceSelector"))?,
        pods: selector(pods, &format!("{what}.podSelector"))?,
    })
}

fn policy(p: &ClusterNetworkPolicy, r: &mut PolicyReport) -> Option<Policy> {
    let whole = |r: &mut PolicyReport, why: String| {
        r.refuse("the policy", why);
        None
    };
    if p.name.is_empty() {
        return whole(r, "no name".into());
    }
    if !p.api_version.is_empty() && p.api_version != API_VERSION {
        return whole(
            r,
            format!("apiVersion {} is not {API_VERSION}", shown(&p.api_version)),
        );
    }
    if !p.kind.is_empty() && p.kind != KIND {
        return whole(r, format!("kind {} is not {KIND}", shown(&p.kind)));
    }
    let tier = match p.spec.tier.as_str() {
        "Admin" => Tier::Admin,
        "Baseline" => Tier::Baseline,
        other => return whole(r, format!("tier {} (Admin, Baseline)", shown(other))),
    };
    let priority = match p.spec.priority {
        Some(n) if (0..=1000).contains(&n) => n as u16,
        Some(n) => return whole(r, format!("priority {n} out of range 0-1000")),
        None => return whole(r, "no priority".into()),
    };
    let subject = match &p.spec.subject {
        None => return whole(r, "no subject".into()),
        Some(s) => match (&s.namespaces, &s.pods) {
            (Some(ns), None) => selector(ns, "subject.namespaces").map(|namespaces| PodSel {
                namespaces,
                pods: Selector::everything(),
            }),
            (None, Some(p)) => pod_sel(p, "subject.pods"),
            (None, None) => Err("subject has no field this implementation knows".into()),
            (Some(_), Some(_)) => Err("subject sets both namespaces and pods".into()),
        },
    };
    let subject = match subject {
        Ok(s) => s,
        Err(e) => return whole(r, e),
    };
    let mut rules = |raw: &[input::Rule], d: Direction| -> Vec<Rule> {
        raw.iter()
            .enumerate()
            .map(|(i, x)| rule(x, d, i, r))
            .collect()
    };
    let ingress = rules(&p.spec.ingress, Direction::Ingress);
    let egress = rules(&p.spec.egress, Direction::Egress);
    Some(Policy {
        name: p.name.clone(),
        tier,
        priority,
        subject,
        ingress,
        egress,
    })
}

/// A rule, validated; what cannot be used fails closed (see the module docs).
fn rule(x: &input::Rule, d: Direction, i: usize, r: &mut PolicyReport) -> Rule {
    let part = format!("{d} rule {i}");
    let name = x.name.chars().take(100).collect::<String>();
    let action = match x.action.as_str() {
        "Accept" => Some(Action::Accept),
        "Deny" => Some(Action::Deny),
        "Pass" => Some(Action::Pass),
        _ => None,
    };
    let (action, parsed) = match action {
        None => (
            Action::Deny,
            Err(format!("action {} (Accept, Deny, Pass)", shown(&x.action))),
        ),
        Some(a) => (a, peers_and_ports(x, d)),
    };
    match parsed {
        Ok((peers, ports)) => Rule {
            name,
            action,
            peers: Peers::List(peers),
            ports,
        },
        Err(e) if action == Action::Accept => {
            r.refuse(part, format!("{e}; the Accept rule matches nothing"));
            Rule {
                name,
                action,
                peers: Peers::List(Vec::new()),
                ports: None,
            }
        }
        Err(e) => {
            r.refuse(part, format!("{e}; the rule denies all traffic"));
            Rule {
                name,
                action: Action::Deny,
                peers: Peers::Any,
                ports: None,
            }
        }
    }
}

type PeersAndPorts = (Vec<Peer>, Option<Vec<PortSel>>);

fn peers_and_ports(x: &input::Rule, d: Direction) -> Result<PeersAndPorts, String> {
    let peers = peers(x, d)?;
    let ports = ports(x)?;
    let named = ports
        .iter()
        .flatten()
        .any(|p| matches!(p, PortSel::Named(_)));
    if named && peers.iter().any(|p| !matches!(p, Peer::Pods(_))) {
        return Err("destinationNamedPort cannot be used with networks or nodes peers".into());
    }
    Ok((peers, ports))
}

fn peers(x: &input::Rule, d: Direction) -> Result<Vec<Peer>, String> {
    let (field, raw) = match d {
        Direction::Ingress => ("from", &x.from),
        Direction::Egress => ("to", &x.to),
    };
    let raw = match raw {
        Some(v) if !v.is_empty() => v,
        _ => return Err(format!("no {field} peers")),
    };
    let mut out = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        out.push(peer(p, d).map_err(|e| format!("peer {i}: {e}"))?);
    }
    Ok(out)
}

fn peer(p: &input::Peer, d: Direction) -> Result<Peer, String> {
    let egress = d == Direction::Egress;
    // the fields known for this direction
    let mut known: Vec<&str> = Vec::new();
    if p.namespaces.is_some() {
        known.push("namespaces");
    }
    if p.pods.is_some() {
        known.push("pods");
    }
    if egress {
        for (set, name) in [
            (p.nodes.is_some(), "nodes"),
            (p.networks.is_some(), "networks"),
            (p.domain_names.is_some(), "domainNames"),
        ] {
            if set {
                known.push(name);
            }
        }
    }
    match known.as_slice() {
        [] => Err(format!(
            "no field this implementation knows for an {d} peer ({})",
            if egress {
                "namespaces, pods, nodes, networks"
            } else {
                "namespaces, pods"
            }
        )),
        [_, _, ..] => Err(format!("more than one field: {}", known.join(", "))),
        ["domainNames"] => Err("domainNames are not supported".into()),
        _ => {
            if let Some(ns) = &p.namespaces {
                return Ok(Peer::Pods(PodSel {
                    namespaces: selector(ns, "namespaces")?,
                    pods: Selector::everything(),
                }));
            }
            if let Some(pods) = &p.pods {
                return pod_sel(pods, "pods").map(Peer::Pods);
            }
            if let Some(n) = &p.nodes {
                return selector(n, "nodes").map(Peer::Nodes);
            }
            let nets = p.networks.as_deref().unwrap_or_default();
            if nets.is_empty() {
                return Err("networks is empty".into());
            }
            let mut out = Vec::new();
            for s in nets {
                let n: IpNet = s
                    .parse()
                    .map_err(|_| format!("network {} is not a CIDR", shown(s)))?;
                out.push(Ranges::of_net(&n));
            }
            Ok(Peer::Networks(out))
        }
    }
}

fn ports(x: &input::Rule) -> Result<Option<Vec<PortSel>>, String> {
    let Some(raw) = &x.protocols else {
        return Ok(None);
    };
    if raw.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        out.push(protocol(p).map_err(|e| format!("protocol {i}: {e}"))?);
    }
    Ok(Some(out))
}

fn protocol(p: &input::Protocol) -> Result<PortSel, String> {
    let mut set: Vec<(L4Proto, &input::ProtocolPorts)> = Vec::new();
    for (proto, v) in [
        (L4Proto::Tcp, &p.tcp),
        (L4Proto::Udp, &p.udp),
        (L4Proto::Sctp, &p.sctp),
    ] {
        if let Some(v) = v {
            set.push((proto, v));
        }
    }
    match (set.as_slice(), &p.destination_named_port) {
        ([], None) => {
            Err("no field this implementation knows (tcp, udp, sctp, destinationNamedPort)".into())
        }
        ([], Some(n)) => {
            if is_port_name(n) {
                Ok(PortSel::Named(n.clone()))
            } else {
                Err(format!(
                    "destinationNamedPort {} is not a port name",
                    shown(n)
                ))
            }
        }
        ([(proto, v)], None) => {
            let Some(port) = &v.destination_port else {
                return Err("no destinationPort".into());
            };
            let one = |n: i64, what: &str| {
                u16::try_from(n)
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("{what} {n} out of range 1-65535"))
            };
            match (port.number, &port.range) {
                (Some(n), None) => {
                    let n = one(n, "port")?;
                    Ok(PortSel::Range(*proto, n, n))
                }
                (None, Some(range)) => {
                    let (Some(s), Some(e)) = (range.start, range.end) else {
                        return Err("a range needs start and end".into());
                    };
                    let (s, e) = (one(s, "range start")?, one(e, "range end")?);
                    if s >= e {
                        return Err(format!("range start {s} is not below end {e}"));
                    }
                    Ok(PortSel::Range(*proto, s, e))
                }
                (None, None) => {
                    Err("destinationPort has no field this implementation knows".into())
                }
                (Some(_), Some(_)) => Err("destinationPort sets both number and range".into()),
            }
        }
        _ => Err("more than one field".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

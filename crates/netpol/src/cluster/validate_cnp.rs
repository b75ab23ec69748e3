//! ClusterNetworkPolicies into the model: validation of the API objects
//! (`cnp::input`) into [`crate::cnp`]'s types, refusals per policy in a
//! [`Report`], bounded and escaped; and the model's questions about them.

use ipnet::IpNet;
use kindnet_nft::L4Proto;
use std::collections::BTreeSet;
use std::net::IpAddr;

use super::validate::is_port_name;
use super::{Cluster, PodInfo, Refusal, Report};
use crate::Direction;
use crate::cidr::Ranges;
use crate::cnp::input::{self, ClusterNetworkPolicy, Node};
use crate::cnp::*;
use crate::input::LabelSelector;
use crate::selector::Selector;

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

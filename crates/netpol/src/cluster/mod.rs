//! The validated model: what [`crate::evaluate`] and [`crate::compile`]
//! both work from, so that they can only disagree in how they decide, never
//! in what they read. Everything refused is listed in a [`Report`].

use ipnet::IpNet;
use kindnet_nft::L4Proto;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::cidr::Ranges;
use crate::input::{Labels, Namespace, NetworkPolicy, Pod};
use crate::selector::Selector;

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub use crate::Direction;

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node's view: which pods are local, which addresses are the node's
/// own (traffic between a node and its pods is always allowed), and whether
/// denied packets are logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// This node's Node name: its pods are the local ones.
    pub node_name: String,
    /// This node's addresses (always allowed to and from its pods).
    pub node_ips: Vec<IpAddr>,
    /// Adds a rate-limited `log` before each pod chain's drop.
    pub log_denied: bool,
    /// The node's `spec.podCIDRs`: with [`Addressing::check_pod_cidrs`], an
    /// address counts for a pod only inside those of the pod's node.
    pub pod_cidrs: Vec<IpNet>,
}

/// What the CNI plugin recorded on this node at ADD: the pod of an
/// attachment and the addresses it was given (kindnetd reads it back from
/// the dispatch maps the plugin's hand-off fills).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachment {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// The addresses configured in the pod.
    pub ips: Vec<IpAddr>,
}

/// Who may hold an address. Pod objects are untrusted (any kubelet writes
/// `status.podIPs`): with `check_pod_cidrs` an address counts for a Pod only
/// inside the podCIDRs of the Pod's node ([`NodeContext::pod_cidrs`]); on
/// `node_name`, what the CNI plugin recorded (`attached`) is authoritative
/// over every Pod object. An address several Pods claim with no record
/// belongs to none of them ([`Cluster::conflicts`]): it matches no pod peer,
/// and where one of the claimants is local and isolated, the node drops its
/// traffic in that direction (fail closed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addressing {
    /// Check pod addresses against their node's podCIDRs (kindnetd does;
    /// a node without podCIDRs then has no pod addresses).
    pub check_pod_cidrs: bool,
    /// The node whose CNI record `attached` is (empty: each attachment is
    /// the record of its Pod's node, for a lab that made every sandbox).
    pub node_name: String,
    /// The CNI plugin's record on `node_name`.
    pub attached: Vec<Attachment>,
}

/// An address several Pods claim and no CNI record settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The address.
    pub ip: IpAddr,
    /// The claimants (namespace, name), sorted.
    pub pods: Vec<(String, String)>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "address {} claimed by pods ", self.ip)?;
        for (i, (ns, n)) in self.pods.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            // names from the nodes file are not validated: no control
            // character reaches a log or /readyz
            write!(f, "{}/{}", ns.escape_debug(), n.escape_debug())?;
        }
        Ok(())
    }
}

/// One refused object, rule or value, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `pod x/a`, `policy x/p`, `namespace x`.
    pub object: String,
    /// What part was refused: `the policy`, `ingress rule 2`, `pod IP "…"`.
    pub part: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} refused: {}", self.object, self.part, self.reason)
    }
}

/// What validation refused. A refused rule allows nothing while its policy
/// still isolates the pods it selects (fail closed); a policy whose
/// selector or types cannot be read is refused whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Every refusal, in input order.
    pub refused: Vec<Refusal>,
}

impl Report {
    fn refuse(&mut self, object: String, part: impl Into<String>, reason: impl Into<String>) {
        self.refused.push(Refusal {
            object,
            part: part.into(),
            reason: reason.into(),
        });
    }
}

/// A port selector of a rule, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortMatch {
    /// Every port of the protocol.
    All,
    Range(u16, u16),
    /// Resolved on the destination pod's container ports.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortSel {
    pub proto: L4Proto,
    pub port: PortMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum PeerSel {
    /// Pods matching `pods` in the namespaces matching `namespaces` (`None`:
    /// the policy's own namespace).
    Pods {
        pods: Selector,
        namespaces: Option<Selector>,
    },
    /// `cidr` minus `except`.
    Block(Ranges),
}

/// A rule: the peers (empty = every peer) and ports (empty = every port
/// and protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleSel {
    pub peers: Vec<PeerSel>,
    pub ports: Vec<PortSel>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    pub namespace: String,
    pub name: String,
    pub selector: Selector,
    /// `None`: the policy does not isolate this direction.
    pub ingress: Option<Vec<RuleSel>>,
    pub egress: Option<Vec<RuleSel>>,
}

impl Policy {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn rules(&self, d: Direction) -> Option<&[RuleSel]> {
        match d {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct NamedPort {
    pub name: String,
    pub port: u16,
    pub proto: L4Proto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node: String,
    pub host_network: bool,
    /// At most one address per family.
    pub ips: Vec<IpAddr>,
    pub ports: Vec<NamedPort>,
}

impl PodInfo {
    pub fn ip(&self, v6: bool) -> Option<IpAddr> {
        self.ips.iter().copied().find(|a| a.is_ipv6() == v6)
    }
}

/// Pods, namespaces, policies and node addresses, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    pub(crate) pods: BTreeMap<(String, String), PodInfo>,
    pub(crate) ns_labels: BTreeMap<String, Labels>,
    /// Sorted by namespace/name.
    pub(crate) policies: Vec<Policy>,
    pub(crate) nodes: BTreeMap<String, Vec<IpAddr>>,
    /// The addresses of pods on the pod network (not hostNetwork).
    pub(crate) by_ip: BTreeMap<IpAddr, (String, String)>,
    /// ClusterNetworkPolicies and Nodes ([`Cluster::set_cluster_network_policies`]).
    pub(crate) tiers: crate::cnp::Tiers,
    /// Addresses claimed by several pods (held by none).
    pub(crate) conflicts: BTreeMap<IpAddr, Vec<(String, String)>>,
}

impl Cluster {
    /// Validates everything; what cannot be used is left out and listed in
    /// the report. `nodes` gives each node's own addresses. The objects are
    /// read, not kept (slices, or the values of the maps a caller holds).
    pub fn new<'a>(
        pods: impl IntoIterator<Item = &'a Pod>,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
        nodes: &[NodeContext],
    ) -> (Cluster, Report) {
        Cluster::new_with(pods, namespaces, policies, nodes, &Addressing::default())
    }

    /// [`Cluster::new`], deciding who holds an address by [`Addressing`].
    pub fn new_with<'a>(
        pods: impl IntoIterator<Item = &'a Pod>,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
        nodes: &[NodeContext],
        addressing: &Addressing,
    ) -> (Cluster, Report) {
        let mut r = Report::default();
        let mut c = Cluster::default();
        for n in nodes {
            c.nodes
                .entry(n.node_name.clone())
                .or_default()
                .extend(n.node_ips.iter().copied());
        }
        for ns in namespaces {
            if ns.name.is_empty() {
                r.refuse("namespace".into(), "the namespace", "no name");
                continue;
            }
            let mut labels = ns.labels.clone();
            labels.insert(NAMESPACE_NAME_LABEL.into(), ns.name.clone());
            c.ns_labels.insert(ns.name.clone(), labels);
        }
        for p in pods {
            if let Some(info) = pod(p, &mut r) {
                let key = (info.namespace.clone(), info.name.clone());
                if c.pods.contains_key(&key) {
                    r.refuse(
                        format!("pod {}/{}", key.0, key.1),
                        "the pod",
                        "listed twice; the first is used",
                    );
                    continue;
                }
                c.pods.insert(key, info);
            }
        }
        c.assign_addresses(nodes, addressing, &mut r);
        let mut seen = std::collections::BTreeSet::new();
        for p in policies {
            if let Some(pol) = policy(p, &mut r) {
                if !seen.insert(pol.id()) {
                    r.refuse(
                        format!("policy {}", pol.id()),
                        "the policy",
                        "listed twice; the first is used",
                    );
                    continue;
                }
                c.policies.push(pol);
            }
        }
        c.policies
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        (c, r)
    }

    /// Decides which pod holds each address (see [`Addressing`]).
    fn assign_addresses(&mut self, nodes: &[NodeContext], a: &Addressing, r: &mut Report) {
        let cidrs: BTreeMap<&str, &[IpNet]> = nodes
            .iter()
            .map(|n| (n.node_name.as_str(), n.pod_cidrs.as_slice()))
            .collect();
        let inside = |node: &str, ip: &IpAddr| {
            !a.check_pod_cidrs
                || cidrs
                    .get(node)
                    .is_some_and(|cs| cs.iter().any(|n| n.contains(ip)))
        };
        // the CNI record: an address given at ADD to a local pod we know
        let mut record: BTreeMap<IpAddr, (String, String)> = BTreeMap::new();
        for at in &a.attached {
            let key = (at.namespace.clone(), at.name.clone());
            let Some(p) = self.pods.get(&key) else {
                continue;
            };
            if p.host_network || (!a.node_name.is_empty() && p.node != a.node_name) {
                continue;
            }
            for ip in &at.ips {
                if inside(&p.node, ip) {
                    record.entry(*ip).or_insert_with(|| key.clone());
                }
            }
        }
        // each recorded pod's addresses, in address order (one pass over
        // the record, not one per pod: with every local pod recorded that
        // was pods × record comparisons)
        let mut recorded_of: BTreeMap<&(String, String), Vec<IpAddr>> = BTreeMap::new();
        for (ip, k) in &record {
            recorded_of.entry(k).or_default().push(*ip);
        }
        let mut claims: BTreeMap<IpAddr, Vec<(String, String)>> = BTreeMap::new();
        for (key, info) in self.pods.iter_mut() {
            if info.host_network {
                continue;
            }
            let id = || format!("pod {}/{}", key.0, key.1);
            // a recorded pod's addresses are the ones it was given here
            let recorded: &[IpAddr] = recorded_of.get(key).map_or(&[], |v| v.as_slice());
            let mut ips: Vec<IpAddr> = Vec::new();
            for ip in info.ips.iter().chain(recorded) {
                if ips.contains(ip) {
                    continue;
                }
                if recorded
                    .iter()
                    .any(|x| x.is_ipv6() == ip.is_ipv6() && x != ip)
                {
                    r.refuse(
                        id(),
                        format!("pod IP {ip}"),
                        "not the address the CNI plugin gave it on this node",
                    );
                    continue;
                }
                if !inside(&info.node, ip) {
                    r.refuse(
                        id(),
                        format!("pod IP {ip}"),
                        format!("outside the podCIDRs of its node {:?}", info.node),
                    );
                    continue;
                }
                if let Some(owner) = record.get(ip).filter(|o| *o != key) {
                    r.refuse(
                        id(),
                        format!("pod IP {ip}"),
                        format!(
                            "the address of pod {}/{} on node {:?}, as the CNI plugin recorded it",
                            owner.0, owner.1, a.node_name
                        ),
                    );
                    continue;
                }
                ips.push(*ip);
            }
            for ip in &ips {
                claims.entry(*ip).or_default().push(key.clone());
            }
            info.ips = ips;
        }
        for (ip, keys) in claims {
            if let [one] = keys.as_slice() {
                self.by_ip.insert(ip, one.clone());
                continue;
            }
            // several claims and no record: nobody holds it (fail closed)
            for k in &keys {
                if let Some(p) = self.pods.get_mut(k) {
                    p.ips.retain(|x| *x != ip);
                }
            }
            self.conflicts.insert(ip, keys);
        }
    }

    /// Addresses several Pods claim that no CNI record settles: they match
    /// no pod peer, and a node drops their traffic in a direction where one
    /// of its local claimants is isolated.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.conflicts
            .iter()
            .map(|(ip, pods)| Conflict {
                ip: *ip,
                pods: pods.clone(),
            })
            .collect()
    }

    /// The claimants of a conflicting address (none when it is not one).
    pub(crate) fn claimants(&self, ip: IpAddr) -> impl Iterator<Item = &PodInfo> {
        self.conflicts
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }

    /// The labels of a namespace; one the cluster does not list has only
    /// its name label (as the API server would give it).
    pub(crate) fn namespace_labels(&self, ns: &str) -> std::borrow::Cow<'_, Labels> {
        match self.ns_labels.get(ns) {
            Some(l) => std::borrow::Cow::Borrowed(l),
            None => std::borrow::Cow::Owned(Labels::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                ns.to_string(),
            )])),
        }
    }

    pub(crate) fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods.get(&(namespace.to_string(), name.to_string()))
    }

    /// The pod on the pod network that owns this address.
    pub(crate) fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.by_ip.get(&ip).and_then(|k| self.pods.get(k))
    }

    /// Pods on the pod network (not hostNetwork), in name order.
    pub(crate) fn network_pods(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values().filter(|p| !p.host_network)
    }

    /// The address of a pod of one family, if it has one.
    pub fn pod_ip(&self, namespace: &str, name: &str, v6: bool) -> Option<IpAddr> {
        self.pod(namespace, name).and_then(|p| p.ip(v6))
    }

    /// The number of valid policies.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// Whether some policy selects the pod for this direction.
    pub fn is_isolated(&self, namespace: &str, name: &str, d: Direction) -> bool {
        self.pod(namespace, name)
            .is_some_and(|p| self.policies_for(p, d).next().is_some())
    }

    /// The policies selecting `p` for direction `d` (none for hostNetwork
    /// pods: they are the node).
    pub(crate) fn policies_for<'a>(
        &'a self,
        p: &'a PodInfo,
        d: Direction,
    ) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies.iter().filter(move |pol| {
            !p.host_network
                && pol.namespace == p.namespace
                && pol.rules(d).is_some()
                && pol.selector.matches(&p.labels)
        })
    }

    /// The pods a pod peer of a policy in `ns` matches (none for an
    /// ipBlock, which is not looked up). A peer without a namespace
    /// selector is looked up among `ns`'s pods only (the pods are kept by
    /// namespace), not the whole cluster's.
    pub(crate) fn pods_matching<'a>(
        &'a self,
        ns: &'a str,
        sel: &'a PeerSel,
    ) -> impl Iterator<Item = &'a PodInfo> + 'a {
        let scope: Box<dyn Iterator<Item = &'a PodInfo> + 'a> = match sel {
            PeerSel::Pods {
                namespaces: None, ..
            } => Box::new(
                self.pods
                    .range((ns.to_string(), String::new())..)
                    .take_while(move |((n, _), _)| n == ns)
                    .map(|(_, p)| p),
            ),
            PeerSel::Pods { .. } => Box::new(self.network_pods()),
            PeerSel::Block(_) => Box::new(std::iter::empty()),
        };
        scope.filter(move |q| self.peer_matches_pod(ns, sel, q))
    }

    /// Whether a peer selector matches pod `q` (for a policy in `ns`).
    pub(crate) fn peer_matches_pod(&self, ns: &str, sel: &PeerSel, q: &PodInfo) -> bool {
        match sel {
            PeerSel::Pods { pods, namespaces } => {
                let ns_ok = match namespaces {
                    None => q.namespace == ns,
                    Some(s) => s.matches(&self.namespace_labels(&q.namespace)),
                };
                !q.host_network && ns_ok && pods.matches(&q.labels)
            }
            PeerSel::Block(_) => false,
        }
    }
}

mod budget;
mod validate;
mod validate_cnp;

pub use budget::Budget;
use validate::{pod, policy};

#[cfg(test)]
mod addressing_tests;
#[cfg(test)]
mod budget_tests;
#[cfg(test)]
mod tests;

//! The validated model: what [`crate::evaluate`] and [`crate::compile`]
//! both work from, so that they can only disagree in how they decide, never
//! in what they read. Everything refused is listed in a [`Report`].

use ipnet::IpNet;
use kindnet_nft::L4Proto;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::cidr::Ranges;
use crate::input::{self, Labels, Namespace, NetworkPolicy, Pod};
use crate::selector::Selector;

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Which way a connection crosses a pod: into it, or out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic to the pod (`ingress` rules).
    Ingress,
    /// Traffic from the pod (`egress` rules).
    Egress,
}

impl Direction {
    /// `ingress` or `egress` (in chain and map names).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

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
        let mut claims: BTreeMap<IpAddr, Vec<(String, String)>> = BTreeMap::new();
        for (key, info) in self.pods.iter_mut() {
            if info.host_network {
                continue;
            }
            let id = || format!("pod {}/{}", key.0, key.1);
            // a recorded pod's addresses are the ones it was given here
            let recorded: Vec<IpAddr> = record
                .iter()
                .filter(|(_, k)| *k == key)
                .map(|(ip, _)| *ip)
                .collect();
            let mut ips: Vec<IpAddr> = Vec::new();
            for ip in info.ips.iter().chain(&recorded) {
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

    /// Refuses the policies over `budget` (see [`Budget`]) for `node`,
    /// NetworkPolicies and ClusterNetworkPolicies counted together, the
    /// smallest first. A NetworkPolicy keeps isolating the pods it selects
    /// and allows nothing (its rules are dropped); a ClusterNetworkPolicy
    /// denies everything to its subjects in each direction it has rules
    /// for. Returns the refusals, for the [`Report`].
    pub fn apply_budget(&mut self, budget: &Budget, node: &str) -> Vec<Refusal> {
        use crate::cnp::Tier;
        /// A NetworkPolicy, or a ClusterNetworkPolicy of a tier.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        enum Which {
            V1(usize),
            Cnp(Tier, usize),
        }
        let mut r = Report::default();
        let mut local: Vec<(usize, Which)> = Vec::new();
        let here = |p: &&PodInfo| p.node == node && !p.host_network;
        for (i, pol) in self.policies.iter().enumerate() {
            let selects_here = self
                .pods
                .values()
                .filter(here)
                .any(|p| pol.namespace == p.namespace && pol.selector.matches(&p.labels));
            if selects_here {
                local.push((policy_elements(pol), Which::V1(i)));
            }
        }
        for t in [Tier::Admin, Tier::Baseline] {
            for (i, pol) in self.tiers.tier(t).iter().enumerate() {
                let selects_here = self
                    .pods
                    .values()
                    .filter(here)
                    .any(|p| self.cnp_selects(&pol.subject, p));
                if selects_here {
                    local.push((crate::cnp::policy_elements(pol), Which::Cnp(t, i)));
                }
            }
        }
        // the smallest first: one large policy cannot crowd out the others
        local.sort();
        let mut total = 0usize;
        let mut over: Vec<(Which, String)> = Vec::new();
        for (n, i) in local {
            if n > budget.per_policy {
                over.push((
                    i,
                    format!(
                        "{n} set elements, over the budget of {} per policy",
                        budget.per_policy
                    ),
                ));
            } else if total + n > budget.per_node {
                over.push((
                    i,
                    format!(
                        "{n} set elements, over what is left of the node's budget of {} ({} taken by smaller policies)",
                        budget.per_node, total
                    ),
                ));
            } else {
                total += n;
            }
        }
        over.sort();
        for (i, why) in over {
            match i {
                Which::V1(i) => {
                    let pol = &mut self.policies[i];
                    for rules in [&mut pol.ingress, &mut pol.egress].into_iter().flatten() {
                        rules.clear();
                    }
                    r.refuse(
                        format!("policy {}", pol.id()),
                        "the policy's rules",
                        format!("{why}; the pods it selects stay isolated and it allows nothing"),
                    );
                }
                Which::Cnp(t, i) => {
                    let pol = match t {
                        Tier::Admin => &mut self.tiers.admin[i],
                        Tier::Baseline => &mut self.tiers.baseline[i],
                    };
                    pol.deny_all();
                    r.refuse(
                        format!("clusternetworkpolicy {}", crate::cnp::shown(&pol.name)),
                        "the policy's rules",
                        format!(
                            "{why}; each direction it has rules for denies everything to its subjects"
                        ),
                    );
                }
            }
        }
        r.refused
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

/// How many set elements a policy may make (ipBlock or `networks` ranges
/// and port entries of its rules; pod and node peers grow with the
/// cluster, not with the policy): one policy, and all the policies
/// (NetworkPolicies and ClusterNetworkPolicies) selecting a node's pods
/// together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Elements of one policy.
    pub per_policy: usize,
    /// Elements of the policies selecting pods of one node.
    pub per_node: usize,
}

/// The set elements a policy's rules make: each ipBlock's ranges and each
/// port entry (at least one per rule).
pub(crate) fn policy_elements(p: &Policy) -> usize {
    [p.ingress.as_deref(), p.egress.as_deref()]
        .into_iter()
        .flatten()
        .flatten()
        .map(|rule| {
            let peers: usize = rule
                .peers
                .iter()
                .map(|s| match s {
                    PeerSel::Block(r) => r.len(),
                    PeerSel::Pods { .. } => 1,
                })
                .sum();
            (peers + rule.ports.len()).max(1)
        })
        .sum()
}

fn pod(p: &Pod, r: &mut Report) -> Option<PodInfo> {
    // (only when something is refused: most pods are fine)
    let id = || format!("pod {}/{}", p.namespace, p.name);
    if p.namespace.is_empty() || p.name.is_empty() {
        r.refuse(id(), "the pod", "no namespace or name");
        return None;
    }
    // finished pods are off the network; their address may be reused
    if p.is_finished() {
        return None;
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for s in &p.pod_ips {
        match s.parse::<IpAddr>() {
            Ok(ip) if ips.iter().any(|x| x.is_ipv6() == ip.is_ipv6()) => r.refuse(
                id(),
                format!("pod IP {s:?}"),
                "a second address of the same family",
            ),
            Ok(ip) if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() => {
                r.refuse(id(), format!("pod IP {s:?}"), "not a unicast address")
            }
            Ok(ip) => ips.push(ip),
            Err(_) => r.refuse(id(), format!("pod IP {s:?}"), "not an IP address"),
        }
    }
    let mut ports = Vec::new();
    for cp in &p.ports {
        let part = || format!("container port {:?} {}", cp.name, cp.port);
        let Some(port) = u16::try_from(cp.port).ok().filter(|&n| n > 0) else {
            r.refuse(id(), part(), "port out of range 1-65535");
            continue;
        };
        let Some(proto) = protocol(cp.protocol.as_deref()) else {
            r.refuse(id(), part(), "unknown protocol (TCP, UDP, SCTP)");
            continue;
        };
        if !cp.name.is_empty() {
            ports.push(NamedPort {
                name: cp.name.clone(),
                port,
                proto,
            });
        }
    }
    Some(PodInfo {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        labels: p.labels.clone(),
        node: p.node_name.clone(),
        host_network: p.host_network,
        ips,
        ports,
    })
}

fn protocol(s: Option<&str>) -> Option<L4Proto> {
    match s {
        None => Some(L4Proto::Tcp),
        Some(s) => L4Proto::parse(s),
    }
}

fn policy(p: &NetworkPolicy, r: &mut Report) -> Option<Policy> {
    let id = format!("policy {}/{}", p.namespace, p.name);
    if p.namespace.is_empty() || p.name.is_empty() {
        r.refuse(id, "the policy", "no namespace or name");
        return None;
    }
    let selector = match Selector::parse(&p.spec.pod_selector) {
        Ok(s) => s,
        Err(e) => {
            r.refuse(id, "the policy", format!("podSelector: {e}"));
            return None;
        }
    };
    // the API server's defaulting: Ingress always, Egress when there are
    // egress rules
    let (mut ing, mut eg) = (false, false);
    if p.spec.policy_types.is_empty() {
        ing = true;
        eg = !p.spec.egress.is_empty();
    }
    for t in &p.spec.policy_types {
        match t.as_str() {
            "Ingress" => ing = true,
            "Egress" => eg = true,
            other => {
                r.refuse(
                    id,
                    "the policy",
                    format!("unknown policyType {other:?} (Ingress, Egress)"),
                );
                return None;
            }
        }
    }
    let rules = |raw: &[input::Rule], d: Direction, r: &mut Report| -> Vec<RuleSel> {
        let mut out = Vec::new();
        for (i, rule) in raw.iter().enumerate() {
            match rule_sel(rule) {
                Ok(s) => out.push(s),
                Err(e) => r.refuse(id.clone(), format!("{d} rule {i}"), e),
            }
        }
        out
    };
    let ingress = ing.then(|| rules(&p.spec.ingress, Direction::Ingress, r));
    let egress = eg.then(|| rules(&p.spec.egress, Direction::Egress, r));
    Some(Policy {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        selector,
        ingress,
        egress,
    })
}

/// A rule is refused whole when any peer or port is invalid: dropping only
/// the bad part could widen it (a rule whose only peer is dropped would
/// match every peer).
fn rule_sel(rule: &input::Rule) -> Result<RuleSel, String> {
    let mut peers = Vec::new();
    for (i, p) in rule.peers.iter().enumerate() {
        peers.push(peer_sel(p).map_err(|e| format!("peer {i}: {e}"))?);
    }
    let mut ports = Vec::new();
    for (i, p) in rule.ports.iter().enumerate() {
        ports.push(port_sel(p).map_err(|e| format!("port {i}: {e}"))?);
    }
    Ok(RuleSel { peers, ports })
}

fn peer_sel(p: &input::Peer) -> Result<PeerSel, String> {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(b), None, None) => ip_block(b).map(PeerSel::Block),
        (Some(_), _, _) => Err("ipBlock cannot be combined with selectors".into()),
        (None, None, None) => Err("needs podSelector, namespaceSelector or ipBlock".into()),
        (None, pods, nss) => Ok(PeerSel::Pods {
            pods: match pods {
                Some(s) => Selector::parse(s).map_err(|e| format!("podSelector: {e}"))?,
                None => Selector::everything(),
            },
            namespaces: match nss {
                Some(s) => Some(Selector::parse(s).map_err(|e| format!("namespaceSelector: {e}"))?),
                None => None,
            },
        }),
    }
}

fn ip_block(b: &input::IpBlock) -> Result<Ranges, String> {
    let cidr: IpNet = b
        .cidr
        .parse()
        .map_err(|_| format!("ipBlock cidr {:?} is not a CIDR", b.cidr))?;
    let mut ranges = Ranges::of_net(&cidr);
    let mut excepts = Vec::with_capacity(b.except.len());
    for e in &b.except {
        let ex: IpNet = e
            .parse()
            .map_err(|_| format!("ipBlock except {e:?} is not a CIDR"))?;
        // the API requires a strict subset of cidr
        if ex.prefix_len() <= cidr.prefix_len() || !cidr.trunc().contains(&ex.trunc()) {
            return Err(format!(
                "ipBlock except {e:?} is not inside cidr {:?}",
                b.cidr
            ));
        }
        excepts.push(ex);
    }
    ranges.subtract_all(&excepts);
    Ok(ranges)
}

fn port_sel(p: &input::PolicyPort) -> Result<PortSel, String> {
    let proto = protocol(p.protocol.as_deref()).ok_or_else(|| {
        format!(
            "unknown protocol {:?} (TCP, UDP, SCTP)",
            p.protocol.as_deref().unwrap_or("")
        )
    })?;
    let in_range = |n: i64, what: &str| {
        u16::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{what} {n} out of range 1-65535"))
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => PortMatch::All,
        (None, Some(_)) => return Err("endPort needs a port".into()),
        (Some(input::PortValue::Number(n)), end) => {
            let lo = in_range(*n, "port")?;
            let hi = match end {
                Some(e) => in_range(e, "endPort")?,
                None => lo,
            };
            if hi < lo {
                return Err(format!("endPort {hi} is below port {lo}"));
            }
            PortMatch::Range(lo, hi)
        }
        (Some(input::PortValue::Name(_)), Some(_)) => {
            return Err("endPort needs a numeric port".into());
        }
        (Some(input::PortValue::Name(n)), None) => {
            if !is_port_name(n) {
                return Err(format!(
                    "port name {n:?}: 1-15 of a-z, 0-9 and '-', with a letter, no '--', no '-' at either end"
                ));
            }
            PortMatch::Named(n.clone())
        }
    };
    Ok(PortSel { proto, port })
}

/// IANA_SVC_NAME, as the API validates named ports.
pub(crate) fn is_port_name(n: &str) -> bool {
    (1..=15).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.bytes().any(|b| b.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy_json(spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "p"}, "spec": spec}))
            .unwrap()
    }

    fn one(spec: serde_json::Value) -> (Option<Policy>, Report) {
        let (c, r) = Cluster::new(&[], &[], &[policy_json(spec)], &[]);
        (c.policies.into_iter().next(), r)
    }

    #[test]
    fn policy_types_default_as_the_api_server_does() {
        let types = |spec| {
            let (p, r) = one(spec);
            assert!(r.refused.is_empty(), "{r:?}");
            let p = p.unwrap();
            (p.ingress.is_some(), p.egress.is_some())
        };
        assert_eq!(types(json!({"podSelector": {}})), (true, false));
        assert_eq!(
            types(json!({"podSelector": {}, "egress": []})),
            (true, false)
        );
        assert_eq!(
            types(json!({"podSelector": {}, "egress": [{}]})),
            (true, true)
        );
        assert_eq!(
            types(json!({"podSelector": {}, "policyTypes": ["Egress"]})),
            (false, true)
        );
        assert_eq!(
            types(json!({"podSelector": {}, "policyTypes": ["Ingress"], "egress": [{}]})),
            (true, false),
            "listed types win over the rules present"
        );
        assert_eq!(
            types(json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})),
            (true, true)
        );
    }

    #[test]
    fn empty_rule_list_denies_and_empty_rule_allows() {
        let (p, _) = one(json!({"podSelector": {}, "ingress": []}));
        assert_eq!(p.unwrap().ingress, Some(vec![]));
        let (p, _) = one(json!({"podSelector": {}, "ingress": [{"from": [], "ports": null}]}));
        assert_eq!(
            p.unwrap().ingress,
            Some(vec![RuleSel {
                peers: vec![],
                ports: vec![]
            }])
        );
    }

    #[test]
    fn ports_are_validated_and_resolved() {
        let (p, r) = one(json!({"podSelector": {}, "ingress": [{"ports": [
            {"port": 80}, {"protocol": "UDP", "port": 1000, "endPort": 2000},
            {"protocol": "SCTP"}, {"port": "serve-80-tcp"}]}]}));
        assert!(r.refused.is_empty(), "{r:?}");
        let ports = &p.unwrap().ingress.unwrap()[0].ports;
        assert_eq!(
            ports[0],
            PortSel {
                proto: L4Proto::Tcp,
                port: PortMatch::Range(80, 80)
            }
        );
        assert_eq!(
            ports[1],
            PortSel {
                proto: L4Proto::Udp,
                port: PortMatch::Range(1000, 2000)
            }
        );
        assert_eq!(
            ports[2],
            PortSel {
                proto: L4Proto::Sctp,
                port: PortMatch::All
            }
        );
        assert_eq!(ports[3].port, PortMatch::Named("serve-80-tcp".into()));
    }

    #[test]
    fn bad_rules_are_refused_with_reasons_and_the_policy_still_isolates() {
        for (port, why) in [
            (json!({"port": 0}), "out of range"),
            (json!({"port": 65536}), "out of range"),
            (json!({"port": 80, "endPort": 70}), "below port"),
            (json!({"port": 80, "endPort": 70000}), "out of range"),
            (json!({"endPort": 80}), "needs a port"),
            (json!({"port": "http", "endPort": 90}), "numeric port"),
            (json!({"port": "80"}), "port name"),
            (json!({"port": "Http"}), "port name"),
            (json!({"port": "a--b"}), "port name"),
            (json!({"port": "averyveryverylongname"}), "port name"),
            (json!({"protocol": "ICMP", "port": 1}), "unknown protocol"),
        ] {
            let (p, r) = one(json!({"podSelector": {}, "ingress": [{"ports": [port]}, {}]}));
            assert_eq!(r.refused.len(), 1, "{port}: {r:?}");
            assert!(
                r.refused[0].reason.contains(why),
                "{port}: {}",
                r.refused[0]
            );
            assert_eq!(r.refused[0].part, "ingress rule 0");
            // the good rule stays; the pod stays isolated
            assert_eq!(p.unwrap().ingress.unwrap().len(), 1);
        }
        for (peer, why) in [
            (json!({"ipBlock": {"cidr": "10.0.0.0/33"}}), "not a CIDR"),
            (json!({"ipBlock": {"cidr": "10.0.0.1"}}), "not a CIDR"),
            (
                json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}),
                "not inside",
            ),
            (
                json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}),
                "not inside",
            ),
            (
                json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}}),
                "not inside",
            ),
            (
                json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["x"]}}),
                "not a CIDR",
            ),
            (
                json!({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}),
                "combined",
            ),
            (json!({}), "needs"),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
                "needs values",
            ),
        ] {
            let (p, r) =
                one(json!({"podSelector": {}, "egress": [{"to": [{"podSelector": {}}, peer]}]}));
            assert_eq!(r.refused.len(), 1, "{peer}: {r:?}");
            assert!(
                r.refused[0].reason.contains(why),
                "{peer}: {}",
                r.refused[0]
            );
            assert_eq!(
                p.unwrap().egress,
                Some(vec![]),
                "refused rule allows nothing"
            );
        }
    }

    #[test]
    fn bad_policies_and_pods_are_refused_whole_or_in_part() {
        let (p, r) =
            one(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Lt"}]}}));
        assert!(p.is_none());
        assert!(r.refused[0].reason.contains("unknown operator"), "{r:?}");
        let (p, r) = one(json!({"podSelector": {}, "policyTypes": ["Sideways"]}));
        assert!(p.is_none());
        assert!(r.refused[0].reason.contains("policyType"), "{r:?}");

        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": "a"},
            "spec": {"containers": [{"ports": [
                {"name": "ok", "containerPort": 80},
                {"name": "big", "containerPort": 70000},
                {"name": "icmp", "containerPort": 1, "protocol": "ICMP"}]}]},
            "status": {"podIPs": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "nope"}, {"ip": "fd00::1"}]}
        }))
        .unwrap();
        let twin = Pod {
            name: "b".into(),
            ..pod.clone()
        };
        let (c, r) = Cluster::new(&[pod.clone(), twin, pod], &[], &[], &[]);
        let a = c.pod("x", "a").unwrap();
        assert!(a.ips.is_empty(), "x/b claims the same addresses");
        assert_eq!(a.ports.len(), 1);
        assert!(
            c.pod("x", "b").unwrap().ips.is_empty(),
            "addresses claimed by both: held by neither"
        );
        assert_eq!(c.conflicts().len(), 2);
        let reasons: Vec<String> = r.refused.iter().map(|f| f.to_string()).collect();
        for want in [
            "second address",
            "not an IP",
            "out of range",
            "unknown protocol",
            "listed twice",
        ] {
            assert!(
                reasons.iter().any(|s| s.contains(want)),
                "{want}: {reasons:#?}"
            );
        }
    }

    #[test]
    fn namespaces_carry_their_name_label() {
        let ns = Namespace {
            name: "x".into(),
            labels: Labels::from([("ns".into(), "x".into())]),
        };
        let (c, _) = Cluster::new(&[], &[ns], &[], &[]);
        assert_eq!(
            c.namespace_labels("x")
                .get(NAMESPACE_NAME_LABEL)
                .map(String::as_str),
            Some("x")
        );
        assert_eq!(
            c.namespace_labels("x").get("ns").map(String::as_str),
            Some("x")
        );
        assert_eq!(c.namespace_labels("unknown").len(), 1);
    }
}

#[cfg(test)]
mod addressing_tests {
    use super::*;
    use crate::compile::{compile, dispatch_map, pod_chain};
    use crate::eval::{Endpoint, Proto, evaluate, evaluate_on};
    use kindnet_nft::{Cmd, Value};
    use serde_json::json;

    fn pod(ns: &str, name: &str, node: &str, ips: &[&str]) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"pod": name}},
            "spec": {"nodeName": node},
            "status": {"phase": "Running", "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}
        }))
        .unwrap()
    }

    fn deny_all_x() -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}))
        .unwrap()
    }

    fn allow_from_pod_evil() -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "from-evil"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {},
                "podSelector": {"matchExpressions": [
                    {"key": "pod", "operator": "In", "values": ["evil", "evil2"]}]}}]}]}}))
        .unwrap()
    }

    fn node(name: &str, ip: &str, cidr: &str) -> NodeContext {
        NodeContext {
            node_name: name.into(),
            node_ips: vec![ip.parse().unwrap()],
            log_denied: false,
            pod_cidrs: vec![cidr.parse().unwrap()],
        }
    }

    fn nodes() -> [NodeContext; 2] {
        [
            node("n1", "172.18.0.2", "10.244.1.0/24"),
            node("n2", "172.18.0.3", "10.244.2.0/24"),
        ]
    }

    fn checked(attached: &[(&str, &str, &str)]) -> Addressing {
        Addressing {
            check_pod_cidrs: true,
            node_name: "n1".into(),
            attached: attached
                .iter()
                .map(|(ns, n, ip)| Attachment {
                    namespace: ns.to_string(),
                    name: n.to_string(),
                    ips: vec![ip.parse().unwrap()],
                })
                .collect(),
        }
    }

    /// The ingress4 dispatch map of n1's ruleset: address → chain.
    fn ingress4(c: &Cluster) -> Vec<(Value, Value)> {
        compile(c, &nodes()[0])
            .batch
            .cmds
            .into_iter()
            .find_map(|c| match c {
                Cmd::AddSet(_, s) if s.name == dispatch_map(Direction::Ingress, false) => Some(
                    s.elements
                        .into_iter()
                        .filter_map(|e| Some((e.key, e.data?)))
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default()
    }

    fn addr(s: &str) -> Endpoint {
        Endpoint::Addr(s.parse().unwrap())
    }

    #[test]
    fn a_pod_claiming_a_local_isolated_pods_address_never_opens_it() {
        // a/evil (a remote node, or this one) lists x/a's address: on
        // today's main the first by namespace/name took it and x/a left
        // the dispatch maps, reachable under deny-all
        for evil_node in ["n2", "n1"] {
            let pods = [
                pod("x", "a", "n1", &["10.244.1.5"]),
                pod("a", "evil", evil_node, &["10.244.1.5"]),
            ];
            let pols = [deny_all_x()];
            let (c, _) = Cluster::new(&pods, &[], &pols, &nodes());
            let map = ingress4(&c);
            assert_eq!(map.len(), 1, "{evil_node}: {map:?}");
            assert_eq!(map[0].0, Value::Addr("10.244.1.5".parse().unwrap()));
            let n1 = &nodes()[0];
            for (s, d) in [
                (addr("10.244.2.9"), addr("10.244.1.5")),
                (addr("10.244.1.5"), addr("10.244.2.9")),
            ] {
                let v = evaluate_on(&c, n1, &s, &d, 80, Proto::Tcp);
                assert!(!v.allowed, "{evil_node}: {}", v.reason);
            }
            assert_eq!(c.conflicts().len(), 1);
            assert!(c.conflicts()[0].to_string().contains("a/evil, x/a"));
        }
    }

    #[test]
    fn an_address_outside_the_podcidrs_of_the_pods_node_does_not_count() {
        let pods = [
            pod("x", "a", "n1", &["10.244.1.5"]),
            // on n2, claiming an n1 address and one outside every CIDR
            pod("a", "evil", "n2", &["10.244.1.5", "fd00::5"]),
            pod("a", "ok", "n2", &["10.244.2.7"]),
        ];
        let (c, r) = Cluster::new_with(&pods, &[], &[deny_all_x()], &nodes(), &checked(&[]));
        assert!(c.conflicts().is_empty());
        assert_eq!(
            c.pod_ip("x", "a", false),
            Some("10.244.1.5".parse().unwrap())
        );
        assert_eq!(c.pod_ip("a", "evil", false), None);
        assert_eq!(c.pod_ip("a", "evil", true), None);
        assert_eq!(
            c.pod_ip("a", "ok", false),
            Some("10.244.2.7".parse().unwrap())
        );
        let reasons: Vec<String> = r.refused.iter().map(|f| f.to_string()).collect();
        assert_eq!(
            reasons
                .iter()
                .filter(|s| s.contains("outside the podCIDRs"))
                .count(),
            2,
            "{reasons:#?}"
        );
        // x/a's chain, not a pass-through
        assert_eq!(
            ingress4(&c),
            [(
                Value::Addr("10.244.1.5".parse().unwrap()),
                Value::Goto(pod_chain("x", "a", Direction::Ingress))
            )]
        );
        // a node without podCIDRs has no pod addresses
        let bare = [
            nodes()[0].clone(),
            NodeContext {
                pod_cidrs: vec![],
                ..nodes()[1].clone()
            },
        ];
        let (c, _) = Cluster::new_with(&pods, &[], &[], &bare, &checked(&[]));
        assert_eq!(c.pod_ip("a", "ok", false), None);
    }

    #[test]
    fn the_cni_record_settles_a_reused_address_the_old_pod_still_lists() {
        // x/old finished its sandbox but its Pod object still lists the
        // address the CNI plugin gave x/new at ADD
        let pods = [
            pod("x", "old", "n1", &["10.244.1.5"]),
            pod("x", "new", "n1", &["10.244.1.5"]),
            pod("a", "evil", "n1", &["10.244.1.6"]),
        ];
        let pols = [deny_all_x(), allow_from_pod_evil()];
        let rec = checked(&[("x", "new", "10.244.1.5")]);
        let (c, r) = Cluster::new_with(&pods, &[], &pols, &nodes(), &rec);
        assert!(c.conflicts().is_empty());
        assert_eq!(
            c.pod_ip("x", "new", false),
            Some("10.244.1.5".parse().unwrap())
        );
        assert_eq!(c.pod_ip("x", "old", false), None);
        assert!(
            r.refused
                .iter()
                .any(|f| f.object == "pod x/old" && f.reason.contains("CNI plugin recorded")),
            "{r:?}"
        );
        assert_eq!(
            ingress4(&c)
                .iter()
                .find(|(k, _)| *k == Value::Addr("10.244.1.5".parse().unwrap()))
                .map(|(_, v)| v.clone()),
            Some(Value::Goto(pod_chain("x", "new", Direction::Ingress)))
        );
        // n2 has no record: both claims stand, the address is nobody's,
        // and a rule allowing x/old or x/new does not allow it
        let (c2, _) = Cluster::new_with(
            &pods,
            &[],
            &pols,
            &nodes(),
            &Addressing {
                node_name: "n2".into(),
                ..rec.clone()
            },
        );
        assert_eq!(c2.conflicts().len(), 1);
        assert_eq!(c2.pod_ip("x", "new", false), None);
        // the record of a pod the objects do not place on the node is ignored
        let stray = checked(&[("a", "evil", "10.244.1.5")]);
        let (c3, _) = Cluster::new_with(&pods, &[], &pols, &nodes(), &stray);
        assert_eq!(
            c3.pod_ip("a", "evil", false),
            Some("10.244.1.5".parse().unwrap())
        );
        // ... on n1 it is: a/evil was given 10.244.1.5 here, its object's
        // other address of the family does not count
        assert!(c3.pod_ip("x", "old", false).is_none());
    }

    #[test]
    fn an_ambiguous_remote_address_matches_no_pod_peer() {
        // x/a on n1 allows ingress from pods labelled evil; two pods on n2
        // claim the same n2 address, one of them labelled evil
        let pods = [
            pod("x", "a", "n1", &["10.244.1.5"]),
            pod("a", "evil", "n2", &["10.244.2.9"]),
            pod("a", "other", "n2", &["10.244.2.9"]),
            pod("a", "evil2", "n2", &["10.244.2.10"]),
        ];
        let pols = [deny_all_x(), allow_from_pod_evil()];
        let (c, _) = Cluster::new(&pods, &[], &pols, &nodes());
        let v = evaluate(&c, &addr("10.244.2.9"), &addr("10.244.1.5"), 80, Proto::Tcp);
        assert!(!v.allowed, "{}", v.reason);
        let v = evaluate(
            &c,
            &addr("10.244.2.10"),
            &addr("10.244.1.5"),
            80,
            Proto::Tcp,
        );
        assert!(v.allowed, "{}", v.reason);
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use crate::compile::compile;
    use crate::eval::{Endpoint, Proto, evaluate};
    use serde_json::json;

    fn except_policy(name: &str, n: u32) -> NetworkPolicy {
        let except: Vec<String> = (0..n)
            .map(|i| format!("fd00::{:x}/128", i * 2 + 1))
            .collect();
        serde_json::from_value(json!({"metadata": {"namespace": "x", "name": name},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"ipBlock": {"cidr": "::/0", "except": except}}]}],
                "egress": [{"to": [{"ipBlock": {"cidr": "::/0"}}]}]}}))
        .unwrap()
    }

    #[test]
    fn a_policy_over_budget_allows_nothing_and_keeps_isolating() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": "a"}, "spec": {"nodeName": "n1"},
            "status": {"podIPs": [{"ip": "fd00:1::2"}]}}))
        .unwrap();
        let pols = [except_policy("big", 1000), except_policy("small", 3)];
        let (mut c, _) = Cluster::new(&[pod], &[], &pols, &[]);
        assert_eq!(policy_elements(&c.policies[0]), 1001 + 1);
        assert_eq!(policy_elements(&c.policies[1]), 4 + 1);
        let allowed = |c: &Cluster| {
            evaluate(
                c,
                &Endpoint::Addr("2001:db8::1".parse().unwrap()),
                &Endpoint::pod("x", "a", true),
                80,
                Proto::Tcp,
            )
            .allowed
        };
        assert!(allowed(&c));
        let budget = Budget {
            per_policy: 500,
            per_node: 10_000,
        };
        // another node's pods: nothing to refuse there
        assert!(c.clone().apply_budget(&budget, "n2").is_empty());
        let refused = c.apply_budget(&budget, "n1");
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].object, "policy x/big");
        assert!(
            refused[0].reason.contains("1002 set elements"),
            "{}",
            refused[0]
        );
        // x/small still allows; x/big isolates and allows nothing
        assert!(allowed(&c));
        assert!(c.is_isolated("x", "a", Direction::Ingress));
        assert!(c.policies[0].ingress.as_deref() == Some(&[]));
        // the node budget: the smaller policy first
        let (mut c, _) = Cluster::new(&[], &[], &pols, &[]);
        let (mut c2, _) = Cluster::new(
            &[
                serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "a"},
                "spec": {"nodeName": "n1"}}))
                .unwrap(),
            ],
            &[],
            &pols,
            &[],
        );
        assert!(
            c.apply_budget(&budget, "n1").is_empty(),
            "selects nothing here"
        );
        let refused = c2.apply_budget(
            &Budget {
                per_policy: 5000,
                per_node: 1000,
            },
            "n1",
        );
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0].reason.contains("node's budget of 1000 (5 taken"),
            "{}",
            refused[0]
        );
        // compiled: the big policy's 1001 ranges are gone from the table
        let ctx = NodeContext {
            node_name: "n1".into(),
            ..NodeContext::default()
        };
        assert!(compile(&c2, &ctx).stats.elements < 50);
    }

    #[test]
    fn cluster_network_policies_count_and_fail_closed_over_budget() {
        use crate::cnp::input::ClusterNetworkPolicy;
        let pods: Vec<Pod> = ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                serde_json::from_value(json!({
                    "metadata": {"namespace": "x", "name": n, "labels": {"pod": n}},
                    "spec": {"nodeName": "n1"},
                    "status": {"podIPs": [{"ip": format!("fd00:1::{}", i + 2)}]}}))
                .unwrap()
            })
            .collect();
        // an Admin Accept of 600 single addresses for x/a, a small Baseline
        // Deny of one network for x/b
        let nets: Vec<String> = (0..600)
            .map(|i| format!("2001:db8::{:x}/128", i * 2 + 1))
            .collect();
        let cnps: Vec<ClusterNetworkPolicy> = serde_json::from_value(json!([
            {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
             "metadata": {"name": "big"},
             "spec": {"tier": "Admin", "priority": 1,
                "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}}},
                "egress": [{"action": "Accept", "to": [{"networks": nets}]}]}},
            {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
             "metadata": {"name": "small"},
             "spec": {"tier": "Baseline", "priority": 1,
                "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}},
                "egress": [{"action": "Deny", "to": [{"networks": ["2001:db8:1::/48"]}]}]}}
        ]))
        .unwrap();
        let build = || {
            let (mut c, _) = Cluster::new(&pods, &[], &[except_policy("v1", 3)], &[]);
            assert!(
                c.set_cluster_network_policies(&cnps, &[])
                    .refused
                    .is_empty()
            );
            c
        };
        let out = |c: &Cluster, from: &str, to: &str| {
            evaluate(
                c,
                &Endpoint::pod("x", from, true),
                &Endpoint::Addr(to.parse().unwrap()),
                80,
                Proto::Tcp,
            )
            .allowed
        };
        let c = build();
        assert_eq!(crate::cnp::policy_elements(&c.tiers.admin[0]), 600);
        assert_eq!(crate::cnp::policy_elements(&c.tiers.baseline[0]), 1);
        assert!(out(&c, "a", "2001:db8::1"), "within the budget: accepted");
        // one policy's budget
        let mut c1 = build();
        let refused = c1.apply_budget(
            &Budget {
                per_policy: 500,
                per_node: 10_000,
            },
            "n1",
        );
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].object, "clusternetworkpolicy \"big\"");
        assert!(
            refused[0].reason.contains("600 set elements"),
            "{}",
            refused[0]
        );
        assert!(
            refused[0].reason.contains("denies everything"),
            "{}",
            refused[0]
        );
        // fail closed: x/a's egress denied everywhere (the v1 policy would
        // allow ::/0), x/b's Baseline untouched
        assert!(!out(&c1, "a", "2001:db8::1"));
        assert!(!out(&c1, "a", "2001:db8:2::1"));
        assert!(out(&c1, "b", "2001:db8:2::1"), "v1 allows x/b ::/0");
        // another node: nothing selected there
        assert!(
            build()
                .apply_budget(
                    &Budget {
                        per_policy: 1,
                        per_node: 1
                    },
                    "n2"
                )
                .is_empty()
        );
        // the node's budget: v1 (6) and small (1) fit, big does not
        let mut c2 = build();
        let refused = c2.apply_budget(
            &Budget {
                per_policy: 5000,
                per_node: 100,
            },
            "n1",
        );
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].reason.contains("node's budget of 100 (6 taken"),
            "{}",
            refused[0]
        );
        assert!(!out(&c2, "a", "2001:db8::1"));
        // compiled: the 600 ranges are not in the table
        let ctx = NodeContext {
            node_name: "n1".into(),
            ..NodeContext::default()
        };
        assert!(compile(&c2, &ctx).stats.elements < 100);
        assert!(compile(&c, &ctx).stats.elements > 600);
    }
}

//! The element budgets: what a policy may make, and the policies over
//! them refused for a node.

use super::{Cluster, PeerSel, PodInfo, Policy, Refusal, Report, RuleSel};
use std::collections::{HashMap, HashSet};

/// How many set elements a policy may make: its ipBlock (or `networks`)
/// ranges and port entries, and for pod peers the sets `compile` builds,
/// one per distinct peer list of a namespace (shared by every rule and
/// policy with that list) holding the address of every pod the list
/// matches. Counted for one policy, and for all the policies
/// (NetworkPolicies and ClusterNetworkPolicies) selecting a node's pods
/// together, a shared set once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Elements of one policy.
    pub per_policy: usize,
    /// Elements of the policies selecting pods of one node.
    pub per_node: usize,
}

/// The set elements a policy's rules make that do not depend on the
/// cluster: each ipBlock's ranges and each port entry (at least one per
/// rule). Its pod peers' sets are [`pod_peer_lists`].
pub(crate) fn policy_elements(p: &Policy) -> usize {
    rules_of(p)
        .map(|rule| {
            let blocks: usize = rule
                .peers
                .iter()
                .map(|s| match s {
                    PeerSel::Block(r) => r.len(),
                    PeerSel::Pods { .. } => 0,
                })
                .sum();
            (blocks + rule.ports.len()).max(1)
        })
        .sum()
}

fn rules_of(p: &Policy) -> impl Iterator<Item = &RuleSel> {
    [p.ingress.as_deref(), p.egress.as_deref()]
        .into_iter()
        .flatten()
        .flatten()
}

/// A set of pod peers as `compile` keys it: the policy's namespace and the
/// rule's peer list.
type PeerList<'a> = (&'a str, &'a [PeerSel]);

/// The distinct peer lists with pod peers of a policy's rules: one set
/// (per family) each.
pub(crate) fn pod_peer_lists(p: &Policy) -> Vec<PeerList<'_>> {
    let mut seen: HashSet<PeerList> = HashSet::new();
    rules_of(p)
        .map(|rule| (p.namespace.as_str(), rule.peers.as_slice()))
        .filter(|(_, peers)| peers.iter().any(|s| matches!(s, PeerSel::Pods { .. })))
        .filter(|k| seen.insert(*k))
        .collect()
}

/// The pod peers of a list: each is looked up, and costs at least one
/// element (the lower bound of the list's set, known without a look-up).
fn pod_peers(peers: &[PeerSel]) -> usize {
    peers
        .iter()
        .filter(|s| matches!(s, PeerSel::Pods { .. }))
        .count()
}

impl Cluster {
    /// The set elements of a pod peer list's set: for each pod peer the
    /// addresses of the pods it matches, at least one (an upper bound of
    /// the set's union, found the way `compile` finds them).
    fn pod_peer_elements(&self, (ns, peers): PeerList) -> usize {
        peers
            .iter()
            .filter(|s| matches!(s, PeerSel::Pods { .. }))
            .map(|s| {
                let n: usize = self.pods_matching(ns, s).map(|q| q.ips.len()).sum();
                n.max(1)
            })
            .sum()
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
        // this node's pods, found once for every policy
        let here: Vec<&PodInfo> = self
            .pods
            .values()
            .filter(|p| p.node == node && !p.host_network)
            .collect();
        // The local policies: (a lower bound of their elements, which,
        // what they make besides pod sets, their distinct pod peer lists).
        let mut local: Vec<(usize, Which, usize, Vec<PeerList>)> = Vec::new();
        for (i, pol) in self.policies.iter().enumerate() {
            let selects_here = here
                .iter()
                .any(|p| pol.namespace == p.namespace && pol.selector.matches(&p.labels));
            if selects_here {
                let (fixed, lists) = (policy_elements(pol), pod_peer_lists(pol));
                let lower = fixed + lists.iter().map(|(_, l)| pod_peers(l)).sum::<usize>();
                local.push((lower, Which::V1(i), fixed, lists));
            }
        }
        for t in [Tier::Admin, Tier::Baseline] {
            for (i, pol) in self.tiers.tier(t).iter().enumerate() {
                if here.iter().any(|p| self.cnp_selects(&pol.subject, p)) {
                    let fixed = crate::cnp::policy_elements(pol);
                    local.push((fixed, Which::Cnp(t, i), fixed, Vec::new()));
                }
            }
        }
        // The smallest first, by what is known without looking pods up (a
        // pod peer is at least one element): one large policy cannot
        // crowd out the others, and a policy that is over before its pod
        // sets are counted is refused without matching the pods against
        // its peers, the work the budget is there to bound. At most
        // `per_node` pod peers are looked up per pass (each is at least one
        // element, so no more can be taken).
        local.sort_by_key(|(lower, which, ..)| (*lower, *which));
        let mut set_elements: HashMap<PeerList, usize> = HashMap::new();
        let mut looked_up = 0usize;
        let mut counted: HashSet<PeerList> = HashSet::new();
        let mut total = 0usize;
        let mut over: Vec<(Which, String)> = Vec::new();
        for (lower, which, fixed, lists) in local {
            let new: Vec<PeerList> = lists
                .iter()
                .filter(|k| !counted.contains(*k))
                .copied()
                .collect();
            let left = budget.per_node - total;
            // Why a policy of `own` elements, `adds` of them new to the
            // node, is over (`exact`: counted, else lower bounds).
            let over_by = |own: usize, adds: usize, exact: bool| {
                let q = if exact { "" } else { "at least " };
                if own > budget.per_policy {
                    Some(format!(
                        "{q}{own} set elements, over the budget of {} per policy",
                        budget.per_policy
                    ))
                } else if adds > left {
                    Some(format!(
                        "{q}{adds} set elements, over what is left of the node's budget of {} ({total} taken by smaller policies)",
                        budget.per_node
                    ))
                } else {
                    None
                }
            };
            // Before any look-up: the lower bounds, which are the count
            // when there is nothing to look up.
            let new_lower = fixed + new.iter().map(|(_, l)| pod_peers(l)).sum::<usize>();
            let counted_already = lists.is_empty() && matches!(which, Which::V1(_));
            if let Some(why) = over_by(lower, new_lower, counted_already) {
                over.push((which, why));
                continue;
            }
            let unknown: usize = lists
                .iter()
                .filter(|k| !set_elements.contains_key(*k))
                .map(|(_, l)| pod_peers(l))
                .sum();
            if looked_up + unknown > budget.per_node {
                over.push((
                    which,
                    format!(
                        "{unknown} pod peers, more than are left to look up of the node's {} per pass",
                        budget.per_node
                    ),
                ));
                continue;
            }
            looked_up += unknown;
            for k in &lists {
                if !set_elements.contains_key(k) {
                    set_elements.insert(*k, self.pod_peer_elements(*k));
                }
            }
            let sets = |ks: &[PeerList]| -> usize {
                ks.iter()
                    .map(|k| set_elements.get(k).copied().unwrap_or(1))
                    .sum()
            };
            let peers = match which {
                Which::Cnp(t, i) => crate::cnp::eval::peer_addresses(self, &self.tiers.tier(t)[i]),
                Which::V1(_) => 0,
            };
            let (own, adds) = (fixed + peers + sets(&lists), fixed + peers + sets(&new));
            match over_by(own, adds, true) {
                Some(why) => over.push((which, why)),
                None => {
                    total += adds;
                    counted.extend(new);
                }
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
}

//! The element budgets: what a policy may make, and the policies over
//! them refused for a node.

use super::{Cluster, PeerSel, PodInfo, Policy, Refusal, Report};

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

impl Cluster {
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
        // this node's pods, found once for every policy
        let here: Vec<&PodInfo> = self
            .pods
            .values()
            .filter(|p| p.node == node && !p.host_network)
            .collect();
        for (i, pol) in self.policies.iter().enumerate() {
            let selects_here = here
                .iter()
                .any(|p| pol.namespace == p.namespace && pol.selector.matches(&p.labels));
            if selects_here {
                local.push((policy_elements(pol), Which::V1(i)));
            }
        }
        for t in [Tier::Admin, Tier::Baseline] {
            for (i, pol) in self.tiers.tier(t).iter().enumerate() {
                let selects_here = here.iter().any(|p| self.cnp_selects(&pol.subject, p));
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
}

//! The compiler: a [`Cluster`] and a node's context in, one atomic
//! replacement of table `inet kindnet-netpol` out (see the crate docs for
//! the layout).

use kindnet_nft::{
    BaseChain, Batch, ChainDef, ChainType, Cmd, Elem, Expr, Family, Hook, KeyType, Lhs, LimitPer,
    LogPrefix, MapData, Name, Op, Policy, Rhs, RuleDef, SetDef, TableRef, Value,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use crate::cluster::{Cluster, Direction, NamedPort, NodeContext};
use crate::input::Labels;

mod rules;
mod tiers;

pub(crate) use rules::merge_ports;
use rules::{Builder, Chosen, allow_exprs, choose, conflict_chain, denied_counter};

/// The table's name (family `inet`).
pub const TABLE: &str = "kindnet-netpol";
/// The base chain (hook forward, priority filter).
pub const FORWARD_CHAIN: &str = "forward";
/// The base chain of traffic to the node itself (hook input, priority
/// filter): the egress of the node's own pods to its addresses.
pub const INPUT_CHAIN: &str = "input";
/// The chain holding the ingress dispatch, reached after egress allowed.
pub const INGRESS_CHAIN: &str = "ingress";
/// Named counters of packets dropped per direction (for metrics).
pub const DENIED_INGRESS_COUNTER: &str = "denied-ingress";
/// See [`DENIED_INGRESS_COUNTER`].
pub const DENIED_EGRESS_COUNTER: &str = "denied-egress";

/// Log lines of denied packets, per pod chain.
const LOG_RATE_PER_SECOND: u32 = 10;
const LOG_BURST: u32 = 20;

/// `inet kindnet-netpol`.
pub fn table() -> TableRef {
    TableRef {
        family: Family::Inet,
        name: Name::fixed(TABLE),
    }
}

/// The dispatch map of a direction and family: `ingress4`, `egress6`…
pub fn dispatch_map(d: Direction, v6: bool) -> Name {
    Name::fixed(&format!("{}{}", d.as_str(), if v6 { 6 } else { 4 }))
}

fn node_set(v6: bool) -> Name {
    Name::fixed(if v6 { "node-ips6" } else { "node-ips4" })
}

pub(crate) fn hex16(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// `prefix-<16 hex digits of SHA-256 of prefix and what>`: a name for
/// what a set or chain stands for, short enough for nftables.
pub(crate) fn hashed(prefix: &str, what: &str) -> Name {
    let mut h = Sha256::new();
    h.update(prefix.as_bytes());
    h.update(b"\0");
    h.update(what.as_bytes());
    Name::fixed(&format!("{prefix}-{}", hex16(&h.finalize())))
}

/// A set named by what it stands for (`id`: the policy rule, and the
/// subject pod where the content depends on it), not by its content: when
/// pods come, go or change labels, a set keeps its name and only its
/// elements change, so kindnetd can apply an element diff instead of
/// replacing the table. Made once in `sets` and shared by every chain
/// that names it (both tiers and v1 rules build their sets here).
pub(crate) fn named_set(
    sets: &mut BTreeMap<Name, SetDef>,
    prefix: &str,
    id: &str,
    key: Vec<KeyType>,
    interval: bool,
    mut elems: Vec<Value>,
) -> Name {
    elems.sort();
    elems.dedup();
    let n = hashed(prefix, id);
    sets.entry(n.clone()).or_insert_with(|| {
        let s =
            SetDef::set(n.clone(), key).with_elements(elems.into_iter().map(Elem::key).collect());
        if interval { s.interval() } else { s }
    });
    n
}

/// 16 hex digits of SHA-256 of `namespace/name`: the pod's part of its
/// chain names, stable across restarts and nodes.
pub fn pod_hash(namespace: &str, name: &str) -> String {
    let mut h = Sha256::new();
    h.update(namespace.as_bytes());
    h.update(b"/");
    h.update(name.as_bytes());
    hex16(&h.finalize())
}

/// The pod's chain for a direction: `ing-<16hex>` / `egr-<16hex>`.
/// kindnetd creates both for every local pod it knows, before the pod's
/// sandbox exists, so the CNI plugin can point the dispatch maps at them.
pub fn pod_chain(namespace: &str, pod: &str, d: Direction) -> Name {
    chain_name(d, &pod_hash(namespace, pod))
}

/// A pod's chain from its [`pod_hash`].
fn chain_name(d: Direction, hash: &str) -> Name {
    let tag = match d {
        Direction::Ingress => "ing",
        Direction::Egress => "egr",
    };
    Name::fixed(&format!("{tag}-{hash}"))
}

fn dispatch_elems(namespace: &str, pod: &str, d: Direction, ips: &[IpAddr], v6: bool) -> Vec<Elem> {
    dispatch_elems_to(&pod_chain(namespace, pod, d), ips, v6)
}

fn dispatch_elems_to(chain: &Name, ips: &[IpAddr], v6: bool) -> Vec<Elem> {
    ips.iter()
        .filter(|a| a.is_ipv6() == v6)
        .map(|a| Elem {
            key: Value::Addr(*a),
            data: Some(Value::Goto(chain.clone())),
            comment: None,
        })
        .collect()
}

/// What the CNI plugin adds at ADD time: the pod's addresses in all four
/// dispatch maps, pointing at the pod's chains (which kindnetd made from
/// the Pod object: isolating ones when policies select the pod, pass-through
/// ones otherwise). Fails as one transaction, changing nothing, when the
/// table or the chains do not exist yet, or when an address is still mapped
/// to another pod's chain (delete those elements first).
pub fn pod_dispatch_elements(namespace: &str, pod: &str, ips: &[IpAddr]) -> Batch {
    let t = table();
    let mut b = Batch::new();
    for d in [Direction::Ingress, Direction::Egress] {
        for v6 in [false, true] {
            b.add_elements(
                &t,
                &dispatch_map(d, v6),
                dispatch_elems(namespace, pod, d, ips, v6),
            );
        }
    }
    b
}

/// Sizes of a compiled ruleset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Valid policies in the cluster.
    pub policies: usize,
    /// Valid ClusterNetworkPolicies of the Admin tier.
    pub admin_policies: usize,
    /// Valid ClusterNetworkPolicies of the Baseline tier.
    pub baseline_policies: usize,
    /// Local pods isolated in at least one direction.
    pub selected_pods: usize,
    /// Local pods with chains (every local pod on the pod network).
    pub local_pods: usize,
    /// Chains, the base chain included.
    pub chains: usize,
    /// Rules, in every chain.
    pub rules: usize,
    /// Sets and maps.
    pub sets: usize,
    /// Elements, in every set and map.
    pub elements: usize,
}

/// What [`compile`] returns: the batch and its sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The whole table, as one transaction.
    pub batch: Batch,
    /// Its sizes (for metrics and logs).
    pub stats: Stats,
}

/// Compiles the cluster for one node: the whole table, replaced in one
/// transaction. The same input gives the same batch.
pub fn compile(c: &Cluster, ctx: &NodeContext) -> Compiled {
    let t = table();
    let ingress = Name::fixed(INGRESS_CHAIN);
    let forward = Name::fixed(FORWARD_CHAIN);
    let input = Name::fixed(INPUT_CHAIN);
    let mut b = Builder {
        c,
        sets: BTreeMap::new(),
        shared: HashMap::new(),
        peers: HashMap::new(),
        ports: HashMap::new(),
    };
    let mut stats = Stats {
        policies: c.policies.len(),
        admin_policies: c.tiers.admin.len(),
        baseline_policies: c.tiers.baseline.len(),
        ..Stats::default()
    };
    let mut chains: Vec<ChainDef> = Vec::new();
    let mut rules: Vec<RuleDef> = Vec::new();
    let mut maps: BTreeMap<(Direction, bool), Vec<Elem>> = BTreeMap::new();
    let mut made: BTreeSet<Name> = BTreeSet::new();
    // ClusterNetworkPolicy: the Admin and Baseline chains around v1's
    let mut tiers = tiers::TierBuilder::new(c, ctx.log_denied);

    // What a pod's chains come to depends on its namespace, labels and
    // named ports only, never on its name or addresses: pods of one shape
    // (replicas) share the work of finding their policies and rules.
    let mut shapes: HashMap<(&str, &Labels, &[NamedPort]), [Chosen; 2]> = HashMap::new();

    for p in c.network_pods().filter(|p| p.node == ctx.node_name) {
        stats.local_pods += 1;
        let mut selected = false;
        let shape = shapes
            .entry((p.namespace.as_str(), &p.labels, p.ports.as_slice()))
            .or_insert_with(|| {
                [Direction::Ingress, Direction::Egress]
                    .map(|d| choose(&mut b, p, d, ctx.log_denied))
            });
        let hash = pod_hash(&p.namespace, &p.name);
        for (d, chosen) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .zip(shape.iter())
        {
            let chain = chain_name(d, &hash);
            chains.push(ChainDef {
                name: chain.clone(),
                base: None,
            });
            let verdict = match d {
                Direction::Ingress => Expr::Accept,
                Direction::Egress => Expr::Goto(ingress.clone()),
            };
            let tier = tiers.pod(p, d);
            if let Some(admin) = &tier.admin {
                rules.push(RuleDef::new(&chain, vec![Expr::Jump(admin.clone())]));
            }
            let isolating = match chosen {
                // pass-through: the pod is not isolated this way, but the
                // chain must exist for the CNI's dispatch elements
                Chosen::Open => {
                    let tail = match &tier.baseline {
                        Some(baseline) => Expr::Goto(baseline.clone()),
                        None => verdict,
                    };
                    rules.push(RuleDef::new(&chain, vec![tail]));
                    if tier.any() {
                        for v6 in [false, true] {
                            maps.entry((d, v6))
                                .or_default()
                                .extend(dispatch_elems_to(&chain, &p.ips, v6));
                        }
                    }
                    continue;
                }
                Chosen::All => None,
                Chosen::Rules { shared, allows } => Some((shared, allows)),
            };
            selected = true;
            for v6 in [false, true] {
                maps.entry((d, v6))
                    .or_default()
                    .extend(dispatch_elems_to(&chain, &p.ips, v6));
            }
            let Some((shared, allows)) = isolating else {
                rules.push(RuleDef::new(&chain, vec![verdict]));
                continue;
            };
            // the pod's chain jumps to a chain shared by every pod whose
            // policies come to the same rules: rules grow with distinct
            // policy combinations, not with pods
            rules.push(RuleDef::new(&chain, vec![Expr::Goto(shared.clone())]));
            if !made.insert(shared.clone()) {
                continue;
            }
            chains.push(ChainDef {
                name: shared.clone(),
                base: None,
            });
            for a in allows {
                let mut e = allow_exprs(a, d);
                e.push(verdict.clone());
                rules.push(RuleDef::new(shared, e));
            }
            if ctx.log_denied {
                let prefix = LogPrefix::new(format!("kindnet-netpol {d} drop: "))
                    .unwrap_or_else(|e| unreachable!("{e}"));
                rules.push(RuleDef::new(
                    shared,
                    vec![
                        Expr::Limit {
                            rate: LOG_RATE_PER_SECOND,
                            per: LimitPer::Second,
                            burst: LOG_BURST,
                        },
                        Expr::Log(prefix),
                    ],
                ));
            }
            rules.push(RuleDef::new(
                shared,
                vec![
                    Expr::Counter,
                    Expr::CounterRef(denied_counter(d)),
                    Expr::Drop,
                ],
            ));
        }
        if selected {
            stats.selected_pods += 1;
        }
    }
    // an address several pods claim: where a local claimant is isolated,
    // its traffic that way is dropped (no claimant's chain is chosen)
    for (ip, _) in c.conflicts.iter() {
        for d in [Direction::Ingress, Direction::Egress] {
            let isolated = c
                .claimants(*ip)
                .any(|p| p.node == ctx.node_name && c.policies_for(p, d).next().is_some());
            if !isolated {
                continue;
            }
            let chain = conflict_chain(d);
            if made.insert(chain.clone()) {
                chains.push(ChainDef {
                    name: chain.clone(),
                    base: None,
                });
                rules.push(RuleDef::new(
                    &chain,
                    vec![
                        Expr::Counter,
                        Expr::CounterRef(denied_counter(d)),
                        Expr::Drop,
                    ],
                ));
            }
            maps.entry((d, ip.is_ipv6()))
                .or_default()
                .extend(dispatch_elems_to(&chain, &[*ip], ip.is_ipv6()));
        }
    }

    let (tier_sets, tier_chains) = tiers.finish();
    b.sets.extend(tier_sets);
    for (name, body) in tier_chains {
        chains.push(ChainDef {
            name: name.clone(),
            base: None,
        });
        rules.extend(body.into_iter().map(|e| RuleDef::new(&name, e)));
    }

    let mut batch = Batch::new();
    // add + delete + add: replaces the table (or makes it) in one transaction
    batch.remove_table(&t).add_table(&t);
    let tier_counters = crate::cnp::DENIED_COUNTERS.iter().map(|c| c.2);
    for c in [DENIED_INGRESS_COUNTER, DENIED_EGRESS_COUNTER]
        .into_iter()
        .chain(tier_counters)
    {
        batch.add_counter(&t, &Name::fixed(c));
    }
    batch.add_chain(
        &t,
        ChainDef {
            name: forward.clone(),
            base: Some(BaseChain {
                ty: ChainType::Filter,
                hook: Hook::Forward,
                prio: 0,
                policy: Policy::Accept,
            }),
        },
    );
    batch.add_chain(
        &t,
        ChainDef {
            name: input.clone(),
            base: Some(BaseChain {
                ty: ChainType::Filter,
                hook: Hook::Input,
                prio: 0,
                policy: Policy::Accept,
            }),
        },
    );
    batch.add_chain(
        &t,
        ChainDef {
            name: ingress.clone(),
            base: None,
        },
    );
    stats.chains = 3 + chains.len();
    for ch in chains {
        batch.add_chain(&t, ch);
    }
    for v6 in [false, true] {
        let mut ips: Vec<IpAddr> = ctx
            .node_ips
            .iter()
            .copied()
            .filter(|a| a.is_ipv6() == v6)
            .collect();
        ips.sort();
        ips.dedup();
        let s = SetDef::set(node_set(v6), vec![KeyType::addr(v6)])
            .with_elements(ips.into_iter().map(|a| Elem::key(Value::Addr(a))).collect());
        b.sets.insert(s.name.clone(), s);
    }
    for d in [Direction::Ingress, Direction::Egress] {
        for v6 in [false, true] {
            let elems = maps.remove(&(d, v6)).unwrap_or_default();
            let m = SetDef::map(
                dispatch_map(d, v6),
                vec![KeyType::addr(v6)],
                MapData::Verdict,
            )
            .with_elements(elems);
            b.sets.insert(m.name.clone(), m);
        }
    }
    stats.sets = b.sets.len();
    for s in b.sets.into_values() {
        stats.elements += s.elements.len();
        batch.add_set(&t, s);
    }

    let mut base = vec![
        vec![
            Expr::Match {
                left: Lhs::CtState,
                op: Op::In,
                right: Rhs::Keywords(&["established", "related"]),
            },
            Expr::Accept,
        ],
        vec![
            Expr::Match {
                left: Lhs::CtState,
                op: Op::In,
                right: Rhs::Keyword("invalid"),
            },
            Expr::Drop,
        ],
    ];
    for v6 in [false, true] {
        for lhs in [Lhs::Saddr { v6 }, Lhs::Daddr { v6 }] {
            base.push(vec![Expr::eq(lhs, Rhs::Set(node_set(v6))), Expr::Accept]);
        }
    }
    for v6 in [false, true] {
        base.push(vec![Expr::VerdictMap {
            key: Lhs::Saddr { v6 },
            map: dispatch_map(Direction::Egress, v6),
        }]);
    }
    base.push(vec![Expr::Goto(ingress.clone())]);
    let mut all: Vec<RuleDef> = base
        .into_iter()
        .map(|e| RuleDef::new(&forward, e))
        .collect();
    all.extend(input_rules().into_iter().map(|e| RuleDef::new(&input, e)));
    for v6 in [false, true] {
        all.push(RuleDef::new(
            &ingress,
            vec![Expr::VerdictMap {
                key: Lhs::Daddr { v6 },
                map: dispatch_map(Direction::Ingress, v6),
            }],
        ));
    }
    // explicit: an Admin tier's egress Accept reaches `ingress` from a
    // jumped-to chain, where falling off the end would return
    all.push(RuleDef::new(&ingress, vec![Expr::Accept]));
    all.extend(rules);
    stats.rules = all.len();
    for r in all {
        batch.push(Cmd::AddRule(t.clone(), r));
    }
    Compiled { batch, stats }
}

/// The input hook: a packet from one of the node's own pods to one of
/// the node's addresses (its node IPs, the pods' gateway, a hostNetwork
/// pod) goes through the pod's egress chain as forwarded traffic does;
/// the destination has no ingress chain, so `goto ingress` ends in
/// `accept`. Only a source address in the egress dispatch maps is
/// looked at: the node's own pods (the anti-spoofing table makes their
/// packets carry their own address), never the node's own traffic.
/// Replies and related ICMP pass; so does what conntrack leaves
/// untracked (IPv6 neighbour discovery and MLD, which a pod must send to
/// reach anything). The host's own connections to its pods (kubelet
/// probes) leave through the output hook and are not looked at.
fn input_rules() -> Vec<Vec<Expr>> {
    let mut out = vec![vec![
        Expr::Match {
            left: Lhs::CtState,
            op: Op::In,
            right: Rhs::Keywords(&["established", "related", "untracked"]),
        },
        Expr::Accept,
    ]];
    for v6 in [false, true] {
        out.push(vec![Expr::VerdictMap {
            key: Lhs::Saddr { v6 },
            map: dispatch_map(Direction::Egress, v6),
        }]);
    }
    out
}

#[cfg(test)]
mod tests;

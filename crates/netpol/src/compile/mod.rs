//! The compiler: a [`Cluster`] and a node's context in, one atomic
//! replacement of table `inet kindnet-netpol` out (see the crate docs for
//! the layout).

use kindnet_nft::{
    BaseChain, Batch, ChainDef, ChainType, Cmd, Elem, Expr, Family, Hook, KeyType, L4Proto, Lhs,
    LimitPer, LogPrefix, MapData, Name, Op, Policy, Rhs, RuleDef, SetDef, TableRef, Value,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::rc::Rc;

use crate::cidr::Ranges;
use crate::cluster::{
    Cluster, Direction, NamedPort, NodeContext, PeerSel, PodInfo, PortMatch, RuleSel,
};
use crate::input::Labels;

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

/// One allowing rule of a pod chain, as the lookups it makes. Ordered, so
/// chains come out the same for the same input.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Allow {
    /// Everything.
    All,
    /// The peer address (saddr for ingress, daddr for egress) is in a set.
    Peers {
        v6: bool,
        peers: Name,
    },
    /// `meta l4proto . th dport` is in a set (every peer).
    Ports {
        ports: Name,
    },
    Both {
        v6: bool,
        peers: Name,
        ports: Name,
    },
    /// Egress to named ports, resolved per destination pod:
    /// `ip daddr . meta l4proto . th dport`.
    DstPorts {
        v6: bool,
        set: Name,
    },
}

struct Builder<'a> {
    c: &'a Cluster,
    sets: BTreeMap<Name, SetDef>,
    /// The allows of rules that do not depend on the subject pod, by the
    /// rule's address (the cluster is borrowed for the whole compile), so
    /// a policy selecting many pods computes its peers once.
    shared: HashMap<(usize, Direction), Vec<Allow>>,
    /// Peer addresses and their set names by namespace and peer
    /// selectors: rules of many policies with the same peers compute them
    /// once.
    peers: HashMap<(&'a str, &'a [PeerSel]), Rc<Peers>>,
    /// Port sets by their elements (as merged, before sorting).
    ports: HashMap<Vec<Value>, Name>,
}

/// The addresses a rule's peers stand for, per family, with the names of
/// their sets (`None`: the family has no peer address).
type Peers = Option<[(Ranges, Option<Name>); 2]>;

impl<'a> Builder<'a> {
    /// A set named by what it stands for (`id`: the policy rule, and the
    /// subject pod where the content depends on it), not by its content:
    /// when pods come, go or change labels, a set keeps its name and only
    /// its elements change, so kindnetd can apply an element diff instead
    /// of replacing the table. A rule's set is made once and shared by
    /// every chain of the pods the rule's policy selects.
    fn set(
        &mut self,
        prefix: &str,
        id: &str,
        key: Vec<KeyType>,
        interval: bool,
        mut elems: Vec<Value>,
    ) -> Name {
        elems.sort();
        elems.dedup();
        let mut h = Sha256::new();
        h.update(prefix.as_bytes());
        h.update(b"\0");
        h.update(id.as_bytes());
        let n = Name::fixed(&format!("{prefix}-{}", hex16(&h.finalize())));
        self.sets.entry(n.clone()).or_insert_with(|| {
            let s = SetDef::set(n.clone(), key)
                .with_elements(elems.into_iter().map(Elem::key).collect());
            if interval { s.interval() } else { s }
        });
        n
    }

    fn peer_set(&mut self, id: &str, r: &Ranges) -> Name {
        // one element per range (`a-b`, or the prefix or address it is)
        let elems = r
            .intervals()
            .into_iter()
            .filter_map(|(a, b)| Value::addr_range(a, b))
            .collect();
        let prefix = if r.v6 { "peers6" } else { "peers4" };
        self.set(prefix, id, vec![KeyType::addr(r.v6)], true, elems)
    }

    /// The addresses a rule's peers stand for, per family.
    fn peer_ranges(&self, ns: &str, r: &RuleSel) -> [Ranges; 2] {
        let mut out = [Ranges::empty(false), Ranges::empty(true)];
        for sel in &r.peers {
            match sel {
                PeerSel::Block(b) => out[b.v6 as usize].add(b),
                PeerSel::Pods { .. } => {
                    let ips: Vec<IpAddr> = self
                        .c
                        .network_pods()
                        .filter(|q| self.c.peer_matches_pod(ns, sel, q))
                        .flat_map(|q| q.ips.iter().copied())
                        .collect();
                    for r in out.iter_mut() {
                        r.add_addrs(ips.iter().copied());
                    }
                }
            }
        }
        out
    }

    /// A rule of a policy in `ns` for a subject pod.
    fn allows(
        &mut self,
        ns: &'a str,
        r: &'a RuleSel,
        d: Direction,
        subject: &PodInfo,
    ) -> Vec<Allow> {
        // only ingress named ports are resolved on the subject
        let per_subject = d == Direction::Ingress
            && r.ports
                .iter()
                .any(|p| matches!(p.port, PortMatch::Named(_)));
        if per_subject {
            return self.compute_allows(ns, r, d, subject);
        }
        let key = (std::ptr::from_ref(r) as usize, d);
        if let Some(a) = self.shared.get(&key) {
            return a.clone();
        }
        let a = self.compute_allows(ns, r, d, subject);
        self.shared.insert(key, a.clone());
        a
    }

    /// The addresses of a rule's peers and their sets.
    fn peers(&mut self, ns: &'a str, r: &'a RuleSel) -> Rc<Peers> {
        if let Some(p) = self.peers.get(&(ns, r.peers.as_slice())) {
            return p.clone();
        }
        // pod peers come and go: their sets exist (maybe empty) so that
        // membership changes only touch elements
        let dynamic = r.peers.iter().any(|p| matches!(p, PeerSel::Pods { .. }));
        // named by what selects them: rules with the same peers in a
        // namespace share the set, and it keeps its name while its members
        // change
        let p = Rc::new((!r.peers.is_empty()).then(|| {
            let peers_id = format!("{ns}/{:?}", r.peers);
            self.peer_ranges(ns, r).map(|r| {
                let n = (dynamic || !r.is_empty()).then(|| self.peer_set(&peers_id, &r));
                (r, n)
            })
        }));
        self.peers.insert((ns, r.peers.as_slice()), p.clone());
        p
    }

    fn compute_allows(
        &mut self,
        ns: &'a str,
        r: &'a RuleSel,
        d: Direction,
        subject: &PodInfo,
    ) -> Vec<Allow> {
        let peers = self.peers(ns, r);
        let peers = peers.as_ref();
        if r.ports.is_empty() {
            return match peers {
                None => vec![Allow::All],
                Some(p) => p
                    .iter()
                    .filter_map(|(r, n)| n.clone().map(|peers| Allow::Peers { v6: r.v6, peers }))
                    .collect(),
            };
        }
        // numeric ports (and, for ingress, named ports of the subject)
        let mut numeric: BTreeMap<L4Proto, Vec<(u16, u16)>> = BTreeMap::new();
        let mut named: Vec<(L4Proto, &str)> = Vec::new();
        for ps in &r.ports {
            match &ps.port {
                PortMatch::All => numeric.entry(ps.proto).or_default().push((0, u16::MAX)),
                PortMatch::Range(lo, hi) => numeric.entry(ps.proto).or_default().push((*lo, *hi)),
                PortMatch::Named(n) if d == Direction::Ingress => {
                    for cp in &subject.ports {
                        if &cp.name == n && cp.proto == ps.proto {
                            numeric
                                .entry(ps.proto)
                                .or_default()
                                .push((cp.port, cp.port));
                        }
                    }
                }
                PortMatch::Named(n) => named.push((ps.proto, n)),
            }
        }
        let mut out = Vec::new();
        if !numeric.is_empty() {
            let mut elems = Vec::new();
            for (proto, ranges) in numeric {
                for (lo, hi) in merge_ports(ranges) {
                    let port = if lo == hi {
                        Value::Port(lo)
                    } else {
                        Value::PortRange(lo, hi)
                    };
                    elems.push(Value::Concat(vec![Value::Proto(proto), port]));
                }
            }
            // ports never change with pods: named by their content
            let ports = match self.ports.get(&elems) {
                Some(n) => n.clone(),
                None => {
                    let n = self.set(
                        "ports",
                        &format!("{elems:?}"),
                        vec![KeyType::InetProto, KeyType::InetService],
                        true,
                        elems.clone(),
                    );
                    self.ports.insert(elems, n.clone());
                    n
                }
            };
            match peers {
                None => out.push(Allow::Ports { ports }),
                Some(p) => {
                    for (r, n) in p {
                        if let Some(peers) = n {
                            out.push(Allow::Both {
                                v6: r.v6,
                                peers: peers.clone(),
                                ports: ports.clone(),
                            });
                        }
                    }
                }
            }
        }
        if !named.is_empty() {
            for v6 in [false, true] {
                let mut elems = Vec::new();
                for q in self.c.network_pods() {
                    let Some(ip) = q.ip(v6) else { continue };
                    if peers
                        .as_ref()
                        .is_some_and(|p| !p[v6 as usize].0.contains(ip))
                    {
                        continue;
                    }
                    for (proto, n) in &named {
                        for cp in &q.ports {
                            if &cp.name == n && cp.proto == *proto {
                                elems.push(Value::Concat(vec![
                                    Value::Addr(ip),
                                    Value::Proto(*proto),
                                    Value::Port(cp.port),
                                ]));
                            }
                        }
                    }
                }
                // (made also when empty: pods with the port may come)
                let prefix = if v6 { "dports6" } else { "dports4" };
                let key = vec![KeyType::addr(v6), KeyType::InetProto, KeyType::InetService];
                let set = self.set(
                    prefix,
                    &format!("{ns}/{:?}/{named:?}", r.peers),
                    key,
                    false,
                    elems,
                );
                out.push(Allow::DstPorts { v6, set });
            }
        }
        out
    }
}

/// Sorted, overlapping and adjacent ranges merged (interval sets refuse
/// overlaps).
pub(crate) fn merge_ports(mut r: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    r.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for (lo, hi) in r {
        match out.last_mut() {
            Some(last) if lo as u32 <= last.1 as u32 + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn denied_counter(d: Direction) -> Name {
    Name::fixed(match d {
        Direction::Ingress => DENIED_INGRESS_COUNTER,
        Direction::Egress => DENIED_EGRESS_COUNTER,
    })
}

/// The chain dropping a direction's traffic of addresses several pods
/// claim: `conflict-ingress` / `conflict-egress`.
fn conflict_chain(d: Direction) -> Name {
    Name::fixed(&format!("conflict-{d}"))
}

/// The shared chain of a direction's rules: `pin-<16hex>` (ingress) /
/// `pen-<16hex>` (egress), named by the rules.
fn shared_chain(d: Direction, allows: &BTreeSet<Allow>, log: bool) -> Name {
    let mut h = Sha256::new();
    h.update(format!("{d}/{log}/{allows:?}").as_bytes());
    let tag = match d {
        Direction::Ingress => "pin",
        Direction::Egress => "pen",
    };
    Name::fixed(&format!("{tag}-{}", hex16(&h.finalize())))
}

fn allow_exprs(a: &Allow, d: Direction) -> Vec<Expr> {
    let peer = |v6: bool| match d {
        Direction::Ingress => Lhs::Saddr { v6 },
        Direction::Egress => Lhs::Daddr { v6 },
    };
    let proto_port = || Lhs::Concat(vec![Lhs::L4Proto, Lhs::ThDport]);
    let set = |n: &Name| Rhs::Set(n.clone());
    match a {
        Allow::All => vec![],
        Allow::Peers { v6, peers } => vec![Expr::eq(peer(*v6), set(peers))],
        Allow::Ports { ports } => vec![Expr::eq(proto_port(), set(ports))],
        Allow::Both { v6, peers, ports } => vec![
            Expr::eq(peer(*v6), set(peers)),
            Expr::eq(proto_port(), set(ports)),
        ],
        Allow::DstPorts { v6, set: s } => vec![Expr::eq(
            Lhs::Concat(vec![Lhs::Daddr { v6: *v6 }, Lhs::L4Proto, Lhs::ThDport]),
            set(s),
        )],
    }
}

/// What a pod's chain of one direction comes to.
enum Chosen {
    /// No policy selects the pod this way: pass-through.
    Open,
    /// Selected, and some rule allows everything.
    All,
    /// Selected: a goto to the shared chain of these rules.
    Rules {
        shared: Name,
        allows: BTreeSet<Allow>,
    },
}

/// The policies selecting `p` for `d` and the rules they come to.
fn choose<'a>(b: &mut Builder<'a>, p: &'a PodInfo, d: Direction, log: bool) -> Chosen {
    let c = b.c;
    let mut selected = false;
    let mut allows = BTreeSet::new();
    for pol in c.policies_for(p, d) {
        selected = true;
        for r in pol.rules(d).unwrap_or_default() {
            allows.extend(b.allows(&pol.namespace, r, d, p));
        }
    }
    if !selected {
        Chosen::Open
    } else if allows.contains(&Allow::All) {
        Chosen::All
    } else {
        Chosen::Rules {
            shared: shared_chain(d, &allows, log),
            allows,
        }
    }
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
    let mut tiers = crate::cnp::compile::TierBuilder::new(c, ctx.log_denied);

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
mod tests {
    use super::*;
    use crate::input::{Namespace, NetworkPolicy, Pod};
    use serde_json::json;

    fn pod(ns: &str, name: &str, node: &str, ips: &[&str]) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"pod": name}},
            "spec": {"nodeName": node, "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}
        }))
        .unwrap()
    }

    fn ctx() -> NodeContext {
        NodeContext {
            node_name: "n1".into(),
            node_ips: vec!["172.18.0.2".parse().unwrap()],
            log_denied: false,
            pod_cidrs: Vec::new(),
        }
    }

    fn cluster(policies: serde_json::Value) -> Cluster {
        let pods = [
            pod("x", "a", "n1", &["10.0.1.2", "fd00::2"]),
            pod("x", "b", "n1", &[]), // pending: no address yet
            pod("x", "r", "n2", &["10.0.2.2"]),
        ];
        let pols: Vec<NetworkPolicy> = serde_json::from_value(policies).unwrap();
        let ns: Vec<Namespace> = vec![];
        Cluster::new(&pods, &ns, &pols, &[ctx()]).0
    }

    fn deny_ingress() -> serde_json::Value {
        json!([{"metadata": {"namespace": "x", "name": "deny"}, "spec": {"podSelector": {}}}])
    }

    #[test]
    fn chain_names_are_stable_hashes() {
        let n = pod_chain("x", "a", Direction::Ingress);
        assert_eq!(n.as_str(), format!("ing-{}", pod_hash("x", "a")));
        assert_eq!(pod_hash("x", "a").len(), 16);
        assert_ne!(pod_hash("x", "a"), pod_hash("x", "b"));
        // the separator keeps "x/ab" and "xa/b" apart
        assert_ne!(pod_hash("x", "ab"), pod_hash("xa", "b"));
        assert!(
            pod_chain("x", "a", Direction::Egress)
                .as_str()
                .starts_with("egr-")
        );
    }

    #[test]
    fn the_table_is_replaced_in_one_batch_and_output_is_deterministic() {
        let c = cluster(deny_ingress());
        let a = compile(&c, &ctx());
        assert_eq!(a, compile(&c, &ctx()));
        let t = table();
        assert_eq!(a.batch.cmds[0], Cmd::AddTable(t.clone()));
        assert_eq!(a.batch.cmds[1], Cmd::DeleteTable(t.clone()));
        assert_eq!(a.batch.cmds[2], Cmd::AddTable(t));
        assert_eq!(a.stats.policies, 1);
        assert_eq!(a.stats.local_pods, 2, "x/r is remote");
        assert_eq!(a.stats.selected_pods, 2, "the pending pod too");
    }

    #[test]
    fn only_known_addresses_of_isolated_pods_are_dispatched() {
        let c = cluster(deny_ingress());
        let b = compile(&c, &ctx()).batch;
        let map = |d: Direction, v6: bool| -> Vec<Elem> {
            b.cmds
                .iter()
                .find_map(|c| match c {
                    Cmd::AddSet(_, s) if s.name == dispatch_map(d, v6) => Some(s.elements.clone()),
                    _ => None,
                })
                .unwrap()
        };
        let ing4 = map(Direction::Ingress, false);
        assert_eq!(ing4.len(), 1);
        assert_eq!(ing4[0].key, Value::Addr("10.0.1.2".parse().unwrap()));
        assert_eq!(
            ing4[0].data,
            Some(Value::Goto(pod_chain("x", "a", Direction::Ingress)))
        );
        assert_eq!(map(Direction::Ingress, true).len(), 1);
        assert!(
            map(Direction::Egress, false).is_empty(),
            "not isolated for egress"
        );
        // the pending pod's chains exist, for the CNI's elements
        let chains: Vec<&Name> = b
            .cmds
            .iter()
            .filter_map(|c| match c {
                Cmd::AddChain(_, ch) => Some(&ch.name),
                _ => None,
            })
            .collect();
        for d in [Direction::Ingress, Direction::Egress] {
            assert!(chains.contains(&&pod_chain("x", "b", d)));
            assert!(
                !chains.contains(&&pod_chain("x", "r", d)),
                "remote pods get no chains"
            );
        }
    }

    #[test]
    fn dispatch_elements_for_the_cni_are_exactly_the_pods_addresses() {
        let ips: Vec<IpAddr> = vec!["10.0.1.9".parse().unwrap(), "fd00::9".parse().unwrap()];
        let b = pod_dispatch_elements("x", "b", &ips);
        assert_eq!(b.cmds.len(), 4);
        for c in &b.cmds {
            let Cmd::AddElements(t, map, e) = c else {
                panic!("{c:?}")
            };
            assert_eq!(t, &table());
            assert_eq!(e.len(), 1);
            let d = if map.as_str().starts_with("ingress") {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            assert_eq!(e[0].data, Some(Value::Goto(pod_chain("x", "b", d))));
            assert_eq!(
                e[0].key.clone(),
                Value::Addr(ips[map.as_str().ends_with('6') as usize])
            );
        }
        assert!(pod_dispatch_elements("x", "b", &[]).is_empty());
    }

    #[test]
    fn equal_sets_are_shared_and_log_is_behind_the_flag() {
        let c = cluster(json!([
            {"metadata": {"namespace": "x", "name": "p1"}, "spec": {"podSelector": {},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "r"}}}], "ports": [{"port": 80}]}]}},
            {"metadata": {"namespace": "x", "name": "p2"}, "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "r"}}}], "ports": [{"port": 80}]}]}}
        ]));
        let plain = compile(&c, &ctx());
        let sets: Vec<&Name> = plain
            .batch
            .cmds
            .iter()
            .filter_map(|c| match c {
                Cmd::AddSet(_, s)
                    if s.name.as_str().starts_with("peers")
                        || s.name.as_str().starts_with("ports") =>
                {
                    Some(&s.name)
                }
                _ => None,
            })
            .collect();
        // peers4, peers6 (empty: pods may come) and ports, made once for
        // both policies (same namespace, same peers, same ports) however
        // many pods they select
        assert_eq!(sets.len(), 3, "{sets:?}");
        let has_log = |b: &Batch| {
            b.cmds
                .iter()
                .any(|c| matches!(c, Cmd::AddRule(_, r) if r.exprs.iter().any(|e| matches!(e, Expr::Log(_)))))
        };
        assert!(!has_log(&plain.batch));
        let logged = compile(
            &c,
            &NodeContext {
                log_denied: true,
                pod_cidrs: Vec::new(),
                ..ctx()
            },
        );
        assert!(has_log(&logged.batch));
    }

    #[test]
    fn a_membership_change_changes_elements_only() {
        let pols = json!([{"metadata": {"namespace": "x", "name": "p"}, "spec": {"podSelector": {},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}],
            "egress": [{"ports": [{"port": "http"}]}]}}]);
        let pols: Vec<NetworkPolicy> = serde_json::from_value(pols).unwrap();
        let mut pods = vec![
            pod("x", "a", "n1", &["10.0.1.2", "fd00::2"]),
            pod("x", "r", "n2", &["10.0.2.2"]),
        ];
        let build = |pods: &[Pod]| compile(&Cluster::new(pods, &[], &pols, &[ctx()]).0, &ctx());
        let before = build(&pods);
        pods[1].labels.insert("role".into(), "client".into());
        let after = build(&pods);
        assert_ne!(before, after);
        // the same commands but for set contents
        let shape = |b: &Batch| -> Vec<Cmd> {
            b.cmds
                .iter()
                .map(|c| match c {
                    Cmd::AddSet(t, s) => Cmd::AddSet(t.clone(), s.clone().with_elements(vec![])),
                    c => c.clone(),
                })
                .collect()
        };
        assert_eq!(shape(&before.batch), shape(&after.batch));
    }

    #[test]
    fn pods_alike_but_for_their_named_ports_get_their_own_rules() {
        // x/a and x/b: the same labels, "http" on different ports; x/c
        // like x/a; one policy allowing ingress to "http"
        let with_port = |name: &str, ip: &str, port: u16| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"namespace": "x", "name": name, "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"ports": [{"name": "http", "containerPort": port}]}]},
                "status": {"podIPs": [{"ip": ip}]}
            }))
            .unwrap()
        };
        let pods = [
            with_port("a", "10.0.1.2", 80),
            with_port("b", "10.0.1.3", 8080),
            with_port("c", "10.0.1.4", 80),
        ];
        let pols: Vec<NetworkPolicy> = serde_json::from_value(json!([{"metadata": {"namespace": "x", "name": "http"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": "http"}]}]}}]))
        .unwrap();
        let c = Cluster::new(&pods, &[], &pols, &[ctx()]).0;
        let b = compile(&c, &ctx()).batch;
        let rules = |chain: &Name| -> Vec<&RuleDef> {
            b.cmds
                .iter()
                .filter_map(|c| match c {
                    Cmd::AddRule(_, r) if &r.chain == chain => Some(r),
                    _ => None,
                })
                .collect()
        };
        // the port a pod's ingress allows, through its shared chain
        let allowed = |pod: &str| -> Vec<Value> {
            let pod_rules = rules(&pod_chain("x", pod, Direction::Ingress));
            let [r] = pod_rules.as_slice() else {
                panic!("{pod}: {pod_rules:?}")
            };
            let Expr::Goto(shared) = &r.exprs[0] else {
                panic!("{r:?}")
            };
            let set = rules(shared)
                .iter()
                .flat_map(|r| &r.exprs)
                .find_map(|e| match e {
                    Expr::Match {
                        right: Rhs::Set(n), ..
                    } => Some(n.clone()),
                    _ => None,
                })
                .unwrap();
            b.cmds
                .iter()
                .find_map(|c| match c {
                    Cmd::AddSet(_, s) if s.name == set => {
                        Some(s.elements.iter().map(|e| e.key.clone()).collect())
                    }
                    _ => None,
                })
                .unwrap()
        };
        let tcp = |p: u16| {
            vec![Value::Concat(vec![
                Value::Proto(L4Proto::Tcp),
                Value::Port(p),
            ])]
        };
        assert_eq!(allowed("a"), tcp(80));
        assert_eq!(allowed("b"), tcp(8080));
        assert_eq!(allowed("c"), tcp(80));
    }

    #[test]
    fn ports_merge_into_disjoint_ranges() {
        assert_eq!(
            merge_ports(vec![(80, 90), (85, 100), (101, 101), (200, 200)]),
            [(80, 101), (200, 200)]
        );
        assert_eq!(merge_ports(vec![(0, u16::MAX), (5, 6)]), [(0, u16::MAX)]);
    }
}

//! The Admin and Baseline tiers as nftables chains, built beside the v1
//! chains by [`crate::compile`]: per local pod and direction at most one
//! Admin chain (`tai-`/`tae-`, jumped to first) and one Baseline chain
//! (`tbi-`/`tbe-`, gone to when no v1 policy isolates the pod), each
//! shared by every pod whose policies come to the same rules, named by
//! their content. A rule is a few set lookups (peer addresses, `protocol .
//! port`, or `address . protocol . port` for egress named ports) and its
//! verdict:
//!
//! | action | Admin | Baseline |
//! |---|---|---|
//! | Accept | `accept` (ingress) / `goto ingress` (egress) | the same |
//! | Deny | `counter name <tier>-denied-<dir> drop` | the same |
//! | Pass | `return` (on to the v1 step of the pod chain) | the default verdict |
//!
//! and a Baseline chain ends with the default verdict (`accept` /
//! `goto ingress`); an Admin chain falls back to the pod chain.

use kindnet_nft::{Expr, KeyType, L4Proto, Lhs, LimitPer, LogPrefix, Name, Rhs, SetDef, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::cidr::Ranges;
use crate::cluster::{Cluster, Direction, NamedPort, PodInfo};
use crate::cnp::eval::{PeerEnd, peer_matches, pods_matching};
use crate::cnp::{Action, DENIED_COUNTERS, Peer, Peers, Policy, PortSel, Rule, Tier};
use crate::compile::{INGRESS_CHAIN, hashed, merge_ports, named_set};
use crate::input::Labels;

const LOG_RATE_PER_SECOND: u32 = 10;
const LOG_BURST: u32 = 20;

/// Chains by name, each with its rules.
pub(crate) type Chains = BTreeMap<Name, Vec<Vec<Expr>>>;

/// The tier chains a local pod's chain of one direction refers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PodTiers {
    /// Jumped to first.
    pub admin: Option<Name>,
    /// Gone to when no v1 policy isolates the pod this way.
    pub baseline: Option<Name>,
}

impl PodTiers {
    /// Whether some ClusterNetworkPolicy applies.
    pub fn any(&self) -> bool {
        self.admin.is_some() || self.baseline.is_some()
    }
}

/// The tier chains and their sets, for one compile.
pub(crate) struct TierBuilder<'a> {
    c: &'a Cluster,
    log: bool,
    sets: BTreeMap<Name, SetDef>,
    chains: Chains,
    /// By what a pod's tier chains depend on: its namespace, labels and
    /// named ports (pods of one shape share the work).
    shapes: HashMap<(&'a str, &'a Labels, &'a [NamedPort], Direction), PodTiers>,
    /// A rule's peer sets per family, by (policy, direction, rule).
    peers: HashMap<(&'a str, Direction, usize), [Option<Name>; 2]>,
    ports: HashMap<Vec<Value>, Name>,
    /// A rule's egress named-port sets per family, by (policy, rule).
    dports: HashMap<(&'a str, usize), [Name; 2]>,
}

/// The verdict when no tier decides: on to the destination's ingress, or
/// accepted.
fn default_verdict(d: Direction) -> Expr {
    match d {
        Direction::Ingress => Expr::Accept,
        Direction::Egress => Expr::Goto(Name::fixed(INGRESS_CHAIN)),
    }
}

/// The counter a tier's Deny rules of a direction count in.
pub fn denied_counter(t: Tier, d: Direction) -> Name {
    let name = DENIED_COUNTERS
        .iter()
        .find(|(ct, cd, _)| *ct == t && *cd == d)
        .map(|c| c.2)
        .unwrap_or_else(|| unreachable!("every tier and direction has a counter"));
    Name::fixed(name)
}

/// `t…` names sort after the pod chains (`egr-`, `ing-`) that refer to
/// them: a diff deleting gone chains in name order empties a pod chain
/// before deleting the tier chain it jumped to.
fn chain_prefix(t: Tier, d: Direction) -> &'static str {
    match (t, d) {
        (Tier::Admin, Direction::Ingress) => "tai",
        (Tier::Admin, Direction::Egress) => "tae",
        (Tier::Baseline, Direction::Ingress) => "tbi",
        (Tier::Baseline, Direction::Egress) => "tbe",
    }
}

impl<'a> TierBuilder<'a> {
    pub fn new(c: &'a Cluster, log: bool) -> TierBuilder<'a> {
        TierBuilder {
            c,
            log,
            sets: BTreeMap::new(),
            chains: BTreeMap::new(),
            shapes: HashMap::new(),
            peers: HashMap::new(),
            ports: HashMap::new(),
            dports: HashMap::new(),
        }
    }

    /// The tier chains of local pod `p` for direction `d` (made once per
    /// pod shape).
    pub fn pod(&mut self, p: &'a PodInfo, d: Direction) -> PodTiers {
        let key = (p.namespace.as_str(), &p.labels, p.ports.as_slice(), d);
        if let Some(t) = self.shapes.get(&key) {
            return t.clone();
        }
        let t = PodTiers {
            admin: self.chain(Tier::Admin, p, d),
            baseline: self.chain(Tier::Baseline, p, d),
        };
        self.shapes.insert(key, t.clone());
        t
    }

    /// The sets, and the chains with their rules, in name order.
    pub fn finish(self) -> (BTreeMap<Name, SetDef>, Chains) {
        (self.sets, self.chains)
    }

    fn chain(&mut self, t: Tier, p: &'a PodInfo, d: Direction) -> Option<Name> {
        let c = self.c;
        let mut body: Vec<Vec<Expr>> = Vec::new();
        for pol in c.cnps_for(t, p, d) {
            for (i, r) in pol.rules(d).iter().enumerate() {
                body.extend(self.rule(t, pol, d, i, r, p));
            }
        }
        if body.is_empty() {
            return None;
        }
        if t == Tier::Baseline {
            body.push(vec![default_verdict(d)]);
        }
        let name = hashed(chain_prefix(t, d), &format!("{}/{body:?}", self.log));
        self.chains.entry(name.clone()).or_insert(body);
        Some(name)
    }

    fn set(
        &mut self,
        prefix: &str,
        id: &str,
        key: Vec<KeyType>,
        interval: bool,
        elems: Vec<Value>,
    ) -> Name {
        named_set(&mut self.sets, prefix, id, key, interval, elems)
    }

    /// The peer address sets of a rule, per family (`None`: no address of
    /// that family can match). Named by the rule, so their names stay
    /// when pods come and go; made even when empty if pods may fill them.
    fn peer_sets(
        &mut self,
        pol: &'a Policy,
        d: Direction,
        i: usize,
        l: &'a [Peer],
    ) -> [Option<Name>; 2] {
        let key = (pol.name.as_str(), d, i);
        if let Some(s) = self.peers.get(&key) {
            return s.clone();
        }
        let c = self.c;
        let mut ranges = [Ranges::empty(false), Ranges::empty(true)];
        let mut dynamic = false;
        for peer in l {
            match peer {
                Peer::Networks(nets) => {
                    for n in nets {
                        ranges[n.v6 as usize].add(n);
                    }
                }
                Peer::Pods(_) => {
                    dynamic = true;
                    let ips: Vec<IpAddr> = pods_matching(c, peer)
                        .flat_map(|q| q.ips.iter().copied())
                        .collect();
                    for r in ranges.iter_mut() {
                        r.add_addrs(ips.iter().copied());
                    }
                }
                Peer::Nodes(s) => {
                    dynamic = true;
                    let ips: Vec<IpAddr> = c.node_ips_matching(s).collect();
                    for r in ranges.iter_mut() {
                        r.add_addrs(ips.iter().copied());
                    }
                }
            }
        }
        let id = format!("{}/{d}/{i}", pol.id());
        let out = ranges.map(|r| {
            (dynamic || !r.is_empty()).then(|| {
                let elems = r.to_nets().into_iter().map(Value::net).collect();
                let prefix = if r.v6 { "cpeers6" } else { "cpeers4" };
                self.set(prefix, &id, vec![KeyType::addr(r.v6)], true, elems)
            })
        });
        self.peers.insert(key, out.clone());
        out
    }

    /// An egress rule's named ports resolved on the pods its peers select:
    /// `address . protocol . port` per family (made also when empty: pods
    /// with the port may come). The same for every subject: made once.
    fn dport_sets(
        &mut self,
        pol: &'a Policy,
        i: usize,
        peers: &[Peer],
        named: &[&str],
    ) -> [Name; 2] {
        let key = (pol.name.as_str(), i);
        if let Some(s) = self.dports.get(&key) {
            return s.clone();
        }
        let c = self.c;
        let mut elems: [Vec<Value>; 2] = Default::default();
        for q in c.network_pods() {
            let selected = peers.iter().any(|p| {
                peer_matches(
                    c,
                    p,
                    PeerEnd {
                        addr: None,
                        pod: Some(q),
                    },
                )
            });
            if !selected {
                continue;
            }
            for ip in &q.ips {
                for cp in q
                    .ports
                    .iter()
                    .filter(|cp| named.contains(&cp.name.as_str()))
                {
                    elems[ip.is_ipv6() as usize].push(Value::Concat(vec![
                        Value::Addr(*ip),
                        Value::Proto(cp.proto),
                        Value::Port(cp.port),
                    ]));
                }
            }
        }
        let id = format!("{}/{}/{i}", pol.id(), Direction::Egress);
        let [e4, e6] = elems;
        let out = [(false, e4), (true, e6)].map(|(v6, e)| {
            let prefix = if v6 { "cdports6" } else { "cdports4" };
            let key = vec![KeyType::addr(v6), KeyType::InetProto, KeyType::InetService];
            self.set(prefix, &id, key, false, e)
        });
        self.dports.insert(key, out.clone());
        out
    }

    fn port_set(&mut self, numeric: BTreeMap<L4Proto, Vec<(u16, u16)>>) -> Name {
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
        if let Some(n) = self.ports.get(&elems) {
            return n.clone();
        }
        // ports never change with pods: named by their content
        let n = self.set(
            "cports",
            &format!("{elems:?}"),
            vec![KeyType::InetProto, KeyType::InetService],
            true,
            elems.clone(),
        );
        self.ports.insert(elems, n.clone());
        n
    }

    /// The nft rules of one rule, all with its verdict, in a row (so the
    /// first match among the policy's rules still decides).
    fn rule(
        &mut self,
        t: Tier,
        pol: &'a Policy,
        d: Direction,
        i: usize,
        r: &'a Rule,
        subject: &PodInfo,
    ) -> Vec<Vec<Expr>> {
        let verdict = match (r.action, t) {
            (Action::Accept, _) => vec![default_verdict(d)],
            (Action::Deny, _) => vec![Expr::CounterRef(denied_counter(t, d)), Expr::Drop],
            (Action::Pass, Tier::Admin) => vec![Expr::Return],
            (Action::Pass, Tier::Baseline) => vec![default_verdict(d)],
        };
        let peer_lhs = |v6: bool| match d {
            Direction::Ingress => Lhs::Saddr { v6 },
            Direction::Egress => Lhs::Daddr { v6 },
        };
        let (peer_matches_, peer_list): (Vec<Option<Expr>>, &[Peer]) = match &r.peers {
            Peers::Any => (vec![None], &[]),
            Peers::List(l) if l.is_empty() => return Vec::new(),
            Peers::List(l) => {
                let sets = self.peer_sets(pol, d, i, l);
                let m = [false, true]
                    .into_iter()
                    .zip(sets)
                    .filter_map(|(v6, n)| n.map(|n| Some(Expr::eq(peer_lhs(v6), Rhs::Set(n)))))
                    .collect();
                (m, l.as_slice())
            }
        };
        let mut port_matches: Vec<Option<Expr>> = Vec::new();
        let mut dst_matches: Vec<Expr> = Vec::new();
        match &r.ports {
            None => port_matches.push(None),
            Some(list) => {
                let mut numeric: BTreeMap<L4Proto, Vec<(u16, u16)>> = BTreeMap::new();
                let mut named: Vec<&str> = Vec::new();
                for ps in list {
                    match ps {
                        PortSel::Range(p, lo, hi) => {
                            numeric.entry(*p).or_default().push((*lo, *hi))
                        }
                        // ingress: the subject is the destination
                        PortSel::Named(n) if d == Direction::Ingress => {
                            for cp in subject.ports.iter().filter(|cp| &cp.name == n) {
                                numeric
                                    .entry(cp.proto)
                                    .or_default()
                                    .push((cp.port, cp.port));
                            }
                        }
                        PortSel::Named(n) => named.push(n),
                    }
                }
                if !numeric.is_empty() {
                    let set = self.port_set(numeric);
                    port_matches.push(Some(Expr::eq(
                        Lhs::Concat(vec![Lhs::L4Proto, Lhs::ThDport]),
                        Rhs::Set(set),
                    )));
                }
                if !named.is_empty() {
                    let sets = self.dport_sets(pol, i, peer_list, &named);
                    for (v6, set) in [false, true].into_iter().zip(sets) {
                        dst_matches.push(Expr::eq(
                            Lhs::Concat(vec![Lhs::Daddr { v6 }, Lhs::L4Proto, Lhs::ThDport]),
                            Rhs::Set(set),
                        ));
                    }
                }
            }
        }
        let mut matches: Vec<Vec<Expr>> = Vec::new();
        for pm in &peer_matches_ {
            for portm in &port_matches {
                matches.push(pm.iter().chain(portm).cloned().collect());
            }
        }
        matches.extend(dst_matches.into_iter().map(|m| vec![m]));
        let mut out = Vec::new();
        for m in matches {
            if self.log && r.action == Action::Deny {
                let prefix = LogPrefix::new(format!(
                    "kindnet-netpol {} {d} drop: ",
                    t.to_string().to_lowercase()
                ))
                .unwrap_or_else(|e| unreachable!("{e}"));
                let mut l = m.clone();
                l.extend([
                    Expr::Limit {
                        rate: LOG_RATE_PER_SECOND,
                        per: LimitPer::Second,
                        burst: LOG_BURST,
                    },
                    Expr::Log(prefix),
                ]);
                out.push(l);
            }
            let mut e = m;
            e.extend(verdict.iter().cloned());
            out.push(e);
        }
        out
    }
}

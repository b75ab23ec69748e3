//! The v1 tier's rules: a pod's policies come to [`Allow`] lookups on
//! peer and port sets ([`Builder`]), shared by every pod whose policies
//! come to the same rules ([`choose`], [`shared_chain`]).

use kindnet_nft::{Expr, KeyType, L4Proto, Lhs, Name, Rhs, SetDef, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::rc::Rc;

use super::{DENIED_EGRESS_COUNTER, DENIED_INGRESS_COUNTER, hex16, named_set};
use crate::cidr::Ranges;
use crate::cluster::{Cluster, Direction, PeerSel, PodInfo, PortMatch, RuleSel};

/// One allowing rule of a pod chain, as the lookups it makes. Ordered, so
/// chains come out the same for the same input.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Allow {
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

pub(super) struct Builder<'a> {
    pub(super) c: &'a Cluster,
    pub(super) sets: BTreeMap<Name, SetDef>,
    /// The allows of rules that do not depend on the subject pod, by the
    /// rule's address (the cluster is borrowed for the whole compile), so
    /// a policy selecting many pods computes its peers once.
    pub(super) shared: HashMap<(usize, Direction), Vec<Allow>>,
    /// Peer addresses and their set names by namespace and peer
    /// selectors: rules of many policies with the same peers compute them
    /// once.
    pub(super) peers: HashMap<(&'a str, &'a [PeerSel]), Rc<Peers>>,
    /// Port sets by their elements (as merged, before sorting).
    pub(super) ports: HashMap<Vec<Value>, Name>,
}

/// The addresses a rule's peers stand for, per family, with the names of
/// their sets (`None`: the family has no peer address).
pub(super) type Peers = Option<[(Ranges, Option<Name>); 2]>;

impl<'a> Builder<'a> {
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
                        .pods_matching(ns, sel)
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

pub(super) fn denied_counter(d: Direction) -> Name {
    Name::fixed(match d {
        Direction::Ingress => DENIED_INGRESS_COUNTER,
        Direction::Egress => DENIED_EGRESS_COUNTER,
    })
}

/// The chain dropping a direction's traffic of addresses several pods
/// claim: `conflict-ingress` / `conflict-egress`.
pub(super) fn conflict_chain(d: Direction) -> Name {
    Name::fixed(&format!("conflict-{d}"))
}

/// The shared chain of a direction's rules: `pin-<16hex>` (ingress) /
/// `pen-<16hex>` (egress), named by the rules.
pub(super) fn shared_chain(d: Direction, allows: &BTreeSet<Allow>, log: bool) -> Name {
    let mut h = Sha256::new();
    h.update(format!("{d}/{log}/{allows:?}").as_bytes());
    let tag = match d {
        Direction::Ingress => "pin",
        Direction::Egress => "pen",
    };
    Name::fixed(&format!("{tag}-{}", hex16(&h.finalize())))
}

pub(super) fn allow_exprs(a: &Allow, d: Direction) -> Vec<Expr> {
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
pub(super) enum Chosen {
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
pub(super) fn choose<'a>(b: &mut Builder<'a>, p: &'a PodInfo, d: Direction, log: bool) -> Chosen {
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

//! A small interpreter of the batches `compile` emits: the subset of nft
//! it uses, with the kernel's chain semantics (jump/goto/return, verdict
//! maps, interval and concatenated sets), run on one packet of a new
//! connection. It also checks what the kernel would refuse: references to
//! missing chains or sets, and overlapping elements of interval sets.

#![allow(dead_code)]

use kindnet_nft::{Batch, Cmd, Expr, Hook, KeyType, L4Proto, Lhs, Policy, Rhs, SetDef, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    /// IP protocol number (6 tcp, 17 udp, 132 sctp, 1 icmp…).
    pub l4proto: u8,
    pub dport: u16,
}

pub fn proto_number(p: L4Proto) -> u8 {
    match p {
        L4Proto::Tcp => 6,
        L4Proto::Udp => 17,
        L4Proto::Sctp => 132,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pv {
    Addr(IpAddr),
    Proto(u8),
    Port(u16),
}

#[derive(Debug, Default)]
pub struct Ruleset {
    sets: BTreeMap<String, SetDef>,
    chains: BTreeMap<String, Vec<Vec<Expr>>>,
    /// The forward hook's base chain.
    base: Option<(String, Policy)>,
    /// The input hook's base chain (packets to the node's own addresses).
    input: Option<(String, Policy)>,
    counters: Vec<String>,
}

fn elem_overlaps(a: &Value, b: &Value) -> bool {
    fn bounds(v: &Value) -> (u128, u128) {
        let x = |a: &IpAddr| match a {
            IpAddr::V4(a) => u32::from(*a) as u128,
            IpAddr::V6(a) => u128::from(*a),
        };
        match v {
            Value::Addr(a) => (x(a), x(a)),
            Value::Prefix(n) => (x(&n.network()), x(&n.broadcast())),
            Value::AddrRange(a, b) => (x(a), x(b)),
            Value::Port(p) => (*p as u128, *p as u128),
            Value::PortRange(a, b) => (*a as u128, *b as u128),
            Value::Proto(p) => (proto_number(*p) as u128, proto_number(*p) as u128),
            other => panic!("not an interval value: {other:?}"),
        }
    }
    match (a, b) {
        (Value::Concat(x), Value::Concat(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| elem_overlaps(a, b))
        }
        _ => {
            let ((a0, a1), (b0, b1)) = (bounds(a), bounds(b));
            a0 <= b1 && b0 <= a1
        }
    }
}

impl Ruleset {
    /// Loads a batch the way nft applies it, panicking on what the kernel
    /// would refuse.
    pub fn load(b: &Batch) -> Ruleset {
        let mut r = Ruleset::default();
        for c in &b.cmds {
            match c {
                Cmd::AddTable(_) => {}
                Cmd::DeleteTable(_) => r = Ruleset::default(),
                Cmd::AddCounter(_, n) => r.counters.push(n.to_string()),
                Cmd::AddChain(_, ch) => {
                    r.chains.entry(ch.name.to_string()).or_default();
                    if let Some(bc) = &ch.base {
                        let b = Some((ch.name.to_string(), bc.policy));
                        match bc.hook {
                            Hook::Forward => r.base = b,
                            Hook::Input => r.input = b,
                            other => panic!("base chain on {other:?}"),
                        }
                    }
                }
                Cmd::FlushChain(_, n) => {
                    r.chains.insert(n.to_string(), Vec::new());
                }
                Cmd::AddSet(_, s) => {
                    r.sets.insert(s.name.to_string(), s.clone());
                }
                Cmd::AddElements(_, n, e) | Cmd::CreateElements(_, n, e) => {
                    let s = r
                        .sets
                        .get_mut(n.as_str())
                        .unwrap_or_else(|| panic!("no set {n}"));
                    for el in e {
                        if let Some(old) = s.elements.iter().find(|o| o.key == el.key) {
                            assert_eq!(old.data, el.data, "File exists: {:?} in {n}", el.key);
                        } else {
                            s.elements.push(el.clone());
                        }
                    }
                }
                Cmd::DeleteChain(_, n) => {
                    let rules = r.chains.remove(n.as_str()).expect("no such chain");
                    assert!(rules.is_empty(), "chain {n} not empty");
                }
                Cmd::DeleteSet(_, n) => {
                    r.sets.remove(n.as_str()).expect("no such set");
                }
                Cmd::DeleteElements(_, n, keys) => {
                    let s = r
                        .sets
                        .get_mut(n.as_str())
                        .unwrap_or_else(|| panic!("no set {n}"));
                    for k in keys {
                        let i = s
                            .elements
                            .iter()
                            .position(|e| &e.key == k)
                            .expect("absent element");
                        s.elements.remove(i);
                    }
                }
                Cmd::AddRule(_, rule) => {
                    r.check_refs(&rule.exprs);
                    r.chains
                        .get_mut(rule.chain.as_str())
                        .unwrap_or_else(|| panic!("no chain {}", rule.chain))
                        .push(rule.exprs.clone());
                }
            }
        }
        for s in r.sets.values() {
            for e in &s.elements {
                if let Some(Value::Goto(c) | Value::Jump(c)) = &e.data {
                    assert!(
                        r.chains.contains_key(c.as_str()),
                        "map {} -> missing chain {c}",
                        s.name
                    );
                }
            }
            if s.flags.is_empty() {
                continue;
            }
            for (i, a) in s.elements.iter().enumerate() {
                for b in &s.elements[i + 1..] {
                    assert!(
                        !elem_overlaps(&a.key, &b.key),
                        "overlap in {}: {:?} {:?}",
                        s.name,
                        a.key,
                        b.key
                    );
                }
            }
        }
        r
    }

    fn check_refs(&self, exprs: &[Expr]) {
        for e in exprs {
            match e {
                Expr::Match {
                    right: Rhs::Set(n), ..
                }
                | Expr::VerdictMap { map: n, .. } => {
                    assert!(self.sets.contains_key(n.as_str()), "no set {n}")
                }
                Expr::Goto(c) | Expr::Jump(c) => {
                    assert!(self.chains.contains_key(c.as_str()), "no chain {c}")
                }
                Expr::CounterRef(c) => {
                    assert!(self.counters.contains(&c.to_string()), "no counter {c}")
                }
                _ => {}
            }
        }
    }

    pub fn chain_len(&self, name: &str) -> Option<usize> {
        self.chains.get(name).map(Vec::len)
    }

    fn lhs(&self, l: &Lhs, p: &Packet) -> Option<Vec<Pv>> {
        let fam_ok = |v6: bool| p.saddr.is_ipv6() == v6;
        Some(match l {
            // in an inet table `ip saddr` implies `meta nfproto ipv4`
            Lhs::Saddr { v6 } => {
                if !fam_ok(*v6) {
                    return None;
                }
                vec![Pv::Addr(p.saddr)]
            }
            Lhs::Daddr { v6 } => {
                if !fam_ok(*v6) {
                    return None;
                }
                vec![Pv::Addr(p.daddr)]
            }
            Lhs::L4Proto => vec![Pv::Proto(p.l4proto)],
            Lhs::ThDport => vec![Pv::Port(p.dport)],
            Lhs::Concat(parts) => {
                let mut out = Vec::new();
                for x in parts {
                    out.extend(self.lhs(x, p)?);
                }
                out
            }
            other => panic!("the compiler emitted {other:?}, which the interpreter does not model"),
        })
    }

    fn value_matches(v: &Value, pv: &[Pv]) -> bool {
        match (v, pv) {
            (Value::Concat(parts), _) => {
                parts.len() == pv.len()
                    && parts
                        .iter()
                        .zip(pv)
                        .all(|(v, p)| Self::value_matches(v, std::slice::from_ref(p)))
            }
            (Value::Addr(a), [Pv::Addr(b)]) => a == b,
            (Value::Prefix(n), [Pv::Addr(b)]) => n.contains(b),
            (Value::AddrRange(lo, hi), [Pv::Addr(b)]) => {
                lo.is_ipv6() == b.is_ipv6() && lo <= b && b <= hi
            }
            (Value::Port(a), [Pv::Port(b)]) => a == b,
            (Value::PortRange(lo, hi), [Pv::Port(b)]) => lo <= b && b <= hi,
            (Value::Proto(a), [Pv::Proto(b)]) => proto_number(*a) == *b,
            _ => false,
        }
    }

    fn lookup<'a>(&'a self, set: &str, pv: &[Pv]) -> Option<&'a kindnet_nft::Elem> {
        let s = &self.sets[set];
        // the key shape must be the set's type
        assert_eq!(s.key.len(), pv.len(), "key arity of {set}");
        for (k, v) in s.key.iter().zip(pv) {
            let ok = matches!(
                (k, v),
                (KeyType::Ipv4Addr, Pv::Addr(IpAddr::V4(_)))
                    | (KeyType::Ipv6Addr, Pv::Addr(IpAddr::V6(_)))
                    | (KeyType::InetProto, Pv::Proto(_))
                    | (KeyType::InetService, Pv::Port(_))
            );
            assert!(ok, "{set}: key {k:?} looked up with {v:?}");
        }
        s.elements.iter().find(|e| Self::value_matches(&e.key, pv))
    }

    /// Whether the address is one of the node's own (set `node-ips4/6`).
    fn is_node(&self, a: IpAddr) -> bool {
        let set = if a.is_ipv6() {
            "node-ips6"
        } else {
            "node-ips4"
        };
        self.sets
            .get(set)
            .is_some_and(|s| s.elements.iter().any(|e| e.key == Value::Addr(a)))
    }

    /// Whether the packet (the first of a new connection) is accepted, on
    /// the hook the kernel would route it through: output (the node's own
    /// traffic, no base chain here), input (to the node's own addresses)
    /// or forward.
    pub fn accepts(&self, p: &Packet) -> bool {
        if self.is_node(p.saddr) {
            return true;
        }
        let hook = if self.is_node(p.daddr) {
            &self.input
        } else {
            &self.base
        };
        let Some((base, policy)) = hook.clone() else {
            return true;
        };
        assert!(self.base.is_some(), "a forward base chain");
        let mut stack: Vec<(String, usize)> = Vec::new();
        let (mut chain, mut idx) = (base, 0usize);
        let mut steps = 0;
        'run: loop {
            steps += 1;
            assert!(steps < 10_000, "loop in the ruleset");
            let rules = &self.chains[&chain];
            if idx >= rules.len() {
                match stack.pop() {
                    Some((c, i)) => {
                        (chain, idx) = (c, i);
                        continue;
                    }
                    None => return policy == Policy::Accept,
                }
            }
            let rule = &rules[idx];
            idx += 1;
            for e in rule {
                match e {
                    Expr::Match {
                        left: Lhs::CtState, ..
                    } => continue 'run, // new: never established/invalid
                    Expr::Match { left, right, op } => {
                        assert_eq!(*op, kindnet_nft::Op::Eq, "{e:?}");
                        let Some(pv) = self.lhs(left, p) else {
                            continue 'run;
                        };
                        let hit = match right {
                            Rhs::Set(n) => self.lookup(n.as_str(), &pv).is_some(),
                            Rhs::Value(v) => Self::value_matches(v, &pv),
                            other => panic!("unmodelled right-hand side {other:?}"),
                        };
                        if !hit {
                            continue 'run;
                        }
                    }
                    Expr::Counter | Expr::CounterRef(_) | Expr::Log(_) | Expr::Limit { .. } => {}
                    Expr::Accept => return true,
                    Expr::Drop => return false,
                    Expr::Return => match stack.pop() {
                        Some((c, i)) => {
                            (chain, idx) = (c, i);
                            continue 'run;
                        }
                        None => return policy == Policy::Accept,
                    },
                    Expr::Jump(c) => {
                        stack.push((chain.clone(), idx));
                        (chain, idx) = (c.to_string(), 0);
                        continue 'run;
                    }
                    Expr::Goto(c) => {
                        (chain, idx) = (c.to_string(), 0);
                        continue 'run;
                    }
                    Expr::VerdictMap { key, map } => {
                        let Some(pv) = self.lhs(key, p) else {
                            continue 'run;
                        };
                        match self.lookup(map.as_str(), &pv).and_then(|e| e.data.clone()) {
                            Some(Value::Goto(c)) => {
                                (chain, idx) = (c.to_string(), 0);
                                continue 'run;
                            }
                            Some(Value::Jump(c)) => {
                                stack.push((chain.clone(), idx));
                                (chain, idx) = (c.to_string(), 0);
                                continue 'run;
                            }
                            Some(other) => panic!("verdict {other:?}"),
                            None => continue 'run,
                        }
                    }
                    other => panic!("unmodelled expression {other:?}"),
                }
            }
        }
    }
}

/// Every pair of `addrs` (one family; `hairpin`: also an address to
/// itself) under every `traffic` case: each node's compiled ruleset
/// (`ctx(0)`, `ctx(1)`) accepts exactly what the direct semantics allow on
/// that node, and both together what they allow cluster-wide.
pub fn agree_on_every_pair(
    c: &kindnet_netpol::Cluster,
    addrs: &[IpAddr],
    ctx: impl Fn(usize) -> kindnet_netpol::NodeContext,
    traffic: &[(kindnet_netpol::Proto, u16)],
    hairpin: bool,
) -> Result<(), proptest::test_runner::TestCaseError> {
    use kindnet_netpol::{Endpoint, compile, evaluate, evaluate_on};
    use proptest::prop_assert_eq;
    let rulesets: Vec<Ruleset> = (0..2)
        .map(|i| Ruleset::load(&compile(c, &ctx(i)).batch))
        .collect();
    for &s in addrs {
        for &d in addrs {
            if (s == d && !hairpin) || s.is_ipv6() != d.is_ipv6() {
                continue;
            }
            for &(proto, port) in traffic {
                let pkt = Packet {
                    saddr: s,
                    daddr: d,
                    l4proto: proto.l4().map(proto_number).unwrap_or(1),
                    dport: port,
                };
                let (src, dst) = (Endpoint::Addr(s), Endpoint::Addr(d));
                let mut both = true;
                for (i, rs) in rulesets.iter().enumerate() {
                    let want = evaluate_on(c, &ctx(i), &src, &dst, port, proto);
                    let got = rs.accepts(&pkt);
                    prop_assert_eq!(
                        got,
                        want.allowed,
                        "node {} {} -> {} {:?}/{}: {}",
                        i + 1,
                        s,
                        d,
                        proto,
                        port,
                        want.reason
                    );
                    both &= got;
                }
                let whole = evaluate(c, &src, &dst, port, proto);
                prop_assert_eq!(
                    whole.allowed,
                    both,
                    "cluster-wide {} -> {} {:?}/{}: {}",
                    s,
                    d,
                    proto,
                    port,
                    whole.reason
                );
            }
        }
    }
    Ok(())
}

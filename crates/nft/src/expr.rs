//! Rule expressions: the matches and statements kindnet's rules use, as
//! types. Keywords are `&'static str` chosen in code, never input.

use serde_json::{Value as Json, json};

use crate::types::{LogPrefix, Name, Value};

/// What a match reads from the packet or its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lhs {
    /// `ip saddr` / `ip6 saddr`.
    Saddr {
        /// IPv6 (`ip6`) rather than IPv4.
        v6: bool,
    },
    /// `ip daddr` / `ip6 daddr`.
    Daddr {
        /// IPv6 (`ip6`) rather than IPv4.
        v6: bool,
    },
    /// `th dport`: the transport header's destination port.
    ThDport,
    /// `meta l4proto`.
    L4Proto,
    /// `meta nfproto` (`ipv4` / `ipv6`).
    NfProto,
    /// `meta iifname` / `meta oifname`.
    IifName,
    /// `meta oifname`.
    OifName,
    /// `meta iifgroup`: the input interface's group number.
    IifGroup,
    /// `fib daddr type`.
    FibDaddrType,
    /// `ct status` / `ct state`.
    CtStatus,
    /// `ct state`.
    CtState,
    /// A concatenation of several (`a . b`), for concatenated set keys.
    Concat(Vec<Lhs>),
}

impl Lhs {
    fn to_json(&self) -> Json {
        let payload =
            |proto: &str, field: &str| json!({"payload": {"protocol": proto, "field": field}});
        let ip = |v6: bool| if v6 { "ip6" } else { "ip" };
        match self {
            Lhs::Saddr { v6 } => payload(ip(*v6), "saddr"),
            Lhs::Daddr { v6 } => payload(ip(*v6), "daddr"),
            Lhs::ThDport => payload("th", "dport"),
            Lhs::L4Proto => json!({"meta": {"key": "l4proto"}}),
            Lhs::NfProto => json!({"meta": {"key": "nfproto"}}),
            Lhs::IifName => json!({"meta": {"key": "iifname"}}),
            Lhs::OifName => json!({"meta": {"key": "oifname"}}),
            Lhs::IifGroup => json!({"meta": {"key": "iifgroup"}}),
            Lhs::FibDaddrType => json!({"fib": {"result": "type", "flags": ["daddr"]}}),
            Lhs::CtStatus => json!({"ct": {"key": "status"}}),
            Lhs::CtState => json!({"ct": {"key": "state"}}),
            Lhs::Concat(parts) => {
                json!({"concat": parts.iter().map(Lhs::to_json).collect::<Vec<_>>()})
            }
        }
    }
}

/// What a match compares with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rhs {
    /// A value.
    Value(Value),
    /// A named set of the same table (`@name`).
    Set(Name),
    /// A keyword of nft's grammar: `local`, `ipv4`, `dnat`, `established`…
    Keyword(&'static str),
    /// Several keywords (`ct state { established, related }`).
    Keywords(&'static [&'static str]),
}

impl Rhs {
    fn to_json(&self) -> Json {
        match self {
            Rhs::Value(v) => v.to_json(),
            Rhs::Set(n) => json!(format!("@{n}")),
            Rhs::Keyword(k) => json!(k),
            Rhs::Keywords(k) => json!({"set": k}),
        }
    }
}

/// A match's comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`.
    Eq,
    /// `!=`.
    Ne,
    /// Bit test (`ct status dnat`).
    In,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::In => "in",
        }
    }
}

/// The unit of a [`Expr::Limit`] rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitPer {
    /// Per second.
    Second,
    /// Per minute.
    Minute,
}

impl LimitPer {
    fn as_str(self) -> &'static str {
        match self {
            LimitPer::Second => "second",
            LimitPer::Minute => "minute",
        }
    }
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `LEFT OP RIGHT`: the rule goes on only when it holds.
    Match {
        /// What is read.
        left: Lhs,
        /// How it is compared.
        op: Op,
        /// What it is compared with.
        right: Rhs,
    },
    /// `counter`: an anonymous packet and byte counter.
    Counter,
    /// `counter name NAME`: adds to a named counter object of the table
    /// (declared with [`crate::Batch::add_counter`]), which can be read by
    /// name.
    CounterRef(Name),
    /// `limit rate RATE/PER burst BURST packets`: matches while under the
    /// rate, so it guards the statements after it in the same rule.
    Limit {
        /// Packets per `per`.
        rate: u32,
        /// The rate's unit.
        per: LimitPer,
        /// Packets allowed above the rate at once.
        burst: u32,
    },
    /// `log prefix PREFIX`.
    Log(LogPrefix),
    /// `masquerade`: source NAT to the outgoing interface's address.
    Masquerade,
    /// `return`: back to the calling chain.
    Return,
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `jump CHAIN`: continue in CHAIN, then come back.
    Jump(Name),
    /// `goto CHAIN`: continue in CHAIN, not coming back.
    Goto(Name),
    /// `dnat ip|ip6 to KEY map @ADDRS : KEY map @PORTS`: two lookups of
    /// one key (nft 1.0.6 crashes on a JSON dnat whose map yields
    /// address . port).
    DnatMap {
        /// IPv6 (`ip6`) rather than IPv4.
        v6: bool,
        /// The key both maps are looked up with.
        key: Lhs,
        /// The map from key to the new destination address.
        addrs: Name,
        /// The map from key to the new destination port.
        ports: Name,
    },
    /// `KEY vmap @MAP`: a verdict looked up in a map.
    VerdictMap {
        /// The key.
        key: Lhs,
        /// The verdict map.
        map: Name,
    },
}

impl Expr {
    /// `left == right`.
    pub fn eq(left: Lhs, right: Rhs) -> Expr {
        Expr::Match {
            left,
            op: Op::Eq,
            right,
        }
    }

    /// `left != right`.
    pub fn ne(left: Lhs, right: Rhs) -> Expr {
        Expr::Match {
            left,
            op: Op::Ne,
            right,
        }
    }

    pub(crate) fn to_json(&self) -> Json {
        match self {
            Expr::Match { left, op, right } => json!({"match": {
                "op": op.as_str(), "left": left.to_json(), "right": right.to_json()}}),
            Expr::Counter => json!({"counter": null}),
            Expr::CounterRef(n) => json!({"counter": n.as_str()}),
            Expr::Limit { rate, per, burst } => {
                json!({"limit": {"rate": rate, "per": per.as_str(), "burst": burst}})
            }
            Expr::Log(p) => json!({"log": {"prefix": p.as_str()}}),
            Expr::Masquerade => json!({"masquerade": null}),
            Expr::Return => json!({"return": null}),
            Expr::Accept => json!({"accept": null}),
            Expr::Drop => json!({"drop": null}),
            Expr::Jump(t) => json!({"jump": {"target": t.as_str()}}),
            Expr::Goto(t) => json!({"goto": {"target": t.as_str()}}),
            Expr::DnatMap {
                v6,
                key,
                addrs,
                ports,
            } => json!({"dnat": {
                "family": if *v6 { "ip6" } else { "ip" },
                "addr": {"map": {"key": key.to_json(), "data": format!("@{addrs}")}},
                "port": {"map": {"key": key.to_json(), "data": format!("@{ports}")}}}}),
            Expr::VerdictMap { key, map } => {
                json!({"vmap": {"key": key.to_json(), "data": format!("@{map}")}})
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::L4Proto;

    #[test]
    fn policy_expressions_have_nft_json_shapes() {
        let n = Name::new("drops").unwrap();
        assert_eq!(Expr::CounterRef(n).to_json(), json!({"counter": "drops"}));
        assert_eq!(
            Expr::Limit {
                rate: 5,
                per: LimitPer::Second,
                burst: 10
            }
            .to_json(),
            json!({"limit": {"rate": 5, "per": "second", "burst": 10}})
        );
        let p = LogPrefix::new("np drop ").unwrap();
        assert_eq!(
            Expr::Log(p).to_json(),
            json!({"log": {"prefix": "np drop "}})
        );
        // `ip saddr . meta l4proto . th dport @s`
        let key = Lhs::Concat(vec![Lhs::Saddr { v6: false }, Lhs::L4Proto, Lhs::ThDport]);
        let m = Expr::eq(key, Rhs::Set(Name::new("s").unwrap())).to_json();
        assert_eq!(
            m["match"]["left"]["concat"][1],
            json!({"meta": {"key": "l4proto"}})
        );
        assert_eq!(m["match"]["right"], json!("@s"));
        // a protocol and a port range as right-hand sides
        let r = Expr::eq(Lhs::ThDport, Rhs::Value(Value::PortRange(80, 90))).to_json();
        assert_eq!(r["match"]["right"], json!({"range": [80, 90]}));
        let r = Expr::eq(Lhs::L4Proto, Rhs::Value(Value::Proto(L4Proto::Sctp))).to_json();
        assert_eq!(r["match"]["right"], json!("sctp"));
    }
}

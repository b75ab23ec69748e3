//! A batch of commands, applied by nft as one transaction.

use serde_json::{Value as Json, json};

use crate::expr::Expr;
use crate::types::{Comment, Elem, KeyType, Name, TableRef, Value};

/// What a map yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapData {
    /// Values of a type (e.g. a mark or an address).
    Type(KeyType),
    /// Verdicts (`jump`, `goto`, `accept`, `drop`).
    Verdict,
}

/// A set or map flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetFlag {
    /// Elements are prefixes or ranges (`flags interval`).
    Interval,
}

/// A set, or a map when `data` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDef {
    /// The set's name.
    pub name: Name,
    /// The key type; more than one is a concatenation.
    pub key: Vec<KeyType>,
    /// A map's data. One type only: nft 1.0.6 (Debian 12) reads a
    /// concatenated data type in JSON as a plain set.
    pub data: Option<MapData>,
    /// Its flags.
    pub flags: Vec<SetFlag>,
    /// Elements added with the set.
    pub elements: Vec<Elem>,
}

impl SetDef {
    /// A set keyed by `key`, no flags, no elements.
    pub fn set(name: Name, key: Vec<KeyType>) -> SetDef {
        SetDef {
            name,
            key,
            data: None,
            flags: Vec::new(),
            elements: Vec::new(),
        }
    }

    /// A map from `key` to `data`.
    pub fn map(name: Name, key: Vec<KeyType>, data: MapData) -> SetDef {
        SetDef {
            data: Some(data),
            ..SetDef::set(name, key)
        }
    }

    /// The same with `flags interval`.
    pub fn interval(mut self) -> SetDef {
        self.flags.push(SetFlag::Interval);
        self
    }

    /// The same with elements `e`.
    pub fn with_elements(mut self, e: Vec<Elem>) -> SetDef {
        self.elements = e;
        self
    }
}

fn type_json(t: &[KeyType]) -> Json {
    match t {
        [one] => json!(one.as_str()),
        many => json!(many.iter().map(|k| k.as_str()).collect::<Vec<_>>()),
    }
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    /// `type nat`: address translation.
    Nat,
    /// `type filter`: accept or drop.
    Filter,
}

/// A base chain's netfilter hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Packets as they arrive, before routing.
    Prerouting,
    /// Packets for this host.
    Input,
    /// Packets routed through this host.
    Forward,
    /// Packets this host sends.
    Output,
    /// Packets as they leave, after routing.
    Postrouting,
}

/// What a base chain does with a packet no rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Let it through.
    Accept,
    /// Drop it.
    Drop,
}

/// What makes a chain a base chain: attached to a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    /// Its type.
    pub ty: ChainType,
    /// Its hook.
    pub hook: Hook,
    /// Its priority on the hook (lower runs first).
    pub prio: i32,
    /// Its default policy.
    pub policy: Policy,
}

/// A chain to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDef {
    /// The chain's name.
    pub name: Name,
    /// `None` for a regular chain (a jump target).
    pub base: Option<BaseChain>,
}

impl ChainDef {
    /// A base chain on `hook`.
    pub fn base(name: Name, ty: ChainType, hook: Hook, prio: i32, policy: Policy) -> ChainDef {
        ChainDef {
            name,
            base: Some(BaseChain {
                ty,
                hook,
                prio,
                policy,
            }),
        }
    }

    /// A regular chain: a jump or goto target.
    pub fn regular(name: Name) -> ChainDef {
        ChainDef { name, base: None }
    }
}

/// A rule to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDef {
    /// The chain it is appended to.
    pub chain: Name,
    /// Its statements, in order.
    pub exprs: Vec<Expr>,
    /// Its comment.
    pub comment: Option<Comment>,
}

impl RuleDef {
    /// A rule of `exprs` appended to `chain`, no comment.
    pub fn new(chain: &Name, exprs: Vec<Expr>) -> RuleDef {
        RuleDef {
            chain: chain.clone(),
            exprs,
            comment: None,
        }
    }

    /// The same with comment `c`.
    pub fn comment(mut self, c: Comment) -> RuleDef {
        self.comment = Some(c);
        self
    }
}

/// One command of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// `add table` (a no-op when it exists).
    AddTable(TableRef),
    /// `delete table` (with everything in it).
    DeleteTable(TableRef),
    /// `add chain` (a no-op when it exists).
    AddChain(TableRef, ChainDef),
    /// `flush chain`: its rules removed.
    FlushChain(TableRef, Name),
    /// `add set` or map, with its elements.
    AddSet(TableRef, SetDef),
    /// `add rule`.
    AddRule(TableRef, RuleDef),
    /// `add element` (an element already there is fine).
    AddElements(TableRef, Name, Vec<Elem>),
    /// `create element`: the batch fails if any key is already in the set
    /// (whoever holds it), so a caller can add without reading first.
    CreateElements(TableRef, Name, Vec<Elem>),
    /// A named counter object (`counter name NAME` in rules adds to it).
    AddCounter(TableRef, Name),
    /// `delete element`, by key (each must exist).
    DeleteElements(TableRef, Name, Vec<Value>),
    /// Deletes a regular chain (it must be empty and unreferenced).
    DeleteChain(TableRef, Name),
    /// Deletes a set (not a map) no rule refers to.
    DeleteSet(TableRef, Name),
}

/// Commands applied as one transaction: all or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The commands, in order.
    pub cmds: Vec<Cmd>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// Appends `c`.
    pub fn push(&mut self, c: Cmd) -> &mut Batch {
        self.cmds.push(c);
        self
    }

    /// Creates the table if absent (a no-op otherwise).
    pub fn add_table(&mut self, t: &TableRef) -> &mut Batch {
        self.push(Cmd::AddTable(t.clone()))
    }

    /// Deletes the table, also when it is absent: `add` first makes sure
    /// there is something to delete, in the same transaction.
    pub fn remove_table(&mut self, t: &TableRef) -> &mut Batch {
        self.push(Cmd::AddTable(t.clone()));
        self.push(Cmd::DeleteTable(t.clone()))
    }

    /// Adds chain `c` (a no-op when it exists).
    pub fn add_chain(&mut self, t: &TableRef, c: ChainDef) -> &mut Batch {
        self.push(Cmd::AddChain(t.clone(), c))
    }

    /// Removes every rule of chain `c`.
    pub fn flush_chain(&mut self, t: &TableRef, c: &Name) -> &mut Batch {
        self.push(Cmd::FlushChain(t.clone(), c.clone()))
    }

    /// Adds set or map `s` with its elements.
    pub fn add_set(&mut self, t: &TableRef, s: SetDef) -> &mut Batch {
        self.push(Cmd::AddSet(t.clone(), s))
    }

    /// Adds the named counter `name`.
    pub fn add_counter(&mut self, t: &TableRef, name: &Name) -> &mut Batch {
        self.push(Cmd::AddCounter(t.clone(), name.clone()))
    }

    /// Appends rule `r`.
    pub fn add_rule(&mut self, t: &TableRef, r: RuleDef) -> &mut Batch {
        self.push(Cmd::AddRule(t.clone(), r))
    }

    /// Adds elements `e` to `set` (nothing when `e` is empty).
    pub fn add_elements(&mut self, t: &TableRef, set: &Name, e: Vec<Elem>) -> &mut Batch {
        if e.is_empty() {
            return self;
        }
        self.push(Cmd::AddElements(t.clone(), set.clone(), e))
    }

    /// Creates elements `e` in `set`: the whole batch fails when one of
    /// their keys is there already (nothing when `e` is empty).
    pub fn create_elements(&mut self, t: &TableRef, set: &Name, e: Vec<Elem>) -> &mut Batch {
        if e.is_empty() {
            return self;
        }
        self.push(Cmd::CreateElements(t.clone(), set.clone(), e))
    }

    /// Deletes the elements with `keys` from `set` (nothing when empty).
    pub fn delete_elements(&mut self, t: &TableRef, set: &Name, keys: Vec<Value>) -> &mut Batch {
        if keys.is_empty() {
            return self;
        }
        self.push(Cmd::DeleteElements(t.clone(), set.clone(), keys))
    }

    /// Deletes regular chain `c` (empty and unreferenced).
    pub fn delete_chain(&mut self, t: &TableRef, c: &Name) -> &mut Batch {
        self.push(Cmd::DeleteChain(t.clone(), c.clone()))
    }

    /// Deletes set `s` (no rule may refer to it).
    pub fn delete_set(&mut self, t: &TableRef, s: &Name) -> &mut Batch {
        self.push(Cmd::DeleteSet(t.clone(), s.clone()))
    }

    /// The batch in nft's JSON schema (`nft -j -f -`).
    pub fn to_json(&self) -> Json {
        let cmds: Vec<Json> = self.cmds.iter().map(cmd_json).collect();
        json!({ "nftables": cmds })
    }
}

fn table_json(t: &TableRef) -> Json {
    json!({"family": t.family.as_str(), "name": t.name.as_str()})
}

fn cmd_json(c: &Cmd) -> Json {
    match c {
        Cmd::AddTable(t) => json!({"add": {"table": table_json(t)}}),
        Cmd::DeleteTable(t) => json!({"delete": {"table": table_json(t)}}),
        Cmd::AddChain(t, c) => {
            let mut o = json!({"family": t.family.as_str(), "table": t.name.as_str(), "name": c.name.as_str()});
            if let Some(b) = &c.base {
                o["type"] = json!(match b.ty {
                    ChainType::Nat => "nat",
                    ChainType::Filter => "filter",
                });
                o["hook"] = json!(match b.hook {
                    Hook::Prerouting => "prerouting",
                    Hook::Input => "input",
                    Hook::Forward => "forward",
                    Hook::Output => "output",
                    Hook::Postrouting => "postrouting",
                });
                o["prio"] = json!(b.prio);
                o["policy"] = json!(match b.policy {
                    Policy::Accept => "accept",
                    Policy::Drop => "drop",
                });
            }
            json!({"add": {"chain": o}})
        }
        Cmd::FlushChain(t, c) => json!({"flush": {"chain": {
            "family": t.family.as_str(), "table": t.name.as_str(), "name": c.as_str()}}}),
        Cmd::AddSet(t, s) => {
            let mut o = json!({"family": t.family.as_str(), "table": t.name.as_str(),
                "name": s.name.as_str(), "type": type_json(&s.key)});
            if !s.flags.is_empty() {
                o["flags"] = json!(s.flags.iter().map(|_| "interval").collect::<Vec<_>>());
            }
            if !s.elements.is_empty() {
                o["elem"] = json!(s.elements.iter().map(Elem::to_json).collect::<Vec<_>>());
            }
            match &s.data {
                None => json!({"add": {"set": o}}),
                Some(d) => {
                    o["map"] = match d {
                        MapData::Verdict => json!("verdict"),
                        MapData::Type(t) => json!(t.as_str()),
                    };
                    json!({"add": {"map": o}})
                }
            }
        }
        Cmd::AddRule(t, r) => {
            let mut o = json!({"family": t.family.as_str(), "table": t.name.as_str(),
                "chain": r.chain.as_str(), "expr": r.exprs.iter().map(Expr::to_json).collect::<Vec<_>>()});
            if let Some(c) = &r.comment {
                o["comment"] = json!(c.as_str());
            }
            json!({"add": {"rule": o}})
        }
        Cmd::AddCounter(t, n) => json!({"add": {"counter": {
            "family": t.family.as_str(), "table": t.name.as_str(), "name": n.as_str()}}}),
        Cmd::AddElements(t, set, e) => json!({"add": {"element": {
            "family": t.family.as_str(), "table": t.name.as_str(), "name": set.as_str(),
            "elem": e.iter().map(Elem::to_json).collect::<Vec<_>>()}}}),
        Cmd::CreateElements(t, set, e) => json!({"create": {"element": {
            "family": t.family.as_str(), "table": t.name.as_str(), "name": set.as_str(),
            "elem": e.iter().map(Elem::to_json).collect::<Vec<_>>()}}}),
        Cmd::DeleteElements(t, set, keys) => json!({"delete": {"element": {
            "family": t.family.as_str(), "table": t.name.as_str(), "name": set.as_str(),
            "elem": keys.iter().map(Value::to_json).collect::<Vec<_>>()}}}),
        Cmd::DeleteChain(t, c) => json!({"delete": {"chain": {
            "family": t.family.as_str(), "table": t.name.as_str(), "name": c.as_str()}}}),
        Cmd::DeleteSet(t, n) => json!({"delete": {"set": {
            "family": t.family.as_str(), "table": t.name.as_str(), "name": n.as_str()}}}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Family, L4Proto};

    #[test]
    fn hostile_text_only_ever_lands_inside_json_strings() {
        // A comment full of nft syntax stays one JSON string value.
        let t = TableRef::new(Family::Inet, "t").unwrap();
        let c = Comment::new("x\" ; delete table inet foo ; }").unwrap();
        let mut b = Batch::new();
        b.add_elements(
            &t,
            &Name::new("s").unwrap(),
            vec![Elem::owned(Value::Port(1), None, &c)],
        );
        let j = b.to_json();
        assert_eq!(
            j["nftables"][0]["add"]["element"]["elem"][0]["elem"]["comment"],
            json!(c.as_str())
        );
        let text = j.to_string();
        assert!(text.contains(r#"x\" ; delete table"#), "{text}");
    }

    #[test]
    fn map_and_interval_set_shapes() {
        let t = TableRef::new(Family::Inet, "t").unwrap();
        let mut b = Batch::new();
        b.add_set(
            &t,
            SetDef::map(
                Name::new("m").unwrap(),
                vec![KeyType::InetProto, KeyType::InetService],
                MapData::Type(KeyType::Ipv4Addr),
            ),
        );
        b.add_set(
            &t,
            SetDef::set(Name::new("s").unwrap(), vec![KeyType::Ipv4Addr])
                .interval()
                .with_elements(vec![Elem::key(Value::Prefix(
                    "10.0.0.0/8".parse().unwrap(),
                ))]),
        );
        b.remove_table(&t);
        let pod = Name::new("pod-1").unwrap();
        b.add_set(
            &t,
            SetDef::map(
                Name::new("v").unwrap(),
                vec![KeyType::Ipv4Addr],
                MapData::Verdict,
            )
            .with_elements(vec![Elem {
                key: Value::Addr("10.0.0.2".parse().unwrap()),
                data: Some(Value::Goto(pod)),
                comment: None,
            }]),
        );
        b.add_counter(&t, &Name::new("drops").unwrap());
        let j = b.to_json();
        assert_eq!(j["nftables"][4]["add"]["map"]["map"], json!("verdict"));
        assert_eq!(
            j["nftables"][4]["add"]["map"]["elem"][0],
            json!(["10.0.0.2", {"goto": {"target": "pod-1"}}])
        );
        assert_eq!(
            j["nftables"][5],
            json!({"add": {"counter": {"family": "inet", "table": "t", "name": "drops"}}})
        );
        assert_eq!(j["nftables"][0]["add"]["map"]["map"], json!("ipv4_addr"));
        assert_eq!(j["nftables"][1]["add"]["set"]["flags"], json!(["interval"]));
        assert_eq!(
            j["nftables"][1]["add"]["set"]["elem"][0],
            json!({"prefix": {"addr": "10.0.0.0", "len": 8}})
        );
        assert!(j["nftables"][2]["add"]["table"].is_object());
        assert!(j["nftables"][3]["delete"]["table"].is_object());
        let _ = L4Proto::Tcp;
    }
}

//! Pure decisions of the policy reconciler: the node contexts, the
//! compiled ruleset as a [`Model`], the element carry-over for pods whose
//! addresses only the CNI plugin knows yet, and the incremental diff
//! between two models.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use kindnet_netpol::{
    Cluster, Compiled, Direction, NodeContext, Report, compile, dispatch_map, pod_chain, table,
};
use kindnet_nft::{Batch, ChainDef, Cmd, Elem, Name, RuleDef, SetDef, Value};

use super::Inputs;
use crate::store::NodeStore;

/// Every node's context (its addresses), and this node's. `own_ips` are
/// the flags' addresses (`--host-ip`), added to this node's own.
pub fn contexts(
    nodes: &NodeStore,
    own_name: &str,
    own_ips: &[IpAddr],
    log_denied: bool,
) -> (NodeContext, Vec<NodeContext>) {
    let mut all: Vec<NodeContext> = nodes
        .iter()
        .map(|s| NodeContext {
            node_name: s.node.name.clone(),
            node_ips: s.node.addresses().copied().collect(),
            log_denied,
        })
        .collect();
    all.sort_by(|a, b| a.node_name.cmp(&b.node_name));
    let mut own = all
        .iter()
        .find(|c| c.node_name == own_name)
        .cloned()
        .unwrap_or_else(|| NodeContext {
            node_name: own_name.to_string(),
            node_ips: Vec::new(),
            log_denied,
        });
    own.node_ips.extend(own_ips.iter().copied());
    own.node_ips.sort();
    own.node_ips.dedup();
    match all.iter_mut().find(|c| c.node_name == own_name) {
        Some(c) => c.node_ips = own.node_ips.clone(),
        None => all.push(own.clone()),
    }
    (own, all)
}

/// The validated cluster and the node's compiled ruleset.
pub fn build(
    inputs: &Inputs,
    own: &NodeContext,
    all: &[NodeContext],
) -> (Cluster, Compiled, Report) {
    let pods: Vec<_> = inputs.pods.values().cloned().collect();
    let ns: Vec<_> = inputs.namespaces.values().cloned().collect();
    let pols: Vec<_> = inputs.policies.values().cloned().collect();
    let (c, report) = Cluster::new(&pods, &ns, &pols, all);
    let compiled = compile(&c, own);
    (c, compiled, report)
}

/// A ruleset as what it consists of, so two can be compared piece by piece.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// Table and counter commands, in order.
    pub head: Vec<Cmd>,
    pub chains: BTreeMap<Name, (ChainDef, Vec<RuleDef>)>,
    pub sets: BTreeMap<Name, SetDef>,
}

impl Model {
    /// Reads a batch made by `kindnet_netpol::compile`.
    pub fn from_batch(b: &Batch) -> Model {
        let mut m = Model::default();
        for c in &b.cmds {
            match c {
                Cmd::AddTable(_) | Cmd::DeleteTable(_) | Cmd::AddCounter(..) => {
                    m.head.push(c.clone())
                }
                Cmd::AddChain(_, ch) => {
                    m.chains
                        .entry(ch.name.clone())
                        .or_insert_with(|| (ch.clone(), Vec::new()));
                }
                Cmd::AddSet(_, s) => {
                    m.sets.insert(s.name.clone(), s.clone());
                }
                Cmd::AddRule(_, r) => {
                    if let Some(ch) = m.chains.get_mut(&r.chain) {
                        ch.1.push(r.clone());
                    }
                }
                Cmd::AddElements(_, set, e) => {
                    if let Some(s) = m.sets.get_mut(set) {
                        s.elements.extend(e.iter().cloned());
                    }
                }
                Cmd::FlushChain(..)
                | Cmd::DeleteElements(..)
                | Cmd::DeleteChain(..)
                | Cmd::DeleteSet(..) => {}
            }
        }
        m
    }

    /// The whole table, replaced in one transaction (chains before sets:
    /// verdict map elements name chains; sets before rules).
    pub fn to_batch(&self) -> Batch {
        let t = table();
        let mut b = Batch::new();
        b.cmds.extend(self.head.iter().cloned());
        for (def, _) in self.chains.values() {
            b.add_chain(&t, def.clone());
        }
        for s in self.sets.values() {
            b.add_set(&t, s.clone());
        }
        // the base chain's rules first, as compiled (order within a chain
        // is what matters; chains are independent)
        for (def, rules) in self.chains.values() {
            let _ = def;
            for r in rules {
                b.add_rule(&t, r.clone());
            }
        }
        b
    }

    pub fn rules(&self) -> usize {
        self.chains.values().map(|c| c.1.len()).sum()
    }
}

/// A dispatch map element present in the kernel (or carried before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Present {
    pub map: String,
    pub key: Value,
    pub data: Option<Value>,
}

/// The elements of the dispatch maps to keep across a table replacement:
/// those the CNI plugin added at ADD for a local pod kindnetd knows (its
/// chain is in `model`) whose address kindnetd does not know yet. Without
/// them a fresh pod would lose its isolation until the API reports its IP.
/// An address kindnetd knows as any pod's, or already in the new map, is
/// not carried (the new ruleset is right about it).
pub fn carry_over(
    inputs: &Inputs,
    own_node: &str,
    model: &Model,
    present: &[Present],
) -> Vec<(Name, Elem)> {
    // chain -> the addresses kindnetd knows for that pod
    let mut chains: HashMap<Name, Vec<IpAddr>> = HashMap::new();
    let mut known: HashSet<IpAddr> = HashSet::new();
    for p in inputs.pods.values() {
        let ips: Vec<IpAddr> = p.pod_ips.iter().filter_map(|s| s.parse().ok()).collect();
        known.extend(ips.iter().copied());
        if p.node_name == own_node && !p.host_network {
            for d in [Direction::Ingress, Direction::Egress] {
                chains.insert(pod_chain(&p.namespace, &p.name, d), ips.clone());
            }
        }
    }
    let mut out = Vec::new();
    let mut taken: HashSet<(Name, IpAddr)> = HashSet::new();
    for d in [Direction::Ingress, Direction::Egress] {
        for v6 in [false, true] {
            let map = dispatch_map(d, v6);
            let in_new: BTreeSet<&Value> = model
                .sets
                .get(&map)
                .map(|s| s.elements.iter().map(|e| &e.key).collect())
                .unwrap_or_default();
            for e in present.iter().filter(|e| e.map == map.as_str()) {
                let (Value::Addr(ip), Some(Value::Goto(chain))) = (&e.key, &e.data) else {
                    continue;
                };
                let prefix = match d {
                    Direction::Ingress => "ing-",
                    Direction::Egress => "egr-",
                };
                if ip.is_ipv6() != v6
                    || !chain.as_str().starts_with(prefix)
                    || !model.chains.contains_key(chain)
                    || known.contains(ip)
                    || in_new.contains(&e.key)
                    || !taken.insert((map.clone(), *ip))
                {
                    continue;
                }
                if chains.get(chain).is_some_and(|ips| !ips.contains(ip)) {
                    out.push((
                        map.clone(),
                        Elem {
                            key: e.key.clone(),
                            data: e.data.clone(),
                            comment: None,
                        },
                    ));
                }
            }
        }
    }
    out
}

/// `model` with the carried elements added to their maps.
pub fn with_carried(mut model: Model, carried: &[(Name, Elem)]) -> Model {
    for (map, e) in carried {
        if let Some(s) = model.sets.get_mut(map) {
            s.elements.push(e.clone());
        }
    }
    model
}

/// The elements of a model's dispatch maps, as [`Present`] entries.
pub fn dispatch_elements(model: &Model) -> Vec<Present> {
    let mut out = Vec::new();
    for d in [Direction::Ingress, Direction::Egress] {
        for v6 in [false, true] {
            let map = dispatch_map(d, v6);
            if let Some(s) = model.sets.get(&map) {
                out.extend(s.elements.iter().map(|e| Present {
                    map: map.to_string(),
                    key: e.key.clone(),
                    data: e.data.clone(),
                }));
            }
        }
    }
    out
}

/// What an incremental change consists of (for logs and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffStats {
    pub elements_added: usize,
    pub elements_deleted: usize,
    pub chains_rewritten: usize,
    pub chains_added: usize,
    pub chains_deleted: usize,
    pub sets_added: usize,
    pub sets_deleted: usize,
}

impl DiffStats {
    /// Only elements change (same sets, chains and rules).
    pub fn elements_only(&self) -> bool {
        self.chains_rewritten
            + self.chains_added
            + self.chains_deleted
            + self.sets_added
            + self.sets_deleted
            == 0
    }
}

/// One transaction taking the kernel from `old` (what kindnetd applied
/// last) to `new`, touching only what differs: element adds and deletes
/// in sets and maps that stay, chains flushed and refilled where their
/// rules differ, chains and sets added and deleted. `None` when only a
/// replacement of the table will do (the table's skeleton changed, a set
/// changed its type). Elements the CNI plugin added are not in `old`, so
/// they are never deleted here.
pub fn diff(old: &Model, new: &Model) -> Option<(Batch, DiffStats)> {
    if old.head != new.head {
        return None;
    }
    let t = table();
    let mut st = DiffStats::default();
    let mut b = Batch::new();
    // 1. new sets, with their elements
    for (n, s) in &new.sets {
        match old.sets.get(n) {
            None => {
                b.add_set(&t, s.clone());
                st.sets_added += 1;
            }
            Some(o) if (&o.key, &o.data, &o.flags) != (&s.key, &s.data, &s.flags) => return None,
            Some(_) => {}
        }
    }
    // 2. new chains
    for (n, (def, _)) in &new.chains {
        match old.chains.get(n) {
            None if def.base.is_some() => return None,
            None => {
                b.add_chain(&t, def.clone());
                st.chains_added += 1;
            }
            Some((o, _)) if o != def => return None,
            Some(_) => {}
        }
    }
    // 3. element deletes, then 4. adds, in sets present in both
    let mut adds = Vec::new();
    for (n, s) in &new.sets {
        let Some(o) = old.sets.get(n) else { continue };
        let old_e: HashMap<&Value, &Option<Value>> =
            o.elements.iter().map(|e| (&e.key, &e.data)).collect();
        let new_e: HashMap<&Value, &Option<Value>> =
            s.elements.iter().map(|e| (&e.key, &e.data)).collect();
        let mut del: Vec<Value> = o
            .elements
            .iter()
            .filter(|e| new_e.get(&e.key) != Some(&&e.data))
            .map(|e| e.key.clone())
            .collect();
        del.sort();
        del.dedup();
        let add: Vec<Elem> = s
            .elements
            .iter()
            .filter(|e| old_e.get(&e.key) != Some(&&e.data))
            .cloned()
            .collect();
        st.elements_deleted += del.len();
        st.elements_added += add.len();
        b.delete_elements(&t, n, del);
        adds.push((n.clone(), add));
    }
    for (n, add) in adds {
        b.add_elements(&t, &n, add);
    }
    // 5. rules of changed and new chains
    for (n, (_, rules)) in &new.chains {
        match old.chains.get(n) {
            Some((_, o)) if o == rules => continue,
            Some(_) => {
                b.flush_chain(&t, n);
                st.chains_rewritten += 1;
            }
            None => {}
        }
        for r in rules {
            b.add_rule(&t, r.clone());
        }
    }
    // 6. chains gone (their dispatch elements went in 3.), 7. sets gone
    for (n, (def, _)) in &old.chains {
        if !new.chains.contains_key(n) {
            if def.base.is_some() {
                return None;
            }
            b.flush_chain(&t, n);
            b.delete_chain(&t, n);
            st.chains_deleted += 1;
        }
    }
    for (n, s) in &old.sets {
        if !new.sets.contains_key(n) {
            if s.data.is_some() {
                return None;
            }
            b.delete_set(&t, n);
            st.sets_deleted += 1;
        }
    }
    Some((b, st))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netpol::{Kind, Object};
    use serde_json::json;

    fn pod(ns: &str, name: &str, node: &str, labels: serde_json::Value, ips: &[&str]) -> Object {
        Object::Pod(
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": name, "labels": labels},
                "spec": {"nodeName": node},
                "status": {"phase": "Running", "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}
            }))
            .unwrap(),
        )
    }

    fn policy(v: serde_json::Value) -> Object {
        Object::Policy(serde_json::from_value(v).unwrap())
    }

    fn deny_all_x() -> Object {
        policy(json!({"metadata": {"namespace": "x", "name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}))
    }

    fn allow_from_clients() -> Object {
        policy(json!({"metadata": {"namespace": "x", "name": "clients"},
            "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
              "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}}))
    }

    fn inputs(objs: Vec<Object>) -> Inputs {
        let mut i = Inputs::default();
        i.replace_file(objs, None);
        i
    }

    fn ctx() -> (NodeContext, Vec<NodeContext>) {
        let own = NodeContext {
            node_name: "n1".into(),
            node_ips: vec!["172.18.0.2".parse().unwrap()],
            log_denied: false,
        };
        (own.clone(), vec![own])
    }

    fn model(i: &Inputs) -> Model {
        let (own, all) = ctx();
        Model::from_batch(&build(i, &own, &all).1.batch)
    }

    #[test]
    fn the_model_round_trips_the_compiled_batch() {
        let i = inputs(vec![
            pod("x", "a", "n1", json!({"pod": "a"}), &["10.0.1.2"]),
            pod(
                "x",
                "b",
                "n2",
                json!({"pod": "b", "role": "client"}),
                &["10.0.2.2"],
            ),
            allow_from_clients(),
        ]);
        let (own, all) = ctx();
        let c = build(&i, &own, &all).1;
        let m = Model::from_batch(&c.batch);
        assert_eq!(Model::from_batch(&m.to_batch()), m);
        assert_eq!(m.rules(), c.stats.rules);
        assert!(diff(&m, &m).unwrap().0.is_empty(), "nothing to do");
    }

    #[test]
    fn a_peer_label_change_is_an_element_diff() {
        let mut objs = vec![
            pod(
                "x",
                "a",
                "n1",
                json!({"pod": "a"}),
                &["10.0.1.2", "fd00::2"],
            ),
            pod(
                "x",
                "b",
                "n2",
                json!({"pod": "b"}),
                &["10.0.2.2", "fd00:2::2"],
            ),
            allow_from_clients(),
        ];
        let before = model(&inputs(objs.clone()));
        objs[1] = pod(
            "x",
            "b",
            "n2",
            json!({"pod": "b", "role": "client"}),
            &["10.0.2.2", "fd00:2::2"],
        );
        let after = model(&inputs(objs));
        let (b, st) = diff(&before, &after).unwrap();
        assert!(st.elements_only(), "{st:?}");
        assert_eq!((st.elements_added, st.elements_deleted), (2, 0));
        assert!(
            b.cmds.iter().all(|c| matches!(c, Cmd::AddElements(..))),
            "{b:?}"
        );
    }

    #[test]
    fn selection_changes_rewrite_only_that_pods_chains() {
        let mut objs = vec![
            pod("x", "a", "n1", json!({"pod": "a"}), &["10.0.1.2"]),
            pod("x", "c", "n1", json!({"pod": "c"}), &["10.0.1.3"]),
            allow_from_clients(),
        ];
        let before = model(&inputs(objs.clone()));
        objs[1] = pod("x", "c", "n1", json!({"pod": "a"}), &["10.0.1.3"]);
        let after = model(&inputs(objs.clone()));
        let (b, st) = diff(&before, &after).unwrap();
        assert_eq!(st.chains_rewritten, 1, "{st:?} {b:?}");
        assert_eq!(st.elements_added, 1, "c's address dispatched");
        // a new pod: chains added; a deleted pod: its chains and elements go
        objs.push(pod("x", "d", "n1", json!({"pod": "d"}), &[]));
        let added = model(&inputs(objs.clone()));
        let (_, st) = diff(&after, &added).unwrap();
        assert_eq!((st.chains_added, st.chains_rewritten), (2, 0), "{st:?}");
        objs.remove(1);
        let removed = model(&inputs(objs));
        let (b, st) = diff(&added, &removed).unwrap();
        assert_eq!((st.chains_deleted, st.elements_deleted), (2, 1), "{st:?}");
        // the element goes before the chain it points at
        let del_elem = b
            .cmds
            .iter()
            .position(|c| matches!(c, Cmd::DeleteElements(..)))
            .unwrap();
        let del_chain = b
            .cmds
            .iter()
            .position(|c| matches!(c, Cmd::DeleteChain(..)))
            .unwrap();
        assert!(del_elem < del_chain);
        // a policy removed: its sets go after the rules naming them
        let none = model(&inputs(vec![pod(
            "x",
            "a",
            "n1",
            json!({"pod": "a"}),
            &["10.0.1.2"],
        )]));
        let (b, st) = diff(&before, &none).unwrap();
        assert!(st.sets_deleted >= 2, "{st:?}");
        let flush = b
            .cmds
            .iter()
            .position(|c| matches!(c, Cmd::FlushChain(..)))
            .unwrap();
        let del_set = b
            .cmds
            .iter()
            .position(|c| matches!(c, Cmd::DeleteSet(..)))
            .unwrap();
        assert!(flush < del_set);
    }

    #[test]
    fn diffs_apply_to_the_fake_kernel_like_the_full_table() {
        use kindnet_nft::{FakeNft, Nft};
        let mut objs = vec![
            pod("x", "a", "n1", json!({"pod": "a"}), &["10.0.1.2"]),
            pod("x", "b", "n2", json!({"pod": "b"}), &["10.0.2.2"]),
            deny_all_x(),
            allow_from_clients(),
        ];
        let m1 = model(&inputs(objs.clone()));
        let mut k = FakeNft::default();
        k.apply(&m1.to_batch()).unwrap();
        objs[1] = pod(
            "x",
            "b",
            "n2",
            json!({"pod": "b", "role": "client"}),
            &["10.0.2.2"],
        );
        objs.push(pod("x", "n", "n1", json!({"pod": "n"}), &["10.0.1.9"]));
        objs.remove(2);
        let m2 = model(&inputs(objs));
        let (b, _) = diff(&m1, &m2).unwrap();
        k.apply(&b).unwrap();
        let mut full = FakeNft::default();
        full.apply(&m2.to_batch()).unwrap();
        let norm = |k: &mut FakeNft| {
            let mut l = k.list(&table()).unwrap().unwrap();
            l.sets.sort();
            l.elements.sort_by_key(|e| format!("{e:?}"));
            l
        };
        assert_eq!(norm(&mut k), norm(&mut full));
    }

    #[test]
    fn cni_elements_of_known_pods_without_addresses_are_carried() {
        let i = inputs(vec![
            pod("x", "fresh", "n1", json!({"pod": "a"}), &[]),
            pod("x", "a", "n1", json!({"pod": "a"}), &["10.0.1.2"]),
            pod("x", "r", "n2", json!({"pod": "r"}), &["10.0.2.2"]),
            deny_all_x(),
        ]);
        let m = model(&i);
        let ing4 = dispatch_map(Direction::Ingress, false);
        let egr6 = dispatch_map(Direction::Egress, true);
        let el = |map: &Name, ip: &str, ns: &str, pod: &str, d| Present {
            map: map.to_string(),
            key: Value::Addr(ip.parse().unwrap()),
            data: Some(Value::Goto(pod_chain(ns, pod, d))),
        };
        let present = vec![
            el(&ing4, "10.0.1.7", "x", "fresh", Direction::Ingress), // carried
            el(&egr6, "fd00::7", "x", "fresh", Direction::Egress),   // carried
            el(&ing4, "10.0.1.2", "x", "a", Direction::Ingress),     // known: compiled
            el(&ing4, "10.0.1.8", "x", "gone", Direction::Ingress),  // unknown pod
            el(&ing4, "10.0.2.2", "x", "fresh", Direction::Ingress), // r's address
            el(&ing4, "10.0.1.5", "x", "fresh", Direction::Egress),  // wrong direction
            el(&egr6, "10.0.1.6", "x", "fresh", Direction::Egress),  // wrong family
        ];
        let carried = carry_over(&i, "n1", &m, &present);
        let keys: Vec<String> = carried
            .iter()
            .map(|(m, e)| format!("{m} {:?}", e.key))
            .collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys[0].starts_with("ingress4") && keys[0].contains("10.0.1.7"));
        assert!(keys[1].starts_with("egress6") && keys[1].contains("fd00::7"));
        let with = with_carried(m.clone(), &carried);
        // applies cleanly on top of the compiled maps
        use kindnet_nft::{FakeNft, Nft};
        FakeNft::default().apply(&with.to_batch()).unwrap();
        // once kindnetd knows the address, nothing is carried (compiled)
        let mut i2 = i.clone();
        i2.upsert(pod("x", "fresh", "n1", json!({"pod": "a"}), &["10.0.1.7"]));
        let m2 = model(&i2);
        assert!(
            carry_over(&i2, "n1", &m2, &present)
                .iter()
                .all(|(_, e)| e.key != Value::Addr("10.0.1.7".parse().unwrap()))
        );
        let _ = Kind::Pod;
    }

    #[test]
    fn contexts_put_flag_addresses_on_this_node() {
        let mut s = NodeStore::new();
        s.replace_all(&[
            crate::node::tests::raw("n1", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.2")]),
            crate::node::tests::raw("n2", &["10.244.2.0/24"], &[("InternalIP", "172.18.0.3")]),
        ]);
        let (own, all) = contexts(&s, "n1", &["fc00::2".parse().unwrap()], true);
        assert_eq!(own.node_ips.len(), 2);
        assert!(own.log_denied);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].node_ips, own.node_ips);
        let (own, all) = contexts(&s, "n9", &[], false);
        assert!(own.node_ips.is_empty());
        assert_eq!(all.len(), 3);
    }
}

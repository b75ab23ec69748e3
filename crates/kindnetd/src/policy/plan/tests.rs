use super::diff::{is_dispatch, pair};
use super::*;
use crate::policy::{Kind, Object};
use kindnet_netpol::pod_chain;
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
        pod_cidrs: Vec::new(),
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

/// The chains and sets a rule names.
fn rule_refs(r: &RuleDef) -> (Vec<&Name>, Vec<&Name>) {
    use kindnet_nft::{Expr, Rhs};
    let (mut chains, mut sets) = (Vec::new(), Vec::new());
    for e in &r.exprs {
        match e {
            Expr::Goto(c) | Expr::Jump(c) => chains.push(c),
            Expr::Match {
                right: Rhs::Set(s), ..
            } => sets.push(s),
            Expr::VerdictMap { map, .. } => sets.push(map),
            Expr::DnatMap { addrs, ports, .. } => sets.extend([addrs, ports]),
            _ => {}
        }
    }
    (chains, sets)
}

fn elem_ref(e: &Elem) -> Option<&Name> {
    match &e.data {
        Some(Value::Goto(c) | Value::Jump(c)) => Some(c),
        _ => None,
    }
}

/// `old` with a diff batch applied, as the kernel would (what the
/// fake kernel cannot show: chains and their rules), refusing what
/// the kernel refuses: a reference to a chain or set that does not
/// exist, deleting a chain or set still referenced (EBUSY) or a
/// missing element (ENOENT), a map key added with other data (EEXIST).
fn apply_to(mut m: Model, b: &Batch) -> Model {
    for c in &b.cmds {
        match c {
            Cmd::AddSet(_, s) => {
                for e in &s.elements {
                    if let Some(c) = elem_ref(e) {
                        assert!(m.chains.contains_key(c), "{c} before its chain");
                    }
                }
                m.sets.insert(s.name.clone(), s.clone());
            }
            Cmd::AddChain(_, ch) => {
                m.chains.insert(ch.name.clone(), (ch.clone(), vec![]));
            }
            Cmd::AddRule(_, r) => {
                let (chains, sets) = rule_refs(r);
                for c in chains {
                    assert!(m.chains.contains_key(c), "jump to {c} before the chain");
                }
                for s in sets {
                    assert!(m.sets.contains_key(s), "@{s} before the set");
                }
                m.chains.get_mut(&r.chain).unwrap().1.push(r.clone())
            }
            Cmd::FlushChain(_, n) => m.chains.get_mut(n).unwrap().1.clear(),
            Cmd::DeleteChain(_, n) => {
                assert!(m.chains.remove(n).unwrap().1.is_empty());
                for (_, rules) in m.chains.values() {
                    for r in rules {
                        assert!(
                            !rule_refs(r).0.contains(&n),
                            "EBUSY: {n} jumped to by {r:?}"
                        );
                    }
                }
                for s in m.sets.values() {
                    for e in &s.elements {
                        assert_ne!(elem_ref(e), Some(n), "EBUSY: {n} named in @{}", s.name);
                    }
                }
            }
            Cmd::DeleteSet(_, n) => {
                m.sets.remove(n).unwrap();
                for (_, rules) in m.chains.values() {
                    for r in rules {
                        assert!(!rule_refs(r).1.contains(&n), "EBUSY: @{n} used by {r:?}");
                    }
                }
            }
            Cmd::AddElements(_, n, e) => {
                let s = m.sets.get_mut(n).unwrap();
                for e in e {
                    if let Some(c) = elem_ref(e) {
                        assert!(m.chains.contains_key(c), "{c} before its chain");
                    }
                    match s.elements.iter().find(|x| x.key == e.key) {
                        Some(x) => assert_eq!(x.data, e.data, "EEXIST: {:?} in @{n}", e.key),
                        None => s.elements.push(e.clone()),
                    }
                }
            }
            Cmd::DeleteElements(_, n, keys) => {
                let s = m.sets.get_mut(n).unwrap();
                for k in keys {
                    let before = s.elements.len();
                    s.elements.retain(|e| &e.key != k);
                    assert_eq!(s.elements.len(), before - 1, "delete of a missing {k:?}");
                }
            }
            c => panic!("not a diff command: {c:?}"),
        }
    }
    m
}

/// What the CNI plugin adds at ADD of each of `pods` (this node's),
/// where the kernel does not have the key yet.
fn with_cni_elements(mut kernel: Model, pods: &[(String, String, Vec<IpAddr>)]) -> Model {
    for (ns, name, ips) in pods {
        if !kernel
            .chains
            .contains_key(&pod_chain(ns, name, Direction::Ingress))
        {
            continue;
        }
        for c in kindnet_netpol::pod_dispatch_elements(ns, name, ips).cmds {
            if let Cmd::AddElements(_, map, elems) = c
                && let Some(s) = kernel.sets.get_mut(&map)
            {
                for e in elems {
                    if !s.elements.iter().any(|x| x.key == e.key) {
                        s.elements.push(e);
                    }
                }
            }
        }
    }
    kernel
}

fn dispatch_present(kernel: &Model) -> Vec<Present> {
    kernel
        .sets
        .values()
        .filter(|s| is_dispatch(&s.name))
        .flat_map(|s| {
            s.elements.iter().map(|e| Present {
                map: s.name.to_string(),
                key: e.key.clone(),
                data: e.data.clone(),
            })
        })
        .collect()
}

/// `kernel` without the dispatch elements `new` does not have.
fn without_extra(mut kernel: Model, new: &Model) -> Model {
    for (n, s) in kernel.sets.iter_mut() {
        if let Some(want) = new.sets.get(n).filter(|_| is_dispatch(n)) {
            s.elements.retain(|e| want.elements.contains(e));
        }
    }
    kernel
}

fn sorted(mut m: Model) -> Model {
    for s in m.sets.values_mut() {
        s.elements
            .sort_by(|a, b| (&a.key, &a.data).cmp(&(&b.key, &b.data)));
    }
    m
}

#[derive(Debug, Clone)]
enum Change {
    Labels(usize, u8),
    Toggle(usize),
    Pending(usize),
    Policy(usize),
    Team(bool),
}

fn change() -> impl proptest::strategy::Strategy<Value = Change> {
    use proptest::prelude::*;
    prop_oneof![
        (0..8usize, 0..4u8).prop_map(|(i, l)| Change::Labels(i, l)),
        (0..8usize).prop_map(Change::Toggle),
        (0..8usize).prop_map(Change::Pending),
        (0..6usize).prop_map(Change::Policy),
        any::<bool>().prop_map(Change::Team),
    ]
}

proptest::proptest! {
    /// Over random sequences of label, pod, address, policy and
    /// namespace changes, each diff takes the ruleset applied before to
    /// exactly the one compiled now (chains, rules, sets, elements).
    #[test]
    fn diffs_take_the_old_ruleset_to_the_new(changes in proptest::collection::vec(change(), 1..10)) {
        let pols = [
            json!({"metadata": {"namespace": "x", "name": "from-a"}, "spec": {"podSelector": {"matchLabels": {"tier": "t1"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}], "ports": [{"port": "http"}, {"protocol": "SCTP", "port": 9}]}]}}),
            json!({"metadata": {"namespace": "x", "name": "deny"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}),
            json!({"metadata": {"namespace": "y", "name": "out"}, "spec": {"podSelector": {"matchLabels": {"app": "b"}},
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "t"}}}], "ports": [{"port": "http"}]}]}}),
            json!({"metadata": {"namespace": "y", "name": "block"}, "spec": {"podSelector": {},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.2.0/24"]}}]}]}}),
            json!({"metadata": {"namespace": "x", "name": "all"}, "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "ingress": [{}]}}),
            json!({"metadata": {"namespace": "y", "name": "both"}, "spec": {"podSelector": {"matchLabels": {"tier": "t2"}},
                "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "t1"}}}], "ports": [{"port": 80, "endPort": 90}]}]}}),
        ];
        let mut labels = [0u8; 8];
        let mut present = [true; 8];
        let mut pending = [false; 8];
        let mut on = [true, false, true, true, false, true];
        let mut team = false;
        let objects = |labels: &[u8; 8], present: &[bool; 8], pending: &[bool; 8], on: &[bool; 6], team: bool| {
            let mut v = Vec::new();
            for i in 0..8 {
                if !present[i] {
                    continue;
                }
                let ns = if i % 3 == 0 { "y" } else { "x" };
                let node = if i % 2 == 0 { "n1" } else { "n2" };
                let l = labels[i];
                let lab = json!({"app": if l & 1 == 0 { "a" } else { "b" }, "tier": if l & 2 == 0 { "t1" } else { "t2" }});
                let ips = [format!("10.0.{}.{}", 1 + i % 2, 2 + i), format!("fd00:{}::{:x}", 1 + i % 2, 2 + i)];
                let ips: Vec<&str> = if pending[i] { vec![] } else { ips.iter().map(String::as_str).collect() };
                let mut o = pod(ns, &format!("p{i}"), node, lab, &ips);
                if let Object::Pod(p) = &mut o && i % 4 != 3 {
                    p.ports = serde_json::from_value(json!([{"name": "http", "containerPort": 8080 + i}])).unwrap();
                }
                v.push(o);
            }
            for (k, p) in pols.iter().enumerate() {
                if on[k] {
                    v.push(policy(p.clone()));
                }
            }
            let ns_labels = if team { json!({"team": "t"}) } else { json!({}) };
            v.push(Object::Namespace(serde_json::from_value(json!({"metadata": {"name": "y", "labels": ns_labels}})).unwrap()));
            v
        };
        // the CNI plugin's elements at ADD for this node's pods, with
        // the addresses they have (also while the API says none yet)
        let cni = |present: &[bool; 8]| {
            (0..8usize)
                .filter(|i| present[*i] && i % 2 == 0)
                .map(|i| {
                    let ns = if i % 3 == 0 { "y" } else { "x" };
                    let ips: Vec<IpAddr> = [format!("10.0.1.{}", 2 + i), format!("fd00:1::{:x}", 2 + i)]
                        .iter()
                        .map(|a| a.parse().unwrap())
                        .collect();
                    (ns.to_string(), format!("p{i}"), ips)
                })
                .collect::<Vec<_>>()
        };
        let mut old = model(&inputs(objects(&labels, &present, &pending, &on, team)));
        let mut kernel = with_cni_elements(old.clone(), &cni(&present));
        for c in changes {
            match c {
                Change::Labels(i, l) => labels[i] = l,
                Change::Toggle(i) => present[i] = !present[i],
                Change::Pending(i) => pending[i] = !pending[i],
                Change::Policy(k) => on[k] = !on[k],
                Change::Team(t) => team = t,
            }
            let new = model(&inputs(objects(&labels, &present, &pending, &on, team)));
            let (b, _) = diff(&old, &new).expect("a diff");
            proptest::prop_assert_eq!(sorted(apply_to(old.clone(), &b)), sorted(new.clone()));
            // with the CNI plugin's elements in the kernel: the
            // transaction is still accepted, and leaves the ruleset
            let (b, _) = diff_in(&old, &new, Some(&dispatch_present(&kernel))).expect("a diff");
            let after = apply_to(kernel, &b);
            proptest::prop_assert_eq!(sorted(without_extra(after.clone(), &new)), sorted(new.clone()));
            kernel = with_cni_elements(after, &cni(&present));
            old = new;
        }
    }
}

#[test]
fn maps_pair_up_in_key_order() {
    let a = BTreeMap::from([(1, 'a'), (3, 'c'), (4, 'd')]);
    let b = BTreeMap::from([(2, 'B'), (3, 'C'), (5, 'E')]);
    let p: Vec<(i32, Option<char>, Option<char>)> = pair(&a, &b)
        .into_iter()
        .map(|(k, o, n)| (*k, o.copied(), n.copied()))
        .collect();
    assert_eq!(
        p,
        [
            (1, Some('a'), None),
            (2, None, Some('B')),
            (3, Some('c'), Some('C')),
            (4, Some('d'), None),
            (5, None, Some('E'))
        ]
    );
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
    let carried = carry_over(&known_addresses(&i), &m, &present);
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
        carry_over(&known_addresses(&i2), &m2, &present)
            .iter()
            .all(|(_, e)| e.key != Value::Addr("10.0.1.7".parse().unwrap()))
    );
    let _ = Kind::Pod;
}

#[test]
fn contexts_put_flag_addresses_on_this_node() {
    let mut s = NodeStore::new();
    s.replace_all(&[
        crate::inputs::node::tests::raw("n1", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.2")]),
        crate::inputs::node::tests::raw("n2", &["10.244.2.0/24"], &[("InternalIP", "172.18.0.3")]),
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

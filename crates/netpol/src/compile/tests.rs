use super::*;
use crate::input::{Namespace, NetworkPolicy, Pod};
use kindnet_nft::L4Proto;
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
                if s.name.as_str().starts_with("peers") || s.name.as_str().starts_with("ports") =>
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

#[test]
fn the_input_hook_sends_local_pods_to_their_egress_dispatch_only() {
    let c = cluster(deny_ingress());
    let b = compile(&c, &ctx()).batch;
    let input = Name::fixed(INPUT_CHAIN);
    let base = b.cmds.iter().find_map(|c| match c {
        Cmd::AddChain(_, ch) if ch.name == input => ch.base,
        _ => None,
    });
    let base = base.expect("an input base chain");
    assert_eq!(base.hook, Hook::Input);
    assert_eq!(
        base.policy,
        Policy::Accept,
        "the node's own traffic is untouched"
    );
    let rules: Vec<&RuleDef> = b
        .cmds
        .iter()
        .filter_map(|c| match c {
            Cmd::AddRule(_, r) if r.chain == input => Some(r),
            _ => None,
        })
        .collect();
    // replies, related ICMP and what conntrack leaves untracked (IPv6
    // neighbour discovery) first; then the egress maps, by source only
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert!(matches!(
        &rules[0].exprs[..],
        [Expr::Match { left: Lhs::CtState, right: Rhs::Keywords(k), .. }, Expr::Accept]
            if k.contains(&"untracked") && k.contains(&"established")
    ));
    for (r, v6) in rules[1..].iter().zip([false, true]) {
        assert_eq!(
            r.exprs,
            [Expr::VerdictMap {
                key: Lhs::Saddr { v6 },
                map: dispatch_map(Direction::Egress, v6),
            }]
        );
    }
}

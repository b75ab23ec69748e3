use super::*;
use crate::compile::{compile, dispatch_map, pod_chain};
use crate::eval::{Endpoint, Proto, evaluate, evaluate_on};
use kindnet_nft::{Cmd, Value};
use serde_json::json;

fn pod(ns: &str, name: &str, node: &str, ips: &[&str]) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"pod": name}},
        "spec": {"nodeName": node},
        "status": {"phase": "Running", "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}
    }))
    .unwrap()
}

fn deny_all_x() -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}))
    .unwrap()
}

fn allow_from_pod_evil() -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "from-evil"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {},
            "podSelector": {"matchExpressions": [
                {"key": "pod", "operator": "In", "values": ["evil", "evil2"]}]}}]}]}}))
    .unwrap()
}

fn node(name: &str, ip: &str, cidr: &str) -> NodeContext {
    NodeContext {
        node_name: name.into(),
        node_ips: vec![ip.parse().unwrap()],
        log_denied: false,
        pod_cidrs: vec![cidr.parse().unwrap()],
    }
}

fn nodes() -> [NodeContext; 2] {
    [
        node("n1", "172.18.0.2", "10.244.1.0/24"),
        node("n2", "172.18.0.3", "10.244.2.0/24"),
    ]
}

fn checked(attached: &[(&str, &str, &str)]) -> Addressing {
    Addressing {
        check_pod_cidrs: true,
        node_name: "n1".into(),
        attached: attached
            .iter()
            .map(|(ns, n, ip)| Attachment {
                namespace: ns.to_string(),
                name: n.to_string(),
                ips: vec![ip.parse().unwrap()],
            })
            .collect(),
    }
}

/// The ingress4 dispatch map of n1's ruleset: address → chain.
fn ingress4(c: &Cluster) -> Vec<(Value, Value)> {
    compile(c, &nodes()[0])
        .batch
        .cmds
        .into_iter()
        .find_map(|c| match c {
            Cmd::AddSet(_, s) if s.name == dispatch_map(Direction::Ingress, false) => Some(
                s.elements
                    .into_iter()
                    .filter_map(|e| Some((e.key, e.data?)))
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

fn addr(s: &str) -> Endpoint {
    Endpoint::Addr(s.parse().unwrap())
}

#[test]
fn a_pod_claiming_a_local_isolated_pods_address_never_opens_it() {
    // a/evil (a remote node, or this one) lists x/a's address: on
    // today's main the first by namespace/name took it and x/a left
    // the dispatch maps, reachable under deny-all
    for evil_node in ["n2", "n1"] {
        let pods = [
            pod("x", "a", "n1", &["10.244.1.5"]),
            pod("a", "evil", evil_node, &["10.244.1.5"]),
        ];
        let pols = [deny_all_x()];
        let (c, _) = Cluster::new(&pods, &[], &pols, &nodes());
        let map = ingress4(&c);
        assert_eq!(map.len(), 1, "{evil_node}: {map:?}");
        assert_eq!(map[0].0, Value::Addr("10.244.1.5".parse().unwrap()));
        let n1 = &nodes()[0];
        for (s, d) in [
            (addr("10.244.2.9"), addr("10.244.1.5")),
            (addr("10.244.1.5"), addr("10.244.2.9")),
        ] {
            let v = evaluate_on(&c, n1, &s, &d, 80, Proto::Tcp);
            assert!(!v.allowed, "{evil_node}: {}", v.reason);
        }
        assert_eq!(c.conflicts().len(), 1);
        assert!(c.conflicts()[0].to_string().contains("a/evil, x/a"));
    }
}

#[test]
fn an_address_outside_the_podcidrs_of_the_pods_node_does_not_count() {
    let pods = [
        pod("x", "a", "n1", &["10.244.1.5"]),
        // on n2, claiming an n1 address and one outside every CIDR
        pod("a", "evil", "n2", &["10.244.1.5", "fd00::5"]),
        pod("a", "ok", "n2", &["10.244.2.7"]),
    ];
    let (c, r) = Cluster::new_with(&pods, &[], &[deny_all_x()], &nodes(), &checked(&[]));
    assert!(c.conflicts().is_empty());
    assert_eq!(
        c.pod_ip("x", "a", false),
        Some("10.244.1.5".parse().unwrap())
    );
    assert_eq!(c.pod_ip("a", "evil", false), None);
    assert_eq!(c.pod_ip("a", "evil", true), None);
    assert_eq!(
        c.pod_ip("a", "ok", false),
        Some("10.244.2.7".parse().unwrap())
    );
    let reasons: Vec<String> = r.refused.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|s| s.contains("outside the podCIDRs"))
            .count(),
        2,
        "{reasons:#?}"
    );
    // x/a's chain, not a pass-through
    assert_eq!(
        ingress4(&c),
        [(
            Value::Addr("10.244.1.5".parse().unwrap()),
            Value::Goto(pod_chain("x", "a", Direction::Ingress))
        )]
    );
    // a node without podCIDRs has no pod addresses
    let bare = [
        nodes()[0].clone(),
        NodeContext {
            pod_cidrs: vec![],
            ..nodes()[1].clone()
        },
    ];
    let (c, _) = Cluster::new_with(&pods, &[], &[], &bare, &checked(&[]));
    assert_eq!(c.pod_ip("a", "ok", false), None);
}

#[test]
fn the_cni_record_settles_a_reused_address_the_old_pod_still_lists() {
    // x/old finished its sandbox but its Pod object still lists the
    // address the CNI plugin gave x/new at ADD
    let pods = [
        pod("x", "old", "n1", &["10.244.1.5"]),
        pod("x", "new", "n1", &["10.244.1.5"]),
        pod("a", "evil", "n1", &["10.244.1.6"]),
    ];
    let pols = [deny_all_x(), allow_from_pod_evil()];
    let rec = checked(&[("x", "new", "10.244.1.5")]);
    let (c, r) = Cluster::new_with(&pods, &[], &pols, &nodes(), &rec);
    assert!(c.conflicts().is_empty());
    assert_eq!(
        c.pod_ip("x", "new", false),
        Some("10.244.1.5".parse().unwrap())
    );
    assert_eq!(c.pod_ip("x", "old", false), None);
    assert!(
        r.refused
            .iter()
            .any(|f| f.object == "pod x/old" && f.reason.contains("CNI plugin recorded")),
        "{r:?}"
    );
    assert_eq!(
        ingress4(&c)
            .iter()
            .find(|(k, _)| *k == Value::Addr("10.244.1.5".parse().unwrap()))
            .map(|(_, v)| v.clone()),
        Some(Value::Goto(pod_chain("x", "new", Direction::Ingress)))
    );
    // n2 has no record: both claims stand, the address is nobody's,
    // and a rule allowing x/old or x/new does not allow it
    let (c2, _) = Cluster::new_with(
        &pods,
        &[],
        &pols,
        &nodes(),
        &Addressing {
            node_name: "n2".into(),
            ..rec.clone()
        },
    );
    assert_eq!(c2.conflicts().len(), 1);
    assert_eq!(c2.pod_ip("x", "new", false), None);
    // the record of a pod the objects do not place on the node is ignored
    let stray = checked(&[("a", "evil", "10.244.1.5")]);
    let (c3, _) = Cluster::new_with(&pods, &[], &pols, &nodes(), &stray);
    assert_eq!(
        c3.pod_ip("a", "evil", false),
        Some("10.244.1.5".parse().unwrap())
    );
    // ... on n1 it is: a/evil was given 10.244.1.5 here, its object's
    // other address of the family does not count
    assert!(c3.pod_ip("x", "old", false).is_none());
}

#[test]
fn an_ambiguous_remote_address_matches_no_pod_peer() {
    // x/a on n1 allows ingress from pods labelled evil; two pods on n2
    // claim the same n2 address, one of them labelled evil
    let pods = [
        pod("x", "a", "n1", &["10.244.1.5"]),
        pod("a", "evil", "n2", &["10.244.2.9"]),
        pod("a", "other", "n2", &["10.244.2.9"]),
        pod("a", "evil2", "n2", &["10.244.2.10"]),
    ];
    let pols = [deny_all_x(), allow_from_pod_evil()];
    let (c, _) = Cluster::new(&pods, &[], &pols, &nodes());
    let v = evaluate(&c, &addr("10.244.2.9"), &addr("10.244.1.5"), 80, Proto::Tcp);
    assert!(!v.allowed, "{}", v.reason);
    let v = evaluate(
        &c,
        &addr("10.244.2.10"),
        &addr("10.244.1.5"),
        80,
        Proto::Tcp,
    );
    assert!(v.allowed, "{}", v.reason);
}

#[test]
fn every_local_pod_recorded_gets_its_own_recorded_addresses() {
    // the CNI record lists every local pod (as kindnetd reads it back
    // from the dispatch maps): each pod gets exactly its own recorded
    // addresses, whatever its object lists
    let mut pods: Vec<Pod> = (1..=40)
        .map(|i| pod("x", &format!("p{i}"), "n1", &[&format!("10.244.1.{i}")]))
        .collect();
    // an object listing another address than the one it was given here
    pods.push(pod("x", "moved", "n1", &["10.244.1.200"]));
    let mut rec = checked(
        &(1..=40)
            .map(|i| (format!("p{i}"), format!("10.244.1.{i}")))
            .collect::<Vec<_>>()
            .iter()
            .map(|(n, ip)| ("x", n.as_str(), ip.as_str()))
            .collect::<Vec<_>>(),
    );
    rec.attached.push(Attachment {
        namespace: "x".into(),
        name: "moved".into(),
        ips: vec!["10.244.1.100".parse().unwrap()],
    });
    let (c, r) = Cluster::new_with(&pods, &[], &[], &nodes(), &rec);
    assert!(c.conflicts().is_empty());
    for i in 1..=40 {
        assert_eq!(
            c.pod_ip("x", &format!("p{i}"), false),
            Some(format!("10.244.1.{i}").parse().unwrap())
        );
    }
    assert_eq!(
        c.pod_ip("x", "moved", false),
        Some("10.244.1.100".parse().unwrap())
    );
    assert!(
        r.refused
            .iter()
            .any(|f| f.object == "pod x/moved" && f.part == "pod IP 10.244.1.200"),
        "{r:?}"
    );
    // the record's address is the moved pod's, not another's
    assert_eq!(
        c.pod_by_ip("10.244.1.100".parse().unwrap())
            .map(|p| p.name.as_str()),
        Some("moved")
    );
}

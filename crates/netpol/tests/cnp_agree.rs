//! ClusterNetworkPolicy: the compiled tiers agree with the direct
//! semantics. Random ClusterNetworkPolicies (both tiers, every peer and
//! protocol kind, and shapes that must fail closed) with random
//! NetworkPolicies, pods, namespaces and labelled nodes; every packet
//! between every pair of addresses, interpreted on each node's batch and
//! compared with `evaluate_on` (and the cluster-wide `evaluate`).

mod common;

use kindnet_netpol::cnp::input::{ClusterNetworkPolicy, Node};
use kindnet_netpol::*;
use proptest::prelude::*;
use serde_json::{Value as Json, json};
use std::net::IpAddr;

const NODES: [(&str, &str, &str, &str); 2] = [
    ("n1", "172.18.0.2", "fc00:f853::2", "a"),
    ("n2", "172.18.0.3", "fc00:f853::3", "b"),
];

fn ctx(i: usize) -> NodeContext {
    let (n, a, b, _) = NODES[i];
    NodeContext {
        pod_cidrs: Vec::new(),
        node_name: n.into(),
        node_ips: vec![a.parse().unwrap(), b.parse().unwrap()],
        log_denied: i == 0,
    }
}

const TRAFFIC: [(Proto, u16); 8] = [
    (Proto::Tcp, 80),
    (Proto::Tcp, 85),
    (Proto::Tcp, 443),
    (Proto::Udp, 53),
    (Proto::Udp, 80),
    (Proto::Sctp, 9000),
    (Proto::Sctp, 80),
    (Proto::Other, 0),
];

fn good_selector() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(json!({})),
        Just(json!({"matchLabels": {"pod": "a"}})),
        Just(json!({"matchLabels": {"pod": "b"}})),
        Just(json!({"matchLabels": {"ns": "y"}})),
        Just(json!({"matchLabels": {"zone": "a"}})),
        Just(json!({"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]})),
        Just(json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]})),
        Just(json!({"matchLabels": {"kubernetes.io/metadata.name": "z"}})),
    ]
}

/// Mostly valid selectors; now and then one that cannot be read.
fn selector() -> impl Strategy<Value = Json> {
    prop_oneof![
        30 => good_selector(),
        1 => Just(json!({"matchExpressions": [{"key": "pod", "operator": "Bogus"}]})),
    ]
}

fn cnp_peer() -> impl Strategy<Value = Json> {
    prop_oneof![
        9 => selector().prop_map(|s| json!({"namespaces": s})),
        9 => (selector(), selector())
            .prop_map(|(n, p)| json!({"pods": {"namespaceSelector": n, "podSelector": p}})),
        1 => selector().prop_map(|p| json!({"pods": {"podSelector": p}})),
        1 => Just(json!({"pods": {"namespaceSelector": {}}})),
        4 => selector().prop_map(|s| json!({"nodes": s})),
        2 => Just(json!({"networks": ["10.244.0.0/16"]})),
        2 => Just(json!({"networks": ["10.244.1.0/24", "fd00::/64"]})),
        2 => Just(json!({"networks": ["0.0.0.0/0", "::/0"]})),
        2 => Just(json!({"networks": ["203.0.113.0/24", "172.18.0.0/16"]})),
        1 => Just(json!({"networks": ["nope"]})),
        1 => Just(json!({"networks": []})),
        1 => Just(json!({"domainNames": ["example.com"]})),
        1 => Just(json!({"futurePeer": {"x": 1}})),
        1 => Just(json!({"namespaces": {}, "networks": ["10.0.0.0/8"]})),
    ]
}

fn cnp_protocol() -> impl Strategy<Value = Json> {
    prop_oneof![
        3 => Just(json!({"tcp": {"destinationPort": {"number": 80}}})),
        3 => Just(json!({"tcp": {"destinationPort": {"range": {"start": 80, "end": 90}}}})),
        3 => Just(json!({"udp": {"destinationPort": {"number": 53}}})),
        3 => Just(json!({"udp": {"destinationPort": {"range": {"start": 1, "end": 100}}}})),
        3 => Just(json!({"sctp": {"destinationPort": {"number": 9000}}})),
        3 => Just(json!({"destinationNamedPort": "http"})),
        3 => Just(json!({"destinationNamedPort": "dns"})),
        1 => Just(json!({"tcp": {}})),
        1 => Just(json!({"tcp": {"destinationPort": {"number": 0}}})),
        1 => Just(json!({"udp": {"destinationPort": {"range": {"start": 90, "end": 80}}}})),
        1 => Just(json!({"icmp": {"type": 8}})),
    ]
}

fn cnp_rule(dir: &'static str) -> impl Strategy<Value = Json> {
    (
        prop_oneof![
            10 => Just("Accept"),
            8 => Just("Deny"),
            8 => Just("Pass"),
            1 => Just("Log")
        ],
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(vec![])),
            30 => proptest::collection::vec(cnp_peer(), 1..3).prop_map(Some)
        ],
        prop_oneof![
            3 => Just(None),
            2 => proptest::collection::vec(cnp_protocol(), 1..3).prop_map(Some)
        ],
    )
        .prop_map(move |(action, peers, protos)| {
            let mut o = json!({"action": action});
            if let Some(p) = peers {
                o[dir] = json!(p);
            }
            if let Some(p) = protos {
                o["protocols"] = json!(p);
            }
            o
        })
}

fn cnp() -> impl Strategy<Value = Json> {
    (
        prop_oneof![Just("Admin"), Just("Baseline")],
        prop_oneof![Just(0), Just(5), Just(5), Just(10)],
        prop_oneof![
            selector().prop_map(|s| json!({"namespaces": s})),
            (selector(), selector())
                .prop_map(|(n, p)| json!({"pods": {"namespaceSelector": n, "podSelector": p}})),
        ],
        proptest::collection::vec(cnp_rule("from"), 0..3),
        proptest::collection::vec(cnp_rule("to"), 0..3),
    )
        .prop_map(|(tier, prio, subject, ing, eg)| {
            json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
                "spec": {"tier": tier, "priority": prio, "subject": subject, "ingress": ing, "egress": eg}})
        })
}

fn np_peer() -> impl Strategy<Value = Json> {
    prop_oneof![
        selector().prop_map(|s| json!({"podSelector": s})),
        selector().prop_map(|s| json!({"namespaceSelector": s})),
        Just(json!({"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/29"]}})),
        Just(json!({"ipBlock": {"cidr": "fd00::/64"}})),
    ]
}

fn np() -> impl Strategy<Value = Json> {
    let rule = |dir: &'static str| {
        (
            proptest::collection::vec(np_peer(), 0..2),
            prop_oneof![
                Just(json!([])),
                Just(json!([{"port": 80}])),
                Just(json!([{"protocol": "UDP", "port": "dns"}]))
            ],
        )
            .prop_map(move |(peers, ports)| json!({dir: peers, "ports": ports}))
    };
    (
        0..3usize,
        selector(),
        prop_oneof![
            Just(json!(["Ingress"])),
            Just(json!(["Egress"])),
            Just(json!(["Ingress", "Egress"]))
        ],
        proptest::collection::vec(rule("from"), 0..2),
        proptest::collection::vec(rule("to"), 0..2),
    )
        .prop_map(|(ns, sel, types, ing, eg)| {
            json!({"metadata": {"namespace": (["x", "y", "z"][ns])},
                "spec": {"podSelector": sel, "policyTypes": types, "ingress": ing, "egress": eg}})
        })
}

/// (namespace, pod label, app label, node, hostNetwork, families, ports)
type PodGen = (usize, usize, usize, usize, bool, usize, Vec<usize>);

fn pod_gen() -> impl Strategy<Value = PodGen> {
    (
        0..3usize,
        0..3usize,
        0..3usize,
        0..2usize,
        proptest::bool::weighted(0.1),
        0..4usize,
        proptest::collection::vec(0..5usize, 0..3),
    )
}

const CONTAINER_PORTS: [(&str, u16, &str); 5] = [
    ("http", 80, "TCP"),
    ("http", 85, "TCP"),
    ("dns", 53, "UDP"),
    ("dns", 80, "UDP"),
    ("http", 9000, "SCTP"),
];

fn build(pods: &[PodGen], nps: &[Json], cnps: &[Json]) -> (Cluster, Vec<IpAddr>) {
    let mut addrs: Vec<IpAddr> = Vec::new();
    let mut pod_objs = Vec::new();
    for (i, (ns, label, app, node, host, fams, ports)) in pods.iter().enumerate() {
        let mut ips = Vec::new();
        if *host {
            ips.push(NODES[*node].1.to_string());
        } else {
            if fams & 1 != 0 {
                ips.push(format!("10.244.{}.{}", node + 1, i + 2));
            }
            if fams & 2 != 0 {
                ips.push(format!("fd00::{}{:02x}", node + 1, i + 2));
            }
        }
        for ip in &ips {
            addrs.push(ip.parse().unwrap());
        }
        let mut labels = json!({"pod": (["a", "b", "c"][*label])});
        if *app > 0 {
            labels["app"] = json!((["", "web", "db"][*app]));
        }
        let ports: Vec<Json> = ports
            .iter()
            .map(|&k| {
                let (n, p, proto) = CONTAINER_PORTS[k];
                json!({"name": n, "containerPort": p, "protocol": proto})
            })
            .collect();
        pod_objs.push(
            serde_json::from_value::<Pod>(json!({
                "metadata": {"namespace": (["x", "y", "z"][*ns]), "name": format!("p{i}"), "labels": labels},
                "spec": {"nodeName": NODES[*node].0, "hostNetwork": host, "containers": [{"ports": ports}]},
                "status": {"phase": "Running", "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}
            }))
            .unwrap(),
        );
    }
    let namespaces: Vec<Namespace> = ["x", "y", "z"]
        .iter()
        .map(|n| {
            serde_json::from_value(json!({"metadata": {"name": n, "labels": {"ns": n}}})).unwrap()
        })
        .collect();
    let pols: Vec<NetworkPolicy> = nps
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut p = p.clone();
            p["metadata"]["name"] = json!(format!("np{i}"));
            serde_json::from_value(p).unwrap()
        })
        .collect();
    let cnps: Vec<ClusterNetworkPolicy> = cnps
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut p = p.clone();
            p["metadata"] = json!({"name": format!("cnp{i}")});
            serde_json::from_value(p).unwrap()
        })
        .collect();
    let nodes: Vec<Node> = NODES
        .iter()
        .map(|(n, a, b, zone)| {
            serde_json::from_value(json!({"metadata": {"name": n, "labels": {"zone": zone}},
                "status": {"addresses": [{"type": "InternalIP", "address": a},
                    {"type": "InternalIP", "address": b}, {"type": "Hostname", "address": n}]}}))
            .unwrap()
        })
        .collect();
    for (_, a, b, _) in NODES {
        addrs.push(a.parse().unwrap());
        addrs.push(b.parse().unwrap());
    }
    // outside, and an address in a pod range no pod has
    for a in ["203.0.113.7", "198.51.100.1", "2001:db8::1", "10.244.1.200"] {
        addrs.push(a.parse().unwrap());
    }
    addrs.sort();
    addrs.dedup();
    let (mut c, _) = Cluster::new(&pod_objs, &namespaces, &pols, &[ctx(0), ctx(1)]);
    c.set_cluster_network_policies(&cnps, &nodes);
    (c, addrs)
}

fn check(c: &Cluster, addrs: &[IpAddr]) -> Result<(), TestCaseError> {
    // hairpin traffic too (a pod to itself through a Service)
    common::agree_on_every_pair(c, addrs, ctx, &TRAFFIC, true)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn compiled_tiers_agree_with_the_semantics(
        pods in proptest::collection::vec(pod_gen(), 1..7),
        nps in proptest::collection::vec(np(), 0..3),
        cnps in proptest::collection::vec(cnp(), 1..5),
    ) {
        let (c, addrs) = build(&pods, &nps, &cnps);
        check(&c, &addrs)?;
        prop_assert_eq!(compile(&c, &ctx(0)), compile(&c, &ctx(0)));
    }
}

//! The compiled rules agree with the direct semantics: random clusters,
//! every packet between every pair of addresses, interpreted on the batch
//! of each node and compared with `evaluate_on` (and the cluster-wide
//! `evaluate` with both nodes' shares).

mod common;

use kindnet_netpol::*;
use proptest::prelude::*;
use serde_json::{Value as Json, json};
use std::net::IpAddr;

const NODES: [(&str, &str, &str); 2] = [
    ("n1", "172.18.0.2", "fc00:f853::2"),
    ("n2", "172.18.0.3", "fc00:f853::3"),
];

fn ctx(i: usize) -> NodeContext {
    let (n, a, b) = NODES[i];
    NodeContext {
        node_name: n.into(),
        node_ips: vec![a.parse().unwrap(), b.parse().unwrap()],
        log_denied: i == 0,
        pod_cidrs: Vec::new(),
    }
}

const TRAFFIC: [(Proto, u16); 9] = [
    (Proto::Tcp, 80),
    (Proto::Tcp, 81),
    (Proto::Tcp, 85),
    (Proto::Udp, 53),
    (Proto::Udp, 80),
    (Proto::Udp, 8080),
    (Proto::Sctp, 9000),
    (Proto::Sctp, 80),
    (Proto::Other, 0),
];

fn selector() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(json!({})),
        Just(json!({"matchLabels": {"pod": "a"}})),
        Just(json!({"matchLabels": {"pod": "b"}})),
        Just(json!({"matchLabels": {"ns": "y"}})),
        Just(json!({"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "c"]}]})),
        Just(json!({"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]})),
        Just(json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]})),
        Just(json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]})),
        Just(
            json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["z"]}]})
        ),
        Just(json!({"matchLabels": {"kubernetes.io/metadata.name": "z"}})),
        Just(json!({"matchExpressions": [{"key": "pod", "operator": "Bogus"}]})),
    ]
}

/// An ipBlock with random excepts over the pod addresses (single
/// addresses, so the peer set is ranges that are no prefixes), whole
/// family or pod network.
fn except_block() -> impl Strategy<Value = Json> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec((1..3u8, 2..9u8, 0..3u8), 0..6),
    )
        .prop_map(|(v6, whole, ex)| {
            let except: Vec<String> = ex
                .iter()
                .map(|&(node, host, len)| match (v6, len) {
                    (false, 0) => format!("10.244.{node}.{host}/32"),
                    (false, 1) => format!("10.244.{node}.{}/31", host & !1),
                    (false, _) => format!("10.244.{node}.{}/30", host & !3),
                    (true, 0) => format!("fd00::{node}{host:02x}/128"),
                    (true, 1) => format!("fd00::{node}{:02x}/127", host & !1),
                    (true, _) => format!("fd00::{node}{:02x}/126", host & !3),
                })
                .collect();
            let cidr = match (v6, whole) {
                (false, true) => "0.0.0.0/0",
                (false, false) => "10.244.0.0/16",
                (true, true) => "::/0",
                (true, false) => "fd00::/64",
            };
            json!({"ipBlock": {"cidr": cidr, "except": except}})
        })
}

fn peer() -> impl Strategy<Value = Json> {
    prop_oneof![
        except_block(),
        except_block(),
        selector().prop_map(|s| json!({"podSelector": s})),
        selector().prop_map(|s| json!({"namespaceSelector": s})),
        (selector(), selector())
            .prop_map(|(p, n)| json!({"podSelector": p, "namespaceSelector": n})),
        Just(json!({"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/29"]}})),
        Just(json!({"ipBlock": {"cidr": "10.244.1.2/31"}})),
        Just(
            json!({"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.244.2.0/24", "172.18.0.0/16"]}})
        ),
        Just(json!({"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::104/126"]}})),
        Just(json!({"ipBlock": {"cidr": "::/0"}})),
        Just(json!({"ipBlock": {"cidr": "203.0.113.0/24"}})),
        Just(json!({"ipBlock": {"cidr": "fc00:f853::/64"}})),
        Just(json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}})),
    ]
}

fn port() -> impl Strategy<Value = Json> {
    let proto = prop_oneof![
        Just(Json::Null),
        Just(json!("TCP")),
        Just(json!("UDP")),
        Just(json!("SCTP")),
        Just(json!("ICMP"))
    ];
    let num = prop_oneof![
        Just((Json::Null, Json::Null)),
        Just((json!(80), Json::Null)),
        Just((json!(53), Json::Null)),
        Just((json!(80), json!(90))),
        Just((json!(1), json!(100))),
        Just((json!(8000), json!(9000))),
        Just((json!("http"), Json::Null)),
        Just((json!("dns"), Json::Null)),
        Just((json!("sctp-x"), Json::Null)),
        Just((json!(0), Json::Null)),
    ];
    (proto, num).prop_map(|(p, (port, end))| {
        let mut o = json!({});
        if !p.is_null() {
            o["protocol"] = p;
        }
        if !port.is_null() {
            o["port"] = port;
        }
        if !end.is_null() {
            o["endPort"] = end;
        }
        o
    })
}

fn rule(dir: &'static str) -> impl Strategy<Value = Json> {
    (
        prop_oneof![
            Just(None),
            proptest::collection::vec(peer(), 0..3).prop_map(Some)
        ],
        prop_oneof![
            Just(None),
            proptest::collection::vec(port(), 0..3).prop_map(Some)
        ],
    )
        .prop_map(move |(peers, ports)| {
            let mut o = json!({});
            if let Some(p) = peers {
                o[dir] = json!(p);
            }
            if let Some(p) = ports {
                o["ports"] = json!(p);
            }
            o
        })
}

fn policy() -> impl Strategy<Value = Json> {
    (
        0..3usize,
        selector(),
        prop_oneof![
            Just(None),
            Just(Some(json!(["Ingress"]))),
            Just(Some(json!(["Egress"]))),
            Just(Some(json!(["Ingress", "Egress"])))
        ],
        prop_oneof![
            Just(None),
            proptest::collection::vec(rule("from"), 0..3).prop_map(Some)
        ],
        prop_oneof![
            Just(None),
            proptest::collection::vec(rule("to"), 0..3).prop_map(Some)
        ],
    )
        .prop_map(|(ns, sel, types, ing, eg)| {
            let mut spec = json!({"podSelector": sel});
            if let Some(t) = types {
                spec["policyTypes"] = t;
            }
            if let Some(r) = ing {
                spec["ingress"] = json!(r);
            }
            if let Some(r) = eg {
                spec["egress"] = json!(r);
            }
            json!({"metadata": {"namespace": (["x", "y", "z"][ns])}, "spec": spec})
        })
}

/// (namespace, pod label, app label, node, hostNetwork, families, ports,
/// claims the addresses of the pod before it: 1 in 4)
type PodGen = (usize, usize, usize, usize, bool, usize, Vec<usize>, bool);

fn pod_gen() -> impl Strategy<Value = PodGen> {
    (
        0..3usize,
        0..3usize,
        0..3usize,
        0..2usize,
        proptest::bool::weighted(0.1),
        0..4usize,
        proptest::collection::vec(0..6usize, 0..3),
        proptest::bool::weighted(0.25),
    )
}

const CONTAINER_PORTS: [(&str, u16, &str); 6] = [
    ("http", 80, "TCP"),
    ("http", 8080, "UDP"),
    ("dns", 53, "UDP"),
    ("sctp-x", 9000, "SCTP"),
    ("http", 85, "TCP"),
    ("dns", 80, "UDP"),
];

fn build(pods: &[PodGen], policies: &[Json]) -> (Cluster, Vec<IpAddr>) {
    let mut addrs: Vec<IpAddr> = Vec::new();
    let mut pod_objs = Vec::new();
    let mut last_ips: Vec<String> = Vec::new();
    for (i, (ns, label, app, node, host, fams, ports, steal)) in pods.iter().enumerate() {
        let mut ips = Vec::new();
        if *steal && !*host && !last_ips.is_empty() {
            // a second Pod object claiming the addresses of the one before
            // (on its node or another): held by neither
            ips = last_ips.clone();
        } else if *host {
            ips.push(NODES[*node].1.to_string());
        } else {
            // families: 0 none yet, 1 v4, 2 v6, 3 both
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
        if !*host {
            last_ips = ips.clone();
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
    let pols: Vec<NetworkPolicy> = policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut p = p.clone();
            p["metadata"]["name"] = json!(format!("np{i}"));
            serde_json::from_value(p).unwrap()
        })
        .collect();
    for (_, a, b) in NODES {
        addrs.push(a.parse().unwrap());
        addrs.push(b.parse().unwrap());
    }
    for a in ["203.0.113.7", "198.51.100.1", "2001:db8::1", "10.244.1.3"] {
        addrs.push(a.parse().unwrap());
    }
    addrs.sort();
    addrs.dedup();
    let (c, _) = Cluster::new(&pod_objs, &namespaces, &pols, &[ctx(0), ctx(1)]);
    (c, addrs)
}

fn check(c: &Cluster, addrs: &[IpAddr]) -> Result<(), TestCaseError> {
    common::agree_on_every_pair(c, addrs, ctx, &TRAFFIC, false)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn compiled_rules_agree_with_the_semantics(
        pods in proptest::collection::vec(pod_gen(), 1..7),
        policies in proptest::collection::vec(policy(), 0..5),
    ) {
        let (c, addrs) = build(&pods, &policies);
        check(&c, &addrs)?;
        // deterministic: the same input gives the same batch
        prop_assert_eq!(compile(&c, &ctx(0)), compile(&c, &ctx(0)));
    }
}

#[test]
fn sctp_named_and_ranged_ports_through_the_interpreter() {
    let pods = [
        (0, 0, 1, 0, false, 3, vec![3], false), // x/p0 pod=a app=web, sctp-x 9000
        (1, 1, 0, 0, false, 3, vec![], false),  // y/p1 pod=b
        (2, 2, 0, 1, false, 3, vec![3], false), // z/p2 pod=c on n2, sctp-x 9000
    ];
    let policies = [
        json!({"metadata": {"namespace": "x"}, "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                         "ports": [{"protocol": "SCTP", "port": "sctp-x"}]}]}}),
        json!({"metadata": {"namespace": "y"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"ports": [{"protocol": "SCTP", "port": 8990, "endPort": 9001}]}]}}),
    ];
    let (c, addrs) = build(&pods, &policies);
    check(&c, &addrs).unwrap();
    let v = |s: &str, d: &str, port| {
        evaluate(
            &c,
            &Endpoint::pod(&s[..1], &s[2..], false),
            &Endpoint::pod(&d[..1], &d[2..], false),
            port,
            Proto::Sctp,
        )
    };
    assert!(v("y/p1", "x/p0", 9000).allowed);
    assert!(!v("y/p1", "x/p0", 9001).allowed, "the named port is 9000");
    assert!(
        !v("z/p2", "x/p0", 9000).allowed,
        "namespace z is not allowed"
    );
    assert!(v("y/p1", "z/p2", 8990).allowed);
    assert!(
        !v("y/p1", "z/p2", 9002).allowed,
        "outside the endPort range"
    );
    let d = v("y/p1", "z/p2", 9002);
    assert_eq!(d.by, [("y/np1".to_string(), Direction::Egress)]);
    assert!(d.reason.contains("isolated by y/np1"), "{}", d.reason);
    let tcp = evaluate(
        &c,
        &Endpoint::pod("y", "p1", false),
        &Endpoint::pod("x", "p0", false),
        9000,
        Proto::Tcp,
    );
    assert!(!tcp.allowed, "SCTP only");
}

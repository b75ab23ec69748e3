//! ClusterNetworkPolicy semantics, one rule at a time: each case is
//! decided by the direct semantics (`evaluate`) and by the compiled
//! batches of both nodes run through the interpreter, which must agree.

mod common;

use common::{Packet, Ruleset, proto_number};
use kindnet_netpol::cnp::input::{ClusterNetworkPolicy, Node};
use kindnet_netpol::*;
use serde_json::{Value as Json, json};
use std::net::IpAddr;

const N1: (&str, &str, &str) = ("n1", "172.18.0.2", "fc00:f853::2");
const N2: (&str, &str, &str) = ("n2", "172.18.0.3", "fc00:f853::3");

fn ctx(n: (&str, &str, &str)) -> NodeContext {
    NodeContext {
        pod_cidrs: Vec::new(),
        node_name: n.0.into(),
        node_ips: vec![n.1.parse().unwrap(), n.2.parse().unwrap()],
        log_denied: false,
    }
}

/// x/a x/b y/a y/b z/c on n1, z/r on n2, x/h hostNetwork on n2; each pod
/// with "http" on TCP 8080 and "dns" on UDP 53.
fn pods() -> Vec<Pod> {
    let pod = |ns: &str, name: &str, node: &str, host: bool, ips: Vec<String>| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"pod": name}},
            "spec": {"nodeName": node, "hostNetwork": host, "containers": [{"ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}
        }))
        .unwrap()
    };
    let mut out = Vec::new();
    for (i, (ns, name)) in [("x", "a"), ("x", "b"), ("y", "a"), ("y", "b"), ("z", "c")]
        .into_iter()
        .enumerate()
    {
        let k = i + 2;
        out.push(pod(
            ns,
            name,
            "n1",
            false,
            vec![format!("10.244.1.{k}"), format!("fd00::1:{k}")],
        ));
    }
    out.push(pod(
        "z",
        "r",
        "n2",
        false,
        vec!["10.244.2.2".into(), "fd00::2:2".into()],
    ));
    out.push(pod("x", "h", "n2", true, vec![N2.1.into(), N2.2.into()]));
    out
}

fn namespaces() -> Vec<Namespace> {
    ["x", "y", "z"]
        .iter()
        .map(|n| {
            serde_json::from_value(json!({"metadata": {"name": n, "labels": {"ns": n}}})).unwrap()
        })
        .collect()
}

fn cluster(nps: Json, cnps: Json) -> (Cluster, Report) {
    let namespaces = namespaces();
    let nps: Vec<NetworkPolicy> = serde_json::from_value(nps).unwrap();
    let cnps: Vec<ClusterNetworkPolicy> = serde_json::from_value(cnps).unwrap();
    let nodes: Vec<Node> = [(N1, "a"), (N2, "b")]
        .iter()
        .map(|((n, a, b), zone)| {
            serde_json::from_value(json!({"metadata": {"name": n, "labels": {"zone": zone}},
                "status": {"addresses": [{"address": a}, {"address": b}]}}))
            .unwrap()
        })
        .collect();
    let (mut c, mut r) = Cluster::new(&pods(), &namespaces, &nps, &[ctx(N1), ctx(N2)]);
    r.refused
        .extend(c.set_cluster_network_policies(&cnps, &nodes).refused);
    (c, r)
}

fn cnp(name: &str, tier: &str, prio: i64, subject: Json, ingress: Json, egress: Json) -> Json {
    json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"tier": tier, "priority": prio, "subject": subject, "ingress": ingress, "egress": egress}})
}

fn ns(n: &str) -> Json {
    json!({"namespaces": {"matchLabels": {"ns": n}}})
}

fn pod_in(n: &str, p: &str) -> Json {
    json!({"pods": {"namespaceSelector": {"matchLabels": {"ns": n}}, "podSelector": {"matchLabels": {"pod": p}}}})
}

fn rule(action: &str, peers: Json) -> Json {
    json!({"action": action, "from": peers, "to": peers})
}

/// A pod's address of a family, or a literal address (of its family only).
fn endpoint(c: &Cluster, s: &str, v6: bool) -> Option<IpAddr> {
    match s.split_once('/') {
        Some((ns, name)) => c.pod_ip(ns, name, v6),
        None => s.parse().ok().filter(|a: &IpAddr| a.is_ipv6() == v6),
    }
}

/// The cluster-wide decision, checked against both nodes' compiled
/// rulesets.
fn decide(c: &Cluster, from: &str, to: &str, port: u16, proto: Proto, v6: bool) -> Verdict {
    let (s, d) = (endpoint(c, from, v6).unwrap(), endpoint(c, to, v6).unwrap());
    let v = evaluate(c, &Endpoint::Addr(s), &Endpoint::Addr(d), port, proto);
    let mut both = true;
    for n in [N1, N2] {
        let rs = Ruleset::load(&compile(c, &ctx(n)).batch);
        both &= rs.accepts(&Packet {
            saddr: s,
            daddr: d,
            l4proto: proto.l4().map(proto_number).unwrap_or(1),
            dport: port,
        });
    }
    assert_eq!(
        both, v.allowed,
        "{from} -> {to} {proto:?}/{port} v6={v6}: compiled {both}, semantics: {}",
        v.reason
    );
    v
}

/// TCP 80, in each family both ends have (the same answer in both).
fn allowed(c: &Cluster, from: &str, to: &str) -> bool {
    let got: Vec<bool> = [false, true]
        .into_iter()
        .filter(|&v6| endpoint(c, from, v6).is_some() && endpoint(c, to, v6).is_some())
        .map(|v6| decide(c, from, to, 80, Proto::Tcp, v6).allowed)
        .collect();
    assert!(!got.is_empty(), "{from} -> {to}: no common family");
    assert!(
        got.iter().all(|&g| g == got[0]),
        "{from} -> {to}: both families alike"
    );
    got[0]
}

fn allow_all_ingress_np(namespace: &str) -> Json {
    json!({"metadata": {"namespace": namespace, "name": "allow-all"},
        "spec": {"podSelector": {}, "ingress": [{}]}})
}

fn deny_all_ingress_np(namespace: &str) -> Json {
    json!({"metadata": {"namespace": namespace, "name": "deny-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
}

#[test]
fn admin_deny_beats_a_v1_allow_and_names_tier_policy_and_rule() {
    let (c, r) = cluster(
        json!([allow_all_ingress_np("x")]),
        json!([cnp(
            "deny-y",
            "Admin",
            10,
            ns("x"),
            json!([{"name": "from-y", "action": "Deny", "from": [ns("y")]}]),
            json!([])
        )]),
    );
    assert!(r.refused.is_empty(), "{r:?}");
    let v = decide(&c, "y/a", "x/a", 80, Proto::Tcp, false);
    assert!(!v.allowed);
    assert_eq!(v.by, [("cnp:deny-y".to_string(), Direction::Ingress)]);
    assert!(
        v.reason
            .contains("Admin tier, cnp:deny-y ingress rule 0 \"from-y\" (Deny)"),
        "{}",
        v.reason
    );
    assert!(allowed(&c, "z/c", "x/a"), "other namespaces: v1 allows");
    assert!(!allowed(&c, "y/b", "x/b"));
}

#[test]
fn admin_accept_beats_a_v1_deny_but_egress_accept_still_meets_ingress() {
    let (c, _) = cluster(
        json!([deny_all_ingress_np("x"), deny_all_ingress_np("y"),
            {"metadata": {"namespace": "z", "name": "deny-egress"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}]),
        json!([
            cnp(
                "in",
                "Admin",
                1,
                ns("x"),
                json!([rule("Accept", json!([ns("z")]))]),
                json!([])
            ),
            cnp(
                "out",
                "Admin",
                1,
                ns("z"),
                json!([]),
                json!([rule("Accept", json!([{"namespaces": {}}]))])
            )
        ]),
    );
    // z's egress is accepted by the Admin tier over z's v1 egress deny,
    // x's ingress by the Admin tier over x's v1 deny
    assert!(allowed(&c, "z/c", "x/a"));
    // y's ingress is still v1's: isolated, nothing allows
    let v = decide(&c, "z/c", "y/a", 80, Proto::Tcp, false);
    assert!(!v.allowed);
    assert!(v.reason.contains("isolated by y/deny-all"), "{}", v.reason);
    assert!(!allowed(&c, "y/a", "x/a"), "v1 deny in x for y");
}

#[test]
fn an_admin_egress_accept_is_final_where_the_destination_has_no_ingress_rules() {
    let deny_egress = |n: &str| {
        json!({"metadata": {"namespace": n, "name": "deny-egress"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"]}})
    };
    let (c, _) = cluster(
        json!([deny_egress("x")]),
        json!([
            cnp(
                "out",
                "Admin",
                1,
                json!({"namespaces": {}}),
                json!([]),
                json!([rule(
                    "Accept",
                    json!([{"networks": ["203.0.113.0/24", "2001:db8::/32"]}, ns("z")])
                )])
            ),
            cnp(
                "base",
                "Baseline",
                1,
                json!({"namespaces": {}}),
                json!([]),
                json!([rule("Deny", json!([{"networks": ["0.0.0.0/0", "::/0"]}]))])
            )
        ]),
    );
    // over a v1 egress deny (x) and a Baseline deny (y), to an address
    // and a pod no ingress rule looks at
    for from in ["x/a", "y/a"] {
        assert!(allowed(&c, from, "203.0.113.9"), "{from}");
        assert!(allowed(&c, from, "2001:db8::9"), "{from}");
        assert!(allowed(&c, from, "z/c"), "{from}");
        assert!(!allowed(&c, from, "198.51.100.1"), "{from}");
    }
}

#[test]
fn admin_pass_hands_over_to_v1_and_to_baseline_when_v1_does_not_select() {
    let cnps = json!([
        cnp(
            "pass",
            "Admin",
            1,
            json!({"namespaces": {}}),
            json!([rule("Pass", json!([ns("y")]))]),
            json!([])
        ),
        // of lower precedence in the Admin tier: skipped by the Pass
        cnp(
            "deny-all",
            "Admin",
            2,
            json!({"namespaces": {}}),
            json!([rule("Deny", json!([{"namespaces": {}}]))]),
            json!([])
        ),
        cnp(
            "baseline-deny",
            "Baseline",
            1,
            json!({"namespaces": {}}),
            json!([rule("Deny", json!([ns("y")]))]),
            json!([])
        )
    ]);
    let (c, _) = cluster(json!([allow_all_ingress_np("x")]), cnps);
    // x is isolated by v1, which allows: the Baseline Deny is never reached
    assert!(allowed(&c, "y/a", "x/a"));
    // the reason names the v1 rule and the Pass before it
    let v = decide(&c, "y/a", "x/a", 80, Proto::Tcp, false);
    assert!(
        v.reason.contains(
            "NetworkPolicy tier, allowed by x/allow-all rule 0, after Admin Pass cnp:pass ingress rule 0"
        ),
        "{}",
        v.reason
    );
    // z is not selected by v1: Pass -> v1 (nothing) -> Baseline Deny
    let v = decide(&c, "y/a", "z/c", 80, Proto::Tcp, false);
    assert!(!v.allowed);
    assert!(
        v.reason.contains(
            "Baseline tier, cnp:baseline-deny ingress rule 0 (Deny), after Admin Pass cnp:pass ingress rule 0"
        ),
        "{}",
        v.reason
    );
    // no Pass, no "after"
    let v = decide(&c, "z/c", "x/a", 80, Proto::Tcp, false);
    assert!(!v.reason.contains("after"), "{}", v.reason);
    // from z itself: no Pass, the Admin deny-all decides
    assert!(!allowed(&c, "z/c", "x/a"));
}

#[test]
fn baseline_deny_is_overridden_by_v1_per_direction() {
    let cnps = json!([cnp(
        "iso",
        "Baseline",
        0,
        json!({"namespaces": {}}),
        json!([rule("Deny", json!([{"namespaces": {}}]))]),
        json!([rule("Deny", json!([ns("z")]))])
    )]);
    let (c, _) = cluster(json!([allow_all_ingress_np("x")]), cnps.clone());
    assert!(allowed(&c, "y/a", "x/a"), "x's ingress is v1's");
    assert!(!allowed(&c, "x/a", "y/a"), "y's ingress: Baseline deny");
    // x is isolated by v1 for ingress only: its egress still meets Baseline
    assert!(!allowed(&c, "x/a", "z/c"));
    // and without any v1 policy, the Baseline applies to x too
    let (c, _) = cluster(json!([]), cnps);
    assert!(!allowed(&c, "y/a", "x/a"));
}

#[test]
fn priorities_then_names_then_rule_order() {
    let deny_y = json!([rule("Deny", json!([ns("y")]))]);
    let accept_y = json!([rule("Accept", json!([ns("y")]))]);
    // lower priority value first, whatever the names
    let (c, _) = cluster(
        json!([]),
        json!([
            cnp("a-deny", "Admin", 20, ns("x"), deny_y.clone(), json!([])),
            cnp(
                "b-accept",
                "Admin",
                10,
                ns("x"),
                accept_y.clone(),
                json!([])
            )
        ]),
    );
    assert!(allowed(&c, "y/a", "x/a"));
    // equal priorities: by name
    let (c, _) = cluster(
        json!([]),
        json!([
            cnp(
                "b-accept",
                "Admin",
                10,
                ns("x"),
                accept_y.clone(),
                json!([])
            ),
            cnp("a-deny", "Admin", 10, ns("x"), deny_y.clone(), json!([]))
        ]),
    );
    assert!(!allowed(&c, "y/a", "x/a"));
    // within a policy, the first rule that matches
    let (c, _) = cluster(
        json!([]),
        json!([cnp(
            "p",
            "Admin",
            10,
            ns("x"),
            json!([
                rule("Accept", json!([pod_in("y", "a")])),
                rule("Deny", json!([ns("y")]))
            ]),
            json!([])
        )]),
    );
    assert!(allowed(&c, "y/a", "x/a"));
    assert!(!allowed(&c, "y/b", "x/a"));
}

#[test]
fn subjects_by_namespace_or_pod_and_host_network_is_never_one() {
    let (c, _) = cluster(
        json!([]),
        json!([
            cnp(
                "pods",
                "Admin",
                1,
                json!({"pods": {"namespaceSelector": {"matchLabels": {"ns": "x"}}, "podSelector": {"matchLabels": {"pod": "b"}}}}),
                json!([rule("Deny", json!([{"namespaces": {}}]))]),
                json!([])
            ),
            cnp(
                "host",
                "Admin",
                1,
                json!({"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "h"}}}}),
                json!([rule("Deny", json!([{"namespaces": {}}]))]),
                json!([rule("Deny", json!([{"namespaces": {}}]))])
            )
        ]),
    );
    assert!(!allowed(&c, "y/a", "x/b"));
    assert!(allowed(&c, "y/a", "x/a"), "x/a is not a subject");
    assert!(
        allowed(&c, "y/a", "x/h"),
        "hostNetwork pods are never subjects"
    );
    assert!(allowed(&c, "x/h", "y/a"));
}

#[test]
fn peers_namespaces_pods_networks_and_nodes() {
    // networks match pod addresses; hostNetwork pods are not pod peers
    // but are their node's addresses
    let (c, _) = cluster(
        json!([]),
        json!([cnp(
            "egress",
            "Admin",
            1,
            ns("z"),
            json!([]),
            json!([
                rule(
                    "Deny",
                    json!([{"networks": ["10.244.1.2/32", "fd00::1:2/128"]}])
                ),
                rule("Deny", json!([{"nodes": {"matchLabels": {"zone": "b"}}}])),
                rule("Accept", json!([pod_in("x", "h")])),
                rule(
                    "Deny",
                    json!([{"networks": ["10.244.2.0/24", "fd00::2:0/112"]}])
                )
            ])
        )]),
    );
    assert!(
        !allowed(&c, "z/c", "x/a"),
        "networks catch a pod's addresses"
    );
    assert!(allowed(&c, "z/c", "x/b"));
    assert!(
        !allowed(&c, "z/c", "x/h"),
        "x/h is n2's address: a nodes peer"
    );
    assert!(!allowed(&c, "z/c", N2.1));
    assert!(allowed(&c, "z/c", "172.18.0.9"), "not a node's address");
    // z/r is on n2: its egress is n2's to enforce
    assert!(!allowed(&c, "z/r", "x/a"));
    assert!(allowed(&c, "z/r", "203.0.113.1"));
}

#[test]
fn protocols_ports_ranges_and_named_ports() {
    let (c, _) = cluster(
        json!([]),
        json!([cnp(
            "ports",
            "Admin",
            1,
            ns("x"),
            json!([{"action": "Accept", "from": [ns("y")], "protocols": [
                {"tcp": {"destinationPort": {"range": {"start": 80, "end": 81}}}},
                {"destinationNamedPort": "dns"}]},
                rule("Deny", json!([ns("y")]))]),
            json!([{"action": "Deny", "to": [ns("z")], "protocols": [{"destinationNamedPort": "http"}]}])
        )]),
    );
    for (port, proto, want) in [
        (80, Proto::Tcp, true),
        (81, Proto::Tcp, true),
        (82, Proto::Tcp, false),
        (80, Proto::Udp, false),
        (53, Proto::Udp, true),
        (53, Proto::Tcp, false),
        (0, Proto::Other, false),
    ] {
        for v6 in [false, true] {
            assert_eq!(
                decide(&c, "y/a", "x/a", port, proto, v6).allowed,
                want,
                "{proto:?}/{port} v6={v6}"
            );
        }
    }
    // egress named port: the destination pod's "http" (TCP 8080)
    assert!(!decide(&c, "x/a", "z/c", 8080, Proto::Tcp, false).allowed);
    assert!(decide(&c, "x/a", "z/c", 8080, Proto::Udp, false).allowed);
    assert!(decide(&c, "x/a", "z/c", 80, Proto::Tcp, true).allowed);
    // no protocols: everything, ICMP too
    let (c, _) = cluster(
        json!([]),
        json!([cnp(
            "all",
            "Admin",
            1,
            ns("x"),
            json!([rule("Deny", json!([ns("y")]))]),
            json!([])
        )]),
    );
    assert!(!decide(&c, "y/a", "x/a", 0, Proto::Other, false).allowed);
    assert!(!decide(&c, "y/a", "x/a", 9000, Proto::Sctp, true).allowed);
}

#[test]
fn unknown_or_invalid_fields_fail_closed() {
    // an Accept rule with an unknown peer matches nothing: the Deny after
    // it decides
    let (c, r) = cluster(
        json!([]),
        json!([cnp(
            "acc",
            "Admin",
            1,
            ns("x"),
            json!([
                rule("Accept", json!([{"futurePeer": {}}])),
                rule("Deny", json!([ns("y")]))
            ]),
            json!([])
        )]),
    );
    assert!(!allowed(&c, "y/a", "x/a"));
    assert!(r.refused[0].reason.contains("matches nothing"), "{r:?}");
    // a Pass or Deny rule with an unknown peer (or protocol, or action)
    // denies all
    for bad in [
        json!({"action": "Pass", "from": [{"futurePeer": {}}]}),
        json!({"action": "Deny", "from": [ns("z")], "protocols": [{"icmp": {}}]}),
        json!({"action": "Pass", "from": [{"networks": ["10.0.0.0/8"]}]}),
        json!({"action": "Log", "from": [ns("z")]}),
        json!({"action": "Pass"}),
        json!({"action": "Deny", "from": [{"pods": {"namespaceSelector": {}}}]}),
    ] {
        let (c, r) = cluster(
            json!([]),
            json!([cnp(
                "bad",
                "Admin",
                1,
                ns("x"),
                json!([bad.clone()]),
                json!([])
            )]),
        );
        assert!(!allowed(&c, "y/a", "x/a"), "{bad}");
        assert!(!allowed(&c, "x/b", "x/a"), "{bad}");
        assert!(allowed(&c, "x/a", "y/a"), "{bad}: ingress only");
        assert!(
            r.refused[0].reason.contains("denies all traffic"),
            "{bad}: {r:?}"
        );
    }
    // egress: domainNames are not supported (fail closed for Accept)
    let (c, _) = cluster(
        json!([]),
        json!([cnp(
            "dns",
            "Baseline",
            1,
            ns("x"),
            json!([]),
            json!([{"action": "Accept", "to": [{"domainNames": ["example.com"]}]}, rule("Deny", json!([{"namespaces": {}}]))])
        )]),
    );
    assert!(!allowed(&c, "x/a", "y/a"));
}

#[test]
fn policies_that_cannot_be_read_are_refused_with_bounded_escaped_reasons() {
    let mut bad_rules = Vec::new();
    for _ in 0..20 {
        bad_rules.push(json!({"action": "Deny", "from": [{}]}));
    }
    let (c, r) = cluster(
        json!([]),
        json!([
            cnp("tier", "Middle", 1, ns("x"), json!([]), json!([])),
            cnp("prio", "Admin", 1001, ns("x"), json!([]), json!([])),
            {"metadata": {"name": "nosubject"}, "spec": {"tier": "Admin", "priority": 1}},
            cnp("both", "Admin", 1, json!({"namespaces": {}, "pods": {"podSelector": {}}}), json!([]), json!([])),
            {"apiVersion": "policy.networking.k8s.io/v1beta9", "metadata": {"name": "version"}, "spec": {}},
            cnp("many", "Admin", 1, ns("x"), json!(bad_rules), json!([])),
            cnp("quote\"\nname", "Admin", 1, ns("x"), json!([]), json!([{"action": "Pass", "to": [{"networks": ["x\"y"]}]}]))
        ]),
    );
    assert_eq!(c.cluster_policy_count(cnp::Tier::Admin), 2, "many, quote");
    let text: Vec<String> = r.refused.iter().map(|x| x.to_string()).collect();
    for want in [
        "tier \"Middle\"",
        "priority 1001",
        "no subject",
        "both namespaces and pods",
        "apiVersion",
    ] {
        assert!(text.iter().any(|t| t.contains(want)), "{want}: {text:#?}");
    }
    let many = text.iter().filter(|t| t.contains("\"many\"")).count();
    assert_eq!(many, cnp::MAX_REFUSALS_PER_POLICY + 1, "{text:#?}");
    assert!(text.iter().any(|t| t.contains("12 more")), "{text:#?}");
    let quoted = text.iter().find(|t| t.contains("quote")).unwrap();
    assert!(!quoted.contains('\n'), "escaped: {quoted}");
    assert!(quoted.contains("\\\"y"), "{quoted}");
}

#[test]
fn the_pods_own_node_reaches_it_and_its_egress_to_the_node_is_policed() {
    let (c, _) = cluster(
        json!([]),
        json!([cnp(
            "deny",
            "Admin",
            1,
            json!({"namespaces": {}}),
            json!([rule("Deny", json!([{"namespaces": {}}]))]),
            json!([rule("Deny", json!([{"networks": ["0.0.0.0/0", "::/0"]}]))])
        )]),
    );
    assert!(allowed(&c, N1.1, "x/a"));
    assert!(
        allowed(&c, N2.1, "x/a"),
        "ingress peers are pods: another node's address is none"
    );
    assert!(!allowed(&c, "x/a", "y/a"));
    assert!(
        !allowed(&c, "x/a", N1.1),
        "its own node: networks 0/0 covers it (input hook)"
    );
    assert!(!allowed(&c, "x/a", N2.1), "another node: networks 0/0");
    // a nodes peer selecting the pod's own node, v1 default-deny egress
    let deny_node = |sel: Json| {
        cnp(
            "no-node",
            "Admin",
            1,
            json!({"namespaces": {}}),
            json!([]),
            json!([rule("Deny", json!([{"nodes": sel}]))]),
        )
    };
    let (c, _) = cluster(
        json!([]),
        json!([deny_node(json!({"matchLabels": {"zone": "a"}}))]),
    );
    assert!(!allowed(&c, "x/a", N1.1), "n1 is in zone a");
    assert!(allowed(&c, "x/a", N2.1), "n2 is not");
    assert!(allowed(&c, N1.1, "x/a"), "n1 still reaches its pods");
    let (c, _) = cluster(
        json!([{"metadata": {"namespace": "x", "name": "deny-egress"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}]),
        json!([]),
    );
    assert!(!allowed(&c, "x/a", N1.1), "v1 default-deny egress");
    assert!(allowed(&c, "y/a", N1.1), "y is not isolated");
    assert!(allowed(&c, N1.1, "x/a"));
    let v = decide(&c, "x/a", N1.2, 80, Proto::Tcp, true);
    assert!(v.reason.contains("x/deny-egress"), "{}", v.reason);
}

#[test]
fn a_new_pod_under_an_admin_deny_is_enforced_from_the_cni_hand_off() {
    // x/new is known to kindnetd (scheduled to n1) but has no address yet
    let mut all = pods();
    let mut new = all[0].clone();
    new.name = "new".into();
    new.pod_ips.clear();
    all.push(new);
    let cnps: Vec<ClusterNetworkPolicy> = serde_json::from_value(json!([cnp(
        "deny-y",
        "Admin",
        1,
        ns("x"),
        json!([rule("Deny", json!([ns("y")]))]),
        json!([])
    )]))
    .unwrap();
    let (mut c, _) = Cluster::new(&all, &namespaces(), &[], &[ctx(N1)]);
    c.set_cluster_network_policies(&cnps, &[]);
    let mut batch = compile(&c, &ctx(N1)).batch;
    // the CNI plugin's ADD: the pod's addresses to its chains
    let ips: Vec<IpAddr> = vec![
        "10.244.1.99".parse().unwrap(),
        "fd00::1:99".parse().unwrap(),
    ];
    batch
        .cmds
        .extend(pod_dispatch_elements("x", "new", &ips).cmds);
    let rs = Ruleset::load(&batch);
    let from_y = |v6: bool| Packet {
        saddr: c.pod_ip("y", "a", v6).unwrap(),
        daddr: ips[v6 as usize],
        l4proto: 6,
        dport: 80,
    };
    assert!(!rs.accepts(&from_y(false)));
    assert!(!rs.accepts(&from_y(true)));
    let from_z = Packet {
        saddr: c.pod_ip("z", "c", false).unwrap(),
        ..from_y(false)
    };
    assert!(rs.accepts(&from_z));
    // without the hand-off, the address is unknown: no pod chain
    let rs = Ruleset::load(&compile(&c, &ctx(N1)).batch);
    assert!(rs.accepts(&from_y(false)), "(the gap the hand-off closes)");
}

#[test]
fn a_peer_label_change_changes_set_elements_only_and_output_is_deterministic() {
    let cnps = json!([cnp(
        "p",
        "Admin",
        1,
        ns("x"),
        json!([rule(
            "Deny",
            json!([{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "bad"}}}}])
        )]),
        json!([{"action": "Accept", "to": [ns("y")], "protocols": [{"destinationNamedPort": "http"}]}])
    )]);
    let cnps: Vec<ClusterNetworkPolicy> = serde_json::from_value(cnps).unwrap();
    let build = |all: &[Pod]| {
        let (mut c, _) = Cluster::new(all, &namespaces(), &[], &[ctx(N1)]);
        c.set_cluster_network_policies(&cnps, &[]);
        compile(&c, &ctx(N1)).batch
    };
    let mut all = pods();
    let (mut c, _) = Cluster::new(&all, &namespaces(), &[], &[ctx(N1)]);
    c.set_cluster_network_policies(&cnps, &[]);
    let stats = compile(&c, &ctx(N1)).stats;
    assert_eq!((stats.admin_policies, stats.baseline_policies), (1, 0));
    let before = build(&all);
    assert_eq!(before, build(&all), "deterministic");
    all[4].labels.insert("role".into(), "bad".into()); // z/c
    let after = build(&all);
    assert_ne!(before, after);
    let shape = |b: &kindnet_nft::Batch| -> Vec<kindnet_nft::Cmd> {
        b.cmds
            .iter()
            .map(|c| match c {
                kindnet_nft::Cmd::AddSet(t, s) => {
                    kindnet_nft::Cmd::AddSet(t.clone(), s.clone().with_elements(vec![]))
                }
                c => c.clone(),
            })
            .collect()
    };
    assert_eq!(shape(&before), shape(&after));
}

//! The compiled rules in a real kernel: one "node" namespace, the upstream
//! conformance model (namespaces x, y, z; pods a, b, c in each, each its own
//! network namespace on a ptp veth with /32 and /128 routes), TCP and UDP
//! servers on 80 and 81, and every (from, to, family, port) probed at once
//! and compared with `evaluate_on`. Root only; everything happens inside
//! namespaces this test makes.

// Raw syscalls: raw syscalls in test setup (lab.rs).
#![allow(unsafe_code)]

mod lab;

use kindnet_netpol::*;
use kindnet_testbed::require_root;
use lab::Lab;
use serde_json::{Value as Json, json};
use std::time::Instant;

fn np(ns: &str, spec: Json) -> Json {
    json!({"metadata": {"namespace": ns}, "spec": spec})
}

fn pod_is(p: &str) -> Json {
    json!({"matchLabels": {"pod": p}})
}

fn ns_is(n: &str) -> Json {
    json!({"matchLabels": {"ns": n}})
}

#[test]
fn truth_tables_in_a_real_kernel() {
    require_root!();
    let t0 = Instant::now();
    let lab = Lab::new();
    eprintln!("lab up in {:?}", t0.elapsed());
    let deny_in = |ns: &str| np(ns, json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
    let cases: Vec<(&str, Vec<Json>)> = vec![
        ("no policies: everything open", vec![]),
        ("default-deny ingress in x", vec![deny_in("x")]),
        (
            "default-deny egress in x",
            vec![np(
                "x",
                json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            )],
        ),
        (
            "allow-all ingress beside deny-all (union)",
            vec![
                deny_in("x"),
                np("x", json!({"podSelector": {}, "ingress": [{}]})),
            ],
        ),
        (
            "same namespace only",
            vec![np(
                "x",
                json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
            )],
        ),
        (
            "namespace selector ns=y to x/a",
            vec![np(
                "x",
                json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}]}),
            )],
        ),
        (
            "pod selector pod=b to x/a",
            vec![np(
                "x",
                json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": pod_is("b")}]}]}),
            )],
        ),
        (
            "pod AND namespace in one peer",
            vec![np(
                "x",
                json!({"podSelector": pod_is("a"), "ingress": [{"from": [
            {"podSelector": pod_is("b"), "namespaceSelector": ns_is("y")}]}]}),
            )],
        ),
        (
            "pod OR namespace in two peers",
            vec![np(
                "x",
                json!({"podSelector": pod_is("a"), "ingress": [{"from": [
            {"podSelector": pod_is("b")}, {"namespaceSelector": ns_is("y")}]}]}),
            )],
        ),
        (
            "ipBlock with except, both families",
            vec![np(
                "x",
                json!({"podSelector": pod_is("a"), "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.244.1.0/24", "except": ["10.244.1.12/30", "10.244.1.16/32"]}},
            {"ipBlock": {"cidr": "fd00:10:244:1::/64", "except": ["fd00:10:244:1::10/124"]}}]}]}),
            )],
        ),
        (
            "named ports serve-80-tcp, serve-81-udp",
            vec![np(
                "x",
                json!({"podSelector": {}, "ingress": [{"ports": [
            {"port": "serve-80-tcp"}, {"protocol": "UDP", "port": "serve-81-udp"}]}]}),
            )],
        ),
        (
            "endPort range 79-80 TCP",
            vec![np(
                "y",
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": 79, "endPort": 80}]}]}),
            )],
        ),
        (
            "UDP 81 only from z",
            vec![np(
                "x",
                json!({"podSelector": pod_is("b"), "ingress": [{"from": [{"namespaceSelector": ns_is("z")}],
            "ports": [{"protocol": "UDP", "port": 81}]}]}),
            )],
        ),
        (
            "egress to TCP 80 only",
            vec![np(
                "x",
                json!({"podSelector": pod_is("a"), "egress": [{"ports": [{"protocol": "TCP", "port": 80}]}]}),
            )],
        ),
        (
            "egress named port serve-81-udp to y",
            vec![np(
                "z",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
            "to": [{"namespaceSelector": ns_is("y")}], "ports": [{"protocol": "UDP", "port": "serve-81-udp"}]}]}),
            )],
        ),
        (
            "several policies on x/a (union)",
            vec![
                np(
                    "x",
                    json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": pod_is("b")}], "ports": [{"port": 80}]}]}),
                ),
                np(
                    "x",
                    json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": ns_is("y")}], "ports": [{"port": 81}]}]}),
                ),
                np(
                    "x",
                    json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "c"]}]},
                "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x", "y"]}]}}]}]}),
                ),
            ],
        ),
        (
            "deny all ingress and egress everywhere",
            ["x", "y", "z"]
                .iter()
                .map(|n| {
                    np(
                        n,
                        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
                    )
                })
                .collect(),
        ),
    ];
    let mut bad = Vec::new();
    for (i, (name, pols)) in cases.iter().enumerate() {
        // logging on in one case: the kernel takes the limit + log rules
        bad.extend(lab.case(name, pols, None, i == 1));
    }
    // x/a pending: kindnetd made its chains, the CNI adds its addresses
    bad.extend(lab.case(
        "pending x/a + CNI dispatch elements",
        &[deny_in("x")],
        Some(("x", "a")),
        false,
    ));
    let counters = lab.nft_json(&["list", "counter", "inet", TABLE, DENIED_INGRESS_COUNTER]);
    let packets = counters["nftables"][1]["counter"]["packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(packets > 0, "the ingress deny counter counts: {counters}");
    lab.apply(&{
        let mut b = kindnet_nft::Batch::new();
        b.remove_table(&table());
        b
    });
    eprintln!("total {:?}", t0.elapsed());
    assert!(
        bad.is_empty(),
        "{} cells differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

fn cnp(name: &str, tier: &str, priority: u32, subject: Json, ingress: Json, egress: Json) -> Json {
    json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"tier": tier, "priority": priority, "subject": subject,
            "ingress": ingress, "egress": egress}})
}

fn cnp_ns(n: &str) -> Json {
    json!({"namespaces": ns_is(n)})
}

#[test]
fn cluster_network_policy_tiers_in_a_real_kernel() {
    require_root!();
    let t0 = Instant::now();
    let lab = Lab::new();
    let allow_all_in = |ns: &str| np(ns, json!({"podSelector": {}, "ingress": [{}]}));
    let all = json!({"namespaces": {}});
    let cases: Vec<(&str, Vec<Json>, Vec<Json>)> = vec![
        (
            "Admin Deny beats a v1 allow",
            vec![allow_all_in("x")],
            vec![cnp(
                "deny-y",
                "Admin",
                10,
                cnp_ns("x"),
                json!([{"action": "Deny", "from": [cnp_ns("y")]}]),
                json!([]),
            )],
        ),
        (
            "Admin Accept beats a v1 deny, TCP 80 only",
            vec![np(
                "y",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            )],
            vec![cnp(
                "accept-z",
                "Admin",
                10,
                cnp_ns("y"),
                json!([{"action": "Accept", "from": [cnp_ns("z")],
                    "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]),
                json!([]),
            )],
        ),
        (
            "Admin Pass hands over to v1 and to Baseline",
            vec![np(
                "x",
                json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": pod_is("b")}]}]}),
            )],
            vec![
                cnp(
                    "pass-x",
                    "Admin",
                    1,
                    all.clone(),
                    json!([{"action": "Pass", "from": [cnp_ns("x")]}]),
                    json!([]),
                ),
                cnp(
                    "deny-all",
                    "Admin",
                    2,
                    all.clone(),
                    json!([{"action": "Deny", "from": [all.clone()]}]),
                    json!([]),
                ),
                cnp(
                    "baseline",
                    "Baseline",
                    1,
                    all.clone(),
                    json!([{"action": "Deny", "from": [{"pods": {"namespaceSelector": {}, "podSelector": pod_is("c")}}]}]),
                    json!([]),
                ),
            ],
        ),
        (
            "Baseline Deny overridden by a v1 allow",
            vec![allow_all_in("x")],
            vec![cnp(
                "isolate",
                "Baseline",
                5,
                all.clone(),
                json!([{"action": "Deny", "from": [all.clone()]}]),
                json!([]),
            )],
        ),
        (
            "egress: networks catch pods, ranges, named ports",
            vec![],
            vec![cnp(
                "egress-z",
                "Admin",
                3,
                cnp_ns("z"),
                json!([]),
                json!([
                    {"action": "Accept", "to": [{"pods": {"namespaceSelector": ns_is("x"), "podSelector": {}}}],
                     "protocols": [{"destinationNamedPort": "serve-81-udp"}]},
                    {"action": "Deny", "to": [{"networks": ["10.244.1.0/24", "fd00:10:244:1::/64"]}],
                     "protocols": [{"tcp": {"destinationPort": {"range": {"start": 81, "end": 90}}}},
                                   {"udp": {"destinationPort": {"number": 81}}}]}
                ]),
            )],
        ),
    ];
    let mut bad = Vec::new();
    for (i, (name, pols, cnps)) in cases.iter().enumerate() {
        bad.extend(lab.case_with_tiers(name, pols, cnps, None, i == 0));
    }
    // x/a pending under an Admin Deny: enforced from the CNI hand-off
    bad.extend(lab.case_with_tiers(
        "pending x/a under an Admin Deny + CNI dispatch elements",
        &[],
        &[cnp(
            "deny-y",
            "Admin",
            10,
            cnp_ns("x"),
            json!([{"action": "Deny", "from": [cnp_ns("y")]}]),
            json!([]),
        )],
        Some(("x", "a")),
        false,
    ));
    let counters = lab.nft_json(&["list", "counter", "inet", TABLE, "admin-denied-ingress"]);
    let packets = counters["nftables"][1]["counter"]["packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(packets > 0, "the Admin deny counter counts: {counters}");
    lab.apply(&{
        let mut b = kindnet_nft::Batch::new();
        b.remove_table(&table());
        b
    });
    eprintln!("total {:?}", t0.elapsed());
    assert!(
        bad.is_empty(),
        "{} cells differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

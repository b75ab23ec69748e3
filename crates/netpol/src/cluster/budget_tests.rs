use super::budget::policy_elements;
use super::*;
use crate::compile::compile;
use crate::eval::{Endpoint, Proto, evaluate};
use serde_json::json;

fn except_policy(name: &str, n: u32) -> NetworkPolicy {
    let except: Vec<String> = (0..n)
        .map(|i| format!("fd00::{:x}/128", i * 2 + 1))
        .collect();
    serde_json::from_value(json!({"metadata": {"namespace": "x", "name": name},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": "::/0", "except": except}}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "::/0"}}]}]}}))
    .unwrap()
}

#[test]
fn a_policy_over_budget_allows_nothing_and_keeps_isolating() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": "a"}, "spec": {"nodeName": "n1"},
        "status": {"podIPs": [{"ip": "fd00:1::2"}]}}))
    .unwrap();
    let pols = [except_policy("big", 1000), except_policy("small", 3)];
    let (mut c, _) = Cluster::new(&[pod], &[], &pols, &[]);
    assert_eq!(policy_elements(&c.policies[0]), 1001 + 1);
    assert_eq!(policy_elements(&c.policies[1]), 4 + 1);
    let allowed = |c: &Cluster| {
        evaluate(
            c,
            &Endpoint::Addr("2001:db8::1".parse().unwrap()),
            &Endpoint::pod("x", "a", true),
            80,
            Proto::Tcp,
        )
        .allowed
    };
    assert!(allowed(&c));
    let budget = Budget {
        per_policy: 500,
        per_node: 10_000,
    };
    // another node's pods: nothing to refuse there
    assert!(c.clone().apply_budget(&budget, "n2").is_empty());
    let refused = c.apply_budget(&budget, "n1");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].object, "policy x/big");
    assert!(
        refused[0].reason.contains("1002 set elements"),
        "{}",
        refused[0]
    );
    // x/small still allows; x/big isolates and allows nothing
    assert!(allowed(&c));
    assert!(c.is_isolated("x", "a", Direction::Ingress));
    assert!(c.policies[0].ingress.as_deref() == Some(&[]));
    // the node budget: the smaller policy first
    let (mut c, _) = Cluster::new(&[], &[], &pols, &[]);
    let (mut c2, _) = Cluster::new(
        &[
            serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "a"},
            "spec": {"nodeName": "n1"}}))
            .unwrap(),
        ],
        &[],
        &pols,
        &[],
    );
    assert!(
        c.apply_budget(&budget, "n1").is_empty(),
        "selects nothing here"
    );
    let refused = c2.apply_budget(
        &Budget {
            per_policy: 5000,
            per_node: 1000,
        },
        "n1",
    );
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].reason.contains("node's budget of 1000 (5 taken"),
        "{}",
        refused[0]
    );
    // compiled: the big policy's 1001 ranges are gone from the table
    let ctx = NodeContext {
        node_name: "n1".into(),
        ..NodeContext::default()
    };
    assert!(compile(&c2, &ctx).stats.elements < 50);
}

#[test]
fn cluster_network_policies_count_and_fail_closed_over_budget() {
    use crate::cnp::input::ClusterNetworkPolicy;
    let pods: Vec<Pod> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            serde_json::from_value(json!({
                "metadata": {"namespace": "x", "name": n, "labels": {"pod": n}},
                "spec": {"nodeName": "n1"},
                "status": {"podIPs": [{"ip": format!("fd00:1::{}", i + 2)}]}}))
            .unwrap()
        })
        .collect();
    // an Admin Accept of 600 single addresses for x/a, a small Baseline
    // Deny of one network for x/b
    let nets: Vec<String> = (0..600)
        .map(|i| format!("2001:db8::{:x}/128", i * 2 + 1))
        .collect();
    let cnps: Vec<ClusterNetworkPolicy> = serde_json::from_value(json!([
        {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
         "metadata": {"name": "big"},
         "spec": {"tier": "Admin", "priority": 1,
            "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}}},
            "egress": [{"action": "Accept", "to": [{"networks": nets}]}]}},
        {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
         "metadata": {"name": "small"},
         "spec": {"tier": "Baseline", "priority": 1,
            "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}},
            "egress": [{"action": "Deny", "to": [{"networks": ["2001:db8:1::/48"]}]}]}}
    ]))
    .unwrap();
    let build = || {
        let (mut c, _) = Cluster::new(&pods, &[], &[except_policy("v1", 3)], &[]);
        assert!(
            c.set_cluster_network_policies(&cnps, &[])
                .refused
                .is_empty()
        );
        c
    };
    let out = |c: &Cluster, from: &str, to: &str| {
        evaluate(
            c,
            &Endpoint::pod("x", from, true),
            &Endpoint::Addr(to.parse().unwrap()),
            80,
            Proto::Tcp,
        )
        .allowed
    };
    let c = build();
    assert_eq!(crate::cnp::policy_elements(&c.tiers.admin[0]), 600);
    assert_eq!(crate::cnp::policy_elements(&c.tiers.baseline[0]), 1);
    assert!(out(&c, "a", "2001:db8::1"), "within the budget: accepted");
    // one policy's budget
    let mut c1 = build();
    let refused = c1.apply_budget(
        &Budget {
            per_policy: 500,
            per_node: 10_000,
        },
        "n1",
    );
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].object, "clusternetworkpolicy \"big\"");
    assert!(
        refused[0].reason.contains("600 set elements"),
        "{}",
        refused[0]
    );
    assert!(
        refused[0].reason.contains("denies everything"),
        "{}",
        refused[0]
    );
    // fail closed: x/a's egress denied everywhere (the v1 policy would
    // allow ::/0), x/b's Baseline untouched
    assert!(!out(&c1, "a", "2001:db8::1"));
    assert!(!out(&c1, "a", "2001:db8:2::1"));
    assert!(out(&c1, "b", "2001:db8:2::1"), "v1 allows x/b ::/0");
    // another node: nothing selected there
    assert!(
        build()
            .apply_budget(
                &Budget {
                    per_policy: 1,
                    per_node: 1
                },
                "n2"
            )
            .is_empty()
    );
    // the node's budget: v1 (6) and small (1) fit, big does not
    let mut c2 = build();
    let refused = c2.apply_budget(
        &Budget {
            per_policy: 5000,
            per_node: 100,
        },
        "n1",
    );
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].reason.contains("node's budget of 100 (6 taken"),
        "{}",
        refused[0]
    );
    assert!(!out(&c2, "a", "2001:db8::1"));
    // compiled: the 600 ranges are not in the table
    let ctx = NodeContext {
        node_name: "n1".into(),
        ..NodeContext::default()
    };
    assert!(compile(&c2, &ctx).stats.elements < 100);
    assert!(compile(&c, &ctx).stats.elements > 600);
}

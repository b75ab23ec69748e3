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

/// `n` pods of namespace x on n1, at addresses no two of which are
/// adjacent (a set merges adjacent ones into one range).
fn spread_pods(n: usize) -> Vec<Pod> {
    (0..n)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"namespace": "x", "name": format!("p{i}"), "labels": {"k": "a"}},
                "spec": {"nodeName": "n1"},
                "status": {"podIPs": [{"ip": format!("10.1.{}.{}", i / 100, 2 * (i % 100) + 2)}]}}))
            .unwrap()
        })
        .collect()
}

/// A policy selecting every pod of x, with `rules` ingress rules whose
/// peers each match every pod of x through a selector of their own.
fn distinct_peers_policy(name: &str, rules: usize) -> NetworkPolicy {
    let ingress: Vec<serde_json::Value> = (0..rules)
        .map(|i| {
            json!({"from": [{"podSelector": {"matchExpressions": [
                {"key": "k", "operator": "NotIn", "values": [format!("v{i}")]}]}}]})
        })
        .collect();
    serde_json::from_value(json!({"metadata": {"namespace": "x", "name": name},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": ingress}}))
    .unwrap()
}

#[test]
fn pod_peers_are_charged_the_addresses_their_sets_hold() {
    // 50 rules, each a set of all 100 pods: 5,000 elements (and 50 for the
    // rules), not the 50 a count of peers says
    let pods = spread_pods(100);
    let (c, _) = Cluster::new(&pods, &[], &[distinct_peers_policy("many", 50)], &[]);
    let ctx = NodeContext {
        node_name: "n1".into(),
        ..NodeContext::default()
    };
    let built = compile(&c, &ctx).stats.elements;
    assert!(built >= 5000, "what the charge stands for: {built}");
    let budget = Budget {
        per_policy: 1000,
        per_node: 100_000,
    };
    let mut refused_c = c.clone();
    let refused = refused_c.apply_budget(&budget, "n1");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].reason.contains("5050 set elements"),
        "{}",
        refused[0]
    );
    let left = compile(&refused_c, &ctx).stats.elements;
    assert!(left + 5000 <= built, "the sets are gone: {left} of {built}");
    // within the budget: kept
    let mut kept = c.clone();
    let roomy = Budget {
        per_policy: 6000,
        per_node: 6000,
    };
    assert!(kept.apply_budget(&roomy, "n1").is_empty());

    // Thousands of distinct lists: refused without matching a pod against
    // them (that matching is the cost being refused).
    let (mut c, _) = Cluster::new(&pods, &[], &[distinct_peers_policy("huge", 3000)], &[]);
    let refused = c.apply_budget(&budget, "n1");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].reason.contains("at least 6000 set elements"),
        "{}",
        refused[0]
    );
}

#[test]
fn a_pod_set_shared_by_policies_counts_once_for_the_node() {
    let pods = spread_pods(100);
    let same = |name: &str| -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"namespace": "x", "name": name},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {}}]}]}}))
        .unwrap()
    };
    let pols = [same("p1"), same("p2")];
    let (c, _) = Cluster::new(&pods, &[], &pols, &[]);
    // each: one rule (1) and the set of 100 pods; the node: the set once
    let budget = |per_node| Budget {
        per_policy: 200,
        per_node,
    };
    assert!(c.clone().apply_budget(&budget(102), "n1").is_empty());
    let refused = c.clone().apply_budget(&budget(101), "n1");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]
            .reason
            .contains("1 set elements, over what is left of the node's budget of 101 (101 taken"),
        "{}",
        refused[0]
    );
}

#[test]
fn a_cluster_network_policy_pays_for_the_pods_its_peers_match() {
    use crate::cnp::input::ClusterNetworkPolicy;
    let pods = spread_pods(100);
    let cnps: Vec<ClusterNetworkPolicy> = serde_json::from_value(json!([
        {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
         "metadata": {"name": "all"},
         "spec": {"tier": "Admin", "priority": 1,
            "subject": {"pods": {"namespaceSelector": {}, "podSelector": {}}},
            "ingress": [{"action": "Accept", "from": [
                {"pods": {"namespaceSelector": {}, "podSelector": {}}}]}]}}
    ]))
    .unwrap();
    let build = || {
        let (mut c, _) = Cluster::new(&pods, &[], &[], &[]);
        assert!(
            c.set_cluster_network_policies(&cnps, &[])
                .refused
                .is_empty()
        );
        c
    };
    let budget = |per_policy| Budget {
        per_policy,
        per_node: 100_000,
    };
    // one rule, one peer, the 100 pods' addresses in its set
    assert!(build().apply_budget(&budget(101), "n1").is_empty());
    let refused = build().apply_budget(&budget(100), "n1");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].reason.contains("101 set elements"),
        "{}",
        refused[0]
    );
}

/// A policy of one ingress rule whose one peer list holds `peers` pod
/// peers, each matching every pod of x.
fn many_peers_policy(name: &str, peers: usize) -> NetworkPolicy {
    let from: Vec<serde_json::Value> = (0..peers)
        .map(|_| json!({"podSelector": {"matchLabels": {"k": "a"}}}))
        .collect();
    serde_json::from_value(json!({"metadata": {"namespace": "x", "name": name},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": from}]}}))
    .unwrap()
}

#[test]
fn every_pod_peer_is_looked_up_and_paid_for_not_every_list() {
    let pods = spread_pods(2);
    let budget = Budget {
        per_policy: 1000,
        per_node: 1000,
    };
    // One list of 5,000 peers: at least 5,000 elements, refused without a
    // look-up (a list is one set, but each peer is matched against the pods).
    let (mut c, _) = Cluster::new(&pods, &[], &[many_peers_policy("wide", 5000)], &[]);
    let refused = c.apply_budget(&budget, "n1");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].reason.contains("at least 5001 set elements"),
        "{}",
        refused[0]
    );
    // 500 peers of 2 pods each: looked up (500 of the node's 1,000), then
    // over at 1,001; the 600 peers of the next policy are more than are
    // left to look up, and it is refused before any look-up.
    let pols = [
        many_peers_policy("a500", 500),
        many_peers_policy("b600", 600),
    ];
    let (mut c, _) = Cluster::new(&pods, &[], &pols, &[]);
    let refused = c.apply_budget(&budget, "n1");
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused[0]
            .reason
            .contains("1001 set elements, over the budget of 1000 per policy"),
        "{}",
        refused[0]
    );
    assert!(
        refused[1]
            .reason
            .contains("600 pod peers, more than are left to look up"),
        "{}",
        refused[1]
    );
}

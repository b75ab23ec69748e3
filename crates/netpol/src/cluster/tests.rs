use super::*;
use serde_json::json;

fn policy_json(spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "p"}, "spec": spec}))
        .unwrap()
}

fn one(spec: serde_json::Value) -> (Option<Policy>, Report) {
    let (c, r) = Cluster::new(&[], &[], &[policy_json(spec)], &[]);
    (c.policies.into_iter().next(), r)
}

#[test]
fn policy_types_default_as_the_api_server_does() {
    let types = |spec| {
        let (p, r) = one(spec);
        assert!(r.refused.is_empty(), "{r:?}");
        let p = p.unwrap();
        (p.ingress.is_some(), p.egress.is_some())
    };
    assert_eq!(types(json!({"podSelector": {}})), (true, false));
    assert_eq!(
        types(json!({"podSelector": {}, "egress": []})),
        (true, false)
    );
    assert_eq!(
        types(json!({"podSelector": {}, "egress": [{}]})),
        (true, true)
    );
    assert_eq!(
        types(json!({"podSelector": {}, "policyTypes": ["Egress"]})),
        (false, true)
    );
    assert_eq!(
        types(json!({"podSelector": {}, "policyTypes": ["Ingress"], "egress": [{}]})),
        (true, false),
        "listed types win over the rules present"
    );
    assert_eq!(
        types(json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})),
        (true, true)
    );
}

#[test]
fn empty_rule_list_denies_and_empty_rule_allows() {
    let (p, _) = one(json!({"podSelector": {}, "ingress": []}));
    assert_eq!(p.unwrap().ingress, Some(vec![]));
    let (p, _) = one(json!({"podSelector": {}, "ingress": [{"from": [], "ports": null}]}));
    assert_eq!(
        p.unwrap().ingress,
        Some(vec![RuleSel {
            peers: vec![],
            ports: vec![]
        }])
    );
}

#[test]
fn ports_are_validated_and_resolved() {
    let (p, r) = one(json!({"podSelector": {}, "ingress": [{"ports": [
        {"port": 80}, {"protocol": "UDP", "port": 1000, "endPort": 2000},
        {"protocol": "SCTP"}, {"port": "serve-80-tcp"}]}]}));
    assert!(r.refused.is_empty(), "{r:?}");
    let ports = &p.unwrap().ingress.unwrap()[0].ports;
    assert_eq!(
        ports[0],
        PortSel {
            proto: L4Proto::Tcp,
            port: PortMatch::Range(80, 80)
        }
    );
    assert_eq!(
        ports[1],
        PortSel {
            proto: L4Proto::Udp,
            port: PortMatch::Range(1000, 2000)
        }
    );
    assert_eq!(
        ports[2],
        PortSel {
            proto: L4Proto::Sctp,
            port: PortMatch::All
        }
    );
    assert_eq!(ports[3].port, PortMatch::Named("serve-80-tcp".into()));
}

#[test]
fn bad_rules_are_refused_with_reasons_and_the_policy_still_isolates() {
    for (port, why) in [
        (json!({"port": 0}), "out of range"),
        (json!({"port": 65536}), "out of range"),
        (json!({"port": 80, "endPort": 70}), "below port"),
        (json!({"port": 80, "endPort": 70000}), "out of range"),
        (json!({"endPort": 80}), "needs a port"),
        (json!({"port": "http", "endPort": 90}), "numeric port"),
        (json!({"port": "80"}), "port name"),
        (json!({"port": "Http"}), "port name"),
        (json!({"port": "a--b"}), "port name"),
        (json!({"port": "averyveryverylongname"}), "port name"),
        (json!({"protocol": "ICMP", "port": 1}), "unknown protocol"),
    ] {
        let (p, r) = one(json!({"podSelector": {}, "ingress": [{"ports": [port]}, {}]}));
        assert_eq!(r.refused.len(), 1, "{port}: {r:?}");
        assert!(
            r.refused[0].reason.contains(why),
            "{port}: {}",
            r.refused[0]
        );
        assert_eq!(r.refused[0].part, "ingress rule 0");
        // the good rule stays; the pod stays isolated
        assert_eq!(p.unwrap().ingress.unwrap().len(), 1);
    }
    for (peer, why) in [
        (json!({"ipBlock": {"cidr": "10.0.0.0/33"}}), "not a CIDR"),
        (json!({"ipBlock": {"cidr": "10.0.0.1"}}), "not a CIDR"),
        (
            json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}),
            "not inside",
        ),
        (
            json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}),
            "not inside",
        ),
        (
            json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}}),
            "not inside",
        ),
        (
            json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["x"]}}),
            "not a CIDR",
        ),
        (
            json!({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}),
            "combined",
        ),
        (json!({}), "needs"),
        (
            json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
            "needs values",
        ),
    ] {
        let (p, r) =
            one(json!({"podSelector": {}, "egress": [{"to": [{"podSelector": {}}, peer]}]}));
        assert_eq!(r.refused.len(), 1, "{peer}: {r:?}");
        assert!(
            r.refused[0].reason.contains(why),
            "{peer}: {}",
            r.refused[0]
        );
        assert_eq!(
            p.unwrap().egress,
            Some(vec![]),
            "refused rule allows nothing"
        );
    }
}

#[test]
fn bad_policies_and_pods_are_refused_whole_or_in_part() {
    let (p, r) =
        one(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Lt"}]}}));
    assert!(p.is_none());
    assert!(r.refused[0].reason.contains("unknown operator"), "{r:?}");
    let (p, r) = one(json!({"podSelector": {}, "policyTypes": ["Sideways"]}));
    assert!(p.is_none());
    assert!(r.refused[0].reason.contains("policyType"), "{r:?}");

    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": "a"},
        "spec": {"containers": [{"ports": [
            {"name": "ok", "containerPort": 80},
            {"name": "big", "containerPort": 70000},
            {"name": "icmp", "containerPort": 1, "protocol": "ICMP"}]}]},
        "status": {"podIPs": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "nope"}, {"ip": "fd00::1"}]}
    }))
    .unwrap();
    let twin = Pod {
        name: "b".into(),
        ..pod.clone()
    };
    let (c, r) = Cluster::new(&[pod.clone(), twin, pod], &[], &[], &[]);
    let a = c.pod("x", "a").unwrap();
    assert!(a.ips.is_empty(), "x/b claims the same addresses");
    assert_eq!(a.ports.len(), 1);
    assert!(
        c.pod("x", "b").unwrap().ips.is_empty(),
        "addresses claimed by both: held by neither"
    );
    assert_eq!(c.conflicts().len(), 2);
    let reasons: Vec<String> = r.refused.iter().map(|f| f.to_string()).collect();
    for want in [
        "second address",
        "not an IP",
        "out of range",
        "unknown protocol",
        "listed twice",
    ] {
        assert!(
            reasons.iter().any(|s| s.contains(want)),
            "{want}: {reasons:#?}"
        );
    }
}

#[test]
fn namespaces_carry_their_name_label() {
    let ns = Namespace {
        name: "x".into(),
        labels: Labels::from([("ns".into(), "x".into())]),
    };
    let (c, _) = Cluster::new(&[], &[ns], &[], &[]);
    assert_eq!(
        c.namespace_labels("x")
            .get(NAMESPACE_NAME_LABEL)
            .map(String::as_str),
        Some("x")
    );
    assert_eq!(
        c.namespace_labels("x").get("ns").map(String::as_str),
        Some("x")
    );
    assert_eq!(c.namespace_labels("unknown").len(), 1);
}

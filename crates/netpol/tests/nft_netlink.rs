//! The NetworkPolicy table of a realistic cluster (pod selectors across
//! namespaces, ipBlocks with excepts, named ports, port ranges, UDP,
//! deny-all, logging of denied packets) programmed through `nft` in one
//! namespace and through nf_tables netlink in another lists the same under
//! `nft -j`; so does the plugin's hand-off of a pod's dispatch elements and
//! a second full replacement. Root only; all inside namespaces made here.

use kindnet_netlink::Netns;
use kindnet_netpol::*;
use kindnet_nft::{Batch, Nft, NftCli, NftNetlink};
use kindnet_testbed::{Ns, nft_listing, require_root};
use serde_json::{Value, json};

fn pods(n: usize) -> Vec<Pod> {
    // a pod whose addresses only the CNI plugin knows yet (the hand-off)
    let late = json!({"metadata": {"namespace": "default", "name": "late", "labels": {"app": "app-0"}},
        "spec": {"nodeName": "node1"}, "status": {"phase": "Pending"}});
    std::iter::once(serde_json::from_value(late).unwrap())
        .chain((0..n).map(|i| {
            let ns = ["default", "shop", "ops"][i % 3];
            let node = if i % 4 == 0 { "node2" } else { "node1" };
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": format!("p{i}"),
                    "labels": {"app": format!("app-{}", i % 7), "tier": format!("t-{}", i % 3)}},
                "spec": {"nodeName": node, "containers": [{"ports": [
                    {"name": "http", "containerPort": 8080 + (i % 2) as u16},
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
                "status": {"phase": "Running", "podIPs": [
                    {"ip": format!("10.244.{}.{}", i / 200, i % 200 + 2)},
                    {"ip": format!("fd00:10:244::{:x}", i + 2)}]}
            }))
            .unwrap()
        }))
        .collect()
}

fn policies() -> Vec<NetworkPolicy> {
    let mut v: Vec<Value> = (0..24)
        .map(|k| {
            let ns = ["default", "shop", "ops"][k % 3];
            json!({"metadata": {"namespace": ns, "name": format!("pol-{k}")},
                "spec": {"podSelector": {"matchLabels": {"app": format!("app-{}", k % 7)}},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [
                        {"podSelector": {"matchLabels": {"tier": format!("t-{}", k % 3)}}},
                        {"namespaceSelector": {"matchLabels": {"team": "ops"}}},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.99.0.0/16", "10.244.0.0/24"]}},
                        {"ipBlock": {"cidr": "fd00:99::/32"}}],
                        "ports": [{"port": 80 + k as u16}, {"port": "http"}, {"protocol": "UDP", "port": "dns"},
                                  {"protocol": "SCTP", "port": 9}]}],
                    "egress": [
                        {"to": [{"namespaceSelector": {}}], "ports": [{"port": 443}, {"port": 8000, "endPort": 8100}]},
                        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}]}]}})
        })
        .collect();
    v.push(json!({"metadata": {"namespace": "ops", "name": "deny-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}));
    v.push(
        json!({"metadata": {"namespace": "shop", "name": "allow-all-in"},
        "spec": {"podSelector": {"matchLabels": {"tier": "t-0"}}, "ingress": [{}]}}),
    );
    v.into_iter()
        .map(|p| serde_json::from_value(p).unwrap())
        .collect()
}

fn namespaces() -> Vec<Namespace> {
    ["default", "shop", "ops"]
        .iter()
        .map(|n| {
            serde_json::from_value(json!({"metadata": {"name": n, "labels": {"team": n}}})).unwrap()
        })
        .collect()
}

fn compiled(n: usize, log_denied: bool) -> Batch {
    let ctx = NodeContext {
        pod_cidrs: Vec::new(),
        node_name: "node1".into(),
        node_ips: vec![
            "172.18.0.2".parse().unwrap(),
            "fc00:f853::2".parse().unwrap(),
        ],
        log_denied,
    };
    let (pods, ns, pols) = (pods(n), namespaces(), policies());
    let (c, report) = Cluster::new(&pods, &ns, &pols, std::slice::from_ref(&ctx));
    assert!(report.refused.is_empty(), "{report:?}");
    compile(&c, &ctx).batch
}

#[test]
fn network_policy_table_lists_the_same_through_netlink_and_nft() {
    require_root!();
    let t = table();
    let (cli_ns, nl_ns) = (Ns::new("npcli"), Ns::new("npnl"));
    let cli = Netns::open(cli_ns.path()).unwrap();
    let nl = Netns::open(nl_ns.path()).unwrap();
    let mut runner = nl.run(NftNetlink::open).unwrap().unwrap();
    let handoff = pod_dispatch_elements(
        "default",
        "late",
        &[
            "10.244.9.9".parse().unwrap(),
            "fd00:10:244::9:9".parse().unwrap(),
        ],
    );
    let steps = [compiled(150, true), handoff, compiled(160, false)];
    for (i, b) in steps.iter().enumerate() {
        cli.run(|| NftCli::default().apply(b))
            .unwrap()
            .unwrap_or_else(|e| panic!("step {i}: nft: {e}"));
        runner
            .apply(b)
            .unwrap_or_else(|e| panic!("step {i}: netlink: {e}"));
        let a = nft_listing(&cli_ns, t.family.as_str(), t.name.as_str());
        let z = nft_listing(&nl_ns, t.family.as_str(), t.name.as_str());
        assert!(
            a == z,
            "step {i}: the listings differ; nft:\n{}\nnetlink:\n{}",
            serde_json::to_string_pretty(&a).unwrap(),
            serde_json::to_string_pretty(&z).unwrap()
        );
        let mut by_nl = runner.list(&t).unwrap().unwrap();
        let mut by_nft = cli
            .run(|| NftCli::default().list(&t))
            .unwrap()
            .unwrap()
            .unwrap();
        for l in [&mut by_nl, &mut by_nft] {
            l.sets.sort();
            l.elements
                .sort_by(|a, b| (&a.set, &a.key).cmp(&(&b.set, &b.key)));
        }
        assert_eq!(by_nl, by_nft, "step {i}: listings read back");
    }
}

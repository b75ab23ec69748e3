//! NetworkPolicy in a real kernel, through a real kindnetd in a namespace
//! of its own: the nodes file as a List with Pods and NetworkPolicies, the
//! per-pod chains made before the pod has an address, the CNI plugin's
//! dispatch elements kept across incremental updates and across a restart
//! (carried into the replacing table), the table left in place at exit and
//! removed with --network-policy=false. The daemons run without `nft`
//! (kind's node image has none). Needs root.

mod common;

use std::time::Duration;

use common::*;
use kindnet_netpol::{Direction, dispatch_map, pod_chain, pod_dispatch_elements};
use kindnet_nft::{Listing, Value as NftValue};
use serde_json::{Value, json};

fn pod(name: &str, ips: &[&str]) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "x", "name": name, "labels": {"pod": name}},
        "spec": {"nodeName": "me"},
        "status": {"phase": if ips.is_empty() { "Pending" } else { "Running" },
            "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}})
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "x", "name": name}, "spec": spec})
}

fn list(version: u64, items: Vec<Value>) -> String {
    let mut all = vec![node(
        "me",
        &["10.244.0.0/24", "fd00:10:244::/64"],
        &["10.0.0.1", "fd00::1"],
    )];
    all.extend(items);
    serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List",
        "metadata": {"resourceVersion": version.to_string()}, "items": all}))
    .unwrap()
}

fn table(ns: &Ns) -> Option<(Value, Listing)> {
    let (code, out, _) =
        run(ns
            .command("nft")
            .args(["-j", "list", "table", "inet", "kindnet-netpol"]));
    if code != 0 {
        return None;
    }
    let doc: Value = serde_json::from_str(&out).unwrap();
    let l = Listing::parse(&doc);
    Some((doc, l))
}

fn has_chain(doc: &Value, name: &str) -> bool {
    doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["chain"]["name"] == name)
}

fn wait_version(ns: &Ns, d: &Daemon, v: u64) {
    wait_for(Duration::from_secs(10), || {
        (metric(ns, "kindnet_netpol_programmed_version") == Some(v as f64)).then_some(())
    })
    .unwrap_or_else(|| panic!("version {v} not programmed\n{}", d.log()));
}

#[test]
fn chains_before_addresses_cni_elements_carried_and_table_kept() {
    require_root!();
    let ns = node_ns("kd-np");
    let dir = temp_dir("netpol");
    let empty = dir.path().join("nft");
    std::fs::write(&empty, b"").unwrap();
    let nodes = dir.path().join("nodes.json");
    let cni = dir.path().join("net.d");
    let deny = policy(
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    write_atomic(
        &nodes,
        &list(
            1,
            vec![pod("a", &["10.244.0.2"]), pod("fresh", &[]), deny.clone()],
        ),
    );
    let args = [
        "--node-name",
        "me",
        "--nodes-file",
        nodes.to_str().unwrap(),
        "--cni-conf-dir",
        cni.to_str().unwrap(),
        "--metrics-bind-address",
        "127.0.0.1:19080",
    ];
    let d = Daemon::start_without_nft(&ns, &args, dir.path().join("kindnetd.log"), &empty);
    wait_version(&ns, &d, 1);
    let (doc, _) = table(&ns).expect("table made");
    for dir in [Direction::Ingress, Direction::Egress] {
        assert!(
            has_chain(&doc, pod_chain("x", "fresh", dir).as_str()),
            "chains of a pod without address"
        );
    }
    // the CNI plugin's hand-off at ADD of x/fresh
    let ips = [
        "10.244.0.9".parse().unwrap(),
        "fd00:10:244::9".parse().unwrap(),
    ];
    nft_apply_batch(&ns, &pod_dispatch_elements("x", "fresh", &ips));
    let present = |ns: &Ns| {
        let (_, l) = table(ns).expect("table");
        [(Direction::Ingress, false), (Direction::Egress, true)]
            .iter()
            .all(|(d, v6)| {
                l.in_set(dispatch_map(*d, *v6).as_str())
                    .any(|e| e.key == NftValue::Addr(ips[*v6 as usize]))
            })
    };
    assert!(present(&ns));
    // an unrelated change: an element diff, the CNI's elements untouched
    let extra = policy(
        "web",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    write_atomic(
        &nodes,
        &list(
            2,
            vec![
                pod("a", &["10.244.0.2"]),
                pod("fresh", &[]),
                pod("b", &["10.244.0.3"]),
                deny.clone(),
                extra.clone(),
            ],
        ),
    );
    wait_version(&ns, &d, 2);
    assert!(
        metric(&ns, "kindnet_netpol_programs_total{mode=\"incremental\"}").unwrap_or(0.0) >= 1.0,
        "{}",
        d.log()
    );
    assert!(
        present(&ns),
        "an incremental update kept the CNI's elements"
    );
    // exit: the table stays and keeps enforcing
    drop(d);
    assert!(table(&ns).is_some(), "the table outlives kindnetd");
    // restart: the whole table is replaced, the CNI's elements carried
    let d2 = Daemon::start_without_nft(&ns, &args, dir.path().join("kindnetd2.log"), &empty);
    wait_version(&ns, &d2, 2);
    assert_eq!(
        metric(&ns, "kindnet_netpol_programs_total{mode=\"full\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&ns, "kindnet_netpol_carried_elements"),
        Some(4.0),
        "{}",
        d2.log()
    );
    assert!(present(&ns), "a restart kept the CNI's elements");
    assert!(d2.log().contains("keeping a dispatch element"));
    // kindnetd learns the address: now compiled, still there
    write_atomic(
        &nodes,
        &list(
            3,
            vec![
                pod("a", &["10.244.0.2"]),
                pod("fresh", &["10.244.0.9", "fd00:10:244::9"]),
                pod("b", &["10.244.0.3"]),
                deny,
                extra,
            ],
        ),
    );
    wait_version(&ns, &d2, 3);
    assert!(present(&ns));
    let (_, body) = http_get(&ns, "127.0.0.1:19080", "/readyz").unwrap();
    assert!(
        body.contains("[+] NetworkPolicy programmed: 2 policies, 3 of 3 local pods isolated"),
        "{body}"
    );
    drop(d2);
    // policy off: the table is removed
    let mut off: Vec<&str> = args.to_vec();
    off.push("--network-policy=false");
    let d3 = Daemon::start_without_nft(&ns, &off, dir.path().join("kindnetd3.log"), &empty);
    wait_for(Duration::from_secs(10), || {
        table(&ns).is_none().then_some(())
    })
    .unwrap_or_else(|| panic!("table not removed\n{}", d3.log()));
}

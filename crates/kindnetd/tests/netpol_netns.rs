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
    // restart: the whole table is replaced; the CNI's elements are its
    // record of x/fresh's addresses, read back and compiled (nothing left
    // to carry)
    let d2 = Daemon::start_without_nft(&ns, &args, dir.path().join("kindnetd2.log"), &empty);
    wait_version(&ns, &d2, 2);
    assert_eq!(
        metric(&ns, "kindnet_netpol_programs_total{mode=\"full\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&ns, "kindnet_netpol_carried_elements"),
        Some(0.0),
        "{}",
        d2.log()
    );
    assert!(present(&ns), "a restart kept the CNI's elements");
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

/// Pod deletion, policy deletion and label changes are applied as diffs
/// the kernel accepts: never refused (EBUSY: a chain deleted while the
/// CNI plugin's dispatch element still jumps to it) and replaced whole.
#[test]
fn deletions_and_label_changes_apply_incrementally() {
    require_root!();
    let ns = node_ns("kd-npi");
    let dir = temp_dir("netpol-inc");
    let nodes = dir.path().join("nodes.json");
    let cni = dir.path().join("net.d");
    let deny = policy(
        "deny",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let web = policy(
        "web",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]}),
    );
    let labelled = |name: &str, ips: &[&str], role: &str| {
        let mut p = pod(name, ips);
        p["metadata"]["labels"]["role"] = json!(role);
        p
    };
    let pods = |v: u64, items: Vec<Value>| list(v, items);
    write_atomic(
        &nodes,
        &pods(
            1,
            vec![
                pod("a", &["10.244.0.2", "fd00:10:244::2"]),
                pod("b", &["10.244.0.3", "fd00:10:244::3"]),
                pod("c", &["10.244.0.4", "fd00:10:244::4"]),
                deny.clone(),
                web.clone(),
            ],
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
    let d = Daemon::start(&ns, &args, dir.path().join("kindnetd.log"));
    wait_version(&ns, &d, 1);
    // the CNI plugin's hand-off at ADD of every pod, isolated (a) or not
    for (p, i) in [("a", 2), ("b", 3), ("c", 4)] {
        let ips = [
            format!("10.244.0.{i}").parse().unwrap(),
            format!("fd00:10:244::{i}").parse().unwrap(),
        ];
        nft_apply_batch(&ns, &pod_dispatch_elements("x", p, &ips));
    }
    let steps: Vec<Vec<Value>> = vec![
        // a label change: b becomes a client of a
        vec![
            pod("a", &["10.244.0.2", "fd00:10:244::2"]),
            labelled("b", &["10.244.0.3", "fd00:10:244::3"], "client"),
            pod("c", &["10.244.0.4", "fd00:10:244::4"]),
            deny.clone(),
            web.clone(),
        ],
        // a pod deleted (its chains, its elements, its address in a set)
        vec![
            pod("a", &["10.244.0.2", "fd00:10:244::2"]),
            pod("c", &["10.244.0.4", "fd00:10:244::4"]),
            deny.clone(),
            web.clone(),
        ],
        // a policy deleted (its chains and sets)
        vec![
            pod("a", &["10.244.0.2", "fd00:10:244::2"]),
            pod("c", &["10.244.0.4", "fd00:10:244::4"]),
            deny.clone(),
        ],
        // every policy deleted, then a pod
        vec![
            pod("a", &["10.244.0.2", "fd00:10:244::2"]),
            pod("c", &["10.244.0.4", "fd00:10:244::4"]),
        ],
        vec![pod("a", &["10.244.0.2", "fd00:10:244::2"])],
    ];
    for (i, items) in steps.into_iter().enumerate() {
        let v = 2 + i as u64;
        write_atomic(&nodes, &pods(v, items));
        wait_version(&ns, &d, v);
        assert_eq!(
            metric(&ns, "kindnet_netpol_programs_total{mode=\"full\"}"),
            Some(1.0),
            "step {v} replaced the table\n{}",
            d.log()
        );
        assert!(!d.log().contains("refused"), "step {v}\n{}", d.log());
    }
    for reason in ["refused", "not_incremental"] {
        assert_eq!(
            metric(
                &ns,
                &format!("kindnet_netpol_full_replacements_total{{reason=\"{reason}\"}}")
            ),
            Some(0.0),
            "{}",
            d.log()
        );
    }
    // the deleted pods' elements went with their chains
    let (_, l) = table(&ns).expect("table");
    let left: Vec<_> = l
        .elements
        .iter()
        .map(|e| format!("{} {:?}", e.set, e.key))
        .collect();
    assert!(
        !left
            .iter()
            .any(|e| e.contains("10.244.0.3") || e.contains("10.244.0.4")),
        "{left:?}"
    );
    assert_eq!(
        metric(&ns, "kindnet_netpol_programs_total{mode=\"incremental\"}"),
        Some(5.0),
        "{}",
        d.log()
    );
}

/// The denied counters are read over netlink, one object each, without
/// reading the table's sets: `None` without a table, the packets with.
#[test]
fn counters_are_read_over_netlink() {
    require_root!();
    let ns = Ns::new("kd-npc");
    let netns = kindnet_netlink::Netns::open(ns.path()).unwrap();
    let mut nft = netns
        .run(|| kindnetd::policy::run::open_nft(None))
        .unwrap()
        .unwrap();
    let mut read = || nft.counters(&kindnet_netpol::table()).unwrap();
    assert_eq!(read(), None);
    let t = kindnet_netpol::table();
    let mut b = kindnet_nft::Batch::new();
    b.add_table(&t);
    b.add_counter(
        &t,
        &kindnet_nft::Name::fixed(kindnet_netpol::DENIED_INGRESS_COUNTER),
    );
    nft_apply_batch(&ns, &b);
    // (a counter made with packets already counted, as after traffic)
    let (code, _, err) = run(ns.command("nft").args([
        "add",
        "counter",
        "inet",
        "kindnet-netpol",
        kindnet_netpol::DENIED_EGRESS_COUNTER,
        "{",
        "packets",
        "5",
        "bytes",
        "300",
        "}",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        read(),
        Some(vec![
            (kindnet_netpol::DENIED_INGRESS_COUNTER.to_string(), 0),
            (kindnet_netpol::DENIED_EGRESS_COUNTER.to_string(), 5)
        ])
    );
}

/// Names from the nodes file with control characters (a node, a refused
/// policy) are printed escaped in the log and in /readyz: no line a name
/// made can pass for one of kindnetd's.
#[test]
fn crafted_names_cannot_forge_status_or_log_lines() {
    require_root!();
    let ns = node_ns("kd-npe");
    let dir = temp_dir("netpol-esc");
    let nodes = dir.path().join("nodes.json");
    let cni = dir.path().join("net.d");
    let forged = "evil\n[+] NetworkPolicy programmed: 0 policies\n\u{1b}[2K[pass] ok";
    let bad = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "x", "name": forged},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}});
    let mut l: Value =
        serde_json::from_str(&list(1, vec![pod("a", &["10.244.0.2"]), bad])).unwrap();
    l["items"]
        .as_array_mut()
        .unwrap()
        .push(node(forged, &["10.244.9.0/24"], &["10.9.9.9"]));
    write_atomic(&nodes, &l.to_string());
    let d = Daemon::start(
        &ns,
        &[
            "--node-name",
            "me",
            "--nodes-file",
            nodes.to_str().unwrap(),
            "--cni-conf-dir",
            cni.to_str().unwrap(),
            "--metrics-bind-address",
            "127.0.0.1:19080",
        ],
        dir.path().join("kindnetd.log"),
    );
    wait_version(&ns, &d, 1);
    let (_, body) = http_get(&ns, "127.0.0.1:19080", "/readyz").unwrap();
    assert!(
        body.contains("evil\\n[+] NetworkPolicy programmed: 0 policies\\n\\u{1b}[2K[pass] ok"),
        "{body}"
    );
    assert_eq!(
        body.lines()
            .filter(|l| l.starts_with("[+] NetworkPolicy programmed"))
            .count(),
        1,
        "{body}"
    );
    let log = d.log();
    assert!(log.contains("evil\\n[+] NetworkPolicy"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.starts_with("[+]") || l.contains("[pass] ok") && !l.contains("evil")),
        "{log}"
    );
}

/// A table changed by hand is repaired at the next resync: the dispatch
/// maps flushed, a pod's chain flushed; counted per table.
#[test]
fn a_tampered_policy_table_is_repaired_at_the_next_resync() {
    require_root!();
    let ns = node_ns("kd-npd");
    let dir = temp_dir("netpol-drift");
    let nodes = dir.path().join("nodes.json");
    let cni = dir.path().join("net.d");
    let deny = policy(
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    write_atomic(
        &nodes,
        &list(1, vec![pod("a", &["10.244.0.2", "fd00:10:244::2"]), deny]),
    );
    let d = Daemon::start(
        &ns,
        &[
            "--node-name",
            "me",
            "--nodes-file",
            nodes.to_str().unwrap(),
            "--cni-conf-dir",
            cni.to_str().unwrap(),
            "--metrics-bind-address",
            "127.0.0.1:19080",
            "--resync-period",
            "1s",
        ],
        dir.path().join("kindnetd.log"),
    );
    wait_version(&ns, &d, 1);
    let repaired = |ns: &Ns| {
        metric(
            ns,
            "kindnet_dataplane_drift_repaired_total{table=\"kindnet-netpol\"}",
        )
        .unwrap_or(-1.0)
    };
    assert_eq!(repaired(&ns), 0.0, "{}", d.log());
    let chain = pod_chain("x", "a", Direction::Ingress);
    let tampering: [&[&str]; 3] = [
        &["flush", "map", "inet", "kindnet-netpol", "ingress4"],
        &["flush", "map", "inet", "kindnet-netpol", "egress4"],
        &["flush", "chain", "inet", "kindnet-netpol", chain.as_str()],
    ];
    for (i, args) in tampering.iter().enumerate() {
        let (code, _, err) = run(ns.command("nft").args(*args));
        assert_eq!(code, 0, "{args:?}: {err}");
        let t = std::time::Instant::now();
        wait_for(Duration::from_secs(10), || {
            (repaired(&ns) == (i + 1) as f64).then_some(())
        })
        .unwrap_or_else(|| panic!("{args:?} not repaired\n{}", d.log()));
        println!(
            "{{\"bench\":\"drift_repair\",\"table\":\"kindnet-netpol\",\"tamper\":\"{}\",\"resync_s\":1,\"repaired_after_ms\":{:.0}}}",
            args.join(" "),
            t.elapsed().as_secs_f64() * 1e3
        );
        let (_, l) = table(&ns).expect("table");
        for (d, v6) in [(Direction::Ingress, false), (Direction::Egress, false)] {
            assert!(
                l.in_set(dispatch_map(d, v6).as_str())
                    .any(|e| e.key == NftValue::Addr("10.244.0.2".parse().unwrap())),
                "{args:?}: {l:?}"
            );
        }
    }
    let (code, out, _) =
        run(ns
            .command("nft")
            .args(["list", "chain", "inet", "kindnet-netpol", chain.as_str()]));
    assert_eq!(code, 0);
    assert!(out.contains("goto"), "{out}");
    let log = d.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("differed from kindnetd's; replaced"))
        .collect();
    assert_eq!(lines.len(), 3, "one line each\n{log}");
    for l in lines {
        println!("# {l}");
    }
    assert_eq!(
        metric(
            &ns,
            "kindnet_netpol_full_replacements_total{reason=\"refused\"}"
        ),
        Some(0.0)
    );
}

/// A measurement, run by hand (`--ignored --nocapture`): label changes
/// programmed while the table holds a large peer set (an ipBlock with
/// many excepts) and the counter thread reads every 2 s. Prints JSON.
#[test]
#[ignore]
fn measure_label_changes_with_a_large_table() {
    require_root!();
    let excepts: usize = std::env::var("KINDNET_MEASURE_EXCEPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let ns = node_ns("kd-npm");
    let dir = temp_dir("netpol-measure");
    let nodes = dir.path().join("nodes.json");
    let cni = dir.path().join("net.d");
    let except: Vec<String> = (0..excepts)
        .map(|i| format!("fd00:{:x}:{:x}::1/128", i / 65536 + 1, i % 65536))
        .collect();
    let big = policy(
        "big",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "::/0", "except": except}}]}]}),
    );
    let web = policy(
        "web",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}),
    );
    let items = |v: u64, role: &str| {
        let mut b = pod("b", &["10.244.0.3", "fd00:10:244::3"]);
        b["metadata"]["labels"]["role"] = json!(role);
        list(
            v,
            vec![
                pod("a", &["10.244.0.2", "fd00:10:244::2"]),
                b,
                big.clone(),
                web.clone(),
            ],
        )
    };
    write_atomic(&nodes, &items(1, "none"));
    let started = std::time::Instant::now();
    let d = Daemon::start(
        &ns,
        &[
            "--node-name",
            "me",
            "--nodes-file",
            nodes.to_str().unwrap(),
            "--cni-conf-dir",
            cni.to_str().unwrap(),
            "--metrics-bind-address",
            "127.0.0.1:19080",
            "--log-level",
            "kindnetd=debug",
        ],
        dir.path().join("kindnetd.log"),
    );
    wait_for(Duration::from_secs(300), || {
        (metric(&ns, "kindnet_netpol_programmed_version") == Some(1.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("not programmed\n{}", d.log()));
    let (_, l) = table(&ns).expect("table");
    println!(
        "{{\"bench\":\"netpol_large_table\",\"excepts\":{excepts},\"elements\":{},\"first_program_s\":{:.2}}}",
        l.elements.len(),
        started.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    for v in 2..=21u64 {
        let t = std::time::Instant::now();
        write_atomic(
            &nodes,
            &items(v, if v % 2 == 0 { "client" } else { "none" }),
        );
        wait_for(Duration::from_secs(120), || {
            (metric(&ns, "kindnet_netpol_programmed_version") == Some(v as f64)).then_some(())
        })
        .unwrap_or_else(|| panic!("version {v} not programmed\n{}", d.log()));
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let timeouts = metric(&ns, "kindnet_netpol_counter_read_timeouts_total").unwrap_or(-1.0);
    println!(
        "{{\"bench\":\"netpol_label_change_large_table\",\"excepts\":{excepts},\"elements\":{},\"changes\":{},\"p50_ms\":{:.0},\"max_ms\":{:.0},\"counter_read_timeouts\":{timeouts},\"incremental\":{}}}",
        l.elements.len(),
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1],
        metric(&ns, "kindnet_netpol_programs_total{mode=\"incremental\"}").unwrap_or(-1.0)
    );
    // where the time goes: the last pass's steps
    for l in d
        .log()
        .lines()
        .rev()
        .filter(|l| l.contains("NetworkPolicy"))
        .take(3)
    {
        println!("# {l}");
    }
}

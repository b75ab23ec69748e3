//! The real kindnetd binary inside a network namespace, fed by a nodes file.
//! Needs root; skips otherwise.

mod common;

use std::time::Duration;

use common::*;
use kindnet_fakeapi::{FakeApi, GoneMode, Served, kubeconfig};
use kindnet_netlink::{Netns, RouteEvent, RouteEvents};
use serde_json::Value;

fn node_ns() -> Ns {
    common::node_ns("kd-test")
}

fn me() -> Value {
    node(
        "me",
        &["10.244.0.0/24", "fd00:10:244::/64"],
        &["10.0.0.1", "fd00::1"],
    )
}

fn daemon_args<'a>(nodes: &'a str, cni: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--node-name",
        "me",
        "--nodes-file",
        nodes,
        "--cni-conf-dir",
        cni,
        "--pod-subnet",
        "10.244.0.0/16,fd00:10:244::/56",
        "--metrics-bind-address",
        "127.0.0.1:19080",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn routes_follow_the_nodes_file_and_survive_restart() {
    require_root!();
    let ns = node_ns();
    let dir = temp_dir("daemon");
    let nodes_path = dir.path().join("nodes.json");
    let cni = dir.path().join("net.d");
    let (np, cp) = (nodes_path.to_str().unwrap(), cni.to_str().unwrap());

    write_atomic(
        &nodes_path,
        &node_list(&[
            me(),
            node(
                "b",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["10.0.0.2", "fd00::2"],
            ),
            node("c", &["10.244.2.0/24", "fd00:10:244:2::/64"], &["10.0.0.3"]),
            node("far", &["10.244.3.0/24"], &["192.168.77.7"]),
        ]),
    );
    // A long resync period: repairs below must come from route events.
    let args = daemon_args(np, cp, &["--resync-period", "60s"]);
    let mut d = Daemon::start(&ns, &args, dir.path().join("kindnetd.log"));

    let check = |r: Result<(), String>, d: &Daemon| {
        if let Err(e) = r {
            panic!("{e}\n--- kindnetd log ---\n{}", d.log());
        }
    };
    check(
        wait_routes(
            &ns,
            &[
                ("10.244.1.0/24", "10.0.0.2"),
                ("10.244.2.0/24", "10.0.0.3"),
                ("fd00:10:244:1::/64", "fd00::2"),
            ],
            Duration::from_secs(5),
        ),
        &d,
    );
    // Each route names the device the next hop is on.
    assert!(our_routes(&ns).iter().all(|(_, _, dev)| dev == "eth0"));

    // The CNI config: both families, MTU of the default-route interface.
    let conf: Value =
        serde_json::from_str(&std::fs::read_to_string(cni.join("10-kindnet.conflist")).unwrap())
            .unwrap();
    // One plugin by default: the whole pod in one exec, port mappings too.
    assert_eq!(conf["plugins"].as_array().map(Vec::len), Some(1), "{conf}");
    assert_eq!(conf["plugins"][0]["type"], "kindnet");
    assert_eq!(conf["plugins"][0]["capabilities"]["portMappings"], true);
    assert_eq!(conf["plugins"][0]["mtu"], 1450);
    assert_eq!(
        conf["plugins"][0]["ipam"]["ranges"],
        serde_json::json!([[{"subnet": "10.244.0.0/24"}], [{"subnet": "fd00:10:244::/64"}]])
    );
    let body = wait_ready(&ns, Duration::from_secs(5)).unwrap();
    assert!(
        body.contains("node c fd00:10:244:2::/64: no IPv6 node address"),
        "{body}"
    );
    assert!(
        body.contains(
            "node far 10.244.3.0/24: next hop 192.168.77.7 is not on-link (reached via 10.0.0.254)"
        ),
        "{body}"
    );
    assert_eq!(
        metric(&ns, "kindnet_peers_skipped{reason=\"not-on-link\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&ns, "kindnet_routes_installed{family=\"ipv4\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&ns, "kindnet_routes_installed{family=\"ipv6\"}"),
        Some(1.0)
    );
    // The daemon turned forwarding on in its namespace.
    assert_eq!(sysctl_get(&ns, "net.ipv4.ip_forward").as_str(), "1");
    assert_eq!(
        sysctl_get(&ns, "net.ipv6.conf.all.forwarding").as_str(),
        "1"
    );

    // b moves to a new address, c leaves: route replaced and removed.
    // (Written in place, not atomically, as an editor might.)
    std::fs::write(
        &nodes_path,
        node_list(&[
            me(),
            node(
                "b",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["10.0.0.12", "fd00::12"],
            ),
            node("far", &["10.244.3.0/24"], &["192.168.77.7"]),
        ]),
    )
    .unwrap();
    check(
        wait_routes(
            &ns,
            &[
                ("10.244.1.0/24", "10.0.0.12"),
                ("fd00:10:244:1::/64", "fd00::12"),
            ],
            Duration::from_secs(3),
        ),
        &d,
    );

    // A file that is not valid JSON changes nothing; nor does a malformed
    // update of one node, or a peer claiming our own pod CIDR.
    let before = dst_gw(&ns);
    std::fs::write(&nodes_path, "{ this is not json").unwrap();
    let errors = || metric(&ns, "kindnet_source_errors_total{source=\"file\"}");
    check(
        wait_for(Duration::from_secs(3), || {
            (errors() == Some(1.0)).then_some(())
        })
        .ok_or(format!("source error not counted: {:?}", errors())),
        &d,
    );
    write_atomic(
        &nodes_path,
        &node_list(&[
            me(),
            node(
                "b",
                &["10.244.1.0/240", "fd00:10:244:1::/64"],
                &["10.0.0.99"],
            ),
            node("d", &["10.244.0.0/24"], &["10.0.0.4"]),
            node("far", &["10.244.3.0/24"], &["192.168.77.7"]),
        ]),
    );
    let rejected = || {
        metric(
            &ns,
            "kindnet_node_updates_rejected_total{reason=\"malformed-pod-cidr\"}",
        )
    };
    check(
        wait_for(Duration::from_secs(3), || {
            (rejected() == Some(1.0)).then_some(())
        })
        .ok_or(format!("rejection not counted: {:?}", rejected())),
        &d,
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(dst_gw(&ns), before, "bad input must not move routes");
    let body = http_get(&ns, "127.0.0.1:19080", "/readyz").unwrap().1;
    assert!(
        body.contains("node d 10.244.0.0/24: overlaps this node's pod CIDR 10.244.0.0/24"),
        "{body}"
    );
    // Back to good data (a restart cannot know a malformed node's last good state).
    write_atomic(
        &nodes_path,
        &node_list(&[
            me(),
            node(
                "b",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["10.0.0.12", "fd00::12"],
            ),
            node("far", &["10.244.3.0/24"], &["192.168.77.7"]),
        ]),
    );
    check(
        wait_for(Duration::from_secs(3), || {
            let b = http_get(&ns, "127.0.0.1:19080", "/readyz")?.1;
            (!b.contains("node d")).then_some(())
        })
        .ok_or_else(|| "good file not applied".to_string()),
        &d,
    );
    assert_eq!(dst_gw(&ns), before);

    // Drift: a route deleted by hand comes back within a second; one
    // changed by hand is put back too.
    ns.ip(&["route", "del", "10.244.1.0/24"]).unwrap();
    check(
        wait_routes(
            &ns,
            &before
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect::<Vec<_>>(),
            Duration::from_secs(1),
        ),
        &d,
    );
    ns.ip(&[
        "-6",
        "route",
        "replace",
        "fd00:10:244:1::/64",
        "via",
        "fd00::77",
    ])
    .unwrap();
    check(
        wait_for(Duration::from_secs(1), || {
            let out = ns
                .ip(&["-6", "route", "show", "fd00:10:244:1::/64"])
                .unwrap_or_default();
            (out.contains("via fd00::12") && !out.contains("fd00::77")).then_some(())
        })
        .ok_or_else(|| {
            format!(
                "hand-changed route not repaired: {}",
                ns.ip(&["-6", "route"]).unwrap_or_default()
            )
        }),
        &d,
    );

    // SIGTERM: clean exit, routes stay.
    d.child.signal(libc::SIGTERM).unwrap();
    let st = d.child.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", d.log());
    assert_eq!(dst_gw(&ns), before);

    // Restart: converges without removing or re-adding a correct route.
    let netns = Netns::open(ns.path()).unwrap();
    let mut events = RouteEvents::in_netns(&netns).unwrap();
    let d2 = Daemon::start(&ns, &args, dir.path().join("kindnetd2.log"));
    wait_ready(&ns, Duration::from_secs(5)).unwrap();
    assert_eq!(
        metric(&ns, "kindnet_route_changes_total{op=\"replace\"}"),
        Some(0.0),
        "{}",
        d2.log()
    );
    assert_eq!(
        metric(&ns, "kindnet_route_changes_total{op=\"delete\"}"),
        Some(0.0)
    );
    let evs = events.next(Some(Duration::from_millis(200))).unwrap();
    let ours: Vec<&RouteEvent> = evs
        .iter()
        .filter(|e| match e {
            RouteEvent::Added(r) | RouteEvent::Deleted(r) => r.protocol == 217,
        })
        .collect();
    assert!(ours.is_empty(), "restart touched routes: {ours:?}");
    assert_eq!(dst_gw(&ns), before);

    // Finally the node file empties: every route of ours goes.
    write_atomic(&nodes_path, &node_list(&[me()]));
    wait_routes(&ns, &[], Duration::from_secs(3)).unwrap();
}

#[test]
fn bridge_mode_conflist_and_masquerade_off() {
    require_root!();
    let ns = node_ns();
    let dir = temp_dir("bridge");
    let nodes_path = dir.path().join("nodes.yaml");
    let cni = dir.path().join("net.d");
    // YAML this time, and a node without pod CIDRs: --static-pod-cidrs is
    // this node's range (never the cluster's POD_SUBNET).
    std::fs::write(
        &nodes_path,
        "apiVersion: v1\nkind: NodeList\nitems:\n- metadata: {name: me}\n  status:\n    addresses: [{type: InternalIP, address: 10.0.0.1}]\n",
    )
    .unwrap();
    // Leftover rules from an earlier run with masquerading on.
    let leftover = kindnetd::host::masquerade::ruleset(&kindnetd::host::masquerade::MasqInputs {
        pod_sources: vec!["10.244.0.0/16".parse().unwrap()],
        no_masquerade: vec![],
    });
    nft_apply_batch(&ns, &leftover);
    assert!(
        ns.exec(&["nft", "list", "tables"])
            .unwrap()
            .contains("kindnet-masq")
    );

    let mut d = Daemon::start(
        &ns,
        &[
            "--node-name=me",
            "--nodes-file",
            nodes_path.to_str().unwrap(),
            "--cni-conf-dir",
            cni.to_str().unwrap(),
            "--pod-subnet=10.244.0.0/16",
            "--static-pod-cidrs=10.244.7.0/24",
            "--cni-bridge=true",
            "--cni-chain=classic",
            "--masquerading=false",
            "--mtu=1400",
            "--ipam-data-dir=/run/test-ipam",
            "--metrics-bind-address=127.0.0.1:19080",
        ],
        dir.path().join("log"),
    );
    let body =
        wait_ready(&ns, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    assert!(
        body.contains("10.244.7.0/24 (from --static-pod-cidrs)"),
        "{body}"
    );
    let conf: Value =
        serde_json::from_str(&std::fs::read_to_string(cni.join("10-kindnet.conflist")).unwrap())
            .unwrap();
    let p = &conf["plugins"][0];
    // --cni-chain=classic: kind's bridge + portmap
    assert_eq!(conf["plugins"][1]["type"], "portmap", "{conf}");
    assert_eq!(p["type"], "bridge");
    assert_eq!(p["bridge"], "kind-br");
    assert_eq!(p["mtu"], 1400);
    assert_eq!(p["ipam"]["dataDir"], "/run/test-ipam");
    assert_eq!(
        p["ipam"]["ranges"],
        serde_json::json!([[{"subnet": "10.244.7.0/24"}]])
    );
    let tables = wait_for(Duration::from_secs(3), || {
        let t = ns.exec(&["nft", "list", "tables"]).unwrap_or_default();
        (!t.contains("kindnet-masq")).then_some(t)
    });
    assert!(
        tables.is_some(),
        "masquerade table not removed:\n{}",
        d.log()
    );
    d.child.signal(libc::SIGTERM).unwrap();
    assert!(
        d.child
            .wait_timeout(Duration::from_secs(5))
            .unwrap()
            .is_some()
    );
}

#[test]
fn conflist_rewritten_atomically_only_on_change() {
    require_root!();
    let ns = node_ns();
    let dir = temp_dir("conflist");
    let nodes_path = dir.path().join("nodes.json");
    let cni = dir.path().join("net.d");
    write_atomic(
        &nodes_path,
        &node_list(&[node("me", &["10.244.0.0/24"], &["10.0.0.1"])]),
    );
    let d = Daemon::start(
        &ns,
        &daemon_args(
            nodes_path.to_str().unwrap(),
            cni.to_str().unwrap(),
            &["--resync-period=200ms"],
        ),
        dir.path().join("log"),
    );
    wait_ready(&ns, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let conf = cni.join("10-kindnet.conflist");
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(&conf).unwrap().ino();
    // Several resyncs later the file is the same inode: not rewritten.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(std::fs::metadata(&conf).unwrap().ino(), ino);
    assert_eq!(metric(&ns, "kindnet_cni_config_writes_total"), Some(1.0));
    // The node's CIDR changes: a new file arrives by rename.
    write_atomic(
        &nodes_path,
        &node_list(&[node("me", &["10.244.9.0/24"], &["10.0.0.1"])]),
    );
    let changed = wait_for(Duration::from_secs(3), || {
        let s = std::fs::read_to_string(&conf).ok()?;
        s.contains("10.244.9.0/24").then_some(())
    });
    assert!(changed.is_some(), "{}", d.log());
    assert_ne!(std::fs::metadata(&conf).unwrap().ino(), ino);
    let leftovers: Vec<_> = std::fs::read_dir(&cni)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != kindnetd::host::conffile::STAGING_DIR)
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    // Someone deletes it: it is written again at the next resync.
    std::fs::remove_file(&conf).unwrap();
    assert!(wait_for(Duration::from_secs(2), || conf.exists().then_some(())).is_some());
}

#[test]
fn sysctls_only_sets_forwarding_and_keeps_router_advertisements() {
    require_root!();
    let ns = node_ns();
    sysctl_set(&ns, "net.ipv4.ip_forward", "0");
    sysctl_set(&ns, "net.ipv6.conf.all.forwarding", "0");
    sysctl_set(&ns, "net.ipv6.conf.eth0.accept_ra", "1");
    sysctl_set(&ns, "net.ipv6.conf.peer0.accept_ra", "1");
    // An IPv6 default route learned from a router advertisement on eth0.
    ns.ip(&[
        "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0", "proto", "ra",
    ])
    .unwrap();
    let (code, _, err) = run(ns
        .command(env!("CARGO_BIN_EXE_kindnetd"))
        .arg("--sysctls-only"));
    assert_eq!(code, 0, "{err}");
    let get = |k: &str| sysctl_get(&ns, k);
    assert_eq!(get("net.ipv4.ip_forward"), "1");
    assert_eq!(get("net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(
        get("net.ipv6.conf.eth0.accept_ra"),
        "2",
        "RA uplink keeps its RAs"
    );
    assert_eq!(
        get("net.ipv6.conf.peer0.accept_ra"),
        "1",
        "other links untouched"
    );
}

#[test]
fn kubernetes_source_end_to_end() {
    require_root!();
    let ns = node_ns();
    let k = kube_daemon(
        &ns,
        "kube-e2e",
        vec![me(), node("b", &["10.244.1.0/24"], &["10.0.0.2"])],
    );
    let (api, d) = (&k.api, &k.d);
    let fail = |e: String| -> ! { panic!("{e}\n--- kindnetd log ---\n{}", d.log()) };
    wait_routes(
        &ns,
        &[("10.244.1.0/24", "10.0.0.2")],
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| fail(e));
    wait_ready(&ns, Duration::from_secs(5)).unwrap_or_else(|e| fail(e));

    api.apply(node("c", &["10.244.2.0/24"], &["10.0.0.3"])); // ADDED
    api.apply(node("b", &["10.244.1.0/24"], &["10.0.0.22"])); // MODIFIED
    wait_routes(
        &ns,
        &[
            ("10.244.1.0/24", "10.0.0.22"),
            ("10.244.2.0/24", "10.0.0.3"),
        ],
        Duration::from_secs(3),
    )
    .unwrap_or_else(|e| fail(e));
    api.delete("c"); // DELETED
    wait_routes(
        &ns,
        &[("10.244.1.0/24", "10.0.0.22")],
        Duration::from_secs(3),
    )
    .unwrap_or_else(|e| fail(e));

    // Outage: routes stay; after it, changes made meanwhile arrive.
    api.set_down(true);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(dst_gw(&ns), route_set(&[("10.244.1.0/24", "10.0.0.22")]));
    api.delete("b");
    api.apply(node("d", &["10.244.4.0/24"], &["10.0.0.4"]));
    api.set_down(false);
    wait_routes(
        &ns,
        &[("10.244.4.0/24", "10.0.0.4")],
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| fail(e));

    // NetworkPolicy from the same API: a deny-all selecting this node's pod
    // is programmed into the kernel, and its deletion is too.
    use kindnet_fakeapi::Resource;
    api.apply_object(
        Resource::Namespaces,
        serde_json::json!({"metadata": {"name": "x", "labels": {"ns": "x"}}}),
    );
    api.apply_object(
        Resource::Pods,
        serde_json::json!({"metadata": {"namespace": "x", "name": "a", "labels": {"pod": "a"}},
                           "spec": {"nodeName": "me"},
                           "status": {"phase": "Running", "podIPs": [{"ip": "10.244.0.5"}]}}),
    );
    api.apply_object(
        Resource::NetworkPolicies,
        serde_json::json!({"metadata": {"namespace": "x", "name": "deny"},
                           "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    );
    let selected = |want: f64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metric(&ns, "kindnet_netpol_selected_pods") != Some(want) {
            if std::time::Instant::now() > deadline {
                fail(format!(
                    "kindnet_netpol_selected_pods is {:?}, want {want}",
                    metric(&ns, "kindnet_netpol_selected_pods")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    selected(1.0);
    let map = ns
        .exec(&["nft", "list", "map", "inet", "kindnet-netpol", "ingress4"])
        .unwrap_or_else(|e| fail(e));
    assert!(map.contains("10.244.0.5"), "{map}");
    api.delete_object(Resource::NetworkPolicies, "x/deny");
    selected(0.0);
}

/// The nodes file of a kindnetd that knows `me` and peer b gains peer c:
/// both peers must be routed within `timeout` (the daemon still works).
fn route_new_peer(ns: &Ns, nodes_path: &std::path::Path, d: &Daemon, timeout: Duration) {
    write_atomic(
        nodes_path,
        &node_list(&[
            me(),
            node("b", &["10.244.1.0/24"], &["10.0.0.2"]),
            node("c", &["10.244.2.0/24"], &["10.0.0.3"]),
        ]),
    );
    wait_routes(
        ns,
        &[("10.244.1.0/24", "10.0.0.2"), ("10.244.2.0/24", "10.0.0.3")],
        timeout,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
}

#[test]
fn stray_signals_are_logged_and_ignored() {
    require_root!();
    let ns = node_ns();
    let dir = temp_dir("signals");
    let nodes_path = dir.path().join("nodes.json");
    let cni = dir.path().join("net.d");
    write_atomic(
        &nodes_path,
        &node_list(&[me(), node("b", &["10.244.1.0/24"], &["10.0.0.2"])]),
    );
    let mut d = Daemon::start(
        &ns,
        &daemon_args(nodes_path.to_str().unwrap(), cni.to_str().unwrap(), &[]),
        dir.path().join("log"),
    );
    wait_ready(&ns, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    // Each of these kills a process that does not handle it.
    for (sig, name) in [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
    ] {
        d.child.signal(sig).unwrap();
        let exited = d.child.wait_timeout(Duration::from_millis(300)).unwrap();
        assert!(
            exited.is_none(),
            "{name} killed kindnetd: {exited:?}\n{}",
            d.log()
        );
        let logged = wait_for(Duration::from_secs(2), || {
            d.log().contains(&format!("{name} ignored")).then_some(())
        });
        assert!(logged.is_some(), "no log line for {name}:\n{}", d.log());
        let health = http_get(&ns, "127.0.0.1:19080", "/healthz");
        assert_eq!(health.map(|h| h.0), Some(200), "{name}");
    }
    // The daemon still works: a new peer is routed.
    route_new_peer(&ns, &nodes_path, &d, Duration::from_secs(3));
    d.child.signal(libc::SIGTERM).unwrap();
    let st = d.child.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", d.log());
}

/// 1,500 idle TCP connections to the HTTP endpoint of a kindnetd limited
/// to 1,024 descriptors: /healthz keeps answering, reconcile keeps working.
#[test]
fn http_endpoint_survives_a_flood_of_idle_connections() {
    require_root!();
    const FLOOD: usize = 1500;
    // This test process holds the flood's client ends.
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut lim = getrlimit(Resource::Nofile);
        if lim.current.is_some_and(|c| c < 4096) {
            lim.current = Some(lim.maximum.unwrap_or(u64::MAX).min(4096));
            let _ = setrlimit(Resource::Nofile, lim);
        }
    }
    let ns = node_ns();
    let dir = temp_dir("flood");
    let nodes_path = dir.path().join("nodes.json");
    let cni = dir.path().join("net.d");
    write_atomic(
        &nodes_path,
        &node_list(&[me(), node("b", &["10.244.1.0/24"], &["10.0.0.2"])]),
    );
    let log = dir.path().join("log");
    let f = std::fs::File::create(&log).unwrap();
    // No --metrics-bind-address: the default is the node's address.
    let mut cmd = ns.command("prlimit");
    cmd.args(["--nofile=1024:1024", env!("CARGO_BIN_EXE_kindnetd")])
        .args([
            "--node-name=me",
            "--host-ip=10.0.0.1",
            "--nodes-file",
            nodes_path.to_str().unwrap(),
            "--cni-conf-dir",
            cni.to_str().unwrap(),
            "--pod-subnet=10.244.0.0/16,fd00:10:244::/56",
            "--resync-period=1s",
        ])
        .env_remove("KINDNET_METRICS_BIND_ADDRESS")
        .env_remove("HOST_IP")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(f);
    let d = Daemon {
        child: ChildGuard::spawn(&mut cmd).unwrap(),
        log,
    };
    const EP: &str = "10.0.0.1:19080";
    let healthy = || http_get(&ns, EP, "/healthz").map(|r| r.0) == Some(200);
    assert!(
        wait_for(Duration::from_secs(5), || healthy().then_some(())).is_some(),
        "{}",
        d.log()
    );
    // Not on loopback: only where kubelet probes (the node's address).
    assert!(http_get(&ns, "127.0.0.1:19080", "/healthz").is_none());

    let netns = Netns::open(ns.path()).unwrap();
    let addr: std::net::SocketAddr = EP.parse().unwrap();
    let flood: Vec<std::net::TcpStream> = netns
        .run(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut v = Vec::with_capacity(FLOOD);
            while v.len() < FLOOD && std::time::Instant::now() < deadline {
                if let Ok(s) =
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                {
                    v.push(s);
                }
            }
            v
        })
        .unwrap();
    assert!(
        flood.len() >= 1200,
        "only {} connections opened",
        flood.len()
    );

    // While every one of them is held open by the client:
    let answered = wait_for(Duration::from_secs(10), || healthy().then_some(()));
    assert!(
        answered.is_some(),
        "/healthz stalled under the flood\n{}",
        d.log()
    );
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        assert!(healthy(), "/healthz failed on check {i}\n{}", d.log());
    }
    // Reconcile still works: a new peer is routed, the file re-read.
    route_new_peer(&ns, &nodes_path, &d, Duration::from_secs(5));
    let (_, metrics) = http_get(&ns, EP, "/metrics").unwrap();
    let evicted: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kindnet_http_connections_evicted_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(evicted > 1000.0, "evicted {evicted}");
    drop(flood);
}

/// A fake API server on the namespace's loopback and a kindnetd watching
/// it: Nodes, and (NetworkPolicy on, the default) Pods, Namespaces and
/// NetworkPolicies.
struct KubeDaemon {
    api: FakeApi,
    d: Daemon,
    _served: Served,
    _dir: TempDir,
}

fn kube_daemon(ns: &Ns, tag: &str, nodes: Vec<Value>) -> KubeDaemon {
    let dir = temp_dir(tag);
    let netns = Netns::open(ns.path()).unwrap();
    let listener = netns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let api = FakeApi::new();
    api.preload(nodes);
    let served = api.spawn(listener).unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, kubeconfig(&served.url())).unwrap();
    let cni = dir.path().join("net.d");
    let d = Daemon::start(
        ns,
        &[
            "--node-name=me",
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--cni-conf-dir",
            cni.to_str().unwrap(),
            "--metrics-bind-address=127.0.0.1:19080",
        ],
        dir.path().join("log"),
    );
    KubeDaemon {
        api,
        d,
        _served: served,
        _dir: dir,
    }
}

/// Issue 10, defect 2: after an outage long enough for any backoff to grow,
/// the API server returns with its history compacted (the resumed watch gets
/// a 410 inside the stream); a Node created 1 s later must be routed within
/// 3 s, and no route may go while the server is away.
#[test]
fn node_created_after_an_outage_and_compacted_restart_is_routed_within_3s() {
    require_root!();
    let ns = node_ns();
    let k = kube_daemon(
        &ns,
        "kube-outage",
        vec![me(), node("b", &["10.244.1.0/24"], &["10.0.0.2"])],
    );
    let fail = |e: String| -> ! { panic!("{e}\n--- kindnetd log ---\n{}", k.d.log()) };
    let before = [("10.244.1.0/24", "10.0.0.2")];
    wait_routes(&ns, &before, Duration::from_secs(5)).unwrap_or_else(|e| fail(e));

    // The server is gone for 12 s: every connection closed at once.
    k.api.set_unreachable(true);
    let outage = std::time::Instant::now();
    while outage.elapsed() < Duration::from_secs(12) {
        if dst_gw(&ns) != route_set(&before) {
            fail(format!(
                "a route changed during the outage: {:?}",
                dst_gw(&ns)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // It comes back with a compacted history.
    k.api.expire(GoneMode::Event);
    k.api.set_unreachable(false);
    std::thread::sleep(Duration::from_secs(1));
    k.api.apply(node("c", &["10.244.2.0/24"], &["10.0.0.3"]));
    let created = std::time::Instant::now();
    wait_routes(
        &ns,
        &[("10.244.1.0/24", "10.0.0.2"), ("10.244.2.0/24", "10.0.0.3")],
        Duration::from_secs(3),
    )
    .unwrap_or_else(|e| fail(format!("not routed within 3 s of its creation: {e}")));
    eprintln!(
        "node created 1 s after the API server returned: routed {} ms after creation",
        created.elapsed().as_millis()
    );

    // Issue 10, defect 4: the log (a file, as `kubectl logs` reads it) is
    // plain text, and the whole outage is two lines per watch: one when the
    // failures start, one when they end, with the count; nothing from the
    // client. (The four watches resume each on its own schedule.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while k.d.log().matches("watch working again").count() < 4
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = k.d.log();
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{log}"
    );
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("kube")
                && (l.contains("WARN") || l.contains("ERROR") || l.contains(" watch "))
        })
        .collect();
    let node: Vec<&&str> = lines.iter().filter(|l| l.contains("node watch")).collect();
    assert_eq!(node.len(), 2, "{lines:#?}");
    assert!(node[0].contains("node watch failing"), "{lines:#?}");
    assert!(
        node[1].contains("node watch working again") && node[1].contains("failures="),
        "{lines:#?}"
    );
    // NetworkPolicy's three watches, likewise.
    for kind in ["pods", "namespaces", "networkpolicies"] {
        let of: Vec<&&str> = lines
            .iter()
            .filter(|l| l.contains(&format!("kind=\"{kind}\"")))
            .collect();
        assert_eq!(of.len(), 2, "{kind}: {lines:#?}");
        assert!(
            of[0].contains(&format!("{kind} watch failing")),
            "{lines:#?}"
        );
        assert!(
            of[1].contains(&format!("{kind} watch working again")),
            "{lines:#?}"
        );
    }
    assert_eq!(lines.len(), 8, "nothing else: {lines:#?}");
    assert!(!log.contains("kube_client"), "{log}");
}

/// Two node namespaces joined by a veth pair (`eth0` in each), with the
/// given addresses on eth0; IPv6 DAD off so link-local addresses are usable
/// at once.
fn two_nodes(a_addrs: &[&str], b_addrs: &[&str]) -> (Ns, Ns) {
    let a = nodad_ns("kd-test");
    let b = nodad_ns("kd-test");
    a.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "tmp0",
    ])
    .unwrap();
    a.ip(&["link", "set", "tmp0", "netns", &b.name]).unwrap();
    b.ip(&["link", "set", "tmp0", "name", "eth0"]).unwrap();
    for (ns, addrs) in [(&a, a_addrs), (&b, b_addrs)] {
        for addr in addrs {
            ns.ip(&["addr", "add", addr, "dev", "eth0", "nodad"])
                .unwrap();
        }
        ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    }
    (a, b)
}

fn link_local(ns: &Ns) -> String {
    let v: Value = serde_json::from_str(
        &ns.ip(&["-j", "-6", "addr", "show", "dev", "eth0", "scope", "link"])
            .unwrap(),
    )
    .unwrap();
    v[0]["addr_info"][0]["local"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Seed 004's last resort, for real: a peer that publishes only an IPv4
/// address gets its IPv6 pod CIDR routed via its actual link-local address
/// (found through its MAC, after soliciting all nodes), on the uplink.
#[test]
fn ipv6_pod_cidr_of_an_ipv4_only_peer_goes_via_its_link_local_address() {
    require_root!();
    let (a, b) = two_nodes(&["10.0.0.1/24"], &["10.0.0.2/24"]);
    let b_ll = wait_for(Duration::from_secs(3), || {
        let l = link_local(&b);
        (!l.is_empty()).then_some(l)
    })
    .expect("b has a link-local address");
    let dir = temp_dir("linklocal");
    let nodes_path = dir.path().join("nodes.json");
    let cni = dir.path().join("net.d");
    write_atomic(
        &nodes_path,
        &node_list(&[
            node("me", &["10.244.0.0/24", "fd00:10:244::/64"], &["10.0.0.1"]),
            node("b", &["10.244.1.0/24", "fd00:10:244:1::/64"], &["10.0.0.2"]),
        ]),
    );
    // Nothing known about b beforehand: no ARP or NDP entry.
    assert!(
        a.ip(&["neigh", "show", "dev", "eth0"])
            .unwrap()
            .trim()
            .is_empty()
    );
    let d = Daemon::start(
        &a,
        &daemon_args(nodes_path.to_str().unwrap(), cni.to_str().unwrap(), &[]),
        dir.path().join("log"),
    );
    let started = std::time::Instant::now();
    wait_routes(
        &a,
        &[
            ("10.244.1.0/24", "10.0.0.2"),
            ("fd00:10:244:1::/64", b_ll.as_str()),
        ],
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e}\n--- kindnetd log ---\n{}", d.log()));
    eprintln!(
        "IPv6 route via b's link-local {b_ll} after {} ms",
        started.elapsed().as_millis()
    );
    assert!(our_routes(&a).iter().all(|(_, _, dev)| dev == "eth0"));
    assert!(metric(&a, "kindnet_neighbour_solicitations_total").unwrap_or(0.0) >= 1.0);
    // Settled: a restart changes nothing and solicits nothing.
    assert_eq!(
        metric(
            &a,
            "kindnet_peers_skipped{reason=\"ipv6-link-local-unknown\"}"
        ),
        Some(0.0)
    );
}

/// IPv4 pods on an IPv6-only node network: the peer's IPv4 pod CIDR is
/// routed via its IPv6 address (`via inet6`), and stays put across passes.
#[test]
fn ipv4_pod_cidr_of_an_ipv6_only_peer_goes_via_its_ipv6_address() {
    require_root!();
    let (a, _b) = two_nodes(&["fd00::1/64"], &["fd00::2/64"]);
    let dir = temp_dir("via-inet6");
    let nodes_path = dir.path().join("nodes.json");
    let cni = dir.path().join("net.d");
    write_atomic(
        &nodes_path,
        &node_list(&[
            node("me", &["10.244.0.0/24", "fd00:10:244::/64"], &["fd00::1"]),
            node("b", &["10.244.1.0/24", "fd00:10:244:1::/64"], &["fd00::2"]),
        ]),
    );
    let d = Daemon::start(
        &a,
        &daemon_args(
            nodes_path.to_str().unwrap(),
            cni.to_str().unwrap(),
            &["--resync-period=200ms"],
        ),
        dir.path().join("log"),
    );
    let want = [
        ("10.244.1.0/24", "fd00::2"),
        ("fd00:10:244:1::/64", "fd00::2"),
    ];
    wait_routes(&a, &want, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\n--- kindnetd log ---\n{}", d.log()));
    let shown = a.ip(&["-4", "route", "show", "proto", "217"]).unwrap();
    assert!(
        shown.contains("10.244.1.0/24 via inet6 fd00::2 dev eth0"),
        "{shown}"
    );
    // Several resyncs: the route is recognised as correct, never rewritten.
    // (The pass that set both routes records its metrics once it is over.)
    let replaced = || metric(&a, "kindnet_route_changes_total{op=\"replace\"}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while replaced() < Some(2.0) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let changes = replaced();
    assert_eq!(changes, Some(2.0), "{}", d.log());
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        metric(&a, "kindnet_route_changes_total{op=\"replace\"}"),
        changes,
        "{}",
        d.log()
    );
}

/// Where `cargo build -p kindnet-cni` puts the plugins' binary.
fn kindnet_cni_path() -> String {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target")
        })
        .join("debug")
        .join("kindnet-cni")
        .display()
        .to_string()
}

/// The owners recorded in the IPAM store (one line per address file).
fn ipam_owners(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("kindnet"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|c| c.split("\r\n").next().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Issue 10, leak reclaim: a pod whose DEL never came (its namespace
/// deleted, as a runtime does after losing the DEL) has its addresses
/// released by kindnetd after the grace period; a live pod that got no DEL
/// either is never touched.
#[test]
fn addresses_of_a_pod_whose_del_was_lost_are_reclaimed_a_live_pod_never() {
    require_root!();
    let cni = require_tool!(kindnet_cni_path(), "cargo build -p kindnet-cni");
    let ns = node_ns();
    let dir = temp_dir("reclaim");
    let bin = dir.path().join("bin");
    let (code, _, err) = run(std::process::Command::new(&cni).arg("install").arg(&bin));
    assert_eq!(code, 0, "{err}");
    let nodes_path = dir.path().join("nodes.json");
    let cni_dir = dir.path().join("net.d");
    let ipam = dir.path().join("ipam");
    write_atomic(&nodes_path, &node_list(&[me()]));
    let d = Daemon::start(
        &ns,
        &daemon_args(
            nodes_path.to_str().unwrap(),
            cni_dir.to_str().unwrap(),
            &[
                "--resync-period=200ms",
                "--reclaim-grace=1s",
                "--ipam-data-dir",
                ipam.to_str().unwrap(),
            ],
        ),
        dir.path().join("log"),
    );
    wait_ready(&ns, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    // The network config a runtime hands the first plugin of the list.
    let list: Value = serde_json::from_str(
        &std::fs::read_to_string(cni_dir.join("10-kindnet.conflist")).unwrap(),
    )
    .unwrap();
    let mut conf = list["plugins"][0].clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    let add = |id: &str, pod: &Ns| {
        use std::io::Write;
        let mut c = ns.command(bin.join("kindnet").to_str().unwrap());
        c.env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &bin)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "ADD {id}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let live = Ns::new("kd-pod");
    let leaky = Ns::new("kd-pod");
    add("live", &live);
    add("leaky", &leaky);
    assert_eq!(
        ipam_owners(&ipam),
        vec!["leaky", "leaky", "live", "live"],
        "two addresses each (both families)"
    );
    // The runtime loses leaky's DEL and removes its namespace.
    drop(leaky);
    let gone = std::time::Instant::now();
    let reclaimed = wait_for(Duration::from_secs(6), || {
        (ipam_owners(&ipam) == vec!["live", "live"]).then_some(())
    });
    assert!(
        reclaimed.is_some(),
        "not reclaimed: {:?}\n{}",
        ipam_owners(&ipam),
        d.log()
    );
    let after = gone.elapsed();
    assert!(
        after >= Duration::from_secs(1),
        "before the grace period: {after:?}"
    );
    eprintln!(
        "leaked attachment reclaimed {} ms after its namespace went",
        after.as_millis()
    );
    assert_eq!(metric(&ns, "kindnet_leaks_reclaimed_total"), Some(1.0));
    assert_eq!(
        metric(&ns, "kindnet_leaked_addresses_reclaimed_total"),
        Some(2.0)
    );
    assert!(
        d.log().contains("reclaimed a leaked attachment"),
        "{}",
        d.log()
    );
    // The live pod, with no DEL either, is never touched: many grace
    // periods later its addresses, veth and connectivity are all there.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ipam_owners(&ipam), vec!["live", "live"]);
    assert!(
        live.exec(&["ping", "-c", "1", "-W", "1", "10.244.0.1"])
            .is_ok()
    );
    assert_eq!(metric(&ns, "kindnet_leaks_reclaimed_total"), Some(1.0));
}

//! The CNI config kindnetd writes (bridge mode, rewrites) and the
//! sysctls it sets.

use super::*;

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
    let f = Files::new("conflist", &[node("me", &["10.244.0.0/24"], &["10.0.0.1"])]);
    let d = f.start(&ns, &["--resync-period=200ms"], "log");
    let conf = f.cni.join("10-kindnet.conflist");
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(&conf).unwrap().ino();
    // Several resyncs later the file is the same inode: not rewritten.
    wait_passes(&ns, 3, Duration::from_secs(10)).unwrap_or_else(|e| d.fail(e));
    assert_eq!(std::fs::metadata(&conf).unwrap().ino(), ino);
    assert_eq!(metric(&ns, "kindnet_cni_config_writes_total"), Some(1.0));
    // The node's CIDR changes: a new file arrives by rename.
    f.write(&[node("me", &["10.244.9.0/24"], &["10.0.0.1"])]);
    let changed = wait_for(Duration::from_secs(3), || {
        let s = std::fs::read_to_string(&conf).ok()?;
        s.contains("10.244.9.0/24").then_some(())
    });
    assert!(changed.is_some(), "{}", d.log());
    assert_ne!(std::fs::metadata(&conf).unwrap().ino(), ino);
    let leftovers: Vec<_> = std::fs::read_dir(&f.cni)
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

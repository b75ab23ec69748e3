//! This node's own pod CIDRs: no conflist before they are known, the last
//! known ones kept, duplicates never switching them.

use super::*;

fn conflist_text(dir: &tempfile::TempDir) -> Option<String> {
    std::fs::read_to_string(dir.path().join(cniconf::CONFLIST_NAME)).ok()
}

fn own_ranges(dir: &tempfile::TempDir) -> Vec<String> {
    conflist_text(dir)
        .map(|c| {
            cniconf::ranges_of(&c)
                .iter()
                .map(|c| c.to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Node lists in which this node ("me") has no usable pod CIDRs.
fn lists_without_own_cidrs() -> Vec<(&'static str, Vec<crate::inputs::node::RawNode>)> {
    let me = |cidrs: &[&str]| raw("me", cidrs, &[("InternalIP", "172.18.0.2")]);
    vec![
        ("missing", vec![b()]),
        ("no podCIDRs", vec![me(&[]), b()]),
        (
            "listed twice",
            vec![me(&["10.244.9.0/24"]), me(&["10.244.0.0/24"]), b()],
        ),
        ("half of IPv4", vec![me(&["0.0.0.0/1"]), b()]),
        ("outside --pod-subnet", vec![me(&["10.99.0.0/24"]), b()]),
        ("the node segment", vec![me(&["172.18.0.0/16"]), b()]),
        ("a peer's address", vec![me(&["172.18.0.0/30"]), b()]),
    ]
}

#[test]
fn no_conflist_and_not_ready_until_this_node_has_pod_cidrs() {
    for (what, list) in lists_without_own_cidrs() {
        let (mut r, store, dir) = setup("noown");
        store.lock().unwrap().replace_all(&list);
        r.pass(true);
        assert_eq!(conflist_text(&dir), None, "{what}: never the cluster range");
        let ready = r.status.readiness();
        assert!(!ready.ready(), "{what}: {}", ready.report());
        assert!(ready.own_cidrs.is_empty(), "{what}");
        let report = ready.report();
        assert!(
            report.contains("no CNI config is written") && report.contains("Node me"),
            "{what}: {report}"
        );
        // Peers are routed all the same.
        assert_eq!(r.dp.installed.len(), 1, "{what}");
    }
}

#[test]
fn last_known_own_cidrs_are_kept_when_the_node_loses_them() {
    for (what, list) in lists_without_own_cidrs() {
        let (mut r, store, dir) = setup("lastknown");
        store.lock().unwrap().replace_all(&[
            raw("me", &["10.244.0.0/24"], &[("InternalIP", "172.18.0.2")]),
            b(),
        ]);
        r.pass(true);
        assert!(r.status.readiness().ready());
        store.lock().unwrap().replace_all(&list);
        r.pass(true);
        assert_eq!(own_ranges(&dir), vec!["10.244.0.0/24"], "{what}");
        let ready = r.status.readiness();
        assert_eq!(
            ready.own_cidrs,
            vec!["10.244.0.0/24".parse::<IpNet>().unwrap()]
        );
        assert!(!ready.ready(), "{what}: {}", ready.report());
        assert!(
            ready
                .report()
                .contains("keeping the last known 10.244.0.0/24"),
            "{what}: {}",
            ready.report()
        );
        // The kept range still protects: masquerade and overlap checks use it.
        let script = r.dp.nft.last().cloned().unwrap_or_default();
        assert!(set_elements(&script, "pod-sources-v4").contains("10.244.0.0/16"));
    }
}

#[test]
fn last_known_own_cidrs_come_from_the_conflist_on_disk_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let before = cniconf::render(&cniconf::CniInputs {
        chain: cniconf::CniChain::Single,
        pod_cidrs: vec!["10.244.5.0/24".parse().unwrap()],
        mtu: 1400,
        bridge: None,
        ipam_data_dir: "/run/cni-ipam-state".into(),
    });
    crate::host::conffile::write_if_changed(dir.path(), cniconf::CONFLIST_NAME, &before).unwrap();
    let store = Arc::new(Mutex::new(NodeStore::new()));
    let mut r = Reconciler::new(
        settings(dir.path()),
        Fake::default(),
        store.clone(),
        Arc::new(Status::new()),
    );
    store.lock().unwrap().replace_all(&[b()]);
    r.pass(true);
    assert_eq!(conflist_text(&dir).as_deref(), Some(before.as_str()));
    let ready = r.status.readiness();
    assert!(!ready.ready());
    assert!(
        ready
            .report()
            .contains("keeping the last known 10.244.5.0/24")
    );
    // The Node comes back with its range: current again, ready.
    store.lock().unwrap().replace_all(&[
        raw("me", &["10.244.5.0/24"], &[("InternalIP", "172.18.0.2")]),
        b(),
    ]);
    r.pass(true);
    assert!(r.status.readiness().ready());
}

#[test]
fn static_pod_cidrs_are_this_nodes_range() {
    let (mut r, store, dir) = setup("static");
    r.cfg.static_pod_cidrs = vec!["10.244.7.0/24".parse().unwrap()];
    store
        .lock()
        .unwrap()
        .replace_all(&[raw("me", &[], &[("InternalIP", "172.18.0.2")])]);
    r.pass(true);
    assert_eq!(own_ranges(&dir), vec!["10.244.7.0/24"]);
    let ready = r.status.readiness();
    assert!(ready.ready(), "{}", ready.report());
    assert!(ready.report().contains("from --static-pod-cidrs"));
}

#[test]
fn duplicate_names_are_reported_and_never_switch_own_ranges() {
    let (mut r, store, dir) = setup("dups");
    let me = |c: &str| raw("me", &[c], &[("InternalIP", "172.18.0.2")]);
    store
        .lock()
        .unwrap()
        .replace_all(&[me("10.244.0.0/24"), b()]);
    r.pass(true);
    for list in [
        vec![me("10.244.9.0/24"), me("10.244.0.0/24"), b()],
        vec![me("10.244.0.0/24"), me("10.244.9.0/24"), b()],
        vec![me("10.244.0.0/24"), b(), b()],
    ] {
        store.lock().unwrap().replace_all(&list);
        r.pass(true);
        assert_eq!(own_ranges(&dir), vec!["10.244.0.0/24"]);
        let ready = r.status.readiness();
        assert!(!ready.duplicates.is_empty(), "{}", ready.report());
        assert!(ready.report().contains("listed more than once"));
        // b keeps its route whether or not it is the duplicate.
        assert_eq!(r.dp.installed.len(), 1);
    }
}

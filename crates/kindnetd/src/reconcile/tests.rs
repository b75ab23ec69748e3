use super::*;
use crate::dataplane::DataplaneError;
use crate::node::tests::raw;
use crate::routes::{InstalledRoute, KernelRoute, Topology};

/// A host with eth0 (index 2, 172.18.0.2/16, mtu 1400) and default via 172.18.0.1.
#[derive(Default)]
struct Fake {
    installed: Vec<InstalledRoute>,
    applied: Vec<RouteOp>,
    nft: Vec<kindnet_nft::Batch>,
    sysctls: std::collections::HashMap<String, String>,
    fail_view: bool,
    solicits: Vec<(u32, Vec<std::net::Ipv4Addr>)>,
    neighbours: Vec<(u32, IpAddr, Vec<u8>)>,
    allocated: Vec<crate::reclaim::Allocated>,
    reclaimed: Vec<crate::reclaim::Leak>,
    veths: Vec<(crate::reclaim::HostVeth, Option<u32>)>,
    host_routes: Vec<KernelRoute>,
}

impl Dataplane for Fake {
    fn view(&mut self) -> Result<HostView, DataplaneError> {
        if self.fail_view {
            return Err(DataplaneError::Netlink {
                what: "list routes".into(),
                source: kindnet_netlink::Error::Io(std::io::Error::from_raw_os_error(
                    libc::ENOBUFS,
                )),
            });
        }
        let foreign = vec![
            KernelRoute::test("0.0.0.0/0", Some("172.18.0.1"), 2),
            KernelRoute::test("172.18.0.0/16", None, 2),
        ];
        let mut foreign = foreign;
        foreign.extend(self.host_routes.iter().cloned());
        let local = vec!["172.18.0.2".parse().unwrap()];
        Ok(HostView {
            topology: Topology::new(foreign.clone(), local)
                .with_neighbours(crate::routes::Neighbours::new(self.neighbours.clone())),
            ours: self.installed.clone(),
            foreign,
            link_mtus: [(2, 1400)].into_iter().collect(),
            link_names: [(2, "eth0".to_string())].into_iter().collect(),
            addr_links: vec![("172.18.0.2".parse().unwrap(), 2)],
            ra_default_oifs: vec![],
            veths: self.veths.clone(),
            sysctls: None,
        })
    }
    fn apply(&mut self, op: &RouteOp) -> Result<(), DataplaneError> {
        self.applied.push(op.clone());
        match op {
            RouteOp::Replace(p) => {
                let prio = routes::default_priority(&p.dst);
                self.installed
                    .retain(|r| !(r.dst == p.dst && r.priority == prio));
                self.installed.push(InstalledRoute {
                    dst: p.dst,
                    gateway: Some(p.gateway),
                    oif: Some(p.oif),
                    priority: prio,
                });
            }
            RouteOp::Delete(r) => self.installed.retain(|i| i != r),
        }
        Ok(())
    }
    fn nft(&mut self, batch: &kindnet_nft::Batch) -> Result<(), DataplaneError> {
        self.nft.push(batch.clone());
        Ok(())
    }
    fn sysctl_get(&mut self, key: &str) -> Option<String> {
        Some(self.sysctls.get(key).cloned().unwrap_or_else(|| "0".into()))
    }
    fn sysctl_set(&mut self, key: &str, value: &str) -> Result<(), DataplaneError> {
        self.sysctls.insert(key.into(), value.into());
        Ok(())
    }
    // The conflist goes to a temporary directory through the real writer.
    fn read_conflist(&mut self, dir: &std::path::Path) -> Option<String> {
        std::fs::read_to_string(dir.join(cniconf::CONFLIST_NAME)).ok()
    }
    fn write_conflist(
        &mut self,
        dir: &std::path::Path,
        content: &str,
    ) -> Result<bool, DataplaneError> {
        crate::conffile::write_if_changed(dir, cniconf::CONFLIST_NAME, content).map_err(|source| {
            DataplaneError::ConfWrite {
                path: dir.join(cniconf::CONFLIST_NAME),
                source,
            }
        })
    }
    fn solicit(&mut self, oif: u32, arp: &[std::net::Ipv4Addr]) -> Result<(), DataplaneError> {
        self.solicits.push((oif, arp.to_vec()));
        Ok(())
    }
    fn allocations(
        &mut self,
        _data_dir: &std::path::Path,
        _network: &str,
    ) -> Result<Vec<crate::reclaim::Allocated>, DataplaneError> {
        Ok(self.allocated.clone())
    }
    fn reclaim(
        &mut self,
        _data_dir: &std::path::Path,
        _network: &str,
        leak: &crate::reclaim::Leak,
    ) -> Result<Vec<IpAddr>, DataplaneError> {
        self.allocated
            .retain(|a| !(a.container_id == leak.container_id && a.ifname == leak.ifname));
        self.reclaimed.push(leak.clone());
        Ok(leak.ips.clone())
    }
}

fn settings(dir: &std::path::Path) -> Settings {
    Settings {
        own_name: "me".into(),
        route_opts: RouteOptions::default(),
        pod_subnet: vec!["10.244.0.0/16".parse().unwrap()],
        static_pod_cidrs: vec![],
        no_masquerade: vec![],
        masquerading: true,
        configure_sysctls: true,
        cni_conf_dir: dir.to_path_buf(),
        bridge: None,
        cni_chain: cniconf::CniChain::Single,
        ipam_data_dir: "/run/cni-ipam-state".into(),
        mtu: 0,
        resync_period: Duration::from_secs(10),
        reclaim_grace: Duration::from_millis(50),
        policy_on_bridge: false,
    }
}

fn setup(tag: &str) -> (Reconciler<Fake>, Arc<Mutex<NodeStore>>, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("kindnetd-rec-{tag}-"))
        .tempdir()
        .unwrap();
    let store = Arc::new(Mutex::new(NodeStore::new()));
    let mut r = Reconciler::new(
        settings(dir.path()),
        Fake::default(),
        store.clone(),
        Arc::new(Status::new()),
    );
    // Time moves only when a test says so: grace periods pass without sleeping.
    r.clock = Clock::manual();
    (r, store, dir)
}

#[test]
fn nothing_removed_or_written_before_sync() {
    let (mut r, store, dir) = setup("presync");
    r.dp.installed.push(InstalledRoute {
        dst: "10.244.9.0/24".parse().unwrap(),
        gateway: Some("172.18.0.9".parse().unwrap()),
        oif: Some(2),
        priority: 0,
    });
    store.lock().unwrap().upsert(&raw(
        "b",
        &["10.244.1.0/24"],
        &[("InternalIP", "172.18.0.3")],
    ));
    let rep = r.pass(true);
    assert!(r.dp.applied.is_empty(), "{:?}", r.dp.applied);
    assert!(!rep.conflist_written);
    assert!(!dir.path().join(cniconf::CONFLIST_NAME).exists());
    assert!(!r.status.readiness().ready());
    // Sysctls are set regardless.
    assert_eq!(
        r.dp.sysctls.get(sysctl::IPV4_FORWARD).map(String::as_str),
        Some("1")
    );
}

#[test]
fn converges_then_stays_quiet() {
    let (mut r, store, dir) = setup("converge");
    store.lock().unwrap().replace_all(&[
        raw("me", &["10.244.0.0/24"], &[("InternalIP", "172.18.0.2")]),
        raw("b", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.3")]),
        raw("far", &["10.244.2.0/24"], &[("InternalIP", "10.1.1.1")]),
    ]);
    r.dp.installed.push(InstalledRoute {
        dst: "10.244.9.0/24".parse().unwrap(),
        gateway: Some("172.18.0.9".parse().unwrap()),
        oif: Some(2),
        priority: 0,
    });
    let rep = r.pass(true);
    assert_eq!((rep.replaced, rep.deleted()), (1, 1), "{rep:?}");
    assert!(rep.conflist_written);
    let conf = std::fs::read_to_string(dir.path().join(cniconf::CONFLIST_NAME)).unwrap();
    assert!(conf.contains("\"subnet\": \"10.244.0.0/24\""));
    assert!(conf.contains("\"mtu\": 1400"));
    assert_eq!(r.dp.nft.len(), 1);
    assert!(
        masq::set_elements(&r.dp.nft[0], "pod-sources-v4")
            .contains(&"10.244.0.0/16".parse().unwrap())
    );
    let ready = r.status.readiness();
    assert!(ready.ready(), "{}", ready.report());
    assert_eq!(ready.skipped.len(), 1);
    assert!(ready.skipped[0].contains("far"));

    // A second, non-full pass changes nothing at all.
    r.dp.applied.clear();
    let rep = r.pass(false);
    assert!(rep.changed_nothing(), "{rep:?}");
    assert!(r.dp.applied.is_empty());
    assert_eq!(r.dp.nft.len(), 1, "unchanged rules are not re-applied");
    // A full pass re-applies the rules (repairing hand edits) but no routes.
    let rep = r.pass(true);
    assert_eq!((rep.replaced, rep.deleted()), (0, 0));
    assert_eq!(r.dp.nft.len(), 2);
    let metrics = r.status.metrics.encode();
    assert!(
        metrics.contains("kindnet_routes_installed{family=\"ipv4\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kindnet_peers_skipped{reason=\"not-on-link\"} 1"));
    assert!(metrics.contains("kindnet_nodes 3"));
}

#[test]
fn bad_update_of_one_node_keeps_everyones_routes() {
    let (mut r, store, _dir) = setup("bad");
    store.lock().unwrap().replace_all(&[
        raw("me", &["10.244.0.0/24"], &[("InternalIP", "172.18.0.2")]),
        raw("b", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.3")]),
        raw("c", &["10.244.2.0/24"], &[("InternalIP", "172.18.0.4")]),
    ]);
    r.pass(true);
    assert_eq!(r.dp.installed.len(), 2);
    r.dp.applied.clear();
    // b turns malformed, c claims our own CIDR.
    {
        let mut s = store.lock().unwrap();
        s.upsert(&raw(
            "b",
            &["10.244.1.0/99"],
            &[("InternalIP", "172.18.0.3")],
        ));
        s.upsert(&raw(
            "c",
            &["10.244.0.0/24"],
            &[("InternalIP", "172.18.0.4")],
        ));
    }
    r.pass(false);
    let dsts: Vec<String> = r.dp.installed.iter().map(|i| i.dst.to_string()).collect();
    assert!(dsts.contains(&"10.244.1.0/24".to_string()), "{dsts:?}");
    // c's own old route goes (its CIDR changed), but nobody else's.
    assert_eq!(
        r.dp.applied,
        vec![RouteOp::Delete(InstalledRoute {
            dst: "10.244.2.0/24".parse().unwrap(),
            gateway: Some("172.18.0.4".parse().unwrap()),
            oif: Some(2),
            priority: 0,
        })]
    );
}

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

fn b() -> crate::node::RawNode {
    raw("b", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.3")])
}

/// Node lists in which this node ("me") has no usable pod CIDRs.
fn lists_without_own_cidrs() -> Vec<(&'static str, Vec<crate::node::RawNode>)> {
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
    crate::conffile::write_if_changed(dir.path(), cniconf::CONFLIST_NAME, &before).unwrap();
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

fn ours(dst: &str, gw: &str) -> InstalledRoute {
    InstalledRoute {
        dst: dst.parse().unwrap(),
        gateway: Some(gw.parse().unwrap()),
        oif: Some(2),
        priority: 0,
    }
}

#[test]
fn protocol_217_routes_kindnetd_did_not_make_are_left_and_reported() {
    let foreign = [
        ("192.168.50.0/24", "172.18.0.9"),
        ("0.0.0.0/0", "172.18.0.1"),
        ("10.0.0.0/8", "172.18.0.9"),
        ("10.245.0.0/24", "172.18.0.9"),
        ("fd00:99::/64", "fc00::9"),
    ];
    let (mut r, store, _dir) = setup("foreign");
    for (d, g) in foreign {
        r.dp.installed.push(ours(d, g));
    }
    // A stale route of ours inside --pod-subnet goes.
    r.dp.installed.push(ours("10.244.9.0/24", "172.18.0.9"));
    store.lock().unwrap().replace_all(&[
        raw("me", &["10.244.0.0/24"], &[("InternalIP", "172.18.0.2")]),
        b(),
    ]);
    let rep = r.pass(true);
    assert_eq!(rep.deleted(), 1, "{:?}", r.dp.applied);
    assert!(
        r.dp.applied
            .contains(&RouteOp::Delete(ours("10.244.9.0/24", "172.18.0.9")))
    );
    for (d, _) in foreign {
        assert!(
            r.dp.installed.iter().any(|i| i.dst.to_string() == d),
            "{d} was deleted"
        );
    }
    let ready = r.status.readiness();
    assert_eq!(
        ready.foreign_routes.len(),
        foreign.len(),
        "{:?}",
        ready.foreign_routes
    );
    assert!(ready.report().contains("192.168.50.0/24 via 172.18.0.9"));
    assert!(
        r.status
            .metrics
            .encode()
            .contains("kindnet_foreign_proto_routes 5")
    );
}

#[test]
fn routes_of_known_peers_outside_pod_subnet_are_removed_when_they_go() {
    let (mut r, store, _dir) = setup("known");
    r.cfg.pod_subnet.clear();
    r.cfg.route_opts.pod_subnet.clear();
    store.lock().unwrap().replace_all(&[
        raw("me", &["10.50.0.0/24"], &[("InternalIP", "172.18.0.2")]),
        raw("c", &["10.51.0.0/24"], &[("InternalIP", "172.18.0.4")]),
    ]);
    r.dp.installed.push(ours("192.168.50.0/24", "172.18.0.9"));
    r.pass(true);
    assert_eq!(r.dp.installed.len(), 2);
    store.lock().unwrap().replace_all(&[raw(
        "me",
        &["10.50.0.0/24"],
        &[("InternalIP", "172.18.0.2")],
    )]);
    r.pass(true);
    let left: Vec<String> = r.dp.installed.iter().map(|i| i.dst.to_string()).collect();
    assert_eq!(left, vec!["192.168.50.0/24"]);
}

/// The `elements = { ... }` of one nft set in a ruleset.
/// The elements of a set of a masquerade batch, as `{ a, b }`.
fn set_elements(b: &kindnet_nft::Batch, set: &str) -> String {
    let e: Vec<String> = masq::set_elements(b, set)
        .iter()
        .map(|n| n.to_string())
        .collect();
    if e.is_empty() {
        String::new()
    } else {
        format!("{{ {} }}", e.join(", "))
    }
}

#[test]
fn refused_peer_cidrs_never_exempt_traffic_from_masquerade() {
    for (evil, evil_ip) in [
        ("0.0.0.0/1", "172.18.0.66"),
        ("128.0.0.0/1", "172.18.0.66"),
        ("192.0.0.0/2", "172.18.0.66"),
        ("172.18.0.0/17", "172.18.0.66"),
        ("::/1", "fc00::66"),
        ("2000::/3", "fc00::66"),
    ] {
        let (mut r, store, _dir) = setup("masq-refused");
        r.cfg.no_masquerade = vec!["192.168.0.0/16".parse().unwrap()];
        store.lock().unwrap().replace_all(&[
            raw("me", &["10.244.0.0/24"], &[("InternalIP", "172.18.0.2")]),
            raw("b", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.3")]),
            raw("evil", &[evil], &[("InternalIP", evil_ip)]),
        ]);
        r.pass(true);
        let script = r.dp.nft.last().cloned().unwrap_or_default();
        assert_eq!(
            set_elements(&script, "no-masquerade-v4"),
            "{ 10.244.0.0/16, 192.168.0.0/16 }",
            "{evil}:\n{script:?}"
        );
        assert_eq!(set_elements(&script, "no-masquerade-v6"), "", "{evil}");
        let ready = r.status.readiness();
        assert!(
            ready.skipped.iter().any(|l| l.contains("node evil")),
            "{evil}: {:?}",
            ready.skipped
        );
    }
}

#[test]
fn only_routed_peers_are_exempt_without_pod_subnet() {
    let inputs = masquerade_inputs(
        &["10.244.0.0/24".parse().unwrap()],
        &["10.244.1.0/24".parse().unwrap()],
        &[],
        &["192.168.0.0/16".parse().unwrap()],
    );
    let want: Vec<IpNet> = ["10.244.1.0/24", "10.244.0.0/24", "192.168.0.0/16"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(inputs.no_masquerade, want);
    assert_eq!(
        inputs.pod_sources,
        vec!["10.244.0.0/24".parse::<IpNet>().unwrap()]
    );
}

#[test]
fn masquerading_off_removes_the_table_once() {
    let (mut r, store, _dir) = setup("nomasq");
    r.cfg.masquerading = false;
    store.lock().unwrap().replace_all(&[raw(
        "me",
        &["10.244.0.0/24"],
        &[("InternalIP", "172.18.0.2")],
    )]);
    r.pass(true);
    r.pass(true);
    assert_eq!(r.dp.nft, vec![masq::removal()]);
}

#[test]
fn ipv6_pods_on_an_ipv4_only_node_network_are_routed_via_the_peers_link_local() {
    let (mut r, store, _dir) = setup("linklocal");
    r.cfg.pod_subnet = vec![
        "10.244.0.0/16".parse().unwrap(),
        "fd00:10:244::/56".parse().unwrap(),
    ];
    r.cfg.route_opts.pod_subnet = r.cfg.pod_subnet.clone();
    store.lock().unwrap().replace_all(&[
        raw(
            "me",
            &["10.244.0.0/24", "fd00:10:244::/64"],
            &[("InternalIP", "172.18.0.2")],
        ),
        raw(
            "b",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &[("InternalIP", "172.18.0.3")],
        ),
    ]);
    r.pass(true);
    // IPv4 routed; IPv6 not yet: b's uplink is solicited, with ARP.
    assert_eq!(r.dp.installed.len(), 1);
    assert_eq!(
        r.dp.solicits,
        vec![(2, vec!["172.18.0.3".parse().unwrap()])]
    );
    assert!(r.retry_at.is_some(), "a pass soon to read the answers");
    let ready = r.status.readiness();
    assert!(
        ready
            .report()
            .contains("IPv6 link-local address of 172.18.0.3 is not known"),
        "{}",
        ready.report()
    );
    assert!(
        r.status
            .metrics
            .encode()
            .contains("kindnet_peers_skipped{reason=\"ipv6-link-local-unknown\"} 1")
    );
    // Not again right away.
    r.pass(false);
    assert_eq!(r.dp.solicits.len(), 1);
    // The answers arrive in the neighbour table.
    let mac = vec![2u8, 0x42, 0xac, 0x12, 0, 3];
    r.dp.neighbours = vec![
        (2, "172.18.0.3".parse().unwrap(), mac.clone()),
        (2, "fe80::42:acff:fe12:3".parse().unwrap(), mac),
    ];
    r.pass(false);
    let v6 =
        r.dp.installed
            .iter()
            .find(|i| i.dst.to_string() == "fd00:10:244:1::/64")
            .cloned();
    assert_eq!(
        v6.map(|i| (i.gateway, i.oif)),
        Some((Some("fe80::42:acff:fe12:3".parse().unwrap()), Some(2)))
    );
    assert!(r.retry_at.is_none(), "nothing left to solicit");
    assert!(r.status.readiness().skipped.is_empty());
}

#[test]
fn solicitations_are_per_uplink_and_wait_their_pause() {
    let now = Instant::now();
    let a: std::net::Ipv4Addr = "172.18.0.3".parse().unwrap();
    let b: std::net::Ipv4Addr = "172.18.0.4".parse().unwrap();
    let c: std::net::Ipv4Addr = "10.1.0.5".parse().unwrap();
    let wanted = [(2, a), (2, b), (3, c)];
    let mut last = HashMap::new();
    let known = |_: u32, p: std::net::Ipv4Addr| p == b;
    assert_eq!(
        due_solicitations(&wanted, &last, known, now),
        vec![(2, vec![a]), (3, vec![c])],
        "one solicitation per uplink; ARP only where the MAC is unknown"
    );
    last.insert(2, (now, SOLICIT_MIN));
    assert_eq!(
        due_solicitations(&wanted, &last, known, now + Duration::from_millis(500)),
        vec![(3, vec![c])]
    );
    assert_eq!(
        due_solicitations(&wanted, &last, known, now + SOLICIT_MIN).len(),
        2
    );
    assert!(due_solicitations(&[], &last, known, now).is_empty());
}

#[test]
fn leaked_attachments_are_reclaimed_after_the_grace_period_live_pods_never() {
    use crate::reclaim::{Allocated, HostVeth};
    let (mut r, store, _dir) = setup("reclaim");
    store.lock().unwrap().replace_all(&[raw(
        "me",
        &["10.244.0.0/24"],
        &[("InternalIP", "172.18.0.2")],
    )]);
    let a = |ip: &str, id: &str| Allocated {
        ip: ip.parse().unwrap(),
        container_id: id.into(),
        ifname: "eth0".into(),
    };
    r.dp.allocated = vec![a("10.244.0.2", "live"), a("10.244.0.3", "leaked")];
    // The live pod: its tagged veth leads to its namespace, and its host
    // route is there; the leaked one has neither (its namespace is gone).
    let tag = kindnet_cni_spec::AttachmentId::new("kindnet", "live", "eth0")
        .unwrap()
        .owner()
        .to_string();
    r.dp.veths = vec![(
        HostVeth {
            index: 7,
            name: "veth00000007".into(),
            alias: Some(tag),
            peer_elsewhere: true,
            on_pod_bridge: false,
        },
        None,
    )];
    r.dp.host_routes = vec![KernelRoute::test("10.244.0.2/32", None, 7)];
    r.pass(true);
    assert!(r.dp.reclaimed.is_empty(), "never before the grace period");
    assert!(
        r.status
            .metrics
            .encode()
            .contains("kindnet_leak_candidates 1")
    );
    // Non-full passes do not reclaim.
    r.clock.advance(Duration::from_millis(60));
    r.pass(false);
    assert!(r.dp.reclaimed.is_empty());
    r.pass(true);
    let ids: Vec<&str> =
        r.dp.reclaimed
            .iter()
            .map(|l| l.container_id.as_str())
            .collect();
    assert_eq!(ids, vec!["leaked"]);
    let metrics = r.status.metrics.encode();
    assert!(
        metrics.contains("kindnet_leaks_reclaimed_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kindnet_leaked_addresses_reclaimed_total 1"));
    assert!(metrics.contains("kindnet_leak_candidates 0"));
    // Many passes later the live pod is still untouched.
    for _ in 0..3 {
        r.clock.advance(Duration::from_millis(60));
        r.pass(true);
    }
    assert_eq!(r.dp.reclaimed.len(), 1);
    assert_eq!(r.dp.allocated, vec![a("10.244.0.2", "live")]);
    // Off: nothing is even looked at.
    let (mut off, store, _dir) = setup("reclaim-off");
    off.cfg.reclaim_grace = Duration::ZERO;
    store.lock().unwrap().replace_all(&[raw(
        "me",
        &["10.244.0.0/24"],
        &[("InternalIP", "172.18.0.2")],
    )]);
    off.dp.allocated = vec![a("10.244.0.3", "leaked")];
    off.pass(true);
    off.clock.advance(Duration::from_millis(60));
    off.pass(true);
    assert!(off.dp.reclaimed.is_empty());
}

#[test]
fn host_read_failure_is_reported_not_fatal() {
    let (mut r, _store, _dir) = setup("fail");
    r.dp.fail_view = true;
    let rep = r.pass(true);
    assert_eq!(rep.errors.len(), 1, "{rep:?}");
    assert!(rep.errors[0].starts_with("list routes: "), "{rep:?}");
    assert!(
        r.status
            .metrics
            .encode()
            .contains("kindnet_reconcile_errors_total 1")
    );
}

// The plan alone: host view + node list + settings + memory in, changes out.

fn synced_store(nodes: &[crate::node::RawNode]) -> NodeStore {
    let mut s = NodeStore::new();
    s.replace_all(nodes);
    s
}

fn me() -> crate::node::RawNode {
    raw("me", &["10.244.0.0/24"], &[("InternalIP", "172.18.0.2")])
}

#[test]
fn plan_before_sync_changes_nothing_but_sysctls() {
    let mut view = Fake::default().view().unwrap();
    view.sysctls = Some(SysctlView {
        ipv4_forward: Some("0".into()),
        ipv6_forwarding: None,
        ..SysctlView::default()
    });
    let mut store = NodeStore::new();
    store.upsert(&b());
    let cfg = settings(std::path::Path::new("/nonexistent"));
    let p = plan::plan(&view, &store, &cfg, &Memory::default(), true);
    assert!(!p.synced);
    assert!(p.routes.is_empty() && p.conflist.is_none(), "{p:?}");
    assert_eq!(p.masquerade, MasqPlan::Unchanged);
    assert_eq!(p.sysctls, vec![(sysctl::IPV4_FORWARD.to_string(), "1")]);
    // A pass that is not full reads and writes no sysctls.
    let p = plan::plan(&view, &store, &cfg, &Memory::default(), false);
    assert!(p.sysctls.is_empty());
}

#[test]
fn plan_writes_the_conflist_routes_peers_and_masquerades_once_synced() {
    let view = Fake::default().view().unwrap();
    let store = synced_store(&[me(), b()]);
    let cfg = settings(std::path::Path::new("/etc/cni/net.d"));
    let p = plan::plan(&view, &store, &cfg, &Memory::default(), false);
    let c = p.conflist.as_ref().unwrap();
    assert_eq!(c.mtu, 1400, "the default route's interface");
    assert!(c.content.contains("\"subnet\": \"10.244.0.0/24\""));
    assert_eq!(c.dir, std::path::Path::new("/etc/cni/net.d"));
    assert!(matches!(&p.routes[..], [RouteOp::Replace(r)] if r.dst.to_string() == "10.244.1.0/24"));
    let MasqPlan::Apply(batch) = &p.masquerade else {
        panic!("{:?}", p.masquerade)
    };
    // The same ruleset again is left alone, and checked against the
    // kernel at a full pass.
    let mem = Memory {
        last_masq: Some(batch.clone()),
        ..Memory::default()
    };
    assert_eq!(
        plan::plan(&view, &store, &cfg, &mem, false).masquerade,
        MasqPlan::Unchanged
    );
    assert!(matches!(
        plan::plan(&view, &store, &cfg, &mem, true).masquerade,
        MasqPlan::Verify(_)
    ));
}

#[test]
fn plan_removes_the_masquerade_table_once_when_off() {
    let view = Fake::default().view().unwrap();
    let store = synced_store(&[me()]);
    let mut cfg = settings(std::path::Path::new("/x"));
    cfg.masquerading = false;
    let p = plan::plan(&view, &store, &cfg, &Memory::default(), true);
    assert_eq!(p.masquerade, MasqPlan::Remove);
    let mem = Memory {
        masq_removed: true,
        ..Memory::default()
    };
    assert_eq!(
        plan::plan(&view, &store, &cfg, &mem, true).masquerade,
        MasqPlan::Unchanged
    );
}

#[test]
fn plan_deletes_only_the_protocol_217_routes_it_knows_are_its_own() {
    let mut fake = Fake::default();
    // Outside --pod-subnet: ours only if kindnetd routed that peer CIDR.
    let outside = ours("10.99.0.0/24", "172.18.0.3");
    fake.installed.push(outside.clone());
    let view = fake.view().unwrap();
    let store = synced_store(&[me()]);
    let cfg = settings(std::path::Path::new("/x"));
    let p = plan::plan(&view, &store, &cfg, &Memory::default(), false);
    assert!(p.routes.is_empty(), "{:?}", p.routes);
    assert_eq!(p.foreign_routes, vec![outside.clone()]);
    let mem = Memory {
        known_peer_cidrs: [outside.dst].into_iter().collect(),
        ..Memory::default()
    };
    let p = plan::plan(&view, &store, &cfg, &mem, false);
    assert_eq!(p.routes, vec![RouteOp::Delete(outside)]);
    assert!(p.foreign_routes.is_empty());
}

#[test]
fn route_events_that_matter() {
    let net = |s: &str| -> IpNet { s.parse().unwrap() };
    let main = routes::MAIN_TABLE;
    // Ours, even a host route.
    assert!(route_event_matters(
        main,
        routes::ROUTE_PROTOCOL,
        &net("10.244.1.0/24")
    ));
    assert!(route_event_matters(
        main,
        routes::ROUTE_PROTOCOL,
        &net("10.244.1.5/32")
    ));
    // Someone else's subnet route in main: it may replace or shadow ours.
    assert!(route_event_matters(main, 2, &net("10.244.1.0/24")));
    assert!(route_event_matters(main, 4, &net("fd00::/64")));
    // Pods' host routes and other tables: no pass.
    assert!(!route_event_matters(main, 4, &net("10.244.0.7/32")));
    assert!(!route_event_matters(main, 4, &net("fd00::7/128")));
    assert!(!route_event_matters(
        255,
        routes::ROUTE_PROTOCOL,
        &net("10.244.1.0/24")
    ));
}

/// A dataplane that fails chosen steps.
#[derive(Default)]
struct Failing {
    inner: Fake,
    routes: bool,
    nft: bool,
    conflist: bool,
}

impl Dataplane for Failing {
    fn view(&mut self) -> Result<HostView, DataplaneError> {
        self.inner.view()
    }
    fn apply(&mut self, op: &RouteOp) -> Result<(), DataplaneError> {
        if self.routes {
            return Err(DataplaneError::Netlink {
                what: "replace route".into(),
                source: kindnet_netlink::Error::Io(std::io::Error::from_raw_os_error(
                    libc::ENETUNREACH,
                )),
            });
        }
        self.inner.apply(op)
    }
    fn nft(&mut self, batch: &kindnet_nft::Batch) -> Result<(), DataplaneError> {
        if self.nft {
            return Err(
                kindnet_nft::NftError::Failed("Error: Could not process rule".into()).into(),
            );
        }
        self.inner.nft(batch)
    }
    fn sysctl_get(&mut self, key: &str) -> Option<String> {
        self.inner.sysctl_get(key)
    }
    fn sysctl_set(&mut self, key: &str, value: &str) -> Result<(), DataplaneError> {
        self.inner.sysctl_set(key, value)
    }
    fn read_conflist(&mut self, dir: &std::path::Path) -> Option<String> {
        self.inner.read_conflist(dir)
    }
    fn write_conflist(
        &mut self,
        dir: &std::path::Path,
        content: &str,
    ) -> Result<bool, DataplaneError> {
        if self.conflist {
            return Err(DataplaneError::ConfWrite {
                path: dir.join(cniconf::CONFLIST_NAME),
                source: std::io::Error::from_raw_os_error(libc::EROFS),
            });
        }
        self.inner.write_conflist(dir, content)
    }
    fn solicit(&mut self, oif: u32, arp: &[std::net::Ipv4Addr]) -> Result<(), DataplaneError> {
        self.inner.solicit(oif, arp)
    }
    fn allocations(
        &mut self,
        data_dir: &std::path::Path,
        network: &str,
    ) -> Result<Vec<crate::reclaim::Allocated>, DataplaneError> {
        self.inner.allocations(data_dir, network)
    }
    fn reclaim(
        &mut self,
        data_dir: &std::path::Path,
        network: &str,
        leak: &crate::reclaim::Leak,
    ) -> Result<Vec<IpAddr>, DataplaneError> {
        self.inner.reclaim(data_dir, network, leak)
    }
}

#[test]
fn a_failing_step_is_reported_and_the_others_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let view = Fake::default().view().unwrap();
    let store = synced_store(&[me(), b()]);
    let cfg = settings(dir.path());
    let p = plan::plan(&view, &store, &cfg, &Memory::default(), true);

    let mut dp = Failing {
        routes: true,
        ..Failing::default()
    };
    let rep = apply(&mut dp, &p);
    assert_eq!((rep.replaced, rep.route_errors), (0, 1));
    assert_eq!(
        rep.failed_dsts,
        vec!["10.244.1.0/24".parse::<IpNet>().unwrap()]
    );
    assert!(
        rep.errors[0].contains("replace route") && rep.errors[0].contains("unreachable"),
        "{rep:?}"
    );
    assert!(rep.conflist_written && rep.masquerade_applied, "{rep:?}");

    let mut dp = Failing {
        conflist: true,
        nft: true,
        ..Failing::default()
    };
    let rep = apply(&mut dp, &p);
    assert_eq!(rep.replaced, 1, "routes do not wait for the conflist");
    assert!(!rep.conflist_in_place && rep.masquerade_failed, "{rep:?}");
    assert_eq!(rep.errors.len(), 2, "{rep:?}");
    assert!(rep.errors[0].contains("10-kindnet.conflist"), "{rep:?}");
    assert!(
        rep.errors[1].starts_with("masquerade: nft failed"),
        "{rep:?}"
    );
}

#[test]
fn a_failed_masquerade_is_retried_by_the_next_pass() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Mutex::new(synced_store(&[me(), b()])));
    let mut r = Reconciler::new(
        settings(dir.path()),
        Failing {
            nft: true,
            ..Failing::default()
        },
        store,
        Arc::new(Status::new()),
    );
    let rep = r.pass(true);
    assert!(rep.masquerade_failed);
    let last = r.status.readiness().last_error.unwrap_or_default();
    assert!(
        last.starts_with("masquerade: "),
        "the error is in /readyz: {last}"
    );
    r.dp.nft = false;
    // Not a full pass: the ruleset did not change, but it never landed.
    let rep = r.pass(false);
    assert!(rep.masquerade_applied, "{rep:?}");
    let rep = r.pass(false);
    assert!(rep.changed_nothing(), "{rep:?}");
}

#[test]
fn policy_on_a_bridge_turns_br_netfilter_hand_off_on() {
    let (mut r, _store, _dir) = setup("brnf");
    r.pass(true);
    assert!(
        sysctl::BRIDGE_NF_CALL
            .iter()
            .all(|k| !r.dp.sysctls.contains_key(*k)),
        "not touched without policy on a bridge"
    );
    r.cfg.policy_on_bridge = true;
    // The fake reads "0" for every key it was not given.
    r.pass(false);
    assert!(
        !r.dp.sysctls.contains_key(sysctl::BRIDGE_NF_CALL[0]),
        "only full passes"
    );
    r.pass(true);
    for k in sysctl::BRIDGE_NF_CALL {
        assert_eq!(r.dp.sysctls.get(k).map(String::as_str), Some("1"), "{k}");
    }
}

#[test]
fn an_address_a_running_pod_of_this_node_reports_is_never_reclaimed() {
    use crate::netpol::{Inputs, Kind, Object};
    use crate::reclaim::Allocated;
    let (r, store, _dir) = setup("reclaim-pods");
    store.lock().unwrap().replace_all(&[me()]);
    let pods = Arc::new(Mutex::new(Inputs::default()));
    let mut r = r.with_pods(pods.clone());
    // An allocation with no veth and no route: it looks leaked...
    r.dp.allocated = vec![Allocated {
        ip: "10.244.0.3".parse().unwrap(),
        container_id: "c3".into(),
        ifname: "eth0".into(),
    }];
    let pod = |node: &str, phase: &str| {
        Object::Pod(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "x", "name": "a"},
                "spec": {"nodeName": node},
                "status": {"phase": phase, "podIPs": [{"ip": "10.244.0.3"}]}
            }))
            .unwrap(),
        )
    };
    // ...but a running Pod of this node has that address.
    pods.lock()
        .unwrap()
        .replace_kind(Kind::Pod, vec![pod("me", "Running")]);
    for _ in 0..3 {
        r.pass(true);
        r.clock.advance(Duration::from_millis(60));
    }
    assert!(r.dp.reclaimed.is_empty(), "{:?}", r.dp.reclaimed);
    // The same Pod on another node, or finished, is no evidence.
    for other in [pod("b", "Running"), pod("me", "Succeeded")] {
        pods.lock().unwrap().replace_kind(Kind::Pod, vec![other]);
        r.dp.allocated = vec![Allocated {
            ip: "10.244.0.3".parse().unwrap(),
            container_id: "c3".into(),
            ifname: "eth0".into(),
        }];
        r.dp.reclaimed.clear();
        r.pass(true);
        r.clock.advance(Duration::from_millis(60));
        r.pass(true);
        assert_eq!(r.dp.reclaimed.len(), 1, "{:?}", r.dp.reclaimed);
    }
}

use super::*;
use crate::host::dataplane::DataplaneError;
use crate::host::routes::{InstalledRoute, KernelRoute, Topology};
use crate::inputs::node::tests::raw;

mod failures;
mod masquerading;
mod own_cidrs;
mod peer_routes;
mod pure_plan;
mod reclaim;

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
    allocated: Vec<crate::host::reclaim::Allocated>,
    reclaimed: Vec<crate::host::reclaim::Leak>,
    veths: Vec<(crate::host::reclaim::HostVeth, Option<u32>)>,
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
            topology: Topology::new(foreign.clone(), local).with_neighbours(
                crate::host::routes::Neighbours::new(self.neighbours.clone()),
            ),
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
        crate::host::conffile::write_if_changed(dir, cniconf::CONFLIST_NAME, content).map_err(
            |source| DataplaneError::ConfWrite {
                path: dir.join(cniconf::CONFLIST_NAME),
                source,
            },
        )
    }
    fn solicit(&mut self, oif: u32, arp: &[std::net::Ipv4Addr]) -> Result<(), DataplaneError> {
        self.solicits.push((oif, arp.to_vec()));
        Ok(())
    }
    fn allocations(
        &mut self,
        _data_dir: &std::path::Path,
        _network: &str,
    ) -> Result<Vec<crate::host::reclaim::Allocated>, DataplaneError> {
        Ok(self.allocated.clone())
    }
    fn reclaim(
        &mut self,
        _data_dir: &std::path::Path,
        _network: &str,
        leak: &crate::host::reclaim::Leak,
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
        masquerade::set_elements(&r.dp.nft[0], "pod-sources-v4")
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

/// The `elements = { ... }` of one nft set in a ruleset.
/// The elements of a set of a masquerade batch, as `{ a, b }`.
fn set_elements(b: &kindnet_nft::Batch, set: &str) -> String {
    let e: Vec<String> = masquerade::set_elements(b, set)
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

fn synced_store(nodes: &[crate::inputs::node::RawNode]) -> NodeStore {
    let mut s = NodeStore::new();
    s.replace_all(nodes);
    s
}

fn b() -> crate::inputs::node::RawNode {
    raw("b", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.3")])
}

fn ours(dst: &str, gw: &str) -> InstalledRoute {
    InstalledRoute {
        dst: dst.parse().unwrap(),
        gateway: Some(gw.parse().unwrap()),
        oif: Some(2),
        priority: 0,
    }
}

fn me() -> crate::inputs::node::RawNode {
    raw("me", &["10.244.0.0/24"], &[("InternalIP", "172.18.0.2")])
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

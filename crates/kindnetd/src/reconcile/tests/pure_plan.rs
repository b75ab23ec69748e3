//! The plan alone: host view + node list + settings + memory in, changes out.

use super::*;

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

//! Reclaiming leaked attachments: after the grace period, never a live pod's.

use super::*;

#[test]
fn leaked_attachments_are_reclaimed_after_the_grace_period_live_pods_never() {
    use crate::host::reclaim::{Allocated, HostVeth};
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
fn an_address_a_running_pod_of_this_node_reports_is_never_reclaimed() {
    use crate::host::reclaim::Allocated;
    use crate::policy::{Inputs, Kind, Object};
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

//! Peer routes: what is ours to delete, peers that go, IPv6 pods over an
//! IPv4-only node network, neighbour solicitation.

use super::*;

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

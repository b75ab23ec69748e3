//! Routes from the nodes file: installed, repaired, kept across restarts;
//! next hops across families (an IPv6 link-local one, an IPv6 one for IPv4).

use super::*;

#[test]
fn routes_follow_the_nodes_file_and_survive_restart() {
    require_root!();
    let ns = node_ns();
    let f = Files::new(
        "daemon",
        &[
            me(),
            node(
                "b",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["10.0.0.2", "fd00::2"],
            ),
            node("c", &["10.244.2.0/24", "fd00:10:244:2::/64"], &["10.0.0.3"]),
            node("far", &["10.244.3.0/24"], &["192.168.77.7"]),
        ],
    );
    let nodes_path = &f.nodes;
    // A long resync period: repairs below must come from route events.
    let args = f.args(&["--resync-period", "60s"]);
    let mut d = Daemon::start(&ns, &args, f.dir.path().join("kindnetd.log"));

    let check = |r: Result<(), String>, d: &Daemon| {
        if let Err(e) = r {
            d.fail(e);
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
    let conf = f.conflist();
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
        nodes_path,
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
    std::fs::write(nodes_path, "{ this is not json").unwrap();
    let errors = || metric(&ns, "kindnet_source_errors_total{source=\"file\"}");
    check(
        wait_for(Duration::from_secs(3), || {
            (errors() == Some(1.0)).then_some(())
        })
        .ok_or(format!("source error not counted: {:?}", errors())),
        &d,
    );
    f.write(&[
        me(),
        node(
            "b",
            &["10.244.1.0/240", "fd00:10:244:1::/64"],
            &["10.0.0.99"],
        ),
        node("d", &["10.244.0.0/24"], &["10.0.0.4"]),
        node("far", &["10.244.3.0/24"], &["192.168.77.7"]),
    ]);
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
    // The pass that took the update in has recorded it (readiness names
    // node d) after applying its routes: they are what it decided.
    let overlap = "node d 10.244.0.0/24: overlaps this node's pod CIDR 10.244.0.0/24";
    check(
        wait_for(Duration::from_secs(3), || {
            let b = http_get(&ns, "127.0.0.1:19080", "/readyz")?.1;
            b.contains(overlap).then_some(())
        })
        .ok_or_else(|| format!("readiness never named {overlap:?}")),
        &d,
    );
    assert_eq!(dst_gw(&ns), before, "bad input must not move routes");
    // Back to good data (a restart cannot know a malformed node's last good state).
    f.write(&[
        me(),
        node(
            "b",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &["10.0.0.12", "fd00::12"],
        ),
        node("far", &["10.244.3.0/24"], &["192.168.77.7"]),
    ]);
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
    let d2 = Daemon::start(&ns, &args, f.dir.path().join("kindnetd2.log"));
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
    f.write(&[me()]);
    wait_routes(&ns, &[], Duration::from_secs(3)).unwrap_or_else(|e| d2.fail(e));
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

/// An IPv6 next hop for an IPv4-only peer, the last resort, for real: a peer that publishes only an IPv4
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
    let f = Files::new(
        "linklocal",
        &[
            node("me", &["10.244.0.0/24", "fd00:10:244::/64"], &["10.0.0.1"]),
            node("b", &["10.244.1.0/24", "fd00:10:244:1::/64"], &["10.0.0.2"]),
        ],
    );
    // Nothing known about b beforehand: no ARP or NDP entry.
    assert!(
        a.ip(&["neigh", "show", "dev", "eth0"])
            .unwrap()
            .trim()
            .is_empty()
    );
    let d = Daemon::start(&a, &f.args(&[]), f.dir.path().join("log"));
    let started = std::time::Instant::now();
    wait_routes(
        &a,
        &[
            ("10.244.1.0/24", "10.0.0.2"),
            ("fd00:10:244:1::/64", b_ll.as_str()),
        ],
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| d.fail(e));
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
    let f = Files::new(
        "via-inet6",
        &[
            node("me", &["10.244.0.0/24", "fd00:10:244::/64"], &["fd00::1"]),
            node("b", &["10.244.1.0/24", "fd00:10:244:1::/64"], &["fd00::2"]),
        ],
    );
    let d = Daemon::start(
        &a,
        &f.args(&["--resync-period=200ms"]),
        f.dir.path().join("log"),
    );
    let want = [
        ("10.244.1.0/24", "fd00::2"),
        ("fd00:10:244:1::/64", "fd00::2"),
    ];
    wait_routes(&a, &want, Duration::from_secs(5)).unwrap_or_else(|e| d.fail(e));
    let shown = a.ip(&["-4", "route", "show", "proto", "217"]).unwrap();
    assert!(
        shown.contains("10.244.1.0/24 via inet6 fd00::2 dev eth0"),
        "{shown}"
    );
    // Several resyncs: the route is recognised as correct, never rewritten.
    // (The pass that set both routes records its metrics once it is over.)
    let replaced = || metric(&a, "kindnet_route_changes_total{op=\"replace\"}");
    wait_for(Duration::from_secs(5), || {
        (replaced() >= Some(2.0)).then_some(())
    });
    let changes = replaced();
    assert_eq!(changes, Some(2.0), "{}", d.log());
    wait_passes(&a, 3, Duration::from_secs(10)).unwrap_or_else(|e| d.fail(e));
    assert_eq!(
        metric(&a, "kindnet_route_changes_total{op=\"replace\"}"),
        changes,
        "{}",
        d.log()
    );
}

use super::*;
use crate::inputs::node::Node;

fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> Node {
    Node {
        name: name.into(),
        pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        internal_ips: ips.iter().map(|c| c.parse().unwrap()).collect(),
        external_ips: vec![],
    }
}

fn stored(nodes: Vec<Node>) -> Vec<StoredNode> {
    nodes
        .into_iter()
        .enumerate()
        .map(|(i, node)| StoredNode {
            node,
            rev: i as u64 + 1,
        })
        .collect()
}

/// A host on 172.18.0.0/16 (dev 2) and fc00::/64 (dev 2), default via 172.18.0.1.
fn topo() -> Topology {
    Topology::new(
        vec![
            KernelRoute::test("0.0.0.0/0", Some("172.18.0.1"), 2),
            KernelRoute::test("172.18.0.0/16", None, 2),
            KernelRoute {
                dst: "fc00::/64".parse().unwrap(),
                gateway: None,
                oif: Some(2),
                priority: 256,
            },
            KernelRoute {
                dst: "192.0.2.0/24".parse().unwrap(),
                gateway: None,
                oif: None,
                priority: 0,
            },
        ],
        vec!["172.18.0.2".parse().unwrap(), "fc00::2".parse().unwrap()],
    )
}

fn dst(d: &Desired) -> Vec<(String, String)> {
    d.routes
        .values()
        .map(|r| (r.dst.to_string(), r.gateway.to_string()))
        .collect()
}

fn reasons(d: &Desired) -> Vec<(String, &'static str)> {
    d.skipped
        .iter()
        .map(|s| (s.node.clone(), s.reason.label()))
        .collect()
}

#[test]
fn lookup_is_longest_prefix_match() {
    let t = topo();
    assert_eq!(
        t.lookup("172.18.0.9".parse().unwrap()),
        Reach::OnLink { oif: 2 }
    );
    assert_eq!(
        t.lookup("8.8.8.8".parse().unwrap()),
        Reach::ViaGateway {
            gateway: "172.18.0.1".parse().unwrap()
        }
    );
    assert_eq!(t.lookup("172.18.0.2".parse().unwrap()), Reach::Local);
    assert_eq!(t.lookup("192.0.2.1".parse().unwrap()), Reach::Unreachable);
    assert_eq!(t.lookup("fd00::1".parse().unwrap()), Reach::Unreachable);
}

#[test]
fn one_route_per_peer_cidr_dual_stack() {
    let nodes = stored(vec![
        node(
            "me",
            &["10.244.0.0/24", "fd00:10:244::/64"],
            &["172.18.0.2", "fc00::2"],
        ),
        node(
            "b",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &["172.18.0.3", "fc00::3"],
        ),
        node(
            "c",
            &["10.244.2.0/24", "fd00:10:244:2::/64"],
            &["172.18.0.4", "fc00::4"],
        ),
    ]);
    let d = desired_routes("me", &nodes, &RouteOptions::default(), &topo());
    assert_eq!(
        dst(&d),
        vec![
            ("10.244.1.0/24".into(), "172.18.0.3".into()),
            ("10.244.2.0/24".into(), "172.18.0.4".into()),
            ("fd00:10:244:1::/64".into(), "fc00::3".into()),
            ("fd00:10:244:2::/64".into(), "fc00::4".into()),
        ]
    );
    assert!(d.skipped.is_empty());
    assert_eq!(d.own_cidrs.len(), 2);
    assert!(d.routes.values().all(|r| r.oif == 2));
}

#[test]
fn ipv6_next_hop_from_prefix_or_skipped() {
    let nodes = stored(vec![node(
        "b",
        &["10.244.1.0/24", "fd00:10:244:1::/64"],
        &["172.18.0.3"],
    )]);
    let d = desired_routes("me", &nodes, &RouteOptions::default(), &topo());
    assert_eq!(dst(&d), vec![("10.244.1.0/24".into(), "172.18.0.3".into())]);
    // Without a prefix: the link-local address, which is not known here.
    assert_eq!(reasons(&d), vec![("b".into(), "ipv6-link-local-unknown")]);
    assert_eq!(d.solicit, vec![(2, "172.18.0.3".parse().unwrap())]);

    let opts = RouteOptions {
        ipv6_prefix: Some("fc00::/96".parse().unwrap()),
        ..Default::default()
    };
    let d = desired_routes("me", &nodes, &opts, &topo());
    let v6 = &d.routes[&"fd00:10:244:1::/64".parse::<IpNet>().unwrap()];
    assert_eq!(v6.gateway, "fc00::ac12:3".parse::<IpAddr>().unwrap());
    assert_eq!(v6.gateway, "fc00::172.18.0.3".parse::<IpAddr>().unwrap());
    assert!(d.skipped.is_empty());
}

const MAC_B: [u8; 6] = [0x02, 0x42, 0xac, 0x12, 0, 3];
const MAC_C: [u8; 6] = [0x02, 0x42, 0xac, 0x12, 0, 4];

fn nb(oif: u32, ip: &str, mac: &[u8]) -> (u32, IpAddr, Vec<u8>) {
    (oif, ip.parse().unwrap(), mac.to_vec())
}

#[test]
fn ipv6_next_hop_is_the_link_local_address_with_the_ipv4_neighbours_mac() {
    let nodes = stored(vec![
        node(
            "b",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &["172.18.0.3"],
        ),
        node(
            "c",
            &["10.244.2.0/24", "fd00:10:244:2::/64"],
            &["172.18.0.4"],
        ),
    ]);
    let t = topo().with_neighbours(Neighbours::new([
        nb(2, "172.18.0.3", &MAC_B),
        nb(2, "172.18.0.4", &MAC_C),
        // Not EUI-64 of the MAC: whatever the peer really uses.
        nb(2, "fe80::1234:5678", &MAC_B),
        nb(2, "fe80::c", &MAC_C),
        // A global address with b's MAC is not a link-local next hop.
        nb(2, "fc00::3", &MAC_B),
        // c's MAC on another link does not count.
        nb(7, "fe80::77", &MAC_C),
    ]));
    let d = desired_routes("me", &nodes, &RouteOptions::default(), &t);
    let b6 = &d.routes[&"fd00:10:244:1::/64".parse::<IpNet>().unwrap()];
    assert_eq!(b6.gateway, "fe80::1234:5678".parse::<IpAddr>().unwrap());
    assert_eq!(b6.oif, 2);
    let c6 = &d.routes[&"fd00:10:244:2::/64".parse::<IpNet>().unwrap()];
    assert_eq!(c6.gateway, "fe80::c".parse::<IpAddr>().unwrap());
    assert!(d.skipped.is_empty(), "{:?}", d.skipped);
    assert!(d.solicit.is_empty());
    // A node address of the family always wins.
    let with_v6 = stored(vec![node(
        "b",
        &["10.244.1.0/24", "fd00:10:244:1::/64"],
        &["172.18.0.3", "fc00::3"],
    )]);
    let d = desired_routes("me", &with_v6, &RouteOptions::default(), &t);
    let b6 = &d.routes[&"fd00:10:244:1::/64".parse::<IpNet>().unwrap()];
    assert_eq!(b6.gateway, "fc00::3".parse::<IpAddr>().unwrap());
}

#[test]
fn link_local_is_never_guessed() {
    let nodes = stored(vec![node(
        "b",
        &["10.244.1.0/24", "fd00:10:244:1::/64"],
        &["172.18.0.3"],
    )]);
    let v6dst: IpNet = "fd00:10:244:1::/64".parse().unwrap();
    for (what, entries, want) in [
        ("no ARP entry", vec![], "not in the ARP table"),
        (
            "no IPv6 neighbour with the MAC",
            vec![nb(2, "172.18.0.3", &MAC_B), nb(2, "fe80::c", &MAC_C)],
            "no IPv6 link-local neighbour with its MAC 02:42:ac:12:00:03",
        ),
        (
            "two link-locals with one MAC",
            vec![
                nb(2, "172.18.0.3", &MAC_B),
                nb(2, "fe80::1", &MAC_B),
                nb(2, "fe80::2", &MAC_B),
            ],
            "several IPv6 link-local neighbours",
        ),
    ] {
        let t = topo().with_neighbours(Neighbours::new(entries));
        let d = desired_routes("me", &nodes, &RouteOptions::default(), &t);
        assert!(!d.routes.contains_key(&v6dst), "{what}");
        assert_eq!(d.skipped.len(), 1, "{what}");
        let msg = d.skipped[0].reason.to_string();
        assert!(msg.contains(want), "{what}: {msg}");
        assert_eq!(d.skipped[0].reason.label(), "ipv6-link-local-unknown");
        assert_eq!(
            d.solicit,
            vec![(2, "172.18.0.3".parse().unwrap())],
            "{what}"
        );
    }
    // Not on-link: never solicited, reported as such.
    let far = stored(vec![node("far", &["fd00:10:244:9::/64"], &["10.9.9.9"])]);
    let d = desired_routes("me", &far, &RouteOptions::default(), &topo());
    assert_eq!(reasons(&d), vec![("far".into(), "not-on-link")]);
    assert!(d.solicit.is_empty());
}

#[test]
fn ipv4_pod_cidr_of_an_ipv6_only_node_goes_via_its_ipv6_address() {
    let nodes = stored(vec![
        node("b", &["10.244.1.0/24", "fd00:10:244:1::/64"], &["fc00::3"]),
        // Not on-link over IPv6: skipped.
        node("far", &["10.244.9.0/24"], &["fd99::9"]),
    ]);
    let d = desired_routes("me", &nodes, &RouteOptions::default(), &topo());
    let b4 = &d.routes[&"10.244.1.0/24".parse::<IpNet>().unwrap()];
    assert_eq!(b4.gateway, "fc00::3".parse::<IpAddr>().unwrap());
    assert_eq!(b4.oif, 2);
    let b6 = &d.routes[&"fd00:10:244:1::/64".parse::<IpNet>().unwrap()];
    assert_eq!(b6.gateway, "fc00::3".parse::<IpAddr>().unwrap());
    assert_eq!(reasons(&d), vec![("far".into(), "not-on-link")]);
    // Installed as such, it matches: nothing to do on the next pass.
    let installed: Vec<InstalledRoute> = d
        .routes
        .values()
        .map(|r| InstalledRoute {
            dst: r.dst,
            gateway: Some(r.gateway),
            oif: Some(r.oif),
            priority: default_priority(&r.dst),
        })
        .collect();
    assert!(diff(&d.routes, &installed).is_empty());
}

#[test]
fn external_ip_used_when_no_internal() {
    let mut n = node("b", &["10.244.1.0/24"], &[]);
    n.external_ips = vec!["172.18.0.77".parse().unwrap()];
    let d = desired_routes("me", &stored(vec![n]), &RouteOptions::default(), &topo());
    assert_eq!(
        dst(&d),
        vec![("10.244.1.0/24".into(), "172.18.0.77".into())]
    );
}

#[test]
fn peers_not_on_link_or_local_are_skipped() {
    let nodes = stored(vec![
        node("far", &["10.244.1.0/24"], &["10.9.9.9"]),
        node("blackholed", &["10.244.2.0/24"], &["192.0.2.5"]),
        node("clone", &["10.244.3.0/24"], &["172.18.0.2"]),
        node("flagged", &["10.244.4.0/24"], &["172.18.0.50"]),
        node("self-contained", &["172.18.0.0/24"], &["172.18.0.60"]),
        node("noaddr", &["10.244.6.0/24"], &[]),
        node("nocidr", &[], &["172.18.0.9"]),
    ]);
    let opts = RouteOptions {
        own_ips: vec!["172.18.0.50".parse().unwrap()],
        ..Default::default()
    };
    let d = desired_routes("me", &nodes, &opts, &topo());
    assert!(d.routes.is_empty(), "{:?}", d.routes);
    assert_eq!(
        reasons(&d),
        vec![
            ("far".into(), "not-on-link"),
            ("blackholed".into(), "not-on-link"),
            ("clone".into(), "next-hop-is-local"),
            ("flagged".into(), "next-hop-is-local"),
            ("self-contained".into(), "contains-node-address"),
            ("noaddr".into(), "no-address-of-family"),
        ]
    );
    assert!(d.skipped[0].reason.to_string().contains("via 172.18.0.1"));
}

#[test]
fn overlaps_first_holder_wins_and_own_cidr_is_never_routed() {
    let nodes = stored(vec![
        node("old", &["10.244.1.0/24"], &["172.18.0.3"]),
        node("me", &["10.244.0.0/24"], &["172.18.0.2"]),
        node("dup", &["10.244.1.0/24"], &["172.18.0.4"]),
        node("wide", &["10.244.0.0/16"], &["172.18.0.5"]),
        node("mine", &["10.244.0.0/24"], &["172.18.0.6"]),
        node("inside", &["10.244.1.128/25"], &["172.18.0.7"]),
        node("ok", &["10.245.0.0/24"], &["172.18.0.8"]),
    ]);
    let d = desired_routes("me", &nodes, &RouteOptions::default(), &topo());
    assert_eq!(
        dst(&d),
        vec![
            ("10.244.1.0/24".into(), "172.18.0.3".into()),
            ("10.245.0.0/24".into(), "172.18.0.8".into()),
        ]
    );
    assert_eq!(
        reasons(&d),
        vec![
            ("dup".into(), "overlaps-peer-pod-cidr"),
            ("wide".into(), "overlaps-own-pod-cidr"),
            ("mine".into(), "overlaps-own-pod-cidr"),
            ("inside".into(), "overlaps-peer-pod-cidr"),
        ]
    );
}

/// Node objects are untrusted: whatever a Node claims, a pod CIDR that
/// would capture egress or node traffic is refused, with a reason.
#[test]
fn hostile_pod_cidrs_are_refused() {
    let cluster: Vec<IpNet> = vec![
        "10.244.0.0/16".parse().unwrap(),
        "fd00:10:244::/56".parse().unwrap(),
    ];
    // (claimed CIDR, --pod-subnet set?, expected reason)
    let cases: &[(&str, bool, &str)] = &[
        ("192.0.0.0/2", true, "outside-pod-subnet"),
        ("2000::/3", true, "outside-pod-subnet"),
        ("0.0.0.0/1", true, "outside-pod-subnet"),
        ("::/1", true, "outside-pod-subnet"),
        ("172.18.0.0/17", true, "outside-pod-subnet"),
        ("10.0.0.0/8", true, "outside-pod-subnet"),
        ("10.244.200.0/24", true, "contains-node-address"),
        // Without --pod-subnet the node network still protects itself.
        ("128.0.0.0/1", false, "contains-node-address"),
        ("0.0.0.0/1", false, "contains-node-address"),
        ("172.18.0.0/24", false, "contains-node-address"),
        ("10.9.0.0/16", false, "contains-node-address"),
        ("10.244.200.0/24", false, "contains-node-address"),
        ("fc00::/7", false, "contains-node-address"),
        ("172.18.0.0/31", false, "contains-default-gateway"),
        ("172.18.128.0/17", false, "overlaps-node-network"),
        ("172.18.200.0/24", false, "overlaps-node-network"),
        ("fc00:0:0:0:8000::/65", false, "overlaps-node-network"),
    ];
    for (cidr, with_subnet, want) in cases {
        let nodes = stored(vec![
            node("me", &["10.244.0.0/24"], &["172.18.0.2"]),
            node("far", &[], &["10.9.9.9"]),
            node("odd", &[], &["10.244.200.5"]),
            node("evil", &[cidr], &["172.18.0.66", "fc00::66"]),
        ]);
        let opts = RouteOptions {
            pod_subnet: if *with_subnet {
                cluster.clone()
            } else {
                vec![]
            },
            ..Default::default()
        };
        let d = desired_routes("me", &nodes, &opts, &topo());
        assert!(d.routes.is_empty(), "{cidr}: routed {:?}", d.routes);
        assert_eq!(
            reasons(&d),
            vec![("evil".to_string(), *want)],
            "{cidr} (pod subnet {with_subnet}): {:?}",
            d.skipped
        );
        assert!(!d.skipped[0].reason.to_string().is_empty());
    }
}

#[test]
fn refused_cidrs_hold_no_claim() {
    // "evil" came first and claims half of IPv4 and IPv6; the real peers
    // after it are routed all the same.
    let nodes = stored(vec![
        node("evil", &["0.0.0.0/1", "::/1"], &["172.18.0.66"]),
        node("wide", &["10.0.0.0/8"], &["172.18.0.67"]),
        node(
            "b",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &["172.18.0.3", "fc00::3"],
        ),
    ]);
    let opts = RouteOptions {
        pod_subnet: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ],
        ..Default::default()
    };
    let d = desired_routes("me", &nodes, &opts, &topo());
    assert_eq!(
        dst(&d),
        vec![
            ("10.244.1.0/24".into(), "172.18.0.3".into()),
            ("fd00:10:244:1::/64".into(), "fc00::3".into()),
        ]
    );
    assert_eq!(
        reasons(&d),
        vec![
            ("evil".into(), "outside-pod-subnet"),
            ("evil".into(), "outside-pod-subnet"),
            ("wide".into(), "outside-pod-subnet"),
        ]
    );
}

#[test]
fn pod_cidr_check_is_pure_over_the_node_network() {
    let net = NodeNetwork::new(
        &topo(),
        &["192.168.5.5".parse().unwrap()],
        std::iter::empty(),
    );
    for (cidr, want) in [
        ("10.244.1.0/24", None),
        ("192.168.5.0/24", Some("contains-node-address")),
        ("192.168.4.0/24", None),
        ("172.18.0.0/16", Some("contains-default-gateway")),
        ("172.18.77.0/24", Some("overlaps-node-network")),
        ("fc00::/64", Some("contains-node-address")),
        ("192.0.2.0/25", None), // a blackhole route is not on-link
    ] {
        let got = refuse_pod_cidr(&cidr.parse().unwrap(), &[], &net);
        assert_eq!(got.as_ref().map(SkipReason::label), want, "{cidr}: {got:?}");
    }
}

#[test]
fn a_newcomer_cannot_steal_a_held_cidr() {
    // "aaa" sorts first by name but arrived later (higher revision).
    let mut nodes = stored(vec![
        node("zzz", &["10.244.1.0/24"], &["172.18.0.3"]),
        node("aaa", &["10.244.1.0/24"], &["172.18.0.4"]),
    ]);
    nodes[1].rev = 10;
    let d = desired_routes("me", &nodes, &RouteOptions::default(), &topo());
    assert_eq!(dst(&d), vec![("10.244.1.0/24".into(), "172.18.0.3".into())]);
}

#[test]
fn unknown_own_node_still_routes_peers() {
    let nodes = stored(vec![node("b", &["10.244.1.0/24"], &["172.18.0.3"])]);
    let d = desired_routes("ghost", &nodes, &RouteOptions::default(), &topo());
    assert_eq!(d.routes.len(), 1);
    assert!(d.own_cidrs.is_empty());
}

fn want(dst: &str, gw: &str, oif: u32) -> PeerRoute {
    PeerRoute {
        dst: dst.parse().unwrap(),
        gateway: gw.parse().unwrap(),
        oif,
        node: "n".into(),
    }
}
fn have(dst: &str, gw: &str, oif: u32, priority: u32) -> InstalledRoute {
    InstalledRoute {
        dst: dst.parse().unwrap(),
        gateway: Some(gw.parse().unwrap()),
        oif: Some(oif),
        priority,
    }
}

#[test]
fn diff_leaves_correct_routes_alone() {
    let mut d = BTreeMap::new();
    let w = want("10.244.1.0/24", "172.18.0.3", 2);
    d.insert(w.dst, w);
    let w6 = want("fd00::/64", "fc00::3", 2);
    d.insert(w6.dst, w6);
    let installed = vec![
        have("10.244.1.0/24", "172.18.0.3", 2, 0),
        have("fd00::/64", "fc00::3", 2, 1024),
    ];
    assert!(diff(&d, &installed).is_empty());
}

#[test]
fn diff_adds_replaces_and_deletes() {
    let mut d = BTreeMap::new();
    for w in [
        want("10.244.1.0/24", "172.18.0.3", 2), // changed next hop
        want("10.244.2.0/24", "172.18.0.4", 2), // missing
        want("10.244.3.0/24", "172.18.0.5", 2), // present twice
        want("10.244.4.0/24", "172.18.0.6", 3), // moved link, odd metric too
    ] {
        d.insert(w.dst, w);
    }
    let installed = vec![
        have("10.244.1.0/24", "172.18.0.9", 2, 0),
        have("10.244.3.0/24", "172.18.0.5", 2, 0),
        have("10.244.3.0/24", "172.18.0.5", 2, 50),
        have("10.244.4.0/24", "172.18.0.6", 2, 0),
        have("10.244.4.0/24", "172.18.0.6", 2, 7),
        have("10.244.9.0/24", "172.18.0.99", 2, 0), // stale
    ];
    let ops = diff(&d, &installed);
    assert_eq!(
        ops,
        vec![
            RouteOp::Replace(want("10.244.1.0/24", "172.18.0.3", 2)),
            RouteOp::Replace(want("10.244.2.0/24", "172.18.0.4", 2)),
            RouteOp::Replace(want("10.244.4.0/24", "172.18.0.6", 3)),
            RouteOp::Delete(have("10.244.3.0/24", "172.18.0.5", 2, 50)),
            RouteOp::Delete(have("10.244.4.0/24", "172.18.0.6", 2, 7)),
            RouteOp::Delete(have("10.244.9.0/24", "172.18.0.99", 2, 0)),
        ]
    );
}

#[test]
fn diff_of_nothing_removes_everything_of_ours() {
    let installed = vec![have("10.244.1.0/24", "172.18.0.3", 2, 0)];
    assert_eq!(
        diff(&BTreeMap::new(), &installed),
        vec![RouteOp::Delete(installed[0].clone())]
    );
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the nodes, desired routes never overlap each other
        /// or our own CIDR, and applying the diff to any installed set
        /// yields exactly the desired set.
        #[test]
        fn desired_routes_are_disjoint_and_diff_converges(
            specs in proptest::collection::vec((0u8..4, 0u8..40, 20u8..=26, 0u8..3, 1u8..250), 0..40),
            installed_seed in proptest::collection::vec((0u8..40, 1u8..250, 0u32..3), 0..20),
        ) {
            let mut nodes = Vec::new();
            for (i, (second, third, len, rev, ip)) in specs.iter().enumerate() {
                let net: IpNet = format!("10.{}.{}.0/{}", 244 + second, third, len).parse().unwrap();
                nodes.push(StoredNode {
                    node: Node {
                        name: format!("n{i}"),
                        pod_cidrs: vec![net.trunc()],
                        internal_ips: vec![format!("172.18.1.{ip}").parse().unwrap()],
                        external_ips: vec![],
                    },
                    rev: *rev as u64,
                });
            }
            let d = desired_routes("n0", &nodes, &RouteOptions::default(), &topo());
            let v: Vec<&IpNet> = d.routes.keys().collect();
            for (i, a) in v.iter().enumerate() {
                for b in &v[i + 1..] {
                    prop_assert!(!overlaps(a, b), "{a} overlaps {b}");
                }
                for o in &d.own_cidrs {
                    prop_assert!(!overlaps(a, o));
                }
            }
            // Every peer CIDR is either routed or skipped, never both.
            let total: usize = nodes.iter().filter(|s| s.node.name != "n0").map(|s| s.node.pod_cidrs.len()).sum();
            prop_assert_eq!(d.routes.len() + d.skipped.len(), total);

            let mut kernel: Vec<InstalledRoute> = installed_seed.iter().map(|(t, ip, p)| {
                have(&format!("10.244.{t}.0/24"), &format!("172.18.1.{ip}"), 2, *p)
            }).collect();
            kernel.dedup_by(|a, b| a.dst == b.dst && a.priority == b.priority);
            for op in diff(&d.routes, &kernel) {
                match op {
                    RouteOp::Replace(w) => {
                        let prio = default_priority(&w.dst);
                        kernel.retain(|r| !(r.dst == w.dst && r.priority == prio));
                        kernel.push(InstalledRoute { dst: w.dst, gateway: Some(w.gateway), oif: Some(w.oif), priority: prio });
                    }
                    RouteOp::Delete(r) => kernel.retain(|k| k != &r),
                }
            }
            prop_assert!(diff(&d.routes, &kernel).is_empty());
            prop_assert_eq!(kernel.len(), d.routes.len());
        }
    }
}

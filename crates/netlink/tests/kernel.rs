//! Tests against the real kernel. Each test makes its own network
//! namespace(s) and does all of its work inside them; nothing touches the
//! machine's root namespace. They need root and skip otherwise.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kindnet_netlink::{
    AddrFlags, Family, Handle, Netns, Route, RouteEvent, RouteEvents, RouteFilter, Scope, sysctl,
};
use kindnet_testbed::{Ns, require_root, sh_ok};

/// A throwaway named namespace (the shared test bed's, deleted on drop, also
/// when a test fails), opened.
struct TestNs {
    ns: Netns,
    // Declared last: dropped (the namespace deleted) after `ns` is closed.
    named: Ns,
}

impl TestNs {
    fn new() -> TestNs {
        let named = Ns::new("knl");
        let path = named.path();
        let ns = Netns::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        TestNs { ns, named }
    }

    fn handle(&self) -> Handle {
        Handle::in_netns(&self.ns).unwrap()
    }

    /// `ip -n <ns> ...` output, as an independent view of kernel state.
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.named.name];
        full.extend_from_slice(args);
        sh_ok(&full)
    }
}

/// The preamble of a kernel test: without root it skips (or fails, under
/// `KINDNET_TEST_REQUIRE_ROOT=1`) by returning from the test; else a
/// namespace of the test's own.
macro_rules! test_ns {
    () => {{
        require_root!();
        TestNs::new()
    }};
}

/// [`test_ns!`] and a netlink handle in the namespace.
macro_rules! test_ns_handle {
    () => {{
        let t = test_ns!();
        let h = t.handle();
        (t, h)
    }};
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A veth pair with both ends up inside one namespace, returning the
/// ifindexes. Both ends up means carrier, which IPv6 DAD needs.
fn veth_pair(h: &mut Handle, a: &str, b: &str) -> (u32, u32) {
    h.create_veth(a, b, None, None).unwrap();
    let ia = h.link_by_name(a).unwrap().unwrap().index;
    let ib = h.link_by_name(b).unwrap().unwrap().index;
    h.set_up(ia).unwrap();
    h.set_up(ib).unwrap();
    (ia, ib)
}

#[test]
fn veth_peer_is_created_in_the_other_namespace() {
    let host = test_ns!();
    let pod = TestNs::new();
    let mut hh = host.handle();
    let mut ph = pod.handle();

    hh.create_veth("vethhost0", "eth0", Some(&pod.ns), Some(1400))
        .unwrap();

    let host_end = hh.link_by_name("vethhost0").unwrap().unwrap();
    assert_eq!(host_end.kind.as_deref(), Some("veth"));
    assert_eq!(host_end.mtu, 1400);
    assert!(host_end.link_netnsid.is_some(), "{host_end:?}");
    assert!(hh.link_by_name("eth0").unwrap().is_none());

    let pod_end = ph.link_by_name("eth0").unwrap().unwrap();
    assert_eq!(pod_end.kind.as_deref(), Some("veth"));
    assert_eq!(pod_end.mtu, 1400);
    assert_eq!(host_end.peer_index, Some(pod_end.index));
    assert_eq!(pod_end.peer_index, Some(host_end.index));
    assert!(pod_end.mac.is_some());

    // An alias tags the link; it reads back and can be cleared.
    assert_eq!(host_end.alias, None);
    hh.set_alias(host_end.index, "kindnet net c1 eth0").unwrap();
    let tagged = hh.link_by_name("vethhost0").unwrap().unwrap();
    assert_eq!(tagged.alias.as_deref(), Some("kindnet net c1 eth0"));
    hh.set_alias(host_end.index, "").unwrap();
    assert_eq!(hh.link_by_name("vethhost0").unwrap().unwrap().alias, None);
    assert_eq!(
        ph.link_by_index(pod_end.index).unwrap().unwrap().name,
        "eth0"
    );

    // Creating the same pair again collides.
    let e = hh
        .create_veth("vethhost0", "eth1", Some(&pod.ns), None)
        .unwrap_err();
    assert!(e.is_exists(), "{e}");

    // links() sees it next to loopback.
    let names: Vec<String> = hh.links().unwrap().into_iter().map(|l| l.name).collect();
    assert!(names.contains(&"lo".to_string()) && names.contains(&"vethhost0".to_string()));

    // A pair made locally, one end then moved over.
    hh.create_veth("vethhost1", "tmp1", None, None).unwrap();
    let tmp = hh.link_by_name("tmp1").unwrap().unwrap();
    hh.set_netns(tmp.index, &pod.ns).unwrap();
    assert!(hh.link_by_name("tmp1").unwrap().is_none());
    assert!(ph.link_by_name("tmp1").unwrap().is_some());

    // Deleting one end removes the pair.
    hh.delete_link(host_end.index).unwrap();
    assert!(hh.link_by_name("vethhost0").unwrap().is_none());
    assert!(ph.link_by_name("eth0").unwrap().is_none());
    let e = hh.delete_link(host_end.index).unwrap_err();
    assert!(e.is_not_found(), "{e}");

    // By name, in one request; a second time it is not found.
    ph.link_by_name("tmp1").unwrap().unwrap();
    ph.delete_link_by_name("tmp1").unwrap();
    assert!(ph.link_by_name("tmp1").unwrap().is_none());
    assert!(ph.delete_link_by_name("tmp1").unwrap_err().is_not_found());
}

#[test]
fn veth_host_end_is_born_in_its_group() {
    let host = test_ns!();
    let pod = TestNs::new();
    let mut hh = host.handle();
    let l = hh
        .create_veth_as(&kindnet_netlink::VethSpec {
            name: "vethgrp0",
            peer: "eth0",
            peer_ns: Some(&pod.ns),
            group: Some(27502),
            queues: Some(1),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
    assert_eq!(l.name, "vethgrp0");
    let shown = host.ip(&["-d", "link", "show", "dev", "vethgrp0"]);
    assert!(shown.contains("group 27502"), "{shown}");
    // the pod end keeps the default group; both ends have the queues asked for
    let mut full = vec!["ip", "-n", &pod.named.name];
    full.extend_from_slice(&["-d", "link", "show", "dev", "eth0"]);
    let peer = sh_ok(&full);
    assert!(peer.contains("group default"), "{peer}");
    for end in [&shown, &peer] {
        assert!(
            end.contains("numtxqueues 1 numrxqueues 1"),
            "one queue each way: {end}"
        );
    }
}

#[test]
fn addresses_and_dad() {
    let (_t, mut h) = test_ns_handle!();
    let (a, _b) = veth_pair(&mut h, "va", "vb");

    let v4 = net("10.99.0.1/24");
    h.add_address(a, v4, AddrFlags::default()).unwrap();
    let e = h.add_address(a, v4, AddrFlags::default()).unwrap_err();
    assert!(e.is_exists(), "{e}");
    h.replace_address(a, v4, AddrFlags::default()).unwrap();

    let nodad = net("fd00:99::1/64");
    h.add_address(
        a,
        nodad,
        AddrFlags {
            nodad: true,
            noprefixroute: true,
        },
    )
    .unwrap();
    // Without nodad, DAD runs and the address starts tentative: this is the
    // control that shows the nodad assertion below can fail.
    let dad = net("fd00:98::1/64");
    h.add_address(a, dad, AddrFlags::default()).unwrap();

    let addrs = h.addresses(Some(a)).unwrap();
    assert!(addrs.iter().all(|x| x.index == a));
    let find = |n: IpNet| addrs.iter().find(|x| x.addr == n).cloned();
    assert!(find(v4).is_some(), "{addrs:?}");
    let got = find(nodad).unwrap();
    assert!(!got.is_tentative(), "{got:?}");
    assert_ne!(got.flags & kindnet_netlink::IFA_F_NODAD, 0);
    assert!(find(dad).unwrap().is_tentative(), "{addrs:?}");

    // noprefixroute: no connected route for fd00:99::/64, but one for the
    // address added without it.
    let r6 = h.routes(Family::V6, RouteFilter::default()).unwrap();
    assert!(!r6.iter().any(|r| r.dst == net("fd00:99::/64")), "{r6:?}");
    assert!(r6.iter().any(|r| r.dst == net("fd00:98::/64")), "{r6:?}");

    // All-links listing includes them too.
    assert!(h.addresses(None).unwrap().iter().any(|x| x.addr == v4));

    h.del_address(a, v4).unwrap();
    assert!(!h.addresses(Some(a)).unwrap().iter().any(|x| x.addr == v4));
    let e = h.del_address(a, v4).unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn routes_add_replace_list_delete() {
    let (_t, mut h) = test_ns_handle!();
    let (a, b) = veth_pair(&mut h, "va", "vb");
    h.add_address(a, net("10.99.0.1/24"), AddrFlags::default())
        .unwrap();
    h.add_address(
        a,
        net("fd00:99::1/64"),
        AddrFlags {
            nodad: true,
            ..Default::default()
        },
    )
    .unwrap();

    const PROTO: u8 = 99;
    let own = RouteFilter {
        protocol: Some(PROTO),
        ..Default::default()
    };
    let mut r = Route::new(net("10.200.0.0/24"));
    r.gateway = Some(ip("10.99.0.2"));
    r.protocol = PROTO;
    h.add_route(&r).unwrap();
    let e = h.add_route(&r).unwrap_err();
    assert!(e.is_exists(), "{e}");
    assert!(e.to_string().contains("10.200.0.0/24"), "{e}");

    let got = h.routes(Family::V4, own).unwrap();
    let mut want = r.clone();
    want.oif = Some(a);
    assert_eq!(got, vec![want.clone()]);
    // Kernel routes are there but filtered out by protocol.
    assert!(
        h.routes(Family::V4, RouteFilter::default())
            .unwrap()
            .iter()
            .any(|x| x.protocol == kindnet_netlink::RTPROT_KERNEL && x.scope == Scope::Link)
    );

    // Replace swaps the gateway in place.
    r.gateway = Some(ip("10.99.0.3"));
    h.replace_route(&r).unwrap();
    let got = h.routes(Family::V4, own).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].gateway, Some(ip("10.99.0.3")));

    // A direct route on the other link, with a metric, in another table.
    let mut direct = Route::new(net("10.201.0.0/16"));
    direct.oif = Some(b);
    direct.scope = Scope::Link;
    direct.protocol = PROTO;
    direct.table = 1000;
    direct.priority = Some(50);
    h.add_route(&direct).unwrap();
    let in_table = h
        .routes(
            Family::V4,
            RouteFilter {
                table: Some(1000),
                ..own
            },
        )
        .unwrap();
    assert_eq!(in_table, vec![direct.clone()]);
    let on_b = h
        .routes(
            Family::V4,
            RouteFilter {
                oif: Some(b),
                ..own
            },
        )
        .unwrap();
    assert_eq!(on_b, vec![direct.clone()]);

    // Onlink gateway outside any local subnet.
    let mut onlink = Route::new(net("10.202.0.0/24"));
    onlink.gateway = Some(ip("192.0.2.1"));
    onlink.oif = Some(a);
    onlink.onlink = true;
    onlink.protocol = PROTO;
    h.add_route(&onlink).unwrap();
    assert!(h.routes(Family::V4, own).unwrap().contains(&onlink));

    // IPv6.
    let mut r6 = Route::new(net("fd00:200::/64"));
    r6.gateway = Some(ip("fd00:99::2"));
    r6.oif = Some(a);
    r6.protocol = PROTO;
    h.add_route(&r6).unwrap();
    let got6 = h.routes(Family::V6, own).unwrap();
    assert_eq!(got6.len(), 1, "{got6:?}");
    assert_eq!(
        (got6[0].dst, got6[0].gateway, got6[0].oif),
        (r6.dst, r6.gateway, r6.oif)
    );
    h.del_route(&got6[0]).unwrap();
    assert!(h.routes(Family::V6, own).unwrap().is_empty());

    // Delete; a second delete reports not-found.
    h.del_route(&r).unwrap();
    h.del_route(&direct).unwrap();
    h.del_route(&onlink).unwrap();
    assert!(h.routes(Family::V4, own).unwrap().is_empty());
    let e = h.del_route(&r).unwrap_err();
    assert!(e.is_not_found(), "{e}");

    // Gateway that is not reachable: the kernel's reason is in the error.
    let mut bad = Route::new(net("10.203.0.0/24"));
    bad.gateway = Some(ip("192.0.2.1"));
    let e = h.add_route(&bad).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENETUNREACH), "{e}");
}

#[test]
fn large_route_dump_spans_many_datagrams() {
    let (_t, mut h) = test_ns_handle!();
    let (a, _) = veth_pair(&mut h, "va", "vb");
    const N: u32 = 5000;
    let start = Instant::now();
    for i in 0..N {
        let mut r = Route::new(
            IpNet::new(IpAddr::from([10, 100 + (i >> 8) as u8, i as u8, 0]), 24).unwrap(),
        );
        r.oif = Some(a);
        r.scope = Scope::Link;
        r.protocol = 77;
        h.add_route(&r).unwrap();
    }
    let added = start.elapsed();
    let start = Instant::now();
    let got = h
        .routes(
            Family::V4,
            RouteFilter {
                protocol: Some(77),
                ..Default::default()
            },
        )
        .unwrap();
    eprintln!("{N} routes: add {:?}, dump {:?}", added, start.elapsed());
    assert_eq!(got.len(), N as usize);
    assert!(
        got.iter()
            .all(|r| r.oif == Some(a) && r.scope == Scope::Link)
    );
}

#[test]
fn bridge_master_hairpin_promisc_rename_delete() {
    let (t, mut h) = test_ns_handle!();
    h.create_bridge("kbr0", Some(1400)).unwrap();
    let e = h.create_bridge("kbr0", None).unwrap_err();
    assert!(e.is_exists(), "{e}");
    let br = h.link_by_name("kbr0").unwrap().unwrap();
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!(br.mtu, 1400);
    assert!(!br.up);

    let (a, _b) = veth_pair(&mut h, "va", "vb");
    h.set_master(a, br.index).unwrap();
    assert_eq!(h.link_by_index(a).unwrap().unwrap().master, Some(br.index));

    assert!(!t.ip(&["-d", "link", "show", "va"]).contains("hairpin on"));
    h.set_bridge_port_hairpin(a, true).unwrap();
    assert!(t.ip(&["-d", "link", "show", "va"]).contains("hairpin on"));
    h.set_bridge_port_hairpin(a, false).unwrap();
    assert!(t.ip(&["-d", "link", "show", "va"]).contains("hairpin off"));

    h.set_promisc(br.index, true).unwrap();
    assert!(t.ip(&["link", "show", "kbr0"]).contains("PROMISC"));
    h.set_promisc(br.index, false).unwrap();
    assert!(!t.ip(&["link", "show", "kbr0"]).contains("PROMISC"));

    h.set_up(br.index).unwrap();
    assert!(h.link_by_index(br.index).unwrap().unwrap().up);

    h.set_master(a, 0).unwrap();
    assert_eq!(h.link_by_index(a).unwrap().unwrap().master, None);

    // Rename needs the link down.
    h.set_down(a).unwrap();
    h.set_mtu(a, 1300).unwrap();
    h.set_name(a, "va-renamed").unwrap();
    let l = h.link_by_index(a).unwrap().unwrap();
    assert_eq!((l.name.as_str(), l.mtu, l.up), ("va-renamed", 1300, false));
    assert!(h.link_by_name("va").unwrap().is_none());

    h.delete_link(br.index).unwrap();
    assert!(h.link_by_index(br.index).unwrap().is_none());
    let e = h.set_up(br.index).unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn enter_switches_and_restores_the_calling_thread() {
    let t = test_ns!();
    // A dedicated thread, so the harness's threads are never moved.
    std::thread::spawn(move || {
        let before = Netns::current().unwrap();
        assert!(!before.is_same(&t.ns).unwrap());
        let inside =
            t.ns.enter(|| Netns::current().unwrap().is_same(&t.ns).unwrap())
                .unwrap();
        assert!(inside);
        assert!(Netns::current().unwrap().is_same(&before).unwrap());

        // Also restored when the closure panics.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            t.ns.enter(|| panic!("boom")).unwrap();
        }));
        assert!(r.is_err());
        assert!(Netns::current().unwrap().is_same(&before).unwrap());

        // run() never moves the caller.
        let in_run =
            t.ns.run(|| Netns::current().unwrap().is_same(&t.ns).unwrap())
                .unwrap();
        assert!(in_run);
        assert!(Netns::current().unwrap().is_same(&before).unwrap());
    })
    .join()
    .unwrap();
}

#[test]
fn sysctl_follows_the_namespace() {
    let a = test_ns!();
    let b = TestNs::new();
    let key = "net/ipv6/conf/default/accept_dad";
    a.ns.run(|| sysctl::set(key, "0")).unwrap().unwrap();
    assert_eq!(a.ns.run(|| sysctl::get(key)).unwrap().unwrap(), "0");
    // A fresh namespace still has the kernel default.
    assert_ne!(b.ns.run(|| sysctl::get(key)).unwrap().unwrap(), "0");
}

#[test]
fn route_events_see_add_and_delete() {
    let (t, mut h) = test_ns_handle!();
    let (a, _) = veth_pair(&mut h, "va", "vb");
    let mut ev = RouteEvents::in_netns(&t.ns).unwrap();

    // Drain whatever the veth setup produced, then nothing happens: the
    // timeout returns empty, and not early.
    while !ev
        .next(Some(Duration::from_millis(100)))
        .unwrap()
        .is_empty()
    {}
    let start = Instant::now();
    assert!(ev.next(Some(Duration::from_millis(50))).unwrap().is_empty());
    assert!(start.elapsed() >= Duration::from_millis(50));

    let mut r = Route::new(net("10.210.0.0/24"));
    r.oif = Some(a);
    r.scope = Scope::Link;
    r.protocol = 88;
    h.add_route(&r).unwrap();
    let wait_for = |ev: &mut RouteEvents, want: &RouteEvent| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if ev
                .next(Some(Duration::from_millis(500)))
                .unwrap()
                .contains(want)
            {
                return true;
            }
        }
        false
    };
    assert!(wait_for(&mut ev, &RouteEvent::Added(r.clone())));
    h.del_route(&r).unwrap();
    assert!(wait_for(&mut ev, &RouteEvent::Deleted(r.clone())));

    let mut r6 = Route::new(net("fd00:210::/64"));
    r6.oif = Some(a);
    r6.protocol = 88;
    h.add_route(&r6).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        seen = ev
            .next(Some(Duration::from_millis(500)))
            .unwrap()
            .iter()
            .any(|e| matches!(e, RouteEvent::Added(x) if x.dst == r6.dst && x.protocol == 88));
    }
    assert!(seen);
}

#[test]
fn missing_netns_is_not_found() {
    let e = Netns::open(format!("/var/run/netns/knl-missing-{}", std::process::id())).unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn conntrack_entries_are_deleted_by_protocol_and_destination_port() {
    let t = test_ns!();
    let ct = |args: &[&str]| {
        let mut full = vec!["ip", "netns", "exec", &t.named.name, "conntrack"];
        full.extend_from_slice(args);
        kindnet_testbed::sh(&full)
    };
    for (src, dst, proto, dport) in [
        ("10.1.0.1", "10.1.0.2", "udp", "5353"),
        ("fd00::1", "fd00::2", "udp", "5353"),
        ("10.1.0.1", "10.1.0.2", "udp", "53"),
        ("10.1.0.1", "10.1.0.2", "tcp", "5353"),
        ("10.1.0.1", "10.1.0.2", "udp", "5060"),
    ] {
        let mut args = vec![
            "-I", "-p", proto, "-s", src, "-d", dst, "--sport", "40000", "--dport", dport, "-t",
            "120",
        ];
        if proto == "tcp" {
            args.extend(["--state", "ESTABLISHED"]);
        }
        let o = ct(&args);
        assert!(
            o.status.success(),
            "conntrack -I: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let n =
        t.ns.run(|| {
            kindnet_netlink::conntrack::Conntrack::open().and_then(|mut c| {
                c.delete_by_dport(kindnet_netlink::conntrack::CtProto::Udp, &[5353, 5060])
            })
        })
        .unwrap()
        .unwrap();
    assert_eq!(
        n, 3,
        "the UDP 5353 entries of both families and UDP 5060, in one dump"
    );
    let left = String::from_utf8_lossy(&ct(&["-L", "-f", "ipv4"]).stdout).to_string()
        + &String::from_utf8_lossy(&ct(&["-L", "-f", "ipv6"]).stdout);
    assert!(left.contains("dport=53 "), "{left}");
    assert!(
        left.contains("tcp") && left.contains("dport=5353"),
        "{left}"
    );
    assert!(!left.contains("fd00::1"), "{left}");
    assert!(!left.contains("dport=5060"), "{left}");
    // nothing more to delete: 0, no error
    let again =
        t.ns.run(|| {
            kindnet_netlink::conntrack::Conntrack::open().and_then(|mut c| {
                c.delete_by_dport(kindnet_netlink::conntrack::CtProto::Udp, &[5353])
            })
        })
        .unwrap()
        .unwrap();
    assert_eq!(again, 0);
}

#[test]
fn nf_tables_table_and_chain_existence_over_netlink() {
    use kindnet_netlink::nftables::{ChainState, NfTables};
    let t = test_ns!();
    let state = |chain: &str| {
        let chain = chain.to_string();
        t.ns.run(move || NfTables::open().and_then(|mut n| n.chain_state("kn-test", &chain)))
            .unwrap()
            .unwrap()
    };
    assert_eq!(state("c1"), ChainState::NoTable);
    sh_ok(&[
        "ip",
        "netns",
        "exec",
        &t.named.name,
        "nft",
        "add",
        "table",
        "inet",
        "kn-test",
    ]);
    assert_eq!(state("c1"), ChainState::NoChain);
    sh_ok(&[
        "ip",
        "netns",
        "exec",
        &t.named.name,
        "nft",
        "add",
        "chain",
        "inet",
        "kn-test",
        "c1",
    ]);
    assert_eq!(state("c1"), ChainState::Present);
    assert_eq!(state("c2"), ChainState::NoChain);
    let has =
        t.ns.run(|| NfTables::open().and_then(|mut n| n.has_table("kn-test")))
            .unwrap()
            .unwrap();
    assert!(has);
}

#[test]
fn route_get_answers_as_ip_route_get() {
    use kindnet_netlink::{RouteKind, RouteQuery};
    let (t, mut h) = test_ns_handle!();
    let (ia, ib) = veth_pair(&mut h, "rga", "rgb");
    h.add_address(ia, net("10.0.0.1/24"), AddrFlags::default())
        .unwrap();
    h.add_address(ib, net("10.1.0.1/24"), AddrFlags::default())
        .unwrap();
    h.add_address(
        ia,
        net("fd00:a::1/64"),
        AddrFlags {
            nodad: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut r = Route::new(net("10.9.0.0/16"));
    r.gateway = Some(ip("10.0.0.2"));
    r.protocol = 217;
    h.add_route(&r).unwrap();

    // A packet this host sends: resolved gateway, device and source.
    let a = h.route_get(&RouteQuery::to(ip("10.9.1.1"))).unwrap();
    assert_eq!(a.kind, RouteKind::Unicast);
    assert_eq!(a.gateway, Some(ip("10.0.0.2")));
    assert_eq!(a.oif, Some(ia));
    assert_eq!(a.src, Some(ip("10.0.0.1")));
    assert_eq!(a.table, 254);
    let want = t.ip(&["route", "get", "10.9.1.1"]);
    assert!(
        want.contains("via 10.0.0.2") && want.contains("src 10.0.0.1"),
        "{want}"
    );

    // fibmatch: the route that matched, with its protocol.
    let m = h
        .route_get(&RouteQuery {
            fib_match: true,
            ..RouteQuery::to(ip("10.9.1.1"))
        })
        .unwrap();
    assert_eq!(m.dst, net("10.9.0.0/16"));
    assert_eq!(m.protocol, 217);

    // Own address: local; no route: the kernel's errno.
    let l = h.route_get(&RouteQuery::to(ip("10.0.0.1"))).unwrap();
    assert_eq!(l.kind, RouteKind::Local);
    let e = h.route_get(&RouteQuery::to(ip("192.0.2.1"))).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENETUNREACH), "{e}");
    let v6 = h.route_get(&RouteQuery::to(ip("fd00:a::5"))).unwrap();
    assert_eq!(v6.oif, Some(ia));

    // A forwarded packet (iif): needs forwarding on, in this namespace only.
    t.ns.run(|| sysctl::set("net/ipv4/ip_forward", "1"))
        .unwrap()
        .unwrap();
    let fwd = RouteQuery {
        src: Some(ip("10.1.0.5")),
        iif: Some(ib),
        ..RouteQuery::to(ip("10.9.1.1"))
    };
    let f = h.route_get(&fwd).unwrap();
    assert_eq!(
        (f.gateway, f.oif, f.iif),
        (Some(ip("10.0.0.2")), Some(ia), Some(ib))
    );
    // A source with no way back fails reverse-path filtering when strict.
    t.ns.run(|| sysctl::set("net/ipv4/conf/all/rp_filter", "1"))
        .unwrap()
        .unwrap();
    let spoofed = RouteQuery {
        src: Some(ip("10.0.0.7")),
        ..fwd
    };
    assert!(h.route_get(&spoofed).is_err());
}

#[test]
fn neighbours_are_listed_with_their_state() {
    let (t, mut h) = test_ns_handle!();
    let (ia, _) = veth_pair(&mut h, "nba", "nbb");
    h.add_address(ia, net("10.0.0.1/24"), AddrFlags::default())
        .unwrap();
    t.ip(&[
        "neigh",
        "add",
        "10.0.0.9",
        "lladdr",
        "02:00:00:00:00:09",
        "dev",
        "nba",
        "nud",
        "permanent",
    ]);
    let n = h.neighbours(Family::V4).unwrap();
    let e = n.iter().find(|n| n.addr == ip("10.0.0.9")).expect("entry");
    assert_eq!(e.index, ia);
    assert!(e.is_resolved());
    assert_eq!(e.state_name(), "PERMANENT");
    assert_eq!(e.lladdr.as_deref(), Some(&[2, 0, 0, 0, 0, 9][..]));
}

/// An IPv4 route whose next hop is an IPv6 address (RTA_VIA): added,
/// listed back with its IPv6 gateway, replaced in place, deleted.
#[test]
fn ipv4_route_via_an_ipv6_next_hop() {
    let (t, mut h) = test_ns_handle!();
    let (a, _) = veth_pair(&mut h, "via0", "via1");
    let nodad = AddrFlags {
        nodad: true,
        noprefixroute: false,
    };
    h.add_address(a, net("fd00:5::1/64"), nodad).unwrap();

    let mut r = Route::new(net("10.244.2.0/24"));
    r.gateway = Some(ip("fd00:5::3"));
    r.oif = Some(a);
    r.protocol = 217;
    h.replace_route(&r).unwrap();
    let shown = t.ip(&["-4", "route", "show", "proto", "217"]);
    assert!(
        shown.contains("10.244.2.0/24 via inet6 fd00:5::3 dev via0"),
        "{shown}"
    );
    let listed = h
        .routes(
            Family::V4,
            RouteFilter {
                protocol: Some(217),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].dst, net("10.244.2.0/24"));
    assert_eq!(listed[0].gateway, Some(ip("fd00:5::3")));
    assert_eq!(listed[0].oif, Some(a));

    // Replaced in place by another IPv6 next hop, then by an IPv4 one.
    r.gateway = Some(ip("fd00:5::4"));
    h.replace_route(&r).unwrap();
    assert!(t.ip(&["-4", "route"]).contains("via inet6 fd00:5::4"));
    h.add_address(a, net("10.0.0.1/24"), AddrFlags::default())
        .unwrap();
    r.gateway = Some(ip("10.0.0.4"));
    h.replace_route(&r).unwrap();
    let shown = t.ip(&["-4", "route", "show", "proto", "217"]);
    assert!(
        shown.contains("10.244.2.0/24 via 10.0.0.4 dev via0"),
        "{shown}"
    );
    r.gateway = Some(ip("fd00:5::3"));
    h.replace_route(&r).unwrap();
    h.del_route(&r).unwrap();
    assert!(
        t.ip(&["-4", "route", "show", "proto", "217"])
            .trim()
            .is_empty()
    );
    assert!(h.del_route(&r).unwrap_err().is_not_found());

    // The reverse does not exist in the kernel: refused before sending.
    let mut bad = Route::new(net("fd00:10::/64"));
    bad.gateway = Some(ip("10.0.0.4"));
    assert!(h.replace_route(&bad).is_err());
}

#[test]
fn a_batch_reports_a_failure_anywhere_in_it_and_applies_the_rest() {
    use kindnet_netlink::Batch;
    let (_t, mut h) = test_ns_handle!();
    let (a, _b) = veth_pair(&mut h, "va", "vb");
    let (x, y) = (net("10.98.0.1/24"), net("10.98.1.1/24"));
    h.add_address(a, x, AddrFlags::default()).unwrap();
    // Only the last request asks for an ACK: a failure before it (no such
    // link) must still be read, and the tolerated EEXIST must not count.
    let mut b = Batch::new();
    b.ensure_address(999_999, y, AddrFlags::default());
    b.ensure_address(a, x, AddrFlags::default());
    b.ensure_address(a, y, AddrFlags::default());
    let e = h.apply(b).unwrap_err();
    assert!(
        e.to_string().contains("999999"),
        "the first failure, named: {e}"
    );
    let addrs: Vec<IpNet> = h
        .addresses(Some(a))
        .unwrap()
        .iter()
        .map(|x| x.addr)
        .collect();
    assert!(
        addrs.contains(&y),
        "the request after the failure was applied: {addrs:?}"
    );
    // A batch that fails only in its middle fails too.
    let mut b = Batch::new();
    b.ensure_address(a, x, AddrFlags::default());
    b.ensure_address(999_998, y, AddrFlags::default());
    b.set_up(a);
    assert!(h.apply(b).is_err());
    // and the handle goes on: the next batch succeeds and is applied
    let z = net("10.98.2.1/24");
    let mut b = Batch::new();
    b.ensure_address(a, z, AddrFlags::default());
    b.set_up(a);
    h.apply(b).unwrap();
    assert!(h.addresses(Some(a)).unwrap().iter().any(|x| x.addr == z));
}

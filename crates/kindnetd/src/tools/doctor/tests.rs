use super::*;
use crate::host::routes::{InstalledRoute, KernelRoute, Topology};
use crate::inputs::node::tests::raw;
use kindnet_netlink::NUD_REACHABLE;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"kindnet","plugins":[{"type":"kindnet","mtu":1500,
    "ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]]}}]}"#;

/// node1 (172.18.0.2 on eth0, index 2, MTU 1500) with a route to node2's
/// 10.244.2.0/24, everything in order.
fn healthy() -> DoctorView {
    let foreign = vec![
        KernelRoute::test("0.0.0.0/0", Some("172.18.0.1"), 2),
        KernelRoute::test("172.18.0.0/16", None, 2),
        KernelRoute::test("10.244.1.2/32", None, 5),
    ];
    let host = HostView {
        topology: Topology::new(foreign.clone(), vec![ip("172.18.0.2"), ip("10.244.1.1")]),
        ours: vec![InstalledRoute {
            dst: "10.244.2.0/24".parse().unwrap(),
            gateway: Some(ip("172.18.0.3")),
            oif: Some(2),
            priority: 0,
        }],
        foreign,
        link_mtus: [(2, 1500), (5, 1500)].into_iter().collect(),
        link_names: [(2, "eth0".to_string()), (5, "veth0a1b2c3d".to_string())]
            .into_iter()
            .collect(),
        addr_links: vec![(ip("172.18.0.2"), 2), (ip("10.244.1.1"), 5)],
        ra_default_oifs: vec![],
        veths: vec![],
        sysctls: None,
    };
    let mut store = NodeStore::new();
    store.replace_all(&[
        raw("node1", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.2")]),
        raw("node2", &["10.244.2.0/24"], &[("InternalIP", "172.18.0.3")]),
    ]);
    DoctorView {
        inputs: DoctorInputs {
            node_name: "node1".into(),
            pod_subnet: vec!["10.244.0.0/16".parse().unwrap()],
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dir: "/opt/cni/bin".into(),
            ipam_data_dir: "/run/cni-ipam-state".into(),
            ..Default::default()
        },
        sysctls: [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/eth0/rp_filter", "2"),
            ("net/ipv6/conf/all/forwarding", "1"),
            ("net/ipv6/conf/all/disable_ipv6", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        host: Some(host),
        host_error: None,
        links: vec![
            LinkInfo {
                index: 2,
                name: "eth0".into(),
                mtu: 1500,
                kind: Some("veth".into()),
            },
            LinkInfo {
                index: 5,
                name: "veth0a1b2c3d".into(),
                mtu: 1500,
                kind: Some("veth".into()),
            },
        ],
        neighbours: vec![Neighbour {
            addr: ip("172.18.0.3"),
            index: 2,
            state: NUD_REACHABLE,
            lladdr: Some(vec![2, 0, 0, 0, 0, 3]),
        }],
        nft: vec![("maps".into(), None)],
        nft_tables: vec![
            (
                crate::host::masquerade::TABLE_NAME.into(),
                Ok(Some(kindnet_nft::TableFlags {
                    owner: true,
                    persist: true,
                })),
            ),
            (kindnet_netpol::TABLE.into(), Ok(Some(Default::default()))),
        ],
        conf_files: Ok(vec![cniconf::CONFLIST_NAME.into()]),
        conflist: Some(Ok(CONFLIST.into())),
        plugins: vec![
            ("kindnet".into(), Plugin::Present),
            ("host-local".into(), Plugin::Present),
        ],
        cni_version: Ok("kindnet-cni 0.1.0\n".into()),
        ipam_writable: Ok(()),
        ipam_used: vec![ip("10.244.1.2")],
        nodes: Some(Ok(store.iter().cloned().collect())),
    }
}

fn find<'a>(c: &'a [Check], id: &str) -> &'a Check {
    c.iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no {id} in {c:?}"))
}

#[test]
fn a_healthy_node_passes_everything() {
    let c = checks(&healthy());
    assert_eq!(worst(&c), Level::Pass, "{}", render("node1", &c));
    assert!(
        find(&c, "peer node2")
            .message
            .contains("route installed (proto 217), neighbour REACHABLE")
    );
    assert!(
        find(&c, "ipam")
            .message
            .contains("10.244.1.0/24: 1 of 253 used")
    );
    assert!(readyz_lines(&c).is_empty());
    // IPv4-only cluster: no IPv6 forwarding check
    assert!(c.iter().all(|c| c.id != "forwarding-ipv6"));
}

#[test]
fn sysctl_problems() {
    let mut v = healthy();
    v.sysctls.insert("net/ipv4/ip_forward".into(), "0".into());
    v.sysctls
        .insert("net/ipv4/conf/all/rp_filter".into(), "1".into());
    let c = checks(&v);
    assert_eq!(find(&c, "forwarding-ipv4").level, Level::Fail);
    let rp = find(&c, "rp-filter");
    assert_eq!(rp.level, Level::Warn);
    assert!(
        rp.message.contains("net.ipv4.conf.all.rp_filter = 1"),
        "{}",
        rp.message
    );
    // dual-stack cluster on a host without IPv6
    let mut v = healthy();
    v.inputs
        .pod_subnet
        .push("fd00:10:244::/56".parse().unwrap());
    v.sysctls.retain(|k, _| !k.starts_with("net/ipv6"));
    let c = checks(&v);
    assert_eq!(find(&c, "ipv6-disabled").level, Level::Fail);
    assert!(find(&c, "ipv6-disabled").gates_readiness);
    // forwarding on, an uplink relying on RAs with accept_ra=1
    let mut v = healthy();
    if let Some(h) = v.host.as_mut() {
        h.ra_default_oifs = vec![2];
    }
    v.sysctls
        .insert("net/ipv6/conf/eth0/accept_ra".into(), "1".into());
    let c = checks(&v);
    assert_eq!(find(&c, "accept-ra").level, Level::Fail);
    assert!(
        find(&c, "accept-ra")
            .fix
            .as_deref()
            .unwrap()
            .contains("eth0.accept_ra=2")
    );
}

#[test]
fn table_flags_in_effect_are_reported() {
    let v = healthy();
    let c = find(&checks(&v), "nft-table-flags").clone();
    assert_eq!(c.level, Level::Pass, "{c:?}");
    assert!(c.message.contains("kindnet-masq: owner,persist"), "{c:?}");
    assert!(c.message.contains("kindnet-netpol: no flags"), "{c:?}");
    let mut v = healthy();
    v.nft_tables[0].1 = Ok(Some(kindnet_nft::TableFlags::default()));
    let c = find(&checks(&v), "nft-table-flags").clone();
    assert_eq!(c.level, Level::Warn, "{c:?}");
    assert!(c.message.contains("kindnet-masq: no flags"), "{c:?}");
    v.nft_tables.clear();
    assert_eq!(find(&checks(&v), "nft-table-flags").level, Level::Warn);
}

#[test]
fn nft_and_mtu() {
    let mut v = healthy();
    v.nft = vec![(
        "masquerade".into(),
        Some("Could not process rule: No such file or directory".into()),
    )];
    let c = checks(&v);
    assert_eq!(find(&c, "nftables").level, Level::Fail);
    assert!(
        find(&c, "nftables")
            .message
            .contains("masquerade: Could not")
    );

    let mut v = healthy();
    v.links[0].mtu = 1400;
    let c = checks(&v);
    let m = find(&c, "mtu");
    assert_eq!(m.level, Level::Fail);
    assert!(
        m.message
            .contains("pod MTU 1500 (10-kindnet.conflist) is larger than eth0's MTU 1400"),
        "{}",
        m.message
    );
    assert!(m.message.contains("veth0a1b2c3d (1500)"));
    assert!(!m.gates_readiness);
    v.links[0].mtu = 9000;
    assert_eq!(find(&checks(&v), "mtu").level, Level::Warn);
}

#[test]
fn peers_say_why_they_are_not_routed() {
    let mut v = healthy();
    let mut store = NodeStore::new();
    store.replace_all(&[
        raw("node1", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.2")]),
        raw("node2", &["10.244.2.0/24"], &[("InternalIP", "172.19.0.3")]),
    ]);
    v.nodes = Some(Ok(store.iter().cloned().collect()));
    let c = checks(&v);
    let p = find(&c, "peer node2");
    assert_eq!(p.level, Level::Fail);
    assert!(
        p.message
            .contains("not routed: next hop 172.19.0.3 is not on-link (reached via 172.18.0.1)"),
        "{}",
        p.message
    );
    assert!(p.fix.as_deref().unwrap().contains("one L2 segment"));
    // route missing, neighbour failed
    let mut v = healthy();
    if let Some(h) = v.host.as_mut() {
        h.ours.clear();
    }
    v.neighbours[0].state = kindnet_netlink::NUD_FAILED;
    v.neighbours[0].lladdr = None;
    let p = find(&checks(&v), "peer node2").clone();
    assert!(
        p.message.contains("route NOT installed") && p.message.contains("neighbour FAILED"),
        "{}",
        p.message
    );
    // no node list
    let mut v = healthy();
    v.nodes = None;
    assert_eq!(find(&checks(&v), "peers").level, Level::Warn);
}

#[test]
fn policy_on_a_bridge_needs_br_netfilter() {
    let mut v = healthy();
    assert!(
        checks(&v).iter().all(|c| c.id != "bridge-netfilter"),
        "only asked for with policy on a bridge"
    );
    v.inputs.policy_on_bridge = true;
    let c = checks(&v);
    let b = find(&c, "bridge-netfilter");
    assert_eq!(b.level, Level::Fail);
    assert!(
        b.message.starts_with("br_netfilter is not loaded"),
        "{}",
        b.message
    );
    assert!(b.gates_readiness);
    for k in sysctl::BRIDGE_NF_CALL {
        v.sysctls.insert(k.into(), "1".into());
    }
    v.sysctls
        .insert(sysctl::BRIDGE_NF_CALL_IP6TABLES.into(), "0".into());
    let c = checks(&v);
    let b = find(&c, "bridge-netfilter");
    assert_eq!(b.level, Level::Fail);
    assert!(
        b.message
            .starts_with("net.bridge.bridge-nf-call-ip6tables = 0"),
        "{}",
        b.message
    );
    v.sysctls
        .insert(sysctl::BRIDGE_NF_CALL_IP6TABLES.into(), "1".into());
    assert_eq!(find(&checks(&v), "bridge-netfilter").level, Level::Pass);
}

#[test]
fn cni_side_and_conflicts() {
    let mut v = healthy();
    v.conf_files = Ok(vec![
        "10-kindnet.conflist".into(),
        "05-cilium.conflist".into(),
        ".tmp.conf".into(),
        "99-loopback.conf".into(),
    ]);
    v.plugins = vec![("kindnet".into(), Plugin::Present)];
    v.cni_version = Ok("kindnet-cni 0.0.9".into());
    v.ipam_writable = Err("Read-only file system".into());
    if let Some(h) = v.host.as_mut() {
        h.foreign
            .push(KernelRoute::test("10.244.2.0/25", Some("172.18.0.9"), 2));
    }
    let c = checks(&v);
    let o = find(&c, "conflist-order");
    assert_eq!(o.level, Level::Fail);
    assert!(
        o.message
            .starts_with(".tmp.conf, 05-cilium.conflist sorts before 10-kindnet.conflist"),
        "{}",
        o.message
    );
    assert!(o.gates_readiness);
    assert!(
        find(&c, "cni-binaries")
            .message
            .contains("host-local missing")
    );
    assert_eq!(find(&c, "ipam").level, Level::Fail);
    let f = find(&c, "foreign-routes");
    assert_eq!(f.level, Level::Fail);
    assert!(
        f.message
            .contains("10.244.2.0/25 via 172.18.0.9 (inside node2's pod CIDR 10.244.2.0/24)"),
        "{}",
        f.message
    );
    let mut v = healthy();
    v.conflist = None;
    assert_eq!(find(&checks(&v), "conflist").level, Level::Fail);
    // in the daemon the CNI bin and IPAM dirs are not visible
    v.inputs.in_daemon = true;
    assert!(
        checks(&v)
            .iter()
            .all(|c| c.id != "cni-binaries" && c.id != "ipam")
    );
}

#[test]
fn json_and_text() {
    let mut v = healthy();
    v.sysctls.insert("net/ipv4/ip_forward".into(), "0".into());
    let c = checks(&v);
    let j = to_json("node1", &c);
    assert_eq!(j["ok"], false);
    assert_eq!(j["summary"]["fail"], 1);
    assert_eq!(j["checks"][0]["level"], "fail");
    let t = render("node1", &c);
    assert!(t.contains("[FAIL] forwarding-ipv4"));
    assert!(t.contains("fix: sysctl -w net.ipv4.ip_forward=1"));
    assert_eq!(readyz_lines(&c).len(), 1);
}

#[test]
fn a_crafted_node_name_cannot_forge_a_line() {
    let mut v = healthy();
    let mut store = NodeStore::new();
    store.replace_all(&[
        raw("node1", &["10.244.1.0/24"], &[("InternalIP", "172.18.0.2")]),
        raw(
            "evil\n[pass] forwarding-ipv4  ok\u{1b}[2K",
            &["10.244.9.0/24"],
            &[("InternalIP", "172.18.0.9")],
        ),
    ]);
    v.nodes = Some(Ok(store.iter().cloned().collect()));
    let c = checks(&v);
    let t = render("node1\n[pass] x", &c);
    assert_eq!(
        t.lines()
            .filter(|l| l.starts_with("[pass] forwarding-ipv4"))
            .count(),
        1,
        "{t}"
    );
    assert!(
        t.contains("evil\\n[pass] forwarding-ipv4  ok\\u{1b}[2K"),
        "{t}"
    );
    assert!(t.starts_with("kindnetd doctor on node1\\n[pass] x "), "{t}");
    assert!(!t.contains('\u{1b}'));
}

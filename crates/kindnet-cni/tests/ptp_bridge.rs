//! ptp and bridge in real network namespaces: a "node" namespace where the
//! plugin runs (as a runtime on that node would run it) and pod namespaces.
//! Every spec version, every command, both families.

mod common;

use common::*;
use serde_json::{Value, json};

use kindnet_cni_spec::version::{SUPPORTED as VERSIONS, has_check, has_ip_version};

/// The pod's address of a family from a result.
fn ip_of(res: &Value, v6: bool) -> (String, String) {
    let ip = res["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["address"].as_str().unwrap().contains(':') == v6)
        .unwrap_or_else(|| panic!("no {} address in {res}", if v6 { "IPv6" } else { "IPv4" }));
    (
        ip["address"].as_str().unwrap().to_string(),
        ip["gateway"].as_str().unwrap_or("").to_string(),
    )
}

fn bare(a: &str) -> &str {
    a.split('/').next().unwrap()
}

#[test]
fn ptp_dual_stack_every_version_add_check_del() {
    require_root!();
    for version in VERSIONS {
        let node = Ns::new("node");
        let pod = Ns::new("pod");
        let data = temp_dir("ipam");
        let conf = net_conf(version, "ptp", &data.str(), &[V4_SUBNET, V6_SUBNET]);
        let args = Args::new("ctr1", &pod.path());
        let res = call(Some(&node), "ptp", "ADD", &args, &conf).ok();

        // result shape per version
        assert_eq!(res["cniVersion"], *version);
        let interfaces = res["interfaces"].as_array().unwrap();
        assert_eq!(interfaces.len(), 2, "{res}");
        let host_if = interfaces[0]["name"].as_str().unwrap().to_string();
        assert!(
            host_if.starts_with("veth") && host_if.len() == 12,
            "{host_if}"
        );
        assert_eq!(interfaces[1]["name"], "eth0");
        assert_eq!(interfaces[1]["sandbox"], pod.path());
        for ip in res["ips"].as_array().unwrap() {
            assert_eq!(ip["interface"], 1);
            assert_eq!(
                ip.get("version").is_some(),
                has_ip_version(version),
                "{version}: {ip}"
            );
        }
        let (ip4, gw4) = ip_of(&res, false);
        let (ip6, gw6) = ip_of(&res, true);
        assert_eq!(
            (ip4.as_str(), gw4.as_str()),
            ("10.244.1.2/24", "10.244.1.1")
        );
        assert_eq!(
            (ip6.as_str(), gw6.as_str()),
            ("fd00:10:244:1::2/64", "fd00:10:244:1::1")
        );

        // the ptp layout, pod side
        assert_eq!(addrs(&pod, "eth0"), vec![ip4.clone(), ip6.clone()]);
        let r4 = routes(&pod, "-4");
        assert!(
            r4.contains(&"default via 10.244.1.1 dev eth0".to_string()),
            "{r4:?}"
        );
        assert!(
            r4.contains(&"10.244.1.0/24 via 10.244.1.1 dev eth0 src 10.244.1.2".to_string()),
            "{r4:?}"
        );
        assert!(
            r4.contains(&"10.244.1.1 dev eth0 scope link src 10.244.1.2".to_string()),
            "{r4:?}"
        );
        assert_eq!(r4.len(), 3, "no kernel prefix route: {r4:?}");
        let r6 = routes(&pod, "-6");
        assert!(
            r6.iter()
                .any(|r| r.starts_with("default via fd00:10:244:1::1 dev eth0")),
            "{r6:?}"
        );
        assert!(
            r6.iter().any(|r| r.starts_with(
                "fd00:10:244:1::/64 via fd00:10:244:1::1 dev eth0 src fd00:10:244:1::2"
            )),
            "{r6:?}"
        );
        // host side: gateway /32 and /128 on the veth, one host route per pod address
        assert_eq!(
            addrs(&node, &host_if),
            vec![
                "10.244.1.1/32".to_string(),
                "fd00:10:244:1::1/128".to_string()
            ]
        );
        let h4 = routes(&node, "-4");
        assert!(
            h4.contains(&format!("10.244.1.2 dev {host_if} scope host")),
            "{h4:?}"
        );
        let h6 = routes(&node, "-6");
        assert!(
            h6.iter()
                .any(|r| r.starts_with(&format!("fd00:10:244:1::2 dev {host_if}"))),
            "{h6:?}"
        );
        // usable at once: no DAD wait, both families
        assert!(pod.ping("10.244.1.1"), "{version}: pod -> IPv4 gateway");
        assert!(
            pod.ping("fd00:10:244:1::1"),
            "{version}: pod -> IPv6 gateway"
        );
        assert!(
            node.ping("10.244.1.2") && node.ping("fd00:10:244:1::2"),
            "node -> pod"
        );

        let with = with_prev(&conf, &res);
        if has_check(version) {
            call(Some(&node), "ptp", "CHECK", &args, &with).ok();
        } else {
            assert_eq!(
                call(Some(&node), "ptp", "CHECK", &args, &with).err_code(),
                1,
                "CHECK before 0.4.0"
            );
        }
        assert_eq!(allocated(&data.str()).len(), 2);
        call(Some(&node), "ptp", "DEL", &args, &with).ok();
        assert!(
            allocated(&data.str()).is_empty(),
            "{version}: DEL released the addresses"
        );
        eventually("DEL removed the veth", || !node.links().contains(&host_if));
        assert!(!pod.links().contains(&"eth0".to_string()));
        // DEL again: idempotent
        call(Some(&node), "ptp", "DEL", &args, &with).ok();
    }
}

#[test]
fn ptp_pods_reach_each_other_and_check_detects_drift() {
    require_root!();
    let node = Ns::new("node");
    let (a, b) = (Ns::new("pod"), Ns::new("pod"));
    let data = temp_dir("ipam");
    let conf = net_conf("1.0.0", "ptp", &data.str(), &[V4_SUBNET, V6_SUBNET]);
    let ra = call(Some(&node), "ptp", "ADD", &Args::new("a", &a.path()), &conf).ok();
    let rb = call(Some(&node), "ptp", "ADD", &Args::new("b", &b.path()), &conf).ok();
    for v6 in [false, true] {
        assert!(a.ping(bare(&ip_of(&rb, v6).0)), "pod a -> pod b (v6={v6})");
        assert!(b.ping(bare(&ip_of(&ra, v6).0)), "pod b -> pod a (v6={v6})");
    }
    // both host veths carry the same gateway
    let hosts: Vec<String> = [&ra, &rb]
        .iter()
        .map(|r| r["interfaces"][0]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(addrs(&node, &hosts[0]), addrs(&node, &hosts[1]));

    // drift: a route removed by hand is reported by CHECK
    a.run_ok(&["ip", "route", "del", "default"]);
    let c = call(
        Some(&node),
        "ptp",
        "CHECK",
        &Args::new("a", &a.path()),
        &with_prev(&conf, &ra),
    );
    assert_ne!(c.code, 0);
    assert!(
        c.msg().contains("default") || c.msg().contains("0.0.0.0/0"),
        "{}",
        c.msg()
    );
    // and an address removed by hand
    b.run_ok(&["ip", "addr", "del", &ip_of(&rb, false).0, "dev", "eth0"]);
    let c = call(
        Some(&node),
        "ptp",
        "CHECK",
        &Args::new("b", &b.path()),
        &with_prev(&conf, &rb),
    );
    assert!(c.msg().contains("10.244.1."), "{}", c.msg());
}

#[test]
fn del_releases_when_netns_is_gone() {
    require_root!();
    let node = Ns::new("node");
    let data = temp_dir("ipam");
    let conf = net_conf("1.0.0", "ptp", &data.str(), &[V4_SUBNET]);
    let pod = Ns::new("pod");
    let path = pod.path();
    let res = call(Some(&node), "ptp", "ADD", &Args::new("gone", &path), &conf).ok();
    drop(pod); // the runtime removed the namespace first
    assert_eq!(allocated(&data.str()).len(), 1);
    call(
        Some(&node),
        "ptp",
        "DEL",
        &Args::new("gone", &path),
        &with_prev(&conf, &res),
    )
    .ok();
    assert!(allocated(&data.str()).is_empty());
    // no netns at all
    call(Some(&node), "ptp", "DEL", &Args::new("gone", ""), &conf).ok();
}

#[test]
fn bridge_dual_stack_pods_reach_gateway_and_each_other() {
    require_root!();
    for version in VERSIONS {
        let node = Ns::new("node");
        let (a, b) = (Ns::new("pod"), Ns::new("pod"));
        let data = temp_dir("ipam");
        let conf = net_conf(version, "bridge", &data.str(), &[V4_SUBNET, V6_SUBNET]);
        let ra = call(
            Some(&node),
            "bridge",
            "ADD",
            &Args::new("a", &a.path()),
            &conf,
        )
        .ok();
        let rb = call(
            Some(&node),
            "bridge",
            "ADD",
            &Args::new("b", &b.path()),
            &conf,
        )
        .ok();
        assert_eq!(ra["interfaces"][0]["name"], "kncni0", "{ra}");
        assert_eq!(ra["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(ra["ips"][0]["interface"], 2);
        let br = addrs(&node, "kncni0");
        assert!(
            br.contains(&"10.244.1.1/24".to_string())
                && br.contains(&"fd00:10:244:1::1/64".to_string()),
            "{br:?}"
        );
        let r4 = routes(&a, "-4");
        assert!(
            r4.contains(&"default via 10.244.1.1 dev eth0".to_string()),
            "{r4:?}"
        );
        assert!(
            r4.iter()
                .any(|r| r.starts_with("10.244.1.0/24 dev eth0 proto kernel scope link")),
            "{r4:?}"
        );
        for v6 in [false, true] {
            assert!(
                a.ping(if v6 { "fd00:10:244:1::1" } else { "10.244.1.1" }),
                "{version} pod -> gw v6={v6}"
            );
            assert!(
                a.ping(bare(&ip_of(&rb, v6).0)),
                "{version} pod a -> pod b v6={v6}"
            );
        }
        if has_check(version) {
            call(
                Some(&node),
                "bridge",
                "CHECK",
                &Args::new("a", &a.path()),
                &with_prev(&conf, &ra),
            )
            .ok();
        }
        for (id, ns, r) in [("a", &a, &ra), ("b", &b, &rb)] {
            call(
                Some(&node),
                "bridge",
                "DEL",
                &Args::new(id, &ns.path()),
                &with_prev(&conf, r),
            )
            .ok();
        }
        assert!(allocated(&data.str()).is_empty());
        assert!(
            node.links().contains(&"kncni0".to_string()),
            "the bridge stays"
        );
    }
}

#[test]
fn bridge_refuses_a_foreign_gateway_address_unless_forced() {
    require_root!();
    let node = Ns::new("node");
    let pod = Ns::new("pod");
    let data = temp_dir("ipam");
    node.run_ok(&["ip", "link", "add", "kncni0", "type", "bridge"]);
    node.run_ok(&["ip", "addr", "add", "10.9.9.9/24", "dev", "kncni0"]);
    let mut conf = net_conf("1.0.0", "bridge", &data.str(), &[V4_SUBNET]);
    let c = call(
        Some(&node),
        "bridge",
        "ADD",
        &Args::new("a", &pod.path()),
        &conf,
    );
    assert_ne!(c.code, 0);
    assert!(c.msg().contains("forceAddress"), "{}", c.msg());
    assert!(allocated(&data.str()).is_empty(), "no partial state");
    assert!(
        !pod.links().contains(&"eth0".to_string()),
        "no partial state"
    );
    conf["forceAddress"] = json!(true);
    conf["vlan"] = json!(0); // an unimplemented option at its default is accepted
    call(
        Some(&node),
        "bridge",
        "ADD",
        &Args::new("a", &pod.path()),
        &conf,
    )
    .ok();
    assert_eq!(addrs(&node, "kncni0"), vec!["10.244.1.1/24".to_string()]);
}

#[test]
fn loopback_brings_lo_up_and_down() {
    require_root!();
    let pod = Ns::new("pod");
    pod.run_ok(&["ip", "link", "set", "lo", "down"]);
    let conf = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
    let res = call(None, "loopback", "ADD", &Args::new("c", &pod.path()), &conf).ok();
    assert_eq!(res["interfaces"][0]["name"], "lo");
    assert!(pod.ping("127.0.0.1"));
    call(
        None,
        "loopback",
        "CHECK",
        &Args::new("c", &pod.path()),
        &with_prev(&conf, &res),
    )
    .ok();
    call(None, "loopback", "DEL", &Args::new("c", &pod.path()), &conf).ok();
    assert!(!pod.ping("127.0.0.1"));
    // DEL of a gone namespace succeeds
    call(
        None,
        "loopback",
        "DEL",
        &Args::new("c", "/var/run/netns/kncni-does-not-exist"),
        &conf,
    )
    .ok();
}

#[test]
fn gc_reclaims_everything_not_valid() {
    require_root!();
    let node = Ns::new("node");
    let pods: Vec<Ns> = (0..3).map(|_| Ns::new("pod")).collect();
    let data = temp_dir("ipam");
    let conf = net_conf("1.1.0", "ptp", &data.str(), &[V4_SUBNET, V6_SUBNET]);
    let mut hosts = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let r = call(
            Some(&node),
            "ptp",
            "ADD",
            &Args::new(&format!("c{i}"), &p.path()),
            &conf,
        )
        .ok();
        hosts.push(r["interfaces"][0]["name"].as_str().unwrap().to_string());
    }
    assert_eq!(allocated(&data.str()).len(), 6);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    call(Some(&node), "ptp", "GC", &Args::new("", ""), &gc).ok();
    assert_eq!(
        allocated(&data.str()).len(),
        2,
        "only c1's addresses remain"
    );
    let links = node.links();
    assert!(
        !links.contains(&hosts[0]) && links.contains(&hosts[1]) && !links.contains(&hosts[2]),
        "{links:?}"
    );
    assert!(pods[1].ping("10.244.1.1"), "the valid pod still works");
    // a veth that is not ours is never touched
    node.run_ok(&[
        "ip",
        "link",
        "add",
        "vethdeadbeef",
        "type",
        "veth",
        "peer",
        "name",
        "other0",
    ]);
    call(Some(&node), "ptp", "GC", &Args::new("", ""), &gc).ok();
    assert!(node.links().contains(&"vethdeadbeef".to_string()));
}

#[test]
fn status_reports_ready_and_exhaustion() {
    require_root!();
    let node = Ns::new("node");
    let data = temp_dir("ipam");
    let conf = net_conf("1.1.0", "ptp", &data.str(), &["10.250.0.0/30"]);
    call(Some(&node), "ptp", "STATUS", &Args::new("", ""), &conf).ok();
    let pod = Ns::new("pod");
    call(
        Some(&node),
        "ptp",
        "ADD",
        &Args::new("only", &pod.path()),
        &conf,
    )
    .ok(); // .2 is the one usable address
    let c = call(Some(&node), "ptp", "STATUS", &Args::new("", ""), &conf);
    assert_eq!(c.err_code(), 50, "{}", c.stdout);
}

#[test]
fn add_replaces_the_leftover_of_a_killed_add_but_never_a_foreign_link() {
    require_root!();
    let node = Ns::new("node");
    let data = temp_dir("ipam");
    let conf = net_conf("1.0.0", "ptp", &data.str(), &[V4_SUBNET]);
    // an ADD killed after creating its veth, before tagging it
    let name = kindnet_cni::hostlink::host_veth_name(
        &kindnet_cni_spec::AttachmentId::new("kindnet-test", "retry", "eth0").unwrap(),
    );
    node.run_ok(&[
        "ip", "link", "add", &name, "type", "veth", "peer", "name", "left0",
    ]);
    let pod = Ns::new("pod");
    let res = call(
        Some(&node),
        "ptp",
        "ADD",
        &Args::new("retry", &pod.path()),
        &conf,
    )
    .ok();
    assert_eq!(res["interfaces"][0]["name"], name.as_str());
    assert!(pod.ping("10.244.1.1"));
    // a link with our name but someone else's alias is left alone
    let name2 = kindnet_cni::hostlink::host_veth_name(
        &kindnet_cni_spec::AttachmentId::new("kindnet-test", "other", "eth0").unwrap(),
    );
    node.run_ok(&[
        "ip", "link", "add", &name2, "type", "veth", "peer", "name", "left1",
    ]);
    node.run_ok(&["ip", "link", "set", &name2, "alias", "not kindnet"]);
    let pod2 = Ns::new("pod");
    let c = call(
        Some(&node),
        "ptp",
        "ADD",
        &Args::new("other", &pod2.path()),
        &conf,
    );
    assert_ne!(c.code, 0);
    assert!(c.msg().contains("belongs to something else"), "{}", c.msg());
    assert!(node.links().contains(&name2));
    assert_eq!(
        allocated(&data.str()).len(),
        1,
        "the failed ADD released its address"
    );
}

/// CNI 1.1 STATUS, as containerd ≥ 2.0 calls it: 0 while pods can be
/// added; 50 ("not available") when a range set is exhausted or the IPAM
/// data directory cannot be used — for every plugin kindnetd may write,
/// the single `kindnet` one included, on one and two families.
#[test]
fn status_is_50_when_a_range_is_exhausted_or_the_ipam_dir_is_unusable() {
    require_root!();
    for plugin in ["kindnet", "ptp", "bridge"] {
        for subnets in [&["10.250.0.0/30"][..], &["10.250.0.0/30", "fd00:250::/64"]] {
            let what = format!("{plugin} {subnets:?}");
            let node = Ns::new("node");
            let data = temp_dir("ipam");
            let conf = net_conf("1.1.0", plugin, &data.str(), subnets);
            let c = call(Some(&node), plugin, "STATUS", &Args::new("", ""), &conf);
            assert_eq!(
                c.code, 0,
                "{what}: a fresh range is available: {}",
                c.stdout
            );
            // The one usable address of the /30 (.1 is the gateway).
            let pod = Ns::new("pod");
            call(
                Some(&node),
                plugin,
                "ADD",
                &Args::new("only", &pod.path()),
                &conf,
            )
            .ok();
            let c = call(Some(&node), plugin, "STATUS", &Args::new("", ""), &conf);
            assert_eq!(c.err_code(), 50, "{what}: {}", c.stdout);
            assert!(
                c.out["msg"]
                    .as_str()
                    .unwrap_or("")
                    .contains("no IP addresses available"),
                "{what}: {}",
                c.stdout
            );
            // Freed again: available.
            call(
                Some(&node),
                plugin,
                "DEL",
                &Args::new("only", &pod.path()),
                &conf,
            )
            .ok();
            let c = call(Some(&node), plugin, "STATUS", &Args::new("", ""), &conf);
            assert_eq!(c.code, 0, "{what}: after DEL: {}", c.stdout);
        }
        // The data directory is not a directory (a file sits at its path).
        let node = Ns::new("node");
        let data = temp_dir("ipam");
        let file = data.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let conf = net_conf("1.1.0", plugin, &file.display().to_string(), &[V4_SUBNET]);
        let c = call(Some(&node), plugin, "STATUS", &Args::new("", ""), &conf);
        assert_eq!(
            c.err_code(),
            50,
            "{plugin}: dataDir is a file: {}",
            c.stdout
        );
        assert!(
            c.out["msg"]
                .as_str()
                .unwrap_or("")
                .contains("IPAM data directory"),
            "{plugin}: {}",
            c.stdout
        );
        // The network's directory is a file.
        let data = temp_dir("ipam");
        std::fs::write(data.path().join("kindnet-test"), "x").unwrap();
        let conf = net_conf("1.1.0", plugin, &data.str(), &[V4_SUBNET]);
        let c = call(Some(&node), plugin, "STATUS", &Args::new("", ""), &conf);
        assert_eq!(
            c.err_code(),
            50,
            "{plugin}: network dir is a file: {}",
            c.stdout
        );
    }
}

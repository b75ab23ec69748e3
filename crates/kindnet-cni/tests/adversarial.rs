//! Hostile and clumsy input against the real plugins, as root, inside
//! namespaces of the test's own: nothing may reach the node's ruleset,
//! links or addresses beyond what a valid attachment owns.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

/// A sentinel table that no plugin may touch.
fn plant_sentinel(node: &Ns) {
    node.run_ok(&["nft", "add", "table", "inet", "sentinel"]);
}

fn tables(node: &Ns) -> Vec<String> {
    let mut t: Vec<String> = node
        .run_ok(&["nft", "list", "tables"])
        .lines()
        .map(str::to_string)
        .collect();
    t.sort();
    t
}

fn nft_json(node: &Ns, table: &str) -> Value {
    let out = node.run(&["nft", "-j", "list", "table", "inet", table]);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// (set name, comment) of every element of `table`.
fn elements(node: &Ns, table: &str) -> Vec<(String, String)> {
    let doc = nft_json(node, table);
    let mut out = Vec::new();
    for item in doc["nftables"].as_array().into_iter().flatten() {
        let Some(o) = item.get("set").or_else(|| item.get("map")) else {
            continue;
        };
        for e in o["elem"].as_array().into_iter().flatten() {
            let k = if e.is_array() { &e[0] } else { e };
            out.push((
                o["name"].as_str().unwrap_or_default().to_string(),
                k["elem"]["comment"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
    }
    out
}

fn masq_conf(data: &TempDir, name: &str, subnets: &[&str]) -> Value {
    let mut c = net_conf("1.1.0", "ptp", &data.str(), subnets);
    c["ipMasq"] = json!(true);
    c["name"] = json!(name);
    c
}

fn portmap_conf(name: &str, prev: &Value, maps: Value) -> Value {
    json!({
        "cniVersion": "1.1.0", "name": name, "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": maps},
        "prevResult": prev,
    })
}

#[test]
fn hostile_network_names_are_refused_before_anything_happens() {
    require_root!();
    let node = Ns::new("node");
    let pod = Ns::new("pod");
    let data = temp_dir("ipam");
    plant_sentinel(&node);
    let before = tables(&node);
    let injections = [
        "x\" ; delete table inet sentinel ; add table inet evil ; \"",
        "x }\ndelete table inet sentinel\nadd table inet evil {",
        "blue team",
        "a;b",
        "a}b",
        "a\nb",
        "-leading-dash",
        "../../etc",
        "",
        &"n".repeat(256),
    ];
    for name in injections {
        for plugin in ["ptp", "bridge"] {
            let mut c = masq_conf(&data, name, &[V4_SUBNET]);
            c["type"] = json!(plugin);
            let r = call(
                Some(&node),
                plugin,
                "ADD",
                &Args::new("c1", &pod.path()),
                &c,
            );
            assert_eq!(r.err_code(), 7, "{plugin} {name:?}: {}", r.stdout);
            assert!(r.msg().contains("name"), "{}", r.msg());
        }
        let prev = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.244.1.5/24"}]});
        let pm = portmap_conf(
            name,
            &prev,
            json!([{"hostPort": 8080, "containerPort": 80}]),
        );
        for cmd in ["ADD", "DEL", "CHECK", "GC"] {
            let r = call(
                Some(&node),
                "portmap",
                cmd,
                &Args::new("c1", &pod.path()),
                &pm,
            );
            assert_eq!(r.err_code(), 7, "portmap {cmd} {name:?}: {}", r.stdout);
        }
        assert_eq!(tables(&node), before, "{name:?} changed the ruleset");
        assert!(allocated(&data.str()).is_empty());
        assert!(!node.links().iter().any(|l| l.starts_with("veth")));
    }
}

#[test]
fn the_longest_valid_names_and_ids_fit_everywhere() {
    require_root!();
    let node = Ns::new("node");
    let pod = Ns::new("pod");
    let data = temp_dir("ipam");
    let name = format!("n{}", "x".repeat(254)); // 255 bytes
    let id = "c".repeat(64) + &"d".repeat(200);
    let conf = masq_conf(&data, &name, &[V4_SUBNET, V6_SUBNET]);
    let args = Args::new(&id, &pod.path());
    let res = call(Some(&node), "ptp", "ADD", &args, &conf).ok();
    let pm = portmap_conf(
        &name,
        &res,
        json!([{"hostPort": 8080, "containerPort": 80}]),
    );
    call(Some(&node), "portmap", "ADD", &args, &pm).ok();
    call(Some(&node), "portmap", "CHECK", &args, &pm).ok();
    call(Some(&node), "ptp", "CHECK", &args, &with_prev(&conf, &res)).ok();
    assert_eq!(elements(&node, "kindnet-ipmasq").len(), 4);
    call(Some(&node), "portmap", "DEL", &args, &pm).ok();
    call(Some(&node), "ptp", "DEL", &args, &with_prev(&conf, &res)).ok();
    assert!(elements(&node, "kindnet-ipmasq").is_empty());
    assert!(elements(&node, "kindnet-portmap").is_empty());
    assert!(allocated(&data.str()).is_empty());
}

#[test]
fn gc_of_one_network_never_touches_a_similarly_named_one() {
    require_root!();
    let node = Ns::new("node");
    let data = temp_dir("ipam");
    let mut made = Vec::new();
    for (net, subnet) in [
        ("blue", "10.244.1.0/24"),
        ("blue-team", "10.244.2.0/24"),
        ("blue.x", "10.244.3.0/24"),
    ] {
        let pod = Ns::new("pod");
        let conf = masq_conf(&data, net, &[subnet]);
        let args = Args::new("c1", &pod.path());
        let res = call(Some(&node), "ptp", "ADD", &args, &conf).ok();
        let pm = portmap_conf(
            net,
            &res,
            json!([{"hostPort": 8000 + made.len() as u16, "containerPort": 80}]),
        );
        call(Some(&node), "portmap", "ADD", &args, &pm).ok();
        made.push((net, conf, pm, pod));
    }
    let links_before = node.links();
    let (masq0, pm0) = (
        elements(&node, "kindnet-ipmasq").len(),
        elements(&node, "kindnet-portmap").len(),
    );
    // GC of "blue" with nothing valid: only blue's objects go
    let (_, blue_conf, blue_pm, _) = &made[0];
    for (plugin, conf) in [("portmap", blue_pm), ("ptp", blue_conf)] {
        let mut gc = conf.clone();
        gc["cni.dev/valid-attachments"] = json!([]);
        call(Some(&node), plugin, "GC", &Args::new("", ""), &gc).ok();
    }
    assert_eq!(elements(&node, "kindnet-ipmasq").len(), masq0 - 2);
    assert_eq!(
        elements(&node, "kindnet-portmap").len(),
        pm0 - 3,
        "two maps and a hairpin"
    );
    let gone: Vec<_> = links_before
        .iter()
        .filter(|l| !node.links().contains(l))
        .collect();
    assert_eq!(gone.len(), 1, "only blue's veth: {gone:?}");
    // the others still pass CHECK
    for (_, _, pm, pod) in &made[1..] {
        let args = Args::new("c1", &pod.path());
        call(Some(&node), "portmap", "CHECK", &args, pm).ok();
    }
}

#[test]
fn portmap_check_compares_every_mapping() {
    require_root!();
    let node = Ns::new("node");
    let pod = Ns::new("pod");
    let data = temp_dir("ipam");
    let conf = net_conf("1.1.0", "ptp", &data.str(), &[V4_SUBNET, V6_SUBNET]);
    let args = Args::new("c1", &pod.path());
    let res = call(Some(&node), "ptp", "ADD", &args, &conf).ok();
    let maps = json!([{"hostPort": 8080, "containerPort": 80}, {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]);
    let pm = portmap_conf("kindnet-test", &res, maps);
    call(Some(&node), "portmap", "ADD", &args, &pm).ok();
    call(Some(&node), "portmap", "CHECK", &args, &pm).ok();
    // a port that was never mapped
    let more = portmap_conf(
        "kindnet-test",
        &res,
        json!([{"hostPort": 9999, "containerPort": 99}]),
    );
    assert_ne!(call(Some(&node), "portmap", "CHECK", &args, &more).code, 0);
    // no prevResult: code 7, as the reference
    let mut bare = pm.clone();
    bare.as_object_mut().unwrap().remove("prevResult");
    assert_eq!(
        call(Some(&node), "portmap", "CHECK", &args, &bare).err_code(),
        7
    );
    // an element deleted by hand
    node.run_ok(&[
        "nft",
        "delete",
        "element",
        "inet",
        "kindnet-portmap",
        "hostports6-port",
        "{",
        "udp",
        ".",
        "5353",
        "}",
    ]);
    let r = call(Some(&node), "portmap", "CHECK", &args, &pm);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.msg().contains("hostports6-port"), "{}", r.msg());
    // ADD again repairs it
    call(Some(&node), "portmap", "ADD", &args, &pm).ok();
    call(Some(&node), "portmap", "CHECK", &args, &pm).ok();
}

#[test]
fn host_ip_keeps_to_its_family() {
    require_root!();
    let node = Ns::new("node");
    let pod = Ns::new("pod");
    let data = temp_dir("ipam");
    let conf = net_conf("1.1.0", "ptp", &data.str(), &[V4_SUBNET, V6_SUBNET]);
    let args = Args::new("c1", &pod.path());
    let res = call(Some(&node), "ptp", "ADD", &args, &conf).ok();
    for (host_ip, want) in [
        ("0.0.0.0", vec!["hostports4-addr", "hostports4-port"]),
        ("::", vec!["hostports6-addr", "hostports6-port"]),
        (
            "::ffff:172.30.0.1",
            vec!["hostports4-ip-addr", "hostports4-ip-port"],
        ),
        (
            "",
            vec![
                "hostports4-addr",
                "hostports4-port",
                "hostports6-addr",
                "hostports6-port",
            ],
        ),
    ] {
        let pm = portmap_conf(
            "kindnet-test",
            &res,
            json!([{"hostPort": 8080, "containerPort": 80, "hostIP": host_ip}]),
        );
        call(Some(&node), "portmap", "ADD", &args, &pm).ok();
        let mut have: Vec<String> = elements(&node, "kindnet-portmap")
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| s.starts_with("hostports"))
            .collect();
        have.sort();
        assert_eq!(have, want, "hostIP {host_ip:?}");
        call(Some(&node), "portmap", "DEL", &args, &pm).ok();
        assert!(elements(&node, "kindnet-portmap").is_empty());
    }
}

#[test]
fn cni_netns_must_be_a_pods_network_namespace() {
    require_root!();
    let node = Ns::new("node");
    let data = temp_dir("ipam");
    let conf = net_conf("1.1.0", "ptp", &data.str(), &[V4_SUBNET]);
    // a valid pod first, whose state must survive every bad call below
    let pod = Ns::new("pod");
    let good = Args::new("c1", &pod.path());
    let res = call(Some(&node), "ptp", "ADD", &good, &conf).ok();
    let held = allocated(&data.str());
    let file = data.path().join("regular-file");
    std::fs::write(&file, "x").unwrap();
    let node_ns = node.path();
    for bad in [
        file.to_str().unwrap(),
        data.str().as_str(),
        "/dev/null",
        "/proc/self/ns/mnt",
        "/proc/self/ns/net", // the node itself: the plugin runs in the node's namespace
        node_ns.as_str(),
    ] {
        for cmd in ["ADD", "CHECK", "DEL"] {
            let args = Args {
                netns: bad.into(),
                ..good.clone()
            };
            let r = call(Some(&node), "ptp", cmd, &args, &with_prev(&conf, &res));
            assert_eq!(r.err_code(), 4, "{cmd} {bad}: {}", r.stdout);
            assert!(r.msg().contains("CNI_NETNS"), "{}", r.msg());
            assert_eq!(allocated(&data.str()), held, "{cmd} {bad} touched IPAM");
        }
    }
    // nothing of the pod was removed, nothing was added to the node
    call(Some(&node), "ptp", "CHECK", &good, &with_prev(&conf, &res)).ok();
    let routes = routes(&node, "-4");
    assert!(
        !routes.iter().any(|r| r.starts_with("default")),
        "{routes:?}"
    );
}

#[test]
fn kill_9_at_any_point_of_add_then_gc_leaks_nothing() {
    require_root!();
    let node = Ns::new("node");
    let data = temp_dir("ipam");
    let conf = masq_conf(&data, "kindnet-test", &[V4_SUBNET, V6_SUBNET]);
    let pods: Vec<Ns> = (0..4).map(|_| Ns::new("pod")).collect();
    for round in 0..40u64 {
        let pod = &pods[(round % 4) as usize];
        let args = Args::new(&format!("k{round}"), &pod.path());
        // spread the kill over the whole ADD (a few ms)
        call_killed(
            Some(&node),
            "ptp",
            "ADD",
            &args,
            &conf,
            Duration::from_micros(150 * round),
        );
        // the runtime never learns the result and never calls DEL; the next
        // sandbox in this netns needs the name eth0 free again
        pod.run(&["ip", "link", "del", "eth0"]);
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    call(Some(&node), "ptp", "GC", &Args::new("", ""), &gc).ok();
    assert!(
        allocated(&data.str()).is_empty(),
        "{:?}",
        store_files(&data.str())
    );
    let veths: Vec<String> = node
        .links()
        .into_iter()
        .filter(|l| l.starts_with("veth"))
        .collect();
    assert!(veths.is_empty(), "veths leaked: {veths:?}");
    assert!(elements(&node, "kindnet-ipmasq").is_empty());
    let host_routes: Vec<String> = routes(&node, "-4")
        .into_iter()
        .filter(|r| r.starts_with("10.244."))
        .collect();
    assert!(host_routes.is_empty(), "{host_routes:?}");
}

#[test]
fn a_retried_del_of_an_old_pod_never_removes_the_new_holder_of_its_address() {
    require_root!();
    let node = Ns::new("node");
    let data = temp_dir("ipam");
    // /30: exactly one usable address, so the new pod gets the old one's
    let conf = masq_conf(&data, "kindnet-test", &["10.250.0.0/30"]);
    for round in 0..10 {
        let (old, new) = (Ns::new("pod"), Ns::new("pod"));
        let a_old = Args::new(&format!("old{round}"), &old.path());
        let a_new = Args::new(&format!("new{round}"), &new.path());
        let r_old = call(Some(&node), "ptp", "ADD", &a_old, &conf).ok();
        // the old pod's DEL ran in an older release's order: the address was
        // released, then it died before its nft teardown
        for f in allocated(&data.str()) {
            let _ = std::fs::remove_file(data.path().join("kindnet-test").join(f));
        }
        let r_new = call(Some(&node), "ptp", "ADD", &a_new, &conf).ok();
        assert_eq!(r_new["ips"][0]["address"], r_old["ips"][0]["address"]);
        // the old pod's DEL is retried, racing nothing now
        call(Some(&node), "ptp", "DEL", &a_old, &with_prev(&conf, &r_old)).ok();
        let e = elements(&node, "kindnet-ipmasq");
        assert_eq!(
            e.len(),
            2,
            "round {round}: the new pod's elements stay: {e:?}"
        );
        call(
            Some(&node),
            "ptp",
            "CHECK",
            &a_new,
            &with_prev(&conf, &r_new),
        )
        .ok();
        call(Some(&node), "ptp", "DEL", &a_new, &with_prev(&conf, &r_new)).ok();
        assert!(elements(&node, "kindnet-ipmasq").is_empty());
    }
}

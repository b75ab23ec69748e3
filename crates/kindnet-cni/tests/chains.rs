//! The `kindnet` plugin (one exec) and the classic chain (`ptp` + `portmap`)
//! keep the same state, so a conflist can switch between them under running
//! pods: CHECK, DEL and GC of a pod made by one work with the other, for
//! every spec version.

mod common;

use common::*;
use serde_json::{Value, json};

use kindnet_cni_spec::version::{SUPPORTED as VERSIONS, has_check};

fn maps() -> Value {
    json!([{"hostPort": 8080, "containerPort": 80}, {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}])
}

/// The single plugin's configuration, as kindnetd writes it (one plugin,
/// the portMappings capability), with the runtime's port mappings.
fn single(version: &str, data: &TempDir) -> Value {
    let mut c = net_conf(version, "kindnet", &data.str(), &[V4_SUBNET, V6_SUBNET]);
    c["capabilities"] = json!({"portMappings": true});
    c["runtimeConfig"] = json!({"portMappings": maps()});
    c
}

fn ptp(version: &str, data: &TempDir) -> Value {
    net_conf(version, "ptp", &data.str(), &[V4_SUBNET, V6_SUBNET])
}

fn portmap(version: &str, prev: &Value) -> Value {
    json!({
        "cniVersion": version, "name": "kindnet-test", "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": maps()},
        "prevResult": prev,
    })
}

fn nft_elements(node: &Ns) -> usize {
    let out = node.run(&["nft", "-j", "list", "table", "inet", "kindnet-portmap"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("map").or_else(|| i.get("set")))
        .map(|m| m["elem"].as_array().map_or(0, Vec::len))
        .sum()
}

fn assert_gone(node: &Ns, data: &TempDir, what: &str) {
    assert!(allocated(&data.str()).is_empty(), "{what}: addresses left");
    assert_eq!(nft_elements(node), 0, "{what}: port mappings left");
    common::eventually(&format!("{what}: veths gone"), || {
        !node.links().iter().any(|l| l.starts_with("veth"))
    });
}

/// ADD by the classic chain: ptp, then portmap with ptp's result.
fn classic_add(node: &Ns, args: &Args, v: &str, data: &TempDir) -> Value {
    let r = call(Some(node), "ptp", "ADD", args, &ptp(v, data)).ok();
    call(Some(node), "portmap", "ADD", args, &portmap(v, &r)).ok()
}

fn classic_check(node: &Ns, args: &Args, v: &str, data: &TempDir, prev: &Value) {
    call(
        Some(node),
        "ptp",
        "CHECK",
        args,
        &with_prev(&ptp(v, data), prev),
    )
    .ok();
    call(Some(node), "portmap", "CHECK", args, &portmap(v, prev)).ok();
}

/// DEL by the classic chain: in reverse, portmap then ptp.
fn classic_del(node: &Ns, args: &Args, v: &str, data: &TempDir, prev: &Value) {
    call(Some(node), "portmap", "DEL", args, &portmap(v, prev)).ok();
    call(
        Some(node),
        "ptp",
        "DEL",
        args,
        &with_prev(&ptp(v, data), prev),
    )
    .ok();
}

#[test]
fn a_pod_made_by_one_chain_is_checked_and_deleted_by_the_other() {
    require_root!();
    for v in VERSIONS {
        let node = Ns::new("node");
        let data = temp_dir("ipam");
        // single → classic
        let pod = Ns::new("pod");
        let args = Args::new("one", &pod.path());
        let res = call(Some(&node), "kindnet", "ADD", &args, &single(v, &data)).ok();
        assert_eq!(res["cniVersion"], *v);
        assert!(
            nft_elements(&node) > 0,
            "{v}: the single plugin mapped the ports"
        );
        if has_check(v) {
            call(
                Some(&node),
                "kindnet",
                "CHECK",
                &args,
                &with_prev(&single(v, &data), &res),
            )
            .ok();
            classic_check(&node, &args, v, &data, &res);
        }
        classic_del(&node, &args, v, &data, &res);
        assert_gone(&node, &data, &format!("{v}: single ADD, classic DEL"));

        // classic → single
        let pod = Ns::new("pod");
        let args = Args::new("two", &pod.path());
        let res = classic_add(&node, &args, v, &data);
        if has_check(v) {
            call(
                Some(&node),
                "kindnet",
                "CHECK",
                &args,
                &with_prev(&single(v, &data), &res),
            )
            .ok();
        }
        call(
            Some(&node),
            "kindnet",
            "DEL",
            &args,
            &with_prev(&single(v, &data), &res),
        )
        .ok();
        // DEL is idempotent
        call(
            Some(&node),
            "kindnet",
            "DEL",
            &args,
            &with_prev(&single(v, &data), &res),
        )
        .ok();
        assert_gone(&node, &data, &format!("{v}: classic ADD, single DEL"));
    }
}

#[test]
fn gc_by_either_chain_reclaims_pods_of_both() {
    require_root!();
    let node = Ns::new("node");
    let data = temp_dir("ipam");
    let (p1, p2, p3) = (Ns::new("pod"), Ns::new("pod"), Ns::new("pod"));
    let keep = Args::new("keep", &p3.path());
    let mut s1 = single("1.1.0", &data);
    s1["runtimeConfig"] = json!({"portMappings": [{"hostPort": 7070, "containerPort": 70}]});
    call(
        Some(&node),
        "kindnet",
        "ADD",
        &Args::new("s1", &p1.path()),
        &s1,
    )
    .ok();
    classic_add(&node, &Args::new("c1", &p2.path()), "1.1.0", &data);
    // the kept pod maps other ports, so the others' mappings do not collide
    let mut kept = single("1.1.0", &data);
    kept["runtimeConfig"] = json!({"portMappings": [{"hostPort": 9090, "containerPort": 90}]});
    let kept_res = call(Some(&node), "kindnet", "ADD", &keep, &kept).ok();
    let valid = json!([{"containerID": "keep", "ifname": "eth0"}]);
    // GC through the classic chain: each plugin of the chain, as libcni does
    for (plugin, mut conf) in [
        ("portmap", portmap("1.1.0", &json!({}))),
        ("ptp", ptp("1.1.0", &data)),
    ] {
        conf["cni.dev/valid-attachments"] = valid.clone();
        conf.as_object_mut().unwrap().remove("prevResult");
        call(Some(&node), plugin, "GC", &Args::new("", ""), &conf).ok();
    }
    assert_eq!(
        allocated(&data.str()).len(),
        2,
        "only the kept pod's two addresses"
    );
    assert_eq!(
        nft_elements(&node),
        6,
        "the kept pod: 2 maps x 2 families + 2 hairpins"
    );
    call(
        Some(&node),
        "kindnet",
        "CHECK",
        &keep,
        &with_prev(&kept, &kept_res),
    )
    .ok();
    // then GC through the single plugin with nothing valid
    let mut gc = single("1.1.0", &data);
    gc["cni.dev/valid-attachments"] = json!([]);
    call(Some(&node), "kindnet", "GC", &Args::new("", ""), &gc).ok();
    assert_gone(&node, &data, "GC with nothing valid");
}

#[test]
fn a_failed_port_mapping_undoes_the_whole_pod() {
    require_root!();
    let node = Ns::new("node");
    let data = temp_dir("ipam");
    let pod = Ns::new("pod");
    let mut c = net_conf("1.1.0", "kindnet", &data.str(), &[V4_SUBNET]);
    c["capabilities"] = json!({"portMappings": true});
    // an IPv6 host IP for an IPv4-only pod can never be reached: code 7
    c["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "fd00::1"}]});
    let r = call(
        Some(&node),
        "kindnet",
        "ADD",
        &Args::new("x", &pod.path()),
        &c,
    );
    assert_eq!(r.err_code(), 7, "{}", r.stdout);
    assert_gone(&node, &data, "rolled back");
    assert!(!pod.links().contains(&"eth0".to_string()));
    // a malformed mapping is refused before anything is created
    c["runtimeConfig"] = json!({"portMappings": [{"hostPort": 0, "containerPort": 80}]});
    let r = call(
        Some(&node),
        "kindnet",
        "ADD",
        &Args::new("x", &pod.path()),
        &c,
    );
    assert_eq!(r.err_code(), 7, "{}", r.stdout);
    assert_gone(&node, &data, "refused up front");
}

#[test]
fn the_single_plugin_lays_out_a_bridge_when_configured() {
    require_root!();
    let node = Ns::new("node");
    let data = temp_dir("ipam");
    let pod = Ns::new("pod");
    let mut c = net_conf("1.1.0", "bridge", &data.str(), &[V4_SUBNET]);
    c["type"] = json!("kindnet");
    let args = Args::new("b1", &pod.path());
    let res = call(Some(&node), "kindnet", "ADD", &args, &c).ok();
    assert_eq!(
        res["interfaces"][0]["name"], "kncni0",
        "the bridge comes first: {res}"
    );
    assert!(pod.ping("10.244.1.1"), "the gateway on the bridge answers");
    call(Some(&node), "kindnet", "CHECK", &args, &with_prev(&c, &res)).ok();
    call(
        Some(&node),
        "bridge",
        "CHECK",
        &args,
        &with_prev(
            &{
                let mut b = c.clone();
                b["type"] = json!("bridge");
                b
            },
            &res,
        ),
    )
    .ok();
    call(Some(&node), "kindnet", "DEL", &args, &with_prev(&c, &res)).ok();
    assert!(allocated(&data.str()).is_empty());
}

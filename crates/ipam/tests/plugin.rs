//! The standalone `host-local` plugin through the CNI skeleton: stdin and
//! environment in, result or error object out.

mod common;

use common::*;
use kindnet_cni_spec::skeleton::dispatch;
use kindnet_ipam::HostLocal;
use serde_json::{Value, json};
use std::path::Path;

fn call(cmd: &str, id: &str, ifname: &str, args: &str, stdin: &Value) -> (Value, i32) {
    let env = |k: &str| match k {
        "CNI_CONTAINERID" => Some(id.to_string()),
        "CNI_NETNS" => Some("/var/run/netns/x".to_string()),
        "CNI_IFNAME" => Some(ifname.to_string()),
        "CNI_ARGS" => Some(args.to_string()),
        _ => None,
    };
    let out = dispatch(&HostLocal, Some(cmd), env, stdin.to_string().into_bytes());
    (
        serde_json::from_str(&out.stdout).unwrap_or(Value::Null),
        out.exit_code,
    )
}

fn conf(dir: &Path, version: &str) -> Value {
    json!({
        "cniVersion": version, "name": "net", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": dir.to_str().unwrap(),
                 "ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]}
    })
}

#[test]
fn add_check_del_through_the_skeleton() {
    let t = temp_dir("ipam");
    let c = conf(t.path(), "1.1.0");
    let (v, rc) = call("ADD", "c1", "eth0", "", &c);
    assert_eq!(rc, 0, "{v}");
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(v["ips"][0]["address"], "10.1.2.2/24");
    assert_eq!(v["ips"][0]["gateway"], "10.1.2.1");
    assert!(v["ips"][0].get("interface").is_none());
    assert_eq!(v["ips"][1]["address"], "2001:db8:1::2/64");
    assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(call("CHECK", "c1", "eth0", "", &c).1, 0);
    assert_eq!(call("DEL", "c1", "eth0", "", &c).1, 0);
    let (v, rc) = call("CHECK", "c1", "eth0", "", &c);
    assert_eq!((rc, v["code"].as_u64()), (1, Some(100)));
    assert_eq!(call("DEL", "c1", "eth0", "", &c).1, 0, "DEL twice");
    assert!(ip_files(t.path()).is_empty());
}

#[test]
fn old_versions_get_ip_versions_and_cni_args_ip_works() {
    let t = temp_dir("ipam");
    let (v, rc) = call(
        "ADD",
        "c1",
        "eth0",
        "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.1.2.50",
        &conf(t.path(), "0.3.1"),
    );
    assert_eq!(rc, 0, "{v}");
    assert_eq!(v["cniVersion"], "0.3.1");
    assert_eq!(v["ips"][0]["version"], "4");
    assert_eq!(v["ips"][0]["address"], "10.1.2.50/24");
    assert_eq!(v["ips"][1]["version"], "6");
}

#[test]
fn errors_are_cni_error_objects() {
    let t = temp_dir("ipam");
    let mut c = conf(t.path(), "1.0.0");
    c["ipam"]["ranges"][0][0]["rangeStart"] = json!("10.1.3.5");
    let (v, rc) = call("ADD", "c1", "eth0", "", &c);
    assert_eq!((rc, v["code"].as_u64()), (1, Some(7)));
    assert_eq!(
        v["msg"],
        "ipam.ranges[0][0].rangeStart 10.1.3.5 is outside subnet 10.1.2.0/24"
    );
    // Like the reference, DEL fails on a broken configuration too.
    assert_eq!(call("DEL", "c1", "eth0", "", &c).0["code"], 7);
    let mut c = conf(t.path(), "1.0.0");
    c.as_object_mut().unwrap().remove("ipam");
    let (v, _) = call("DEL", "c1", "eth0", "", &c);
    assert_eq!(v["code"], 7);
    assert_eq!(v["msg"], "missing \"ipam\"");
}

#[test]
fn status_and_gc_through_the_skeleton() {
    let t = temp_dir("ipam");
    let mut c = conf(t.path(), "1.1.0");
    assert_eq!(call("STATUS", "", "", "", &c).1, 0);
    for id in ["a", "b"] {
        assert_eq!(call("ADD", id, "eth0", "", &c).1, 0);
    }
    // GC without the list of valid attachments refuses instead of wiping.
    let (v, rc) = call("GC", "", "", "", &c);
    assert_eq!((rc, v["code"].as_u64()), (1, Some(7)));
    assert_eq!(ip_files(t.path()).len(), 4);
    c["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    assert_eq!(call("GC", "", "", "", &c).1, 0);
    let left: Vec<String> = kindnet_ipam::allocations(t.path(), "net")
        .unwrap()
        .into_iter()
        .map(|a| format!("{} {}", a.ip, a.container_id))
        .collect();
    assert_eq!(left, ["10.1.2.2 a", "2001:db8:1::2 a"]);

    // An exhausted range set makes STATUS report code 50.
    let mut small = conf(t.path(), "1.1.0");
    small["name"] = json!("small");
    small["ipam"]["ranges"] = json!([[{"subnet": "10.9.0.0/30"}]]);
    assert_eq!(call("ADD", "x", "eth0", "", &small).1, 0);
    let (v, rc) = call("STATUS", "", "", "", &small);
    assert_eq!((rc, v["code"].as_u64()), (1, Some(50)));
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("10.9.0.0/30 (ipam.ranges[0])"),
        "{v}"
    );
}

#[test]
fn owners_that_do_not_fit_a_file_name_still_work() {
    let t = temp_dir("ipam");
    let cfg = config(t.path(), json!({"subnet": "10.1.2.0/24"}));
    let long = "c".repeat(300);
    let r = kindnet_ipam::add(&cfg, "net", &long, "eth0").unwrap();
    let name = r.ips[0].address.addr().to_string();
    assert_eq!(read(t.path(), &name), format!("{long}\r\neth0").as_bytes());
    assert_eq!(
        names(t.path()),
        [name.as_str(), "last_reserved_ip.0", "lock"],
        "no staging file left"
    );
    // Idempotent through the file content.
    assert_eq!(
        kindnet_ipam::add(&cfg, "net", &long, "eth0").unwrap().ips,
        r.ips
    );
    kindnet_ipam::check(&cfg, "net", &long, "eth0").unwrap();
    kindnet_ipam::del(&cfg, "net", &long, "eth0").unwrap();
    assert!(ip_files(t.path()).is_empty());
}

#[test]
fn invalid_attachment_and_network_names() {
    let t = temp_dir("ipam");
    let cfg = config(t.path(), json!({"subnet": "10.1.2.0/24"}));
    assert_eq!(
        kindnet_ipam::add(&cfg, "net", "", "eth0").unwrap_err().code,
        4
    );
    assert_eq!(
        kindnet_ipam::add(&cfg, "net", "a/b", "eth0")
            .unwrap_err()
            .code,
        4
    );
    assert_eq!(
        kindnet_ipam::add(&cfg, "net", "a", "e:0").unwrap_err().code,
        4
    );
    assert_eq!(
        kindnet_ipam::add(&cfg, "../x", "a", "eth0")
            .unwrap_err()
            .code,
        7
    );
    assert!(
        std::fs::read_dir(t.path()).unwrap().next().is_none(),
        "nothing written"
    );
}

#[test]
fn a_different_requested_address_for_a_held_attachment_is_refused() {
    let t = temp_dir("ipam");
    let ipam = json!({"subnet": "10.1.2.0/24"});
    kindnet_ipam::add(&config(t.path(), ipam.clone()), "net", "c1", "eth0").unwrap();
    let e = kindnet_ipam::add(
        &config_env(t.path(), ipam, &[("IP", "10.1.2.9")]),
        "net",
        "c1",
        "eth0",
    )
    .unwrap_err();
    assert_eq!(e.code, 7);
    assert!(
        e.msg.contains("already holds 10.1.2.2") && e.msg.contains("10.1.2.9"),
        "{e}"
    );
    assert_eq!(ip_files(t.path()), ["10.1.2.2"]);
}

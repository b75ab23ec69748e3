//! Every malformed input gets the spec's error object on stdout with the
//! right code and a message naming what is wrong, a non-zero exit, nothing
//! on stdout but that, and no partial state.

mod common;

use common::*;
use serde_json::json;

fn assert_clean(node: &Ns, data: &TempDir) {
    assert!(
        allocated(&data.str()).is_empty(),
        "no allocation left: {:?}",
        store_files(&data.str())
    );
    let vs: Vec<String> = node
        .links()
        .into_iter()
        .filter(|l| l.starts_with("veth"))
        .collect();
    assert!(vs.is_empty(), "no veth left: {vs:?}");
}

#[test]
fn malformed_stdin_and_config() {
    require_root!();
    let node = Ns::new("node");
    let pod = Ns::new("pod");
    let data = temp_dir("ipam");
    let good = net_conf("1.0.0", "ptp", &data.str(), &[V4_SUBNET]);
    let args = Args::new("c1", &pod.path());
    let text = good.to_string();
    let cases: Vec<(&str, String, u64, &str)> = vec![
        (
            "truncated JSON",
            text[..text.len() / 2].to_string(),
            6,
            "decode",
        ),
        ("not an object", "[1,2]".into(), 6, "object"),
        (
            "unknown cniVersion",
            {
                let mut c = good.clone();
                c["cniVersion"] = json!("7.0.0");
                c.to_string()
            },
            1,
            "7.0.0",
        ),
        (
            "wrong type mtu",
            {
                let mut c = good.clone();
                c["mtu"] = json!("big");
                c.to_string()
            },
            6,
            "mtu",
        ),
        (
            "wrong type ipMasq",
            {
                let mut c = good.clone();
                c["ipMasq"] = json!("yes");
                c.to_string()
            },
            6,
            "ipMasq",
        ),
        (
            "missing name",
            {
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("name");
                c.to_string()
            },
            7,
            "name",
        ),
        (
            "missing ipam",
            {
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("ipam");
                c.to_string()
            },
            7,
            "ipam",
        ),
        (
            "bad CIDR",
            {
                let mut c = good.clone();
                c["ipam"]["ranges"] = json!([[{"subnet": "10.244.1.0/99"}]]);
                c.to_string()
            },
            7,
            "subnet",
        ),
        (
            "overlapping ranges",
            {
                let mut c = good.clone();
                c["ipam"]["ranges"] =
                    json!([[{"subnet": "10.244.0.0/16"}, {"subnet": "10.244.1.0/24"}]]);
                c.to_string()
            },
            7,
            "overlap",
        ),
        (
            "unsupported bridge option",
            {
                let mut c = net_conf("1.0.0", "bridge", &data.str(), &[V4_SUBNET]);
                c["vlan"] = json!(100);
                c.to_string()
            },
            2,
            "vlan",
        ),
    ];
    for (what, stdin, code, needle) in cases {
        let plugin = if what.contains("bridge") {
            "bridge"
        } else {
            "ptp"
        };
        let c = call_raw(Some(&node), plugin, "ADD", &args, stdin.as_bytes());
        assert_eq!(c.err_code(), code, "{what}: {}", c.stdout);
        assert!(
            c.msg().to_lowercase().contains(&needle.to_lowercase()),
            "{what}: message {:?} should name {needle:?}",
            c.msg()
        );
        assert!(
            c.out["cniVersion"].is_string(),
            "{what}: error object has cniVersion"
        );
        assert_eq!(
            c.stdout.trim().lines().count(),
            1,
            "{what}: only the error object on stdout"
        );
        assert_clean(&node, &data);
    }
}

#[test]
fn bad_environment() {
    require_root!();
    let node = Ns::new("node");
    let pod = Ns::new("pod");
    let data = temp_dir("ipam");
    let conf = net_conf("1.0.0", "ptp", &data.str(), &[V4_SUBNET]);
    let ok = Args::new("c1", &pod.path());
    let cases: Vec<(&str, Args, &str, u64)> = vec![
        (
            "missing container id",
            Args {
                container_id: "".into(),
                ..ok.clone()
            },
            "ADD",
            4,
        ),
        (
            "invalid container id",
            Args {
                container_id: "../x".into(),
                ..ok.clone()
            },
            "ADD",
            4,
        ),
        (
            "missing netns",
            Args {
                netns: "".into(),
                ..ok.clone()
            },
            "ADD",
            4,
        ),
        (
            "bad ifname",
            Args {
                ifname: "eth0/x".into(),
                ..ok.clone()
            },
            "ADD",
            4,
        ),
        (
            "long ifname",
            Args {
                ifname: "a-very-long-ifname".into(),
                ..ok.clone()
            },
            "ADD",
            4,
        ),
        (
            "malformed CNI_ARGS",
            Args {
                cni_args: "IgnoreUnknown".into(),
                ..ok.clone()
            },
            "ADD",
            4,
        ),
        ("unknown command", ok.clone(), "FROB", 4),
        (
            "non-existent netns",
            Args {
                netns: "/var/run/netns/kncni-no-such-ns".into(),
                ..ok.clone()
            },
            "ADD",
            3,
        ),
    ];
    for (what, args, cmd, code) in cases {
        let c = call(Some(&node), "ptp", cmd, &args, &conf);
        assert_eq!(c.err_code(), code, "{what}: {}", c.stdout);
        assert!(!c.msg().is_empty());
        assert_clean(&node, &data);
    }
    // empty CNI_COMMAND
    let c = call(Some(&node), "ptp", "", &ok, &conf);
    assert_eq!(c.err_code(), 4);
}

#[test]
fn exhausted_range_is_code_11_and_leaves_nothing() {
    require_root!();
    let node = Ns::new("node");
    let data = temp_dir("ipam");
    // /30: one usable address in the IPv4 set; the IPv6 set has plenty
    let conf = net_conf("1.0.0", "ptp", &data.str(), &["10.250.0.0/30", V6_SUBNET]);
    let p1 = Ns::new("pod");
    call(
        Some(&node),
        "ptp",
        "ADD",
        &Args::new("first", &p1.path()),
        &conf,
    )
    .ok();
    let before = allocated(&data.str());
    let p2 = Ns::new("pod");
    let c = call(
        Some(&node),
        "ptp",
        "ADD",
        &Args::new("second", &p2.path()),
        &conf,
    );
    assert_eq!(c.err_code(), 11, "{}", c.stdout);
    assert!(c.msg().contains("10.250.0.0/30"), "{}", c.msg());
    assert_eq!(
        allocated(&data.str()),
        before,
        "the IPv6 address of the failed ADD was released"
    );
    assert!(!p2.links().contains(&"eth0".to_string()));
}

#[test]
fn logs_never_go_to_stdout() {
    require_root!();
    let node = Ns::new("node");
    let data = temp_dir("ipam");
    let conf = net_conf("1.0.0", "ptp", &data.str(), &[V4_SUBNET]);
    let log = data.path().join("cni.log");
    // An error is logged: to CNI_LOG_FILE when set.
    let c = std::process::Command::new("ip")
        .args(["netns", "exec", &node.name])
        .arg(plugin_dir().join("ptp"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", "/var/run/netns/kncni-no-such-ns")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin_dir())
        .env("CNI_LOG_FILE", &log)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin
                .take()
                .unwrap()
                .write_all(conf.to_string().as_bytes())?;
            ch.wait_with_output()
        })
        .unwrap();
    let out: serde_json::Value =
        serde_json::from_slice(&c.stdout).expect("stdout is exactly the error object");
    assert_eq!(out["code"], 3);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("does not exist"), "{logged}");
    assert!(
        c.stderr.is_empty(),
        "with CNI_LOG_FILE nothing goes to stderr"
    );
}

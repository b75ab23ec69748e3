//! Uninstall in a real lab: after kindnetd is gone (`kubectl delete`),
//! running pods keep their connectivity and isolation; `kindnetd cleanup`
//! then removes everything of kindnet's from a node — its tables, its
//! routes, the conflist, the IPAM store, the lock files, the plugins — and
//! leaves a foreign table, a foreign protocol-217 route, a foreign conflist,
//! a foreign lock file and a foreign plugin alone. Needs root.

mod common;

use common::netpol_lab::Lab;
use common::*;
use kindnet_netlink::Netns;
use kindnet_testbed::require_root;
use serde_json::Value;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The lab's state file (`lab.json`).
fn state(l: &Lab) -> Value {
    let p = PathBuf::from(format!("/run/kindnet-lab/{}/lab.json", l.name));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A node's state directory.
fn node_dir(l: &Lab, node: &str) -> PathBuf {
    PathBuf::from(format!("/run/kindnet-lab/{}/{node}", l.name))
}

/// Whether a TCP connection from pod namespace `from` to `to` succeeds.
fn connects(l: &Lab, from: &str, to: SocketAddr) -> bool {
    let ns = Netns::open(format!("/var/run/netns/{}", l.netns(from))).unwrap();
    ns.run(|| TcpStream::connect_timeout(&to, Duration::from_millis(700)).is_ok())
        .unwrap()
}

fn in_ns(ns: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The nftables tables in a namespace, as "family name".
fn tables(ns: &str) -> Vec<String> {
    let (ok, out) = in_ns(ns, &["nft", "-j", "list", "tables"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("table"))
        .map(|t| {
            format!(
                "{} {}",
                t["family"].as_str().unwrap(),
                t["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// Routes with protocol 217 (both families), as their destinations.
fn proto_217(ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        let (ok, text) = in_ns(ns, &["ip", "-j", fam, "route", "show", "proto", "217"]);
        assert!(ok, "{text}");
        let v: Value =
            serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text }).unwrap();
        out.extend(
            v.as_array()
                .unwrap()
                .iter()
                .map(|r| r["dst"].as_str().unwrap_or("").to_string()),
        );
    }
    out.sort();
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn uninstall_keeps_pods_working_until_cleanup_removes_exactly_ours() {
    require_root!();
    let l = Lab::up("un");
    let dir = tempfile::Builder::new().prefix("unin").tempdir().unwrap();
    // x/a (node1) accepts ns y only
    l.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-y, namespace: x}\n\
         spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}\n",
    );
    let xa: SocketAddr = "10.244.1.2:80".parse().unwrap();
    assert!(connects(&l, "y-a", xa), "allowed across nodes");
    assert!(!connects(&l, "z-b", xa), "denied");

    // `kubectl delete`: every kindnetd goes (SIGTERM, as the kubelet does).
    let pids: Vec<u32> = state(&l)["kindnetd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(pids.len(), 2);
    for pid in &pids {
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {pid}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let node1 = l.netns("node1");
    let conflist = node_dir(&l, "node1").join("net.d/10-kindnet.conflist");
    // Until cleanup the node keeps it all, and the pods keep working.
    assert!(conflist.exists());
    let before = tables(&node1);
    for t in [
        "inet kindnet-masq",
        "inet kindnet-netpol",
        "inet kindnet-antispoof",
    ] {
        assert!(before.iter().any(|x| x == t), "{t} in {before:?}");
    }
    assert!(!proto_217(&node1).is_empty());
    assert!(connects(&l, "y-a", xa), "pods keep connectivity");
    assert!(!connects(&l, "z-b", xa), "and their isolation");

    // Someone else's things on node1.
    let (ok, out) = in_ns(&node1, &["nft", "add", "table", "inet", "someone-else"]);
    assert!(ok, "{out}");
    let (ok, out) = in_ns(
        &node1,
        &[
            "ip",
            "route",
            "add",
            "192.168.77.0/24",
            "via",
            "172.18.0.3",
            "proto",
            "217",
        ],
    );
    assert!(ok, "{out}");
    let foreign_conf = node_dir(&l, "node1").join("net.d/05-foreign.conflist");
    std::fs::write(
        &foreign_conf,
        "{\"cniVersion\":\"1.0.0\",\"name\":\"other\",\"plugins\":[]}\n",
    )
    .unwrap();
    let locks = dir.path().join("locks");
    std::fs::create_dir(&locks).unwrap();
    for f in [
        "nft-inet-kindnet-netpol.lock",
        "nft-inet-kindnet-portmap.lock",
        "foreign.lock",
    ] {
        std::fs::write(locks.join(f), "").unwrap();
    }
    let bin = dir.path().join("bin");
    let out = Command::new(bin_dir().join("kindnet-cni"))
        .args(["install", bin.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(bin.join("macvlan"), "#!/bin/sh\n").unwrap();
    let ipam = node_dir(&l, "node1").join("ipam");
    assert!(ipam.join("kindnet").is_dir(), "{:?}", names(&ipam));

    let kindnetd = bin_dir().join("kindnetd");
    let args = |dry: bool| {
        // with the cleanup Job's capabilities only (deploy/cleanup-kindnet.yaml)
        let mut a = vec![
            "setpriv".to_string(),
            "--bounding-set=-all,+net_admin".into(),
            "--inh-caps=-all".into(),
            "--".into(),
            kindnetd.to_str().unwrap().to_string(),
            "cleanup".into(),
            "--cni-conf-dir".into(),
            node_dir(&l, "node1").join("net.d").to_str().unwrap().into(),
            "--ipam-data-dir".into(),
            ipam.to_str().unwrap().into(),
            "--pod-subnet".into(),
            "10.244.0.0/16,fd00:10:244::/56".into(),
            "--lock-dir".into(),
            locks.to_str().unwrap().into(),
            "--cni-bin-dir".into(),
            bin.to_str().unwrap().into(),
        ];
        if dry {
            a.push("--dry-run".into());
        }
        a
    };
    // A dry run changes nothing.
    let dry = args(true);
    let dry: Vec<&str> = dry.iter().map(String::as_str).collect();
    let (ok, out) = in_ns(&node1, &dry);
    assert!(ok, "{out}");
    assert!(
        out.contains("would remove nftables table inet kindnet-netpol"),
        "{out}"
    );
    assert!(conflist.exists());
    assert_eq!(tables(&node1), {
        let mut b = before.clone();
        b.push("inet someone-else".into());
        b
    });

    let run = args(false);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let (ok, out) = in_ns(&node1, &run);
    assert!(ok, "cleanup failed:\n{out}");
    assert!(
        out.contains("keeping route 192.168.77.0/24 proto 217: outside the pod subnet"),
        "{out}"
    );

    // Nothing of ours is left...
    assert_eq!(tables(&node1), vec!["inet someone-else"], "{out}");
    assert_eq!(proto_217(&node1), vec!["192.168.77.0/24"], "{out}");
    assert!(!conflist.exists());
    assert!(!ipam.join("kindnet").exists());
    assert_eq!(names(&locks), vec!["foreign.lock"]);
    assert_eq!(names(&bin), vec!["macvlan"]);
    // ...and what is someone else's is untouched.
    assert!(foreign_conf.exists());
    // node2 was not cleaned: its kindnet state is still there.
    assert!(
        tables(&l.netns("node2"))
            .iter()
            .any(|t| t == "inet kindnet-masq")
    );

    // Again: nothing more to do, and it says so.
    let (ok, out) = in_ns(&node1, &run);
    assert!(ok, "{out}");
    assert!(!out.contains("removing"), "{out}");
}

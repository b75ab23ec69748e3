//! End-to-end: real labs (kindnetd per node, pods through the CNI plugins)
//! for every stack and mode, and the scenarios users meet. Needs root and the
//! workspace's binaries (`cargo test --workspace` builds them next to this
//! one); as non-root it skips.

mod common;

use common::*;
use kindnet_testbed::require_root;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A lab that is removed when the test ends, pass or fail.
struct Lab(String);

impl Lab {
    /// A lab named by `tag`'s first two characters and a suffix unique
    /// to this run (two checkouts testing at once do not collide).
    fn up(tag: &str, extra: &[&str]) -> Lab {
        let name = kindnet_testbed::unique_short(&tag[..tag.len().min(2)]);
        let mut args = vec!["up", "--name", &name];
        args.extend_from_slice(extra);
        lab_ok(&args);
        Lab(name)
    }
    fn check(&self) -> String {
        let out = lab_ok(&["check", "--name", &self.0]);
        assert!(out.contains(" 0 failed"), "{out}");
        out
    }
    fn netns(&self, suffix: &str) -> String {
        format!("kl-{}-{suffix}", self.0)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = lab(&["down", "--name", &self.0]);
        let left: Vec<String> = std::fs::read_dir("/var/run/netns")
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let prefix = format!("kl-{}-", self.0);
        if !std::thread::panicking() {
            assert!(
                !left.iter().any(|n| n.starts_with(&prefix)),
                "down left namespaces: {left:?}"
            );
        }
    }
}

fn matrix(name: &str, stack: &str, mode: &str) {
    matrix_chain(name, stack, mode, "single");
}

fn matrix_chain(name: &str, stack: &str, mode: &str, chain: &str) {
    matrix_on(name, stack, None, mode, chain);
}

/// The check matrix of a 2-node lab; `node_stack` sets the node network's
/// families apart from the pods'.
fn matrix_on(name: &str, stack: &str, node_stack: Option<&str>, mode: &str, chain: &str) -> String {
    if !kindnet_testbed::is_root() {
        eprintln!("skipping: this test needs root (network namespaces)");
        return String::new();
    }
    let mut args = vec![
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
        "--stack",
        stack,
        "--mode",
        mode,
        "--cni-chain",
        chain,
    ];
    if let Some(n) = node_stack {
        args.extend(["--node-stack", n]);
    }
    let l = Lab::up(name, &args);
    let conflist = std::fs::read_to_string(format!(
        "/run/kindnet-lab/{}/node1/net.d/10-kindnet.conflist",
        l.0
    ))
    .unwrap_or_default();
    let want = if chain == "single" {
        "\"kindnet\""
    } else {
        "\"portmap\""
    };
    assert!(conflist.contains(want), "{chain}: {conflist}");
    let out = l.check();
    for group in [
        "pod -> pod",
        "pod -> external (masquerade)",
        "hostPort from another node",
        "node -> remote pod",
        "layout",
        "CNI CHECK",
    ] {
        assert!(
            out.contains(group),
            "{stack}/{mode}: no {group:?} checks in:\n{out}"
        );
    }
    let fams = match stack {
        "ipv4" => vec!["== IPv4 =="],
        "ipv6" => vec!["== IPv6 =="],
        _ => vec!["== IPv4 ==", "== IPv6 =="],
    };
    for f in fams {
        assert!(out.contains(f), "{out}");
    }
    out
}

/// Issue 10: dual-stack pods on an IPv4-only node network. IPv6 pod CIDRs
/// are routed via the peers' link-local addresses (found through their
/// MACs); the whole matrix passes for both families (egress and hostPorts
/// only where the node network has the family).
#[test]
fn dual_pods_on_an_ipv4_only_node_network() {
    let out = matrix_on("e4n", "dual", Some("ipv4"), "ptp", "single");
    if out.is_empty() {
        return;
    }
    // The layout check read the kernel's route: via the peer's link-local.
    let v6 = out.split("== IPv6 ==").nth(1).unwrap_or_default();
    assert!(
        v6.contains("[ ok ] node1: route fd00:10:244:2::/64 via fe80::"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
}

/// Issue 10: dual-stack pods on an IPv6-only node network. IPv4 pod CIDRs
/// are routed via the peers' IPv6 addresses (`via inet6`).
#[test]
fn dual_pods_on_an_ipv6_only_node_network() {
    let out = matrix_on("e6n", "dual", Some("ipv6"), "ptp", "single");
    if out.is_empty() {
        return;
    }
    // The layout check read the kernel's route: `via inet6` the peer.
    let v4 = out
        .split("== IPv4 ==")
        .nth(1)
        .and_then(|s| s.split("== IPv6 ==").next())
        .unwrap_or_default();
    assert!(
        v4.contains("[ ok ] node1: route 10.244.2.0/24 via fc00:f853:ccd:e793::3 (node2)"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn dual_pods_on_an_ipv4_only_node_network_bridge() {
    matrix_on("e4nb", "dual", Some("ipv4"), "bridge", "single");
}

#[test]
fn ipv4_ptp() {
    matrix("e4p", "ipv4", "ptp");
}
#[test]
fn ipv6_ptp() {
    matrix("e6p", "ipv6", "ptp");
}
#[test]
fn dual_ptp() {
    matrix("edp", "dual", "ptp");
}
#[test]
fn dual_ptp_classic_chain() {
    matrix_chain("edpc", "dual", "ptp", "classic");
}
#[test]
fn dual_bridge_classic_chain() {
    matrix_chain("edbc", "dual", "bridge", "classic");
}
#[test]
fn ipv4_bridge() {
    matrix("e4b", "ipv4", "bridge");
}
#[test]
fn ipv6_bridge() {
    matrix("e6b", "ipv6", "bridge");
}
#[test]
fn dual_bridge() {
    matrix("edb", "dual", "bridge");
}

fn routes(ns: &str) -> String {
    let o = Command::new("ip")
        .args(["-n", ns, "route"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Packets received on eth0 in namespace `ns`.
fn rx_packets(ns: &str) -> u64 {
    let o = Command::new("ip")
        .args(["-n", ns, "-s", "-j", "link", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or(0)
}

fn eventually(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < end, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nodes_come_and_go() {
    require_root!();
    let l = Lab::up(
        "enode",
        &["--nodes", "2", "--pods-per-node", "1", "--stack", "ipv4"],
    );
    lab_ok(&["add-node", "--name", &l.0]);
    let n1 = l.netns("node1");
    eventually(
        "node1 routes to node3's pod CIDR",
        Duration::from_secs(3),
        || routes(&n1).contains("10.244.3.0/24 via 172.18.0.4"),
    );
    l.check();
    lab_ok(&["remove-node", "--name", &l.0, "node2"]);
    eventually("node1 drops node2's route", Duration::from_secs(3), || {
        !routes(&n1).contains("10.244.2.0/24")
    });
    assert!(
        routes(&n1).contains("10.244.3.0/24 via 172.18.0.4"),
        "the other routes stay"
    );
    l.check();
}

#[test]
fn deleted_pod_frees_its_address() {
    require_root!();
    let l = Lab::up(
        "epod",
        &["--nodes", "1", "--pods-per-node", "2", "--stack", "dual"],
    );
    let store = PathBuf::from(format!("/run/kindnet-lab/{}/node1/ipam/kindnet", l.0));
    let pod2 = format!("{}-node1-pod2", l.0);
    let owned = |cid: &str| -> Vec<String> {
        std::fs::read_dir(&store)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
            .filter(|f| {
                std::fs::read_to_string(store.join(f))
                    .unwrap_or_default()
                    .starts_with(cid)
            })
            .collect()
    };
    let before = owned(&pod2);
    assert_eq!(before.len(), 2, "one address per family");
    lab_ok(&["del-pod", "--name", &l.0, "node1-pod2"]);
    assert!(owned(&pod2).is_empty(), "DEL released the addresses");
    assert!(!std::path::Path::new(&format!("/var/run/netns/{}", l.netns("node1-pod2"))).exists());
    lab_ok(&["add-pod", "--name", &l.0, "node1", "--number", "3"]);
    l.check();
}

#[test]
fn kindnetd_restart_loses_no_connectivity() {
    require_root!();
    let l = Lab::up(
        "erst",
        &["--nodes", "2", "--pods-per-node", "1", "--stack", "dual"],
    );
    let before = routes(&l.netns("node1"));
    // ping across nodes all through the restart: 0.05 s apart for ~4 s
    let from = l.netns("node1-pod1");
    let pinger = std::thread::spawn(move || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &from,
                "ping",
                "-c",
                "80",
                "-i",
                "0.05",
                "-q",
                "10.244.2.2",
            ])
            .output()
            .unwrap()
    });
    // The restart comes once the pings flow (a few answered).
    let pod = l.netns("node1-pod1");
    let received = || rx_packets(&pod);
    let start = received();
    eventually(
        "pings flow before the restart",
        Duration::from_secs(5),
        || received() >= start + 3,
    );
    lab_ok(&["restart-kindnetd", "--name", &l.0, "node1"]);
    let out = pinger.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("80 received"),
        "packets lost during the restart: {text}"
    );
    // the restart did not churn correct routes
    eventually("routes settle", Duration::from_secs(3), || {
        routes(&l.netns("node1")) == before
    });
    l.check();
}

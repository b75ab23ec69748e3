//! For learners and debuggers: `kindnet-lab trace` against the lab's known
//! topology (same node, across nodes, to the outside, a hostPort; both
//! families; ptp and bridge), and `kindnetd doctor` run inside a lab node
//! after breaking one condition at a time. Needs root and the workspace's
//! binaries next to kindnet-lab; as non-root it skips.

mod common;

use common::*;
use kindnet_testbed::require_root;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run")
}

/// A lab removed when the test ends, pass or fail.
struct Lab(String);

impl Lab {
    /// A lab named by `tag`'s first two characters and a suffix unique
    /// to this run (two checkouts testing at once do not collide).
    fn up(tag: &str, extra: &[&str]) -> Lab {
        let name = kindnet_testbed::unique_short(&tag[..tag.len().min(2)]);
        let mut args = vec!["up", "--name", &name];
        args.extend_from_slice(extra);
        let o = lab(&args);
        assert!(o.status.success(), "up {name}: {}", text(&o));
        Lab(name)
    }

    fn ns(&self, node: &str) -> String {
        format!("kl-{}-{node}", self.0)
    }

    fn state(&self) -> PathBuf {
        PathBuf::from(format!("/run/kindnet-lab/{}", self.0))
    }

    /// `trace --json` for one family: the walk and the probe.
    fn trace(&self, from: &str, to: &str, target: Option<&str>, fam: &str) -> Value {
        let mut args = vec![
            "trace", from, to, "--json", "--family", fam, "--name", &self.0,
        ];
        if let Some(t) = target {
            args.insert(3, t);
        }
        let o = lab(&args);
        let v: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("trace {args:?}: {e}\n{}", text(&o)));
        assert!(o.status.success(), "trace {args:?} failed: {v:#}");
        v["traces"][0].clone()
    }

    /// `kindnet-lab doctor NODE --json`: no directories, node name or mode
    /// given; the doctor asks the node's kindnetd for them.
    fn doctor(&self, node: &str) -> (bool, Value) {
        let o = lab(&["doctor", node, "--json", "--name", &self.0]);
        let v: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("doctor: {e}\n{}", text(&o)));
        (o.status.success(), v)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = lab(&["down", "--name", &self.0]);
    }
}

fn hosts(t: &Value) -> Vec<String> {
    t["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap().to_string())
        .collect()
}

/// Delivered, and the real packet arrived with the source the walk predicted.
fn delivered(t: &Value, host: &str, src: &str) {
    assert_eq!(t["verdict"]["result"], "delivered", "{t:#}");
    assert_eq!(t["verdict"]["host"], host, "{t:#}");
    assert_eq!(t["verdict"]["src"], src, "{t:#}");
    assert_eq!(t["probe"]["arrived"], true, "{t:#}");
    assert_eq!(t["probe"]["seen_src"], src, "the receiver saw: {t:#}");
}

#[test]
fn trace_ptp_both_families() {
    require_root!();
    bin_dir();
    let l = Lab::up(
        "ltp",
        &["--nodes", "2", "--pods-per-node", "2", "--stack", "dual"],
    );
    for (fam, pod11, pod12, node2) in [
        ("4", "10.244.1.2", "10.244.1.3", "172.18.0.3"),
        (
            "6",
            "fd00:10:244:1::2",
            "fd00:10:244:1::3",
            "fc00:f853:ccd:e793::3",
        ),
    ] {
        // same node: through node1, no NAT
        let t = l.trace("node1-pod1", "node1-pod2", Some("8080/tcp"), fam);
        assert_eq!(hosts(&t), ["node1-pod1", "node1", "node1-pod2"]);
        assert!(
            t["hops"][1]["leaves_by"]
                .as_str()
                .unwrap()
                .starts_with("veth"),
            "{t:#}"
        );
        delivered(&t, "node1-pod2", pod11);
        // across nodes: four route lookups, kindnetd's route
        let t = l.trace("node1-pod1", "node2-pod1", Some("8080/tcp"), fam);
        assert_eq!(
            hosts(&t),
            ["node1-pod1", "node1", "segment", "node2", "node2-pod1"]
        );
        let m = t["hops"][1]["matched"].as_str().unwrap();
        assert!(m.contains("proto 217"), "{m}");
        assert!(
            t["hops"][4]["route"]
                .as_str()
                .unwrap()
                .starts_with("local "),
            "{t:#}"
        );
        delivered(&t, "node2-pod1", pod11);
        // to the outside: masqueraded to node2's address
        let t = l.trace("node2-pod2", "external", Some("8080/tcp"), fam);
        assert_eq!(hosts(&t), ["node2-pod2", "node2", "segment", "external"]);
        let nft = t["hops"][1]["nft"].to_string();
        assert!(nft.contains("masquerade to"), "{nft}");
        delivered(&t, "external", node2);
        // a hostPort on node1 from node2: DNAT to node1-pod1:8080
        let t = l.trace("node2", "node1", Some("30080"), fam);
        assert_eq!(hosts(&t), ["node2", "segment", "node1", "node1-pod1"]);
        assert!(t["hops"][2]["nft"].to_string().contains("DNAT to"), "{t:#}");
        assert_eq!(t["verdict"]["port"], 8080);
        delivered(&t, "node1-pod1", node2);
        // ICMP and UDP
        let t = l.trace("node1-pod2", "node2-pod2", None, fam);
        delivered(&t, "node2-pod2", pod12);
        let t = l.trace("node1-pod2", "node2-pod2", Some("5353/udp"), fam);
        delivered(&t, "node2-pod2", pod12);
    }
    // human output: a numbered walk
    let o = lab(&[
        "trace",
        "node1-pod1",
        "node2-pod1",
        "--name",
        &l.0,
        "--family",
        "4",
    ]);
    let out = text(&o);
    assert!(
        out.contains(&format!(" 1. node1-pod1 [kl-{}-node1-pod1]", l.0)),
        "{out}"
    );
    assert!(
        out.contains("real packet: icmp echo to 10.244.2.2"),
        "{out}"
    );
    // unknown endpoint
    let o = lab(&["trace", "node1-pod1", "nope", "--name", &l.0]);
    assert!(
        !o.status.success() && text(&o).contains("endpoints:"),
        "{}",
        text(&o)
    );
}

#[test]
fn trace_bridge() {
    require_root!();
    bin_dir();
    let l = Lab::up(
        "ltb",
        &[
            "--nodes",
            "2",
            "--pods-per-node",
            "2",
            "--stack",
            "ipv6",
            "--mode",
            "bridge",
        ],
    );
    let t = l.trace("node1-pod1", "node1-pod2", Some("8080"), "6");
    assert_eq!(
        hosts(&t),
        ["node1-pod1", "node1-pod2"],
        "bridged, not routed: {t:#}"
    );
    delivered(&t, "node1-pod2", "fd00:10:244:1::2");
    let t = l.trace("node1-pod1", "node2-pod2", Some("8080"), "6");
    assert!(
        t["hops"][1]["lookup"]
            .as_str()
            .unwrap()
            .ends_with("iif kind-br"),
        "{t:#}"
    );
    delivered(&t, "node2-pod2", "fd00:10:244:1::2");
}

fn check<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id}: {v:#}"))
}

fn sh(args: &[&str]) {
    let o = run(Command::new(args[0]).args(&args[1..]));
    assert!(o.status.success(), "{args:?}: {}", text(&o));
}

#[test]
fn doctor_names_what_was_broken() {
    require_root!();
    bin_dir();
    let l = Lab::up(
        "ldoc",
        &["--nodes", "2", "--pods-per-node", "1", "--stack", "dual"],
    );
    let (ok, v) = l.doctor("node1");
    assert!(ok, "a fresh lab node is healthy: {v:#}");
    assert_eq!(v["summary"]["fail"], 0, "{v:#}");
    // It checked the node as its kindnetd sees it: the lab's directories.
    assert_eq!(v["node"], "node1", "{v:#}");
    let c = check(&v, "config");
    assert_eq!(c["level"], "pass", "{c:#}");
    let net_d = l.state().join("node1/net.d");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains(&format!("conflist in {:?}", net_d.display().to_string())),
        "{c:#}"
    );
    assert_eq!(check(&v, "conflist")["level"], "pass", "{v:#}");
    assert_eq!(check(&v, "cni-binaries")["level"], "pass", "{v:#}");

    let n1 = l.ns("node1");
    // strict rp_filter on the uplink: a warning with the fix
    sh(&[
        "ip",
        "netns",
        "exec",
        &n1,
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv4/conf/eth0/rp_filter",
    ]);
    let (_, v) = l.doctor("node1");
    let c = check(&v, "rp-filter");
    assert_eq!(c["level"], "warn", "{c:#}");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("net.ipv4.conf.eth0.rp_filter = 1"),
        "{c:#}"
    );
    assert!(c["fix"].as_str().unwrap().contains("rp_filter=2"));

    // a lowered uplink MTU: the pods' veths are bigger
    sh(&["ip", "-n", &n1, "link", "set", "eth0", "mtu", "1400"]);
    let (ok, v) = l.doctor("node1");
    assert!(!ok, "a failure exits non-zero");
    let c = check(&v, "mtu");
    assert_eq!(c["level"], "fail", "{c:#}");
    assert!(
        c["message"].as_str().unwrap().contains("than eth0 (1400)"),
        "{c:#}"
    );

    // another CNI's conflist sorting first
    let other = l.state().join("node1/net.d/05-other.conflist");
    std::fs::write(
        &other,
        r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    let (_, v) = l.doctor("node1");
    let c = check(&v, "conflist-order");
    assert_eq!(c["level"], "fail", "{c:#}");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .starts_with("05-other.conflist sorts before 10-kindnet.conflist"),
        "{c:#}"
    );

    // /readyz of a restarted kindnetd lists the findings; conflist-order gates readiness
    let o = lab(&["restart-kindnetd", "--name", &l.0, "node1"]);
    assert!(o.status.success(), "{}", text(&o));
    let end = Instant::now() + Duration::from_secs(15);
    let readyz = loop {
        let o = run(Command::new("ip").args([
            "netns",
            "exec",
            &n1,
            "curl",
            "-s",
            "127.0.0.1:19080/readyz",
        ]));
        let body = String::from_utf8_lossy(&o.stdout).into_owned();
        if body.contains("[FAIL] conflist-order") || Instant::now() > end {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(readyz.contains("[FAIL] conflist-order"), "{readyz}");
    assert!(readyz.contains("[warn] rp-filter"), "{readyz}");
    assert!(readyz.ends_with("not ready\n"), "{readyz}");

    // a peer moved off-link: node2's IPv4 address is now on another subnet
    let nodes = l.state().join("nodes.json");
    let moved = std::fs::read_to_string(&nodes)
        .unwrap()
        .replace("\"172.18.0.3\"", "\"172.19.0.3\"");
    let tmp = l.state().join("nodes.json.new");
    std::fs::write(&tmp, moved).unwrap();
    std::fs::rename(&tmp, &nodes).unwrap();
    let (_, v) = l.doctor("node1");
    let c = check(&v, "peer node2");
    assert_eq!(c["level"], "fail", "{c:#}");
    let m = c["message"].as_str().unwrap();
    assert!(
        m.contains(
            "10.244.2.0/24: not routed: next hop 172.19.0.3 is not on-link (reached via 172.18.0.1)"
        ),
        "{m}"
    );
    assert!(
        m.contains(
            "fd00:10:244:2::/64 via fc00:f853:ccd:e793::3 dev eth0 (on-link), route installed"
        ),
        "{m}"
    );
    assert!(c["fix"].as_str().unwrap().contains("one L2 segment"));
}

//! NetworkPolicy between two pods of one node in bridge mode: their packets
//! cross the bridge, and reach the policy's forward hook only through
//! br_netfilter. kindnetd keeps `bridge-nf-call-iptables`/`-ip6tables` on;
//! here they are turned off under it, and policy must still hold.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{lab_ok, lab_stdout};
use serde_json::Value;

/// The lab's name: unique to this run, so two checkouts testing at once
/// do not collide.
fn lab_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| kindnet_testbed::unique_short("nb"))
}

struct Down;
impl Drop for Down {
    fn drop(&mut self) {
        let _ = common::lab(&["down", "--name", lab_name()]);
    }
}

fn node_sysctl(key: &str) -> String {
    let o = Command::new("ip")
        .args(["netns", "exec", &format!("kl-{}-node1", lab_name()), "cat"])
        .arg(format!("/proc/sys/{key}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn set_node_sysctl(key: &str, value: &str) {
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("kl-{}-node1", lab_name()),
            "sh",
            "-c",
        ])
        .arg(format!("echo {value} > /proc/sys/{key}"))
        .status()
        .unwrap();
    assert!(st.success());
}

/// (family, connected) of each probe line.
fn probe(from: &str, to: &str) -> Vec<(String, bool)> {
    lab_stdout(&["probe", "--name", lab_name(), from, to, "80/tcp", "--json"])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            (
                v["family"].as_str().unwrap_or("").to_string(),
                v["connected"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn policy_holds_between_pods_of_one_node_on_a_bridge() {
    kindnet_testbed::require_root!();
    let _down = Down;
    lab_ok(&[
        "up",
        "--name",
        lab_name(),
        "--nodes",
        "1",
        "--mode",
        "bridge",
        "--pods-per-node",
        "1",
        "--netpol-model",
    ]);
    let deny = std::env::temp_dir().join(format!("{}-deny.yaml", lab_name()));
    std::fs::write(
        &deny,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )
    .unwrap();
    let probed = probe("y/a", "x/a");
    assert_eq!(probed.len(), 2, "both families: {probed:?}");
    assert!(probed.iter().all(|(_, c)| *c), "no policy yet: {probed:?}");
    lab_ok(&["apply", "--name", lab_name(), "-f", deny.to_str().unwrap()]);
    let _ = std::fs::remove_file(&deny);
    assert!(probe("y/a", "x/a").iter().all(|(_, c)| !*c));

    // Someone turns br_netfilter's hand-off off: bridged packets would
    // skip the hook. kindnetd's next full pass turns it back on.
    let keys = [
        "net/bridge/bridge-nf-call-iptables",
        "net/bridge/bridge-nf-call-ip6tables",
    ];
    for k in keys {
        set_node_sysctl(k, "0");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while keys.iter().any(|k| node_sysctl(k) != "1") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for k in keys {
        assert_eq!(node_sysctl(k), "1", "{k} is not restored by kindnetd");
    }
    let probed = probe("y/a", "x/a");
    assert!(
        probed.iter().all(|(_, c)| !*c),
        "deny-all must hold: {probed:?}"
    );
    // The trace says where and why: node1's forward hook, x/deny.
    // (trace exits non-zero when the packet does not arrive, as ping does)
    let out = common::lab(&[
        "trace",
        "--name",
        lab_name(),
        "y/a",
        "x/a",
        "80",
        "--json",
        "--family",
        "4",
    ]);
    let walk: Value = serde_json::from_slice(&out.stdout).unwrap();
    let walk = &walk["traces"][0];
    assert_eq!(walk["verdict"]["result"], "dropped", "{walk}");
    assert_eq!(walk["verdict"]["host"], "node1", "{walk}");
    let why = walk["verdict"]["why"].as_str().unwrap_or("");
    assert!(why.contains("isolated by x/deny"), "{walk}");
    // And what is not selected still connects over the bridge.
    assert!(probe("x/a", "y/a").iter().all(|(_, c)| *c));
}

//! Driven through libcni (cnidrive), the library container runtimes use: it
//! loads kind's conflist, chains ptp and portmap with prevResult, caches
//! results and validates every result it gets, for every version it knows.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;

fn cnidrive() -> Option<String> {
    let p = Command::new("sh")
        .args(["-c", "command -v cnidrive"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&p.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// kind's conflist: ptp + host-local + portmap (and a loopback list).
fn kind_conflist(version: &str, data: &str) -> serde_json::Value {
    json!({
        "cniVersion": version, "name": "kindnet-test",
        "plugins": [
            {"type": "ptp", "ipMasq": false, "mtu": 1500,
             "ipam": {"type": "host-local", "dataDir": data,
                      "ranges": [[{"subnet": V4_SUBNET}], [{"subnet": V6_SUBNET}]],
                      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

#[test]
fn libcni_accepts_every_version_and_command() {
    require_root!();
    let Some(drive) = cnidrive() else {
        eprintln!("skipping: cnidrive not built (scripts/setup.sh builds it)");
        return;
    };
    for plugin in ["ptp", "bridge", "host-local", "portmap", "loopback"] {
        let o = Command::new(&drive)
            .args(["version", plugin])
            .env("CNI_PATH", plugin_dir())
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && s.contains("1.0.0") && s.contains("0.3.1"),
            "{plugin}: {s}"
        );
    }
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        let node = Ns::new("node");
        let pod = Ns::new("pod");
        let dir = TempDir::new("libcni");
        let list = dir.path().join("10-kindnet.conflist");
        std::fs::write(
            &list,
            kind_conflist(version, &dir.path().join("ipam").display().to_string()).to_string(),
        )
        .unwrap();
        let run = |cmd: &str, portmap: &str| {
            let o = Command::new("ip")
                .args(["netns", "exec", &node.name, &drive, cmd])
                .arg(&list)
                .args([&pod.path(), "ctr"])
                .env("CNI_PATH", plugin_dir())
                .env("CNI_CACHE_DIR", dir.path().join("cache"))
                .env("PORTMAP", portmap)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{version} {cmd}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let pm = r#"[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]"#;
        let res: serde_json::Value = serde_json::from_str(&run("add", pm)).unwrap();
        assert_eq!(res["ips"].as_array().unwrap().len(), 2, "{version}: {res}");
        assert!(
            pod.ping("10.244.1.1") && pod.ping("fd00:10:244:1::1"),
            "{version}"
        );
        if version != "0.3.0" && version != "0.3.1" {
            assert!(run("check", pm).contains("CHECK ok"));
        }
        run("del", pm);
        run("del", pm);
        eventually("DEL removed eth0", || {
            !pod.links().contains(&"eth0".to_string())
        });
    }
}

#[test]
fn libcni_bench_smoke_has_no_errors_or_duplicates() {
    require_root!();
    let Some(drive) = cnidrive() else {
        eprintln!("skipping: cnidrive not built (scripts/setup.sh builds it)");
        return;
    };
    let node = Ns::new("node");
    let dir = TempDir::new("libcni");
    let list = dir.path().join("10-kindnet.conflist");
    std::fs::write(
        &list,
        kind_conflist("1.0.0", &dir.path().join("ipam").display().to_string()).to_string(),
    )
    .unwrap();
    let o = Command::new("ip")
        .args(["netns", "exec", &node.name, &drive, "bench"])
        .arg(&list)
        .args(["24", "8"])
        .env("CNI_PATH", plugin_dir())
        .env("CNI_CACHE_DIR", dir.path().join("cache"))
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{s}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(s.trim()).unwrap();
    assert_eq!(v["errors"], 0);
    assert_eq!(v["pods"], 24);
}

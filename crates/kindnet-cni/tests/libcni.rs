//! Driven through libcni, the library container runtimes use, by the
//! project's own driver (`tools/libcni-driver`, built by `scripts/setup.sh`
//! into `target/libcni-driver`; `KINDNET_LIBCNI_DRIVER` names another): it
//! loads kind's conflist, chains ptp and portmap with prevResult, caches
//! results and validates every result it gets, for every version it knows.
//! Without the driver these tests skip (fail under
//! `KINDNET_TEST_REQUIRE_ROOT=1`).

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

/// Where the driver is: `KINDNET_LIBCNI_DRIVER`, else `libcni-driver` in the
/// target directory these tests were built in.
fn driver_path() -> String {
    if let Ok(p) = std::env::var("KINDNET_LIBCNI_DRIVER") {
        return p;
    }
    // target/<profile>/kindnet-cni -> target/libcni-driver
    let bin = Path::new(env!("CARGO_BIN_EXE_kindnet-cni"));
    let target = bin
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    target.join("libcni-driver").display().to_string()
}

macro_rules! require_driver {
    () => {
        require_tool!(
            driver_path(),
            "the libcni driver: scripts/setup.sh or tools/libcni-driver/build.sh builds it"
        )
    };
}

/// Runs the driver (inside `node` when given) with `env`.
fn drive(driver: &Path, node: Option<&Ns>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = match node {
        Some(n) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &n.name]).arg(driver);
            c
        }
        None => Command::new(driver),
    };
    c.args(args).env("CNI_PATH", plugin_dir());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// [`drive`], asserting success; returns stdout.
fn drive_ok(driver: &Path, node: Option<&Ns>, args: &[&str], env: &[(&str, &str)]) -> String {
    let o = drive(driver, node, args, env);
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The conflist kindnetd writes (its own renderer, `kindnetd
/// --print-conflist`, built next to this test by `cargo test --workspace`)
/// for `chain` (`single` or `classic`), at spec `version`.
fn kindnetd_conflist(version: &str, data: &str, chain: &str) -> Value {
    let kindnetd = Path::new(env!("CARGO_BIN_EXE_kindnet-cni")).with_file_name("kindnetd");
    assert!(
        kindnetd.is_file(),
        "{} is missing: `cargo test --workspace` (or `cargo build -p kindnetd`) builds it",
        kindnetd.display()
    );
    let o = Command::new(&kindnetd)
        .args(["--print-conflist", "--cni-chain", chain, "--mtu", "1500"])
        .args(["--static-pod-cidrs", &format!("{V4_SUBNET},{V6_SUBNET}")])
        .args(["--ipam-data-dir", data])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["cniVersion"] = json!(version);
    // the tests' own network name, so their IPAM dir and cache are theirs
    v["name"] = json!("kindnet-test");
    v
}

/// kind's conflist as kindnetd writes it with `--cni-chain=classic`.
fn kind_conflist(version: &str, data: &str) -> Value {
    kindnetd_conflist(version, data, "classic")
}

fn write_list(dir: &TempDir, file: &str, list: &Value) -> String {
    let p = dir.path().join(file);
    std::fs::write(&p, list.to_string()).unwrap();
    p.display().to_string()
}

#[test]
fn libcni_accepts_every_version_and_command() {
    require_root!();
    let driver = require_driver!();
    for plugin in kindnet_cni::PLUGIN_NAMES {
        let s = drive_ok(&driver, None, &["version", plugin], &[]);
        assert!(s.contains("1.0.0") && s.contains("0.3.1"), "{plugin}: {s}");
    }
    // Debian's libcni speaks up to 1.0.0; both chains kindnetd can write.
    let versions = kindnet_cni_spec::version::SUPPORTED
        .iter()
        .filter(|v| **v != "1.1.0");
    for (version, chain) in versions.flat_map(|v| [(v, "single"), (v, "classic")]) {
        let node = Ns::new("node");
        let pod = Ns::new("pod");
        let dir = temp_dir("libcni");
        let list = write_list(
            &dir,
            "10-kindnet.conflist",
            &kindnetd_conflist(
                version,
                &dir.path().join("ipam").display().to_string(),
                chain,
            ),
        );
        let cache = dir.path().join("cache").display().to_string();
        let pm = r#"[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]"#;
        let env = [("CNI_CACHE_DIR", cache.as_str()), ("PORTMAP", pm)];
        let pod_path = pod.path();
        let run = |cmd: &str| drive_ok(&driver, Some(&node), &[cmd, &list, &pod_path, "ctr"], &env);
        let res: Value = serde_json::from_str(&run("add")).unwrap();
        assert_eq!(
            res["ips"].as_array().unwrap().len(),
            2,
            "{version} {chain}: {res}"
        );
        assert!(
            pod.ping_eventually("10.244.1.1") && pod.ping_eventually("fd00:10:244:1::1"),
            "{version}"
        );
        if kindnet_cni_spec::version::has_check(version) {
            assert!(run("check").contains("CHECK ok"), "{version} {chain}");
        }
        run("del");
        run("del");
        eventually("DEL removed eth0", || {
            !pod.links().contains(&"eth0".to_string())
        });
    }
}

/// STATUS and GC (CNI 1.1.0) through the driver: Debian's libcni runs the
/// pods' ADD with cniVersion 1.0.0; the same network at 1.1.0 gets STATUS
/// and GC.
#[test]
fn libcni_status_and_gc_release_what_is_not_valid() {
    require_root!();
    let driver = require_driver!();
    let node = Ns::new("node");
    let dir = temp_dir("libcni");
    let ipam = dir.path().join("ipam").display().to_string();
    let list = write_list(&dir, "10.conflist", &kind_conflist("1.0.0", &ipam));
    let list11 = write_list(&dir, "11.conflist", &kind_conflist("1.1.0", &ipam));
    let cache = dir.path().join("cache");
    let cache_s = cache.display().to_string();
    let env = [("CNI_CACHE_DIR", cache_s.as_str())];
    let pods: Vec<Ns> = (0..3).map(|_| Ns::new("pod")).collect();
    for (i, pod) in pods.iter().enumerate() {
        let id = format!("ctr{i}");
        drive_ok(
            &driver,
            Some(&node),
            &["add", &list, &pod.path(), &id],
            &env,
        );
    }
    assert_eq!(allocated(&ipam).len(), 6);
    assert!(drive_ok(&driver, Some(&node), &["status", &list11], &env).contains("STATUS ok"));
    assert!(
        drive_ok(&driver, Some(&node), &["status", &list], &env).contains("skipped"),
        "no STATUS before 1.1.0"
    );
    let veths = || {
        node.links()
            .into_iter()
            .filter(|l| l.starts_with("veth"))
            .count()
    };
    assert_eq!(veths(), 3);

    // ctr2's runtime lost its cache entry: only the plugins' GC can free it.
    let results = cache.join("results");
    std::fs::remove_file(results.join("kindnet-test-ctr2-eth0")).unwrap();
    let gc: Value = serde_json::from_str(&drive_ok(
        &driver,
        Some(&node),
        &["gc", &list11, "ctr0", "ctr1/eth0"],
        &env,
    ))
    .unwrap();
    assert_eq!(gc["deleted"], json!([]), "{gc}");
    assert_eq!(gc["gc"], true, "{gc}");
    assert_eq!(allocated(&ipam).len(), 4, "ctr2's addresses freed");
    eventually("GC removed ctr2's veth", || veths() == 2);

    // ctr1 is no longer valid and still cached: DEL through the cache.
    let gc: Value = serde_json::from_str(&drive_ok(
        &driver,
        Some(&node),
        &["gc", &list11, "ctr0"],
        &env,
    ))
    .unwrap();
    assert_eq!(
        gc["deleted"],
        json!([{"containerID": "ctr1", "ifname": "eth0"}]),
        "{gc}"
    );
    assert_eq!(allocated(&ipam).len(), 2);
    eventually("ctr1's veth removed", || veths() == 1);
    assert!(
        pods[0].ping_eventually("10.244.1.1"),
        "the valid pod keeps its network"
    );
}

/// What reaches a plugin through the driver, seen by a plugin that records
/// its environment and stdin: containerd's CNI_ARGS, the capability
/// arguments the plugin declares (and only those), STATUS and GC as newer
/// libcni sends them. Needs no root: nothing touches a network.
#[test]
fn libcni_driver_sends_what_a_runtime_sends() {
    let driver = require_driver!();
    let dir = temp_dir("spy");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let spy = bin.join("spy");
    std::fs::write(
        &spy,
        format!(
            "#!/bin/sh\nenv > {0}/$CNI_COMMAND.env\ncat > {0}/$CNI_COMMAND.json\n\
             [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\"}}'\nexit 0\n",
            dir.str()
        ),
    )
    .unwrap();
    sh_ok(&["chmod", "755", &spy.display().to_string()]);
    let conflist = |v: &str| {
        json!({"cniVersion": v, "name": "spy-net",
               "plugins": [{"type": "spy", "capabilities": {"portMappings": true}}]})
    };
    let list = write_list(&dir, "10.conflist", &conflist("1.0.0"));
    let list11 = write_list(&dir, "11.conflist", &conflist("1.1.0"));
    let bin_s = bin.display().to_string();
    let cache = dir.path().join("cache").display().to_string();
    let pm = r#"[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]"#;
    let env = [
        ("CNI_PATH", bin_s.as_str()),
        ("CNI_CACHE_DIR", cache.as_str()),
        ("PORTMAP", pm),
        ("CAPABILITY_ARGS", r#"{"bandwidth":{"ingressRate":1000}}"#),
        ("K8S_POD_NAMESPACE", "kube-system"),
        ("K8S_POD_NAME", "coredns-1"),
        ("K8S_POD_UID", "0b5e3c1a-8d52-4c4e-9a8e-6f4f2f1d2c3b"),
    ];
    let read_env = |cmd: &str| -> HashMap<String, String> {
        std::fs::read_to_string(dir.path().join(format!("{cmd}.env")))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let read_conf = |cmd: &str| -> Value {
        serde_json::from_slice(&std::fs::read(dir.path().join(format!("{cmd}.json"))).unwrap())
            .unwrap()
    };

    drive_ok(
        &driver,
        None,
        &["add", &list, "/var/run/netns/x", "abc123", "net1"],
        &env,
    );
    let e = read_env("ADD");
    assert_eq!(e["CNI_COMMAND"], "ADD");
    assert_eq!(e["CNI_CONTAINERID"], "abc123");
    assert_eq!(e["CNI_NETNS"], "/var/run/netns/x");
    assert_eq!(e["CNI_IFNAME"], "net1");
    assert_eq!(e["CNI_PATH"], bin_s);
    assert_eq!(
        e["CNI_ARGS"],
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1;\
         K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=0b5e3c1a-8d52-4c4e-9a8e-6f4f2f1d2c3b"
    );
    let c = read_conf("ADD");
    assert_eq!(c["name"], "spy-net");
    assert_eq!(c["cniVersion"], "1.0.0");
    assert_eq!(
        c["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}),
        "only the declared capability"
    );

    // the defaults: namespace "default", the pod named by its container ID
    let plain = [
        ("CNI_PATH", bin_s.as_str()),
        ("CNI_CACHE_DIR", cache.as_str()),
    ];
    drive_ok(
        &driver,
        None,
        &["add", &list, "/var/run/netns/x", "def456"],
        &plain,
    );
    let args = read_env("ADD")["CNI_ARGS"].clone();
    assert!(
        args.starts_with(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=def456;\
             K8S_POD_INFRA_CONTAINER_ID=def456;K8S_POD_UID="
        ),
        "{args}"
    );
    assert_eq!(read_env("ADD")["CNI_IFNAME"], "eth0");

    // DEL gets the cached result as prevResult, and "" or "-" as no netns
    drive_ok(&driver, None, &["del", &list, "-", "abc123", "net1"], &env);
    assert_eq!(read_env("DEL")["CNI_NETNS"], "");
    assert_eq!(read_conf("DEL")["prevResult"]["cniVersion"], "1.0.0");

    drive_ok(&driver, None, &["status", &list11], &env);
    assert_eq!(read_env("STATUS")["CNI_COMMAND"], "STATUS");
    assert_eq!(read_conf("STATUS")["cniVersion"], "1.1.0");

    // def456 is still cached: GC sends its DEL first, then GC
    let gc: Value = serde_json::from_str(&drive_ok(
        &driver,
        None,
        &["gc", &list11, "abc123/net1", "other"],
        &env,
    ))
    .unwrap();
    assert_eq!(
        gc["deleted"],
        json!([{"containerID": "def456", "ifname": "eth0"}])
    );
    assert_eq!(read_env("DEL")["CNI_CONTAINERID"], "def456");
    let c = read_conf("GC");
    assert_eq!(c["cniVersion"], "1.1.0");
    assert_eq!(c["name"], "spy-net");
    assert_eq!(
        c["cni.dev/valid-attachments"],
        json!([{"containerID": "abc123", "ifname": "net1"}, {"containerID": "other", "ifname": "eth0"}])
    );
}

/// `version CONFLIST`: the cniVersion libcni picks. Debian's libcni reads
/// `cniVersion` only, so a list that also offers `cniVersions` gets its
/// `cniVersion`.
#[test]
fn libcni_driver_reports_the_picked_cni_version() {
    let driver = require_driver!();
    let dir = temp_dir("libcni");
    let list = write_list(
        &dir,
        "10.conflist",
        &json!({"cniVersion": "1.0.0", "cniVersions": ["1.1.0", "1.0.0"], "name": "n",
                "plugins": [{"type": "ptp"}]}),
    );
    let v: Value =
        serde_json::from_str(&drive_ok(&driver, None, &["version", &list], &[])).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0", "{v}");
    assert_eq!(v["offered"], json!(["1.1.0", "1.0.0"]), "{v}");
    assert_eq!(v["supported"], true, "{v}");
    let list11 = write_list(
        &dir,
        "11.conflist",
        &json!({"cniVersion": "1.1.0", "name": "n", "plugins": [{"type": "ptp"}]}),
    );
    let v: Value =
        serde_json::from_str(&drive_ok(&driver, None, &["version", &list11], &[])).unwrap();
    assert_eq!(v["cniVersion"], "1.1.0", "{v}");
    assert_eq!(v["supported"], false, "Debian's libcni stops at 1.0.0: {v}");
}

#[test]
fn libcni_bench_smoke_has_no_errors_or_duplicates() {
    require_root!();
    let driver = require_driver!();
    let node = Ns::new("node");
    let dir = temp_dir("libcni");
    let list = write_list(
        &dir,
        "10-kindnet.conflist",
        &kind_conflist("1.0.0", &dir.path().join("ipam").display().to_string()),
    );
    let cache = dir.path().join("cache").display().to_string();
    let s = drive_ok(
        &driver,
        Some(&node),
        &["bench", &list, "24", "8"],
        &[("CNI_CACHE_DIR", &cache)],
    );
    let v: Value = serde_json::from_str(s.trim()).unwrap();
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["pods"], 24, "{v}");
    for phase in ["add", "check", "del"] {
        let p50 = v[format!("{phase}_p50_ms")].as_f64().unwrap();
        let p99 = v[format!("{phase}_p99_ms")].as_f64().unwrap();
        let max = v[format!("{phase}_max_ms")].as_f64().unwrap();
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{phase}: {v}");
    }
}

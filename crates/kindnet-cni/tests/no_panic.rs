//! Mutated configurations (keys dropped, values of the wrong type, random
//! strings and numbers, truncation, stray bytes) through the skeleton of
//! every plugin, for every command: no panic, exit code 0 or 1, and stdout
//! is exactly one JSON object (or empty for a successful DEL, CHECK, STATUS
//! or GC); an error object has an integer `code` and a non-empty `msg`.
//!
//! Needs no root and changes nothing on the host, even when run as root:
//! * `CNI_NETNS` does not exist and `CNI_PATH` is a missing directory, so
//!   `ptp` and `bridge` fail to resolve their IPAM before they touch
//!   anything, and `loopback` finds no namespace;
//! * every `ipam.dataDir` and `ipam.resolvConf` that would be used is pinned
//!   into a temporary directory, so `host-local` only ever writes there;
//! * `portmap` is run only where it cannot reach nftables or conntrack (no
//!   port mappings for ADD, DEL and CHECK; GC only when the configuration
//!   cannot reach the plugin).
//!
//! [`safe`] checks the final bytes (after byte-level mutation) with the
//! same JSON parser the skeleton uses, and skips any input that breaks these
//! rules. `PROPTEST_CASES` sets the number of cases (default 2048, ~1.5 s).

use kindnet_cni::{PLUGIN_NAMES, plugin_for};
use kindnet_cni_spec::skeleton::dispatch;
use kindnet_testbed::temp_dir;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::path::Path;

const PANIC_MSG: &str = "internal error: the plugin panicked";
const NETNS: &str = "/nonexistent/kindnet-no-panic/netns";
const CNI_PATH: &str = "/nonexistent/kindnet-no-panic/bin";
const COMMANDS: &[&str] = &["VERSION", "ADD", "DEL", "CHECK", "STATUS", "GC"];
const CNI_ARGS: &[&str] = &[
    "",
    "IgnoreUnknown=1",
    "IP=10.244.1.9",
    "IgnoreUnknown=1;IP=fd00:10:244:1::9,10.244.1.300;K8S_POD_NAME=p",
];

/// Where `host-local` may write and what it may read.
struct Sandbox {
    data_dir: String,
    resolv_conf: String,
}

/// Valid configurations, one or more per plugin, in every spec version.
fn bases(sb: &Sandbox) -> Vec<Value> {
    let ipam_v4 = json!({
        "type": "host-local",
        "dataDir": sb.data_dir,
        "routes": [{"dst": "0.0.0.0/0"}],
        "ranges": [[{"subnet": "10.244.1.0/24"}]]
    });
    let ipam_dual = json!({
        "type": "host-local",
        "dataDir": sb.data_dir,
        "resolvConf": sb.resolv_conf,
        "ranges": [
            [{"subnet": "10.244.0.0/24", "rangeStart": "10.244.0.10", "rangeEnd": "10.244.0.20", "gateway": "10.244.0.1"}],
            [{"subnet": "fd00:10:244::/120"}]
        ],
        "routes": [{"dst": "::/0", "gw": "fd00:10:244::1", "mtu": 1400, "table": 100}]
    });
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "veth0", "mac": "aa:bb:cc:dd:ee:01"},
                       {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": NETNS}],
        "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0"}]
    });
    let attachments = json!([{"containerID": "c1", "ifname": "eth0"}]);
    vec![
        json!({"cniVersion": "1.0.0", "name": "kindnet", "type": "ptp", "ipMasq": false,
               "mtu": 1500, "ipam": ipam_v4, "prevResult": prev}),
        json!({"cniVersion": "1.1.0", "name": "kindnet", "type": "bridge", "bridge": "kind-br",
               "isGateway": true, "isDefaultGateway": true, "hairpinMode": true, "ipMasq": true,
               "ipam": ipam_dual, "cni.dev/valid-attachments": attachments}),
        json!({"cniVersion": "0.3.1", "name": "legacy", "type": "host-local",
               "ipam": {"type": "host-local", "subnet": "10.10.0.0/16", "rangeStart": "10.10.1.20",
                        "rangeEnd": "10.10.1.50", "gateway": "10.10.0.254", "dataDir": sb.data_dir}}),
        json!({"cniVersion": "1.1.0", "name": "gc-net", "type": "host-local",
               "ipam": ipam_v4, "cni.dev/valid-attachments": attachments,
               "runtimeConfig": {"ipRanges": [[{"subnet": "10.250.0.0/30"}]], "ips": ["10.250.0.2"]},
               "args": {"cni": {"ips": ["10.244.1.7"]}}}),
        json!({"cniVersion": "0.4.0", "name": "kindnet", "type": "portmap",
               "capabilities": {"portMappings": true},
               "runtimeConfig": {"portMappings": [
                   {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                   {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "172.18.0.2"}]},
               "prevResult": prev}),
        json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}),
    ]
}

/// One step of a JSON path.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Idx(usize),
}

/// Every node of `v` (the root first), as paths.
fn paths(v: &Value) -> Vec<Vec<Seg>> {
    fn walk(v: &Value, at: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    at.push(Seg::Key(k.clone()));
                    walk(c, at, out);
                    at.pop();
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    at.push(Seg::Idx(i));
                    walk(c, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn node_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, s| match s {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::Idx(i) => v.get_mut(*i),
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Removes the node (a key of an object or an element of an array).
    Drop(Index),
    /// Replaces the node with another value (often of another type).
    Replace(Index, Value),
    /// Adds a key to an object (or an element to an array).
    Insert(Index, String, Value),
}

fn apply(v: &mut Value, m: &Mutation) {
    let all = paths(v);
    match m {
        Mutation::Drop(i) => {
            let mut path = i.get::<Vec<Seg>>(&all).clone();
            let Some(last) = path.pop() else { return };
            match (node_mut(v, &path), last) {
                (Some(Value::Object(o)), Seg::Key(k)) => {
                    o.remove(&k);
                }
                (Some(Value::Array(a)), Seg::Idx(i)) => {
                    a.remove(i);
                }
                _ => {}
            }
        }
        Mutation::Replace(i, new) => {
            if let Some(n) = node_mut(v, i.get::<Vec<Seg>>(&all)) {
                *n = new.clone();
            }
        }
        Mutation::Insert(i, key, new) => match node_mut(v, i.get::<Vec<Seg>>(&all)) {
            Some(Value::Object(o)) => {
                o.insert(key.clone(), new.clone());
            }
            Some(Value::Array(a)) => a.push(new.clone()),
            _ => {}
        },
    }
}

/// Strings the parsers care about, and some they should refuse.
const STRINGS: &[&str] = &[
    "",
    " ",
    "0",
    "-1",
    "0.3.0",
    "0.3.1",
    "0.4.0",
    "1.0.0",
    "1.1.0",
    "9.9.9",
    "1.0",
    "host-local",
    "ptp",
    "bridge",
    "portmap",
    "loopback",
    "tcp",
    "UDP",
    "sctp",
    "eth0",
    "..",
    "a/b",
    "kind-br-with-a-long-name",
    "10.244.1.0/24",
    "10.244.1.5",
    "10.244.1.1",
    "10.244.1.255",
    "10.244.2.0/24",
    "10.0.0.0/8",
    "10.0.0.0/31",
    "10.0.0.0/32",
    "0.0.0.0/0",
    "0.0.0.0",
    "255.255.255.255/32",
    "10.244.1.5/33",
    "fd00:10:244::/120",
    "fd00:10:244::5",
    "fd00::/127",
    "fd00::/128",
    "::/0",
    "::",
    "::ffff:10.244.1.5",
    "fe80::1%eth0",
    "not-an-ip",
    "\u{0}",
    "ä/ö",
];

/// Keys the configurations use (so an insertion often means something).
const KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "ipam",
    "dns",
    "prevResult",
    "runtimeConfig",
    "args",
    "capabilities",
    "cni.dev/valid-attachments",
    "ranges",
    "subnet",
    "rangeStart",
    "rangeEnd",
    "gateway",
    "routes",
    "dst",
    "gw",
    "ips",
    "ipRanges",
    "portMappings",
    "hostPort",
    "containerPort",
    "protocol",
    "hostIP",
    "interfaces",
    "interface",
    "address",
    "sandbox",
    "mtu",
    "bridge",
    "isGateway",
    "isDefaultGateway",
    "forceAddress",
    "ipMasq",
    "vlan",
    "conditionsV4",
    "containerID",
    "ifname",
    "nameservers",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(-1),
            Just(65535),
            Just(65536),
            Just(i64::MIN),
            any::<i64>(),
        ]
        .prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        prop::sample::select(STRINGS).prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::from),
        "[0-9a-f:./]{0,24}".prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..3)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => "\\PC{0,8}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Drop),
        2 => (any::<Index>(), value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => (any::<Index>(), key(), value()).prop_map(|(i, k, v)| Mutation::Insert(i, k, v)),
    ]
}

/// Byte-level damage after serialising.
#[derive(Debug, Clone)]
enum Damage {
    None,
    Truncate(Index),
    InsertByte(Index, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        6 => Just(Damage::None),
        2 => any::<Index>().prop_map(Damage::Truncate),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Damage::InsertByte(i, b)),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    plugin: Index,
    command: Index,
    base: Index,
    args: Index,
    mutations: Vec<Mutation>,
    damage: Damage,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<Index>(),
        any::<Index>(),
        any::<Index>(),
        any::<Index>(),
        prop::collection::vec(mutation(), 0..4),
        damage(),
    )
        .prop_map(|(plugin, command, base, args, mutations, damage)| Case {
            plugin,
            command,
            base,
            args,
            mutations,
            damage,
        })
}

/// Points `ipam.dataDir` and `ipam.resolvConf` into the sandbox when a
/// plugin would use them (a value of the wrong type is left: it fails to
/// decode, which is worth testing).
fn pin(v: &mut Value, sb: &Sandbox) {
    let Some(ipam) = v.get_mut("ipam").and_then(Value::as_object_mut) else {
        return;
    };
    if matches!(
        ipam.get("dataDir"),
        None | Some(Value::Null | Value::String(_))
    ) {
        ipam.insert("dataDir".into(), sb.data_dir.clone().into());
    }
    if matches!(ipam.get("resolvConf"), Some(Value::String(_))) {
        ipam.insert("resolvConf".into(), sb.resolv_conf.clone().into());
    }
}

/// Whether running `cmd` of `plugin` on `stdin` stays inside the sandbox.
fn safe(plugin: &str, cmd: &str, stdin: &[u8], sb: &Sandbox) -> bool {
    if cmd == "VERSION" {
        return true;
    }
    // What NetConf::parse sees; anything else fails before any plugin code.
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(stdin) else {
        return true;
    };
    if let Some(ipam) = o.get("ipam").and_then(Value::as_object) {
        let data_ok = match ipam.get("dataDir") {
            None | Some(Value::Null) => false, // the default, /var/lib/cni/networks
            Some(Value::String(s)) => *s == sb.data_dir,
            Some(_) => true, // fails to decode
        };
        let resolv_ok = match ipam.get("resolvConf") {
            Some(Value::String(s)) => s.is_empty() || *s == sb.resolv_conf,
            _ => true,
        };
        if !data_ok || !resolv_ok {
            return false;
        }
    }
    if plugin == "portmap" {
        return match cmd {
            "ADD" | "DEL" | "CHECK" => o
                .get("runtimeConfig")
                .and_then(|r| r.get("portMappings"))
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty),
            // GC needs 1.1.0: below that it fails in the skeleton.
            "GC" => o.get("cniVersion").and_then(Value::as_str) != Some("1.1.0"),
            _ => true,
        };
    }
    true
}

/// What the cases did, so a test that skips everything does not pass.
#[derive(Debug, Default)]
struct Tally {
    skipped: usize,
    /// Exit 0 of a command other than VERSION (the plugin itself ran).
    succeeded: usize,
    failed: usize,
}

fn run_case(
    c: &Case,
    bases: &[Value],
    sb: &Sandbox,
    tally: &RefCell<Tally>,
) -> Result<(), TestCaseError> {
    let plugin_name = *c.plugin.get(PLUGIN_NAMES);
    let cmd = *c.command.get(COMMANDS);
    let mut conf = c.base.get(bases).clone();
    for m in &c.mutations {
        apply(&mut conf, m);
    }
    pin(&mut conf, sb);
    let mut stdin = conf.to_string().into_bytes();
    match &c.damage {
        Damage::None => {}
        Damage::Truncate(i) => stdin.truncate(i.index(stdin.len())),
        Damage::InsertByte(i, b) => stdin.insert(i.index(stdin.len() + 1), *b),
    }
    if !safe(plugin_name, cmd, &stdin, sb) {
        tally.borrow_mut().skipped += 1;
        return Ok(());
    }
    let args = *c.args.get(CNI_ARGS);
    let env = |k: &str| -> Option<String> {
        Some(
            match k {
                "CNI_CONTAINERID" => "c1",
                "CNI_NETNS" => NETNS,
                "CNI_IFNAME" => "eth0",
                "CNI_PATH" => CNI_PATH,
                "CNI_ARGS" => args,
                _ => return None,
            }
            .to_string(),
        )
    };
    let plugin = plugin_for(plugin_name).expect("a known plugin");
    let out = dispatch(plugin.as_ref(), Some(cmd), env, stdin.clone());
    let what = format!(
        "{plugin_name} {cmd} on {:?} -> {:?}",
        String::from_utf8_lossy(&stdin),
        out
    );

    prop_assert!(matches!(out.exit_code, 0 | 1), "exit code: {what}");
    match (out.exit_code, cmd) {
        (0, "VERSION") => {}
        (0, _) => tally.borrow_mut().succeeded += 1,
        _ => tally.borrow_mut().failed += 1,
    }
    if out.exit_code == 0 && matches!(cmd, "DEL" | "CHECK" | "STATUS" | "GC") {
        prop_assert_eq!(&out.stdout, "", "{}", what);
        return Ok(());
    }
    let values: Vec<Value> = serde_json::Deserializer::from_str(&out.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .map_err(|e| TestCaseError::fail(format!("stdout is not JSON ({e}): {what}")))?;
    prop_assert_eq!(values.len(), 1, "one JSON value: {}", what);
    let v = &values[0];
    prop_assert!(v.is_object(), "an object: {what}");
    prop_assert!(v["cniVersion"].is_string(), "cniVersion: {what}");
    if out.exit_code == 1 {
        prop_assert!(v["code"].is_u64(), "integer code: {what}");
        let msg = v["msg"].as_str().unwrap_or_default();
        prop_assert!(!msg.is_empty(), "non-empty msg: {what}");
        prop_assert_ne!(msg, PANIC_MSG, "{}", what);
    } else if cmd == "VERSION" {
        prop_assert!(v["supportedVersions"].is_array(), "{what}");
    }
    Ok(())
}

#[test]
fn mutated_configs_never_panic() {
    guard_refuses_what_would_touch_the_host();
    let tmp = temp_dir("no-panic");
    let resolv: &Path = &tmp.path().join("resolv.conf");
    std::fs::write(
        resolv,
        "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n",
    )
    .unwrap();
    let sb = Sandbox {
        data_dir: tmp.path().join("ipam").display().to_string(),
        resolv_conf: resolv.display().to_string(),
    };
    if std::env::var_os("CNI_LOG_FILE").is_none() {
        // The skeleton logs every failed case to stderr otherwise, which is
        // noise here: run this test again in a child whose environment
        // names a log file (setting our own would need `unsafe`).
        let exe = std::env::current_exe().expect("the test binary's path");
        let out = std::process::Command::new(exe)
            .args(["--exact", "mutated_configs_never_panic", "--nocapture"])
            .env("CNI_LOG_FILE", tmp.path().join("cni.log"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run the test binary again");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the run with CNI_LOG_FILE set: {}\n{stdout}",
            out.status
        );
        // the child ran this very test (a rename would make it run none)
        assert!(
            stdout.contains("1 passed"),
            "the child ran no test:\n{stdout}"
        );
        return;
    }
    let bases = bases(&sb);
    // The unmutated bases are safe as they are (they would make real
    // interfaces only with a netns and a CNI_PATH, which the cases lack).
    for b in &bases {
        let mut pinned = b.clone();
        pin(&mut pinned, &sb);
        assert_eq!(&pinned, b, "bases use the sandbox");
    }
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2048);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let tally = RefCell::new(Tally::default());
    let result = runner.run(&case(), |c| run_case(&c, &bases, &sb, &tally));
    if let Err(e) = result {
        panic!("{e}");
    }
    let t = tally.into_inner();
    eprintln!("{cases} cases: {t:?}");
    assert!(t.skipped * 4 < cases as usize, "most cases must run: {t:?}");
    assert!(
        t.succeeded > 0 && t.failed > 0,
        "both outcomes are exercised: {t:?}"
    );
}

/// The guard itself: inputs that would leave the sandbox are refused. (Part
/// of the one test: that test sets `CNI_LOG_FILE`, so it must run alone.)
fn guard_refuses_what_would_touch_the_host() {
    let sb = Sandbox {
        data_dir: "/tmp/sandbox/ipam".into(),
        resolv_conf: "/tmp/sandbox/resolv.conf".into(),
    };
    let ok = |plugin: &str, cmd: &str, v: Value| safe(plugin, cmd, v.to_string().as_bytes(), &sb);
    let ipam = |extra: Value| {
        let mut i = json!({"type": "host-local", "subnet": "10.0.0.0/24"});
        i.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"cniVersion": "1.1.0", "name": "n", "ipam": i})
    };
    assert!(ok(
        "host-local",
        "ADD",
        ipam(json!({"dataDir": sb.data_dir}))
    ));
    assert!(!ok("host-local", "ADD", ipam(json!({}))), "default dataDir");
    assert!(!ok("host-local", "DEL", ipam(json!({"dataDir": null}))));
    assert!(!ok(
        "host-local",
        "GC",
        ipam(json!({"dataDir": "/tmp/sandbox/ipam/.."}))
    ));
    assert!(
        ok("host-local", "ADD", ipam(json!({"dataDir": 5}))),
        "fails to decode"
    );
    assert!(!ok(
        "host-local",
        "ADD",
        ipam(json!({"dataDir": sb.data_dir, "resolvConf": "/dev/zero"}))
    ));
    assert!(ok("host-local", "VERSION", ipam(json!({}))));
    assert!(ok("host-local", "ADD", json!(["not", "an", "object"])));
    let maps = json!({"cniVersion": "1.0.0", "name": "n",
                      "runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 1}]}});
    for cmd in ["ADD", "DEL", "CHECK"] {
        assert!(!ok("portmap", cmd, maps.clone()), "{cmd}");
        assert!(ok("bridge", cmd, maps.clone()), "{cmd}");
    }
    assert!(ok("portmap", "STATUS", maps.clone()));
    assert!(!ok(
        "portmap",
        "GC",
        json!({"cniVersion": "1.1.0", "name": "n"})
    ));
    assert!(ok(
        "portmap",
        "GC",
        json!({"cniVersion": "1.0.0", "name": "n"})
    ));
}

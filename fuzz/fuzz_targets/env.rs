//! The `CNI_*` environment of an invocation, then the whole skeleton.
//!
//! Input: `KEY=VALUE` lines (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`; a key that is absent is unset, a
//! line that is not UTF-8 is unset as `std::env::var` would see it), then
//! an empty line, then stdin.
//!
//! Every command's [`Env::from_lookup`] is checked against the spec's rules,
//! and [`skeleton::dispatch`] runs with a plugin that does nothing, so no
//! interface, file or nftables object is ever touched.

#![no_main]

use kindnet_cni_spec::env::{validate_container_id, validate_ifname};
use kindnet_cni_spec::skeleton::{self, Plugin};
use kindnet_cni_spec::{CniError, CniResult, Command, Env, IpConfig, Request};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

const KEYS: &[&str] = &[
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

const COMMANDS: &[Command] = &[
    Command::Add,
    Command::Del,
    Command::Check,
    Command::Version,
    Command::Status,
    Command::Gc,
];

/// Touches nothing; ADD answers one address, CHECK fails.
struct Noop;

impl Plugin for Noop {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        // Everything the skeleton validated is visible here.
        validate_container_id(&req.env.container_id).expect("validated container ID");
        validate_ifname(&req.env.ifname).expect("validated ifname");
        Ok(CniResult {
            ips: vec![IpConfig {
                address: "10.244.0.2/24".parse().unwrap(),
                gateway: None,
                interface: None,
            }],
            ..Default::default()
        })
    }
    fn del(&self, _: &Request) -> Result<(), CniError> {
        Ok(())
    }
    fn check(&self, _: &Request) -> Result<(), CniError> {
        Err(CniError::internal("noop CHECK"))
    }
}

fn split(data: &[u8]) -> (HashMap<&'static str, String>, Vec<u8>) {
    let (head, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], data[i + 2..].to_vec()),
        None => (data, Vec::new()),
    };
    let mut vars = HashMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let Some(key) = KEYS.iter().find(|k| k.as_bytes() == &line[..eq]) else {
            continue;
        };
        match std::str::from_utf8(&line[eq + 1..]) {
            Ok(v) => vars.insert(*key, v.to_string()),
            Err(_) => vars.remove(*key),
        };
    }
    (vars, stdin)
}

fn check_env(cmd: Command, vars: &HashMap<&'static str, String>) {
    let get = |k: &str| vars.get(k).cloned();
    match Env::from_lookup(cmd, get) {
        Ok(env) => {
            if matches!(cmd, Command::Add | Command::Check | Command::Del) {
                validate_container_id(&env.container_id).expect("accepted container ID");
                validate_ifname(&env.ifname).expect("accepted ifname");
                assert!(env.ifname.len() <= 15);
            }
            if matches!(cmd, Command::Add | Command::Check) {
                assert!(!env.netns.is_empty());
            }
            for (k, _) in &env.args {
                assert!(env.arg(k).is_some());
            }
            assert!(env.path.iter().all(|p| !p.as_os_str().is_empty()));
        }
        Err(e) => {
            assert_eq!(e.code, 4, "{cmd:?}: {e}");
            assert!(!e.msg.is_empty());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (vars, stdin) = split(data);
    for &cmd in COMMANDS {
        check_env(cmd, &vars);
    }
    let command = vars.get("CNI_COMMAND").cloned();
    let out = skeleton::dispatch(&Noop, command.as_deref(), |k| vars.get(k).cloned(), stdin);
    assert!(matches!(out.exit_code, 0 | 1), "{out:?}");
    if out.exit_code == 0 && out.stdout.is_empty() {
        return; // DEL, STATUS, GC
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {:?}", out.stdout));
    assert!(v.is_object(), "{v}");
    if out.exit_code == 1 {
        assert!(v["code"].is_u64(), "{v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert_ne!(v["msg"], "internal error: the plugin panicked", "{v}");
    }
});

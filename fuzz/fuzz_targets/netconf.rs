//! A network configuration on stdin, parsed the way every plugin parses it:
//! the envelope ([`NetConf::parse`]), then the host-local IPAM section
//! ([`IpamConfig::from_parts`]) with its range arithmetic, then the
//! `prevResult` ([`CniResult::from_value`]) and its conversion to every spec
//! version. None of it may panic; errors must be well-formed error objects.
//!
//! Pure code only: no store, no `resolvConf` read, no netlink, no root.
//!
//! A top-level string `"fuzz.cniArgsIP"` in the input, if present, is passed
//! as `CNI_ARGS` `IP=...`, so the fuzzer reaches that path too.

#![no_main]

use kindnet_cni_spec::{CniError, CniResult, NetConf, version};
use kindnet_ipam::{IpamConfig, Taken, candidates, next_free};
use libfuzzer_sys::fuzz_target;

/// An error must carry a spec code and a message, and print as a JSON object.
fn check_error(e: &CniError) {
    assert!(
        matches!(e.code, 1..=7 | 11 | 50 | 51 | 100..),
        "unexpected code {}: {e}",
        e.code
    );
    assert!(!e.msg.is_empty(), "empty message for code {}", e.code);
    let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).expect("error JSON");
    assert!(v.is_object());
}

fn ipam(conf: &NetConf, args: &[(String, String)]) {
    let cfg = match IpamConfig::from_parts(conf, args) {
        Ok(cfg) => cfg,
        Err(e) => return check_error(&e),
    };
    assert!(!cfg.ranges.is_empty(), "a valid IPAM config has range sets");
    if let Err(e) = cfg.requested_per_set() {
        check_error(&e);
    }
    let empty = Taken::new();
    for set in &cfg.ranges {
        let _ = set.to_string();
        let cap = set.capacity();
        let first = next_free(set, None, &empty);
        assert_eq!(
            first.is_some(),
            cap > 0,
            "{set}: capacity {cap}, first {first:?}"
        );
        for r in set.ranges() {
            let _ = r.to_string();
            // A lap may start from any address, in the set or not.
            for last in [r.start(), r.end(), r.gateway(), r.subnet().addr()] {
                let mut seen = Vec::new();
                for ip in candidates(set, Some(last)).take(8) {
                    assert!(
                        set.is_allocatable(ip),
                        "{set}: candidate {ip} not allocatable"
                    );
                    assert!(set.contains(ip), "{set}: candidate {ip} outside");
                    assert!(!seen.contains(&ip), "{set}: candidate {ip} twice in a lap");
                    seen.push(ip);
                }
                assert!(
                    seen.len() as u128 == cap.min(8),
                    "{set}: {} candidates, capacity {cap}",
                    seen.len()
                );
            }
        }
    }
}

fn prev_result(v: &serde_json::Value) {
    let r = match CniResult::from_value(v) {
        Ok(r) => r,
        Err(e) => return check_error(&e),
    };
    for ver in version::SUPPORTED {
        let out = r.to_version(ver);
        assert_eq!(out["cniVersion"], *ver);
        // What we print for one version we must read back as a prevResult.
        let back = CniResult::from_value(&out)
            .unwrap_or_else(|e| panic!("{ver}: cannot re-read our own result: {e}\n{out}"));
        assert_eq!(back.ips, r.ips, "{ver}");
    }
}

fuzz_target!(|data: &[u8]| {
    let conf = match NetConf::parse(data) {
        Ok(c) => c,
        Err(e) => return check_error(&e),
    };
    let _ = conf.runtime("portMappings");
    let mut args = vec![("IgnoreUnknown".to_string(), "1".to_string())];
    if let Some(ip) = conf.raw.get("fuzz.cniArgsIP").and_then(|v| v.as_str()) {
        args.push(("IP".to_string(), ip.to_string()));
    }
    ipam(&conf, &args);
    if let Some(prev) = &conf.prev_result {
        prev_result(prev);
    }
});

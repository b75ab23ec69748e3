//! host-local as a standalone plugin binary: parallel ADDs, ADDs killed at
//! random points, GC afterwards. Needs no namespace (IPAM only touches files).

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

fn conf(data: &str) -> Value {
    json!({
        "cniVersion": "1.1.0", "name": "kindnet-test", "type": "ptp",
        "ipam": {"type": "host-local", "dataDir": data,
                 "ranges": [[{"subnet": "10.244.0.0/23"}], [{"subnet": "fd00:10:244::/64"}]]}
    })
}

fn ips_of(v: &Value) -> Vec<String> {
    v["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn parallel_adds_never_duplicate() {
    let data = temp_dir("ipam");
    let c = conf(&data.str());
    let results: Vec<(String, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let c = &c;
                s.spawn(move || {
                    // 16 threads x 13 = 208 ADDs
                    (0..13)
                        .map(|i| {
                            let id = format!("p{t}-{i}");
                            let r =
                                call(None, "host-local", "ADD", &Args::new(&id, "/dev/null"), c)
                                    .ok();
                            (id, ips_of(&r))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(results.len() >= 200, "{}", results.len());
    let mut seen = HashSet::new();
    for (id, ips) in &results {
        assert_eq!(ips.len(), 2, "{id}: one address per family");
        for ip in ips {
            assert!(seen.insert(ip.clone()), "duplicate address {ip}");
        }
    }
    assert_eq!(allocated(&data.str()).len(), results.len() * 2);
    // each file names its owner
    for (id, ips) in &results {
        for ip in ips {
            let f = std::fs::read_to_string(
                data.path()
                    .join("kindnet-test")
                    .join(ip.split('/').next().unwrap()),
            )
            .unwrap();
            assert!(
                f.starts_with(id.as_str()),
                "{ip} owned by {f:?}, expected {id}"
            );
        }
    }
}

/// A tiny deterministic PRNG: the kill points differ per run of the loop.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn killed_adds_leave_no_duplicates_and_gc_reclaims_them() {
    let data = temp_dir("ipam");
    let c = conf(&data.str());
    let mut seed = u64::from(std::process::id());
    // 40 ADDs, each killed after a random 0-4 ms
    for i in 0..40 {
        let args = Args::new(&format!("killed{i}"), "/dev/null");
        let delay = Duration::from_micros(lcg(&mut seed) % 4000);
        call_killed(None, "host-local", "ADD", &args, &c, delay);
    }
    // then normal ADDs: every address they get is theirs alone
    let mut owner: HashMap<String, String> = HashMap::new();
    for i in 0..60 {
        let id = format!("ok{i}");
        let r = call(None, "host-local", "ADD", &Args::new(&id, "/dev/null"), &c).ok();
        for ip in ips_of(&r) {
            assert!(
                owner.insert(ip.clone(), id.clone()).is_none(),
                "duplicate {ip}"
            );
        }
    }
    // the store agrees: each address of a live ADD is owned by it
    for (ip, id) in &owner {
        let f = std::fs::read_to_string(
            data.path()
                .join("kindnet-test")
                .join(ip.split('/').next().unwrap()),
        )
        .unwrap();
        assert!(f.starts_with(id.as_str()), "{ip}: {f:?} vs {id}");
    }
    // GC with the live ones valid reclaims everything the killed ADDs left
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = Value::Array(
        (0..60)
            .map(|i| json!({"containerID": format!("ok{i}"), "ifname": "eth0"}))
            .collect(),
    );
    call(None, "host-local", "GC", &Args::new("", ""), &gc).ok();
    let mut left = allocated(&data.str());
    left.sort();
    let mut want: Vec<String> = owner
        .keys()
        .map(|k| k.split('/').next().unwrap().to_string())
        .collect();
    want.sort();
    assert_eq!(left, want);
    // Besides the reference's files, the store keeps `.owner:<id>:<ifname>:<ip>`
    // index links: one per live address, none for what GC released, and no
    // staging leftovers of the killed ADDs.
    for f in store_files(&data.str()) {
        if f.parse::<std::net::IpAddr>().is_ok()
            || f == "lock"
            || f.starts_with("last_reserved_ip.")
        {
            continue;
        }
        let rest = f
            .strip_prefix(".owner:")
            .unwrap_or_else(|| panic!("leftover file {f:?} after GC"));
        let mut parts = rest.splitn(3, ':');
        let (id, _ifname, ip) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        assert!(
            want.contains(&ip.to_string()),
            "index link {f:?} of a released address"
        );
        assert!(id.starts_with("ok"), "index link {f:?} of a killed ADD");
    }
}

#[test]
fn same_attachment_twice_gets_the_same_addresses() {
    let data = temp_dir("ipam");
    let c = conf(&data.str());
    let a = ips_of(&call(None, "host-local", "ADD", &Args::new("x", "/dev/null"), &c).ok());
    let b = ips_of(&call(None, "host-local", "ADD", &Args::new("x", "/dev/null"), &c).ok());
    assert_eq!(a, b);
    assert_eq!(allocated(&data.str()).len(), 2);
    call(None, "host-local", "DEL", &Args::new("x", ""), &c).ok();
    call(None, "host-local", "DEL", &Args::new("x", ""), &c).ok();
    assert!(allocated(&data.str()).is_empty());
}

#[test]
fn reference_binary_reads_our_store_and_we_read_its() {
    let reference = require_tool!(
        "/usr/lib/cni/host-local",
        "the reference plugin: apt-get install containernetworking-plugins"
    );
    let data = temp_dir("ipam");
    let mut c = conf(&data.str());
    c["cniVersion"] = json!("1.0.0");
    let ours = ips_of(
        &call(
            None,
            "host-local",
            "ADD",
            &Args::new("ours", "/dev/null"),
            &c,
        )
        .ok(),
    );
    let run_ref = |cmd: &str, id: &str| {
        let mut ch = Command::new(&reference)
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", "/dev/null")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            ch.stdin
                .take()
                .unwrap()
                .write_all(c.to_string().as_bytes())
                .unwrap();
        }
        let o = ch.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "reference {cmd}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        serde_json::from_slice::<Value>(&o.stdout).unwrap_or(Value::Null)
    };
    let theirs = ips_of(&run_ref("ADD", "theirs"));
    assert_eq!(theirs.len(), 2);
    for ip in &theirs {
        assert!(!ours.contains(ip), "reference allocated our {ip}");
    }
    // we continue after the reference's last_reserved_ip and skip its allocations
    let next = ips_of(
        &call(
            None,
            "host-local",
            "ADD",
            &Args::new("ours2", "/dev/null"),
            &c,
        )
        .ok(),
    );
    for ip in &next {
        assert!(!theirs.contains(ip) && !ours.contains(ip), "{ip}");
    }
    // the reference releases what it owns; we release what the reference made when asked
    run_ref("DEL", "ours");
    call(None, "host-local", "DEL", &Args::new("theirs", ""), &c).ok();
    let left = allocated(&data.str());
    assert_eq!(left.len(), 2, "only ours2 remains: {left:?}");
}

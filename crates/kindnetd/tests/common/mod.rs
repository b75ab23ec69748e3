//! Shared helpers for kindnetd's integration tests: a node namespace, a
//! kindnetd process in it, its routes, HTTP endpoints and sysctls. The
//! generic guards (namespaces, children, temporary directories, polling,
//! skips) are `kindnet-testbed`'s; the fake API server is `kindnet-fakeapi`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

// Not every test binary uses every item.
#[allow(unused_imports)]
pub use kindnet_testbed::{
    ChildGuard, Ns, TempDir, require_root, require_tool, temp_dir, wait_for,
};
use serde_json::Value;

/// Writes a file atomically (temp + rename), as a careful tool would.
pub fn write_atomic(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A Node object as `kubectl get nodes -o json` shows it.
pub fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> Value {
    kindnet_fakeapi::node_json(name, cidrs, ips)
}

/// A namespace whose IPv6 addresses are usable at once (DAD off for every
/// link, present and future).
pub fn nodad_ns(tag: &str) -> Ns {
    let ns = Ns::new(tag);
    for k in ["all", "default"] {
        sysctl_set(&ns, &format!("net.ipv6.conf.{k}.accept_dad"), "0");
    }
    ns
}

/// A "node" namespace on an L2 segment: eth0 (MTU 1450; one end of a veth
/// pair whose other end, peer0, stays in the same namespace, up) with
/// 10.0.0.1/16 and fd00::1/64, default route via 10.0.0.254.
pub fn node_ns(tag: &str) -> Ns {
    let ns = nodad_ns(tag);
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ])
    .unwrap();
    ns.ip(&["link", "set", "eth0", "mtu", "1450"]).unwrap();
    ns.ip(&["addr", "add", "10.0.0.1/16", "dev", "eth0"])
        .unwrap();
    ns.ip(&["addr", "add", "fd00::1/64", "dev", "eth0", "nodad"])
        .unwrap();
    ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    ns.ip(&["link", "set", "peer0", "up"]).unwrap();
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.0.0.254",
        "dev",
        "eth0",
    ])
    .unwrap();
    ns
}

pub fn node_list(nodes: &[Value]) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": nodes
    }))
    .unwrap()
}

/// kindnetd's routes in `ns` (both families) as (dst, gateway, dev) sorted.
pub fn our_routes(ns: &Ns) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        let s = ns
            .ip(&["-j", fam, "route", "show", "proto", "217"])
            .unwrap_or_default();
        let v: Value = serde_json::from_str(if s.trim().is_empty() { "[]" } else { &s })
            .unwrap_or(Value::Null);
        for r in v.as_array().cloned().unwrap_or_default() {
            // An IPv4 route via an IPv6 next hop shows it as "via".
            let gw = r["gateway"]
                .as_str()
                .or_else(|| r["via"]["host"].as_str())
                .unwrap_or("");
            out.push((
                r["dst"].as_str().unwrap_or("").to_string(),
                gw.to_string(),
                r["dev"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out.sort();
    out
}

pub fn route_set(v: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut r: Vec<(String, String)> = v
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    r.sort();
    r
}

pub fn dst_gw(ns: &Ns) -> Vec<(String, String)> {
    our_routes(ns).into_iter().map(|(d, g, _)| (d, g)).collect()
}

/// Waits until kindnetd's routes in `ns` equal `want` (dst, gateway).
pub fn wait_routes(ns: &Ns, want: &[(&str, &str)], timeout: Duration) -> Result<(), String> {
    let want = route_set(want);
    wait_for(timeout, || (dst_gw(ns) == want).then_some(()))
        .ok_or_else(|| format!("routes are {:?}, want {:?}", dst_gw(ns), want))
}

/// An HTTP GET from inside the namespace (the socket is made there).
pub fn http_get(ns: &Ns, addr: &str, path: &str) -> Option<(u16, String)> {
    let netns = kindnet_netlink::Netns::open(ns.path()).ok()?;
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    let stream = netns
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
        .ok()?
        .ok()?;
    get_on(stream, path)
}

fn get_on(mut stream: TcpStream, path: &str) -> Option<(u16, String)> {
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut s = String::new();
    stream.read_to_string(&mut s).ok()?;
    let code: u16 = s.split_whitespace().nth(1)?.parse().ok()?;
    let body = s
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// A kindnetd process inside a namespace, logging to a file.
pub struct Daemon {
    pub child: ChildGuard,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(ns: &Ns, args: &[&str], log: PathBuf) -> Daemon {
        Daemon::start_with(ns, args, log, |_| {})
    }

    /// [`Daemon::start`] on a node without `nft` (every `nft` an empty
    /// file in the daemon's mount namespace).
    pub fn start_without_nft(ns: &Ns, args: &[&str], log: PathBuf, empty: &Path) -> Daemon {
        Daemon::start_with(ns, args, log, |c| kindnet_testbed::hide_nft(c, empty))
    }

    fn start_with(
        ns: &Ns,
        args: &[&str],
        log: PathBuf,
        setup: impl FnOnce(&mut Command),
    ) -> Daemon {
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = ns.command(env!("CARGO_BIN_EXE_kindnetd"));
        setup(&mut cmd);
        cmd.args(args)
            .env_remove("KUBECONFIG")
            .env_remove("NODE_NAME")
            .env_remove("POD_SUBNET")
            .env_remove("CNI_BRIDGE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f);
        let child = ChildGuard::spawn(&mut cmd).unwrap();
        Daemon { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test with `e` and the daemon's log.
    #[track_caller]
    pub fn fail(&self, e: impl std::fmt::Display) -> ! {
        panic!("{e}\n--- kindnetd log ---\n{}", self.log())
    }

    /// Waits (5 s) for /readyz to answer 200 in `ns`; its body. Fails the
    /// test with the log otherwise.
    #[track_caller]
    pub fn ready(&self, ns: &Ns) -> String {
        wait_ready(ns, Duration::from_secs(5)).unwrap_or_else(|e| self.fail(e))
    }
}

/// Reconcile passes kindnetd in `ns` has finished.
pub fn passes(ns: &Ns) -> Option<f64> {
    metric(ns, "kindnet_reconcile_duration_seconds_count")
}

/// Waits until `n` reconcile passes that began after this call have
/// finished (one more than `n` finished: the first may have begun before):
/// whatever was true when it was called, every one of them saw. The
/// positive signal behind a "nothing changed" check, in place of a sleep.
pub fn wait_passes(ns: &Ns, n: u32, timeout: Duration) -> Result<(), String> {
    let from = passes(ns).ok_or("no reconcile pass count in /metrics")?;
    let want = from + f64::from(n) + 1.0;
    wait_for(timeout, || (passes(ns)? >= want).then_some(()))
        .ok_or_else(|| format!("{:?} passes after {from}, want {want}", passes(ns)))
}

/// Waits for /readyz to answer 200.
pub fn wait_ready(ns: &Ns, timeout: Duration) -> Result<String, String> {
    let mut last = None;
    wait_for(timeout, || {
        let r = http_get(ns, "127.0.0.1:19080", "/readyz");
        last = r.clone();
        match r {
            Some((200, body)) => Some(body),
            _ => None,
        }
    })
    .ok_or_else(|| format!("not ready: {last:?}"))
}

/// The value of one metric line (exact name with labels) from /metrics.
pub fn metric(ns: &Ns, name: &str) -> Option<f64> {
    let (_, body) = http_get(ns, "127.0.0.1:19080", "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs a command and returns (status code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a sysctl inside the namespace ("net.ipv4.ip_forward" or a path).
pub fn sysctl_set(ns: &Ns, key: &str, value: &str) {
    let netns = kindnet_netlink::Netns::open(ns.path()).unwrap();
    let k = key.replace('.', "/");
    let v = value.to_string();
    netns
        .run(move || kindnet_netlink::sysctl::set(&k, &v))
        .unwrap()
        .unwrap_or_else(|e| panic!("sysctl {key}={value}: {e}"));
}

/// Reads a sysctl inside the namespace.
pub fn sysctl_get(ns: &Ns, key: &str) -> String {
    let netns = kindnet_netlink::Netns::open(ns.path()).unwrap();
    let k = key.replace('.', "/");
    netns
        .run(move || kindnet_netlink::sysctl::get(&k))
        .unwrap()
        .unwrap_or_else(|e| panic!("sysctl {key}: {e}"))
}

/// Applies a typed batch with `nft -j -f -` inside `ns`.
pub fn nft_apply_batch(ns: &Ns, batch: &kindnet_nft::Batch) {
    let json = batch.to_json().to_string();
    let mut child = ns
        .command("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "nft -j -f - failed for:\n{json}"
    );
}

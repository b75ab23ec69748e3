//! Test bed for the plugins: the plugin names linked to the built binary,
//! and a runner that invokes a plugin the way a runtime does. Network
//! namespaces and temporary directories come from `kindnet-testbed`.
#![allow(dead_code)]

// Not every test binary uses every item.
#[allow(unused_imports)]
pub use kindnet_testbed::{
    Ns, TempDir, TempDirExt, hide_nft, is_root, require_root, require_tool, sh, sh_ok, temp_dir,
};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A directory with every plugin name linked to the built binary (what
/// `kindnet-cni install` makes), shared by the tests of one process.
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Under the target directory, one per test binary (cargo runs those
        // one after another): a copy per process in /tmp was never removed.
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_stem().unwrap().to_string_lossy().into_owned();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kncni-bin-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let o = Command::new(env!("CARGO_BIN_EXE_kindnet-cni"))
            .arg("install")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "install: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        dir
    })
}

pub struct Call {
    pub out: Value,
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Call {
    pub fn ok(self) -> Value {
        assert_eq!(
            self.code, 0,
            "plugin failed: {}\n{}",
            self.stdout, self.stderr
        );
        self.out
    }
    /// The CNI error code of a failed call.
    pub fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected a failure, got {}", self.stdout);
        self.out["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error object on stdout: {:?}", self.stdout))
    }
    pub fn msg(&self) -> String {
        self.out["msg"].as_str().unwrap_or_default().to_string()
    }
}

/// Invocation parameters of one plugin call.
#[derive(Clone)]
pub struct Args {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub cni_args: String,
}

impl Args {
    pub fn new(container_id: &str, netns: &str) -> Args {
        Args {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            cni_args: String::new(),
        }
    }
}

/// Runs `plugin` for `command` inside `host` (None = this namespace) with
/// `stdin`, exactly as a runtime would: CNI_* environment, config on stdin.
/// The plugin's command line and CNI_* environment, as a runtime sets them.
fn plugin_command(host: Option<&Ns>, plugin: &str, command: &str, a: &Args) -> Command {
    let bin = plugin_dir().join(plugin);
    let mut cmd = match host {
        Some(h) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &h.name]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &a.container_id)
        .env("CNI_NETNS", &a.netns)
        .env("CNI_IFNAME", &a.ifname)
        .env("CNI_ARGS", &a.cni_args)
        .env("CNI_PATH", plugin_dir())
        .stdin(Stdio::piped());
    cmd
}

pub fn call_raw(host: Option<&Ns>, plugin: &str, command: &str, a: &Args, stdin: &[u8]) -> Call {
    let mut child = plugin_command(host, plugin, command, a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    Call {
        out: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        code: o.status.code().unwrap_or(-1),
    }
}

pub fn call(host: Option<&Ns>, plugin: &str, command: &str, a: &Args, conf: &Value) -> Call {
    call_raw(host, plugin, command, a, conf.to_string().as_bytes())
}

/// [`call`] on a node without `nft` ([`hide_nft`]).
pub fn call_without_nft(
    host: &Ns,
    plugin: &str,
    command: &str,
    a: &Args,
    conf: &Value,
    empty: &Path,
) -> Call {
    let mut cmd = plugin_command(Some(host), plugin, command, a);
    hide_nft(&mut cmd, empty);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    Call {
        out: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        code: o.status.code().unwrap_or(-1),
    }
}

/// The config with `prevResult` set, as runtimes send it for CHECK/DEL.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

pub const V4_SUBNET: &str = "10.244.1.0/24";
pub const V6_SUBNET: &str = "fd00:10:244:1::/64";

/// A kindnet-style ptp or bridge config; `ranges` = subnets, one range set each.
pub fn net_conf(version: &str, plugin: &str, data_dir: &str, subnets: &[&str]) -> Value {
    let ranges: Vec<Value> = subnets.iter().map(|s| json!([{ "subnet": s }])).collect();
    let routes: Vec<Value> = subnets
        .iter()
        .map(|s| json!({ "dst": if s.contains(':') { "::/0" } else { "0.0.0.0/0" } }))
        .collect();
    let mut c = json!({
        "cniVersion": version,
        "name": "kindnet-test",
        "type": plugin,
        "ipMasq": false,
        "mtu": 1500,
        "ipam": { "type": "host-local", "dataDir": data_dir, "ranges": ranges, "routes": routes },
    });
    if plugin == "bridge" {
        c["bridge"] = json!("kncni0");
        c["isGateway"] = json!(true);
        c["isDefaultGateway"] = json!(true);
    }
    c
}

/// Addresses (`a/len`) of `dev` in `ns`, global scope only.
pub fn addrs(ns: &Ns, dev: &str) -> Vec<String> {
    ns.ip_json(&["addr", "show", "dev", dev])
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect()
}

/// `ip route` lines of a family in `ns` (table main), as text.
pub fn routes(ns: &Ns, family: &str) -> Vec<String> {
    let o = sh_ok(&["ip", family, "-n", &ns.name, "route", "show"]);
    o.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// Files in the IPAM store of the test network.
pub fn store_files(data_dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(Path::new(data_dir).join("kindnet-test"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Allocated addresses in the store (files named by an IP).
pub fn allocated(data_dir: &str) -> Vec<String> {
    store_files(data_dir)
        .into_iter()
        .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

/// Waits up to 3 s for `cond` (DEL removes the veth in a detached child, so
/// the link disappears shortly after DEL returns).
pub fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Starts `plugin` for `command` like [`call`] does, without waiting for
/// its answer, and SIGKILLs it after `delay`: an ADD (or DEL) that dies
/// at a random point.
#[allow(dead_code)]
pub fn call_killed(
    host: Option<&Ns>,
    plugin: &str,
    command: &str,
    a: &Args,
    conf: &Value,
    delay: std::time::Duration,
) {
    let mut child = plugin_command(host, plugin, command, a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn plugin");
    if let Some(mut w) = child.stdin.take() {
        let _ = w.write_all(conf.to_string().as_bytes());
    }
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait();
}

//! Test bed shared by the workspace's tests: a root check that skips a
//! test, temporary directories and network namespaces of the test's own
//! (removed on drop, also when a test fails), and command runners.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// First part of every name made here, so leftovers are easy to spot.
pub const PREFIX: &str = "kntb";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Returns early (skipping the test) when not root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skipping: this test needs root (network namespaces)");
            return;
        }
    };
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `<PREFIX>-<tag>-<pid>-<counter>`: unique within this process, and across
/// processes alive at the same time.
pub fn unique(tag: &str) -> String {
    format!(
        "{PREFIX}-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs `args[0]` with the rest as arguments.
pub fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"))
}

/// [`sh`], asserting success; returns stdout.
pub fn sh_ok(args: &[&str]) -> String {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A network namespace (with `lo` up) that exists for the life of the value.
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(tag: &str) -> Ns {
        let name = unique(tag);
        sh_ok(&["ip", "netns", "add", &name]);
        // The guard exists from here on: a failure below still removes it.
        let ns = Ns { name };
        sh_ok(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
    /// Runs a command inside the namespace.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }
    /// [`Ns::run`], asserting success; returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "in {}: {args:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    /// `ip -j ARGS` parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["ip", "-j", "-n", &self.name];
        full.extend_from_slice(args);
        serde_json::from_str(&sh_ok(&full)).unwrap_or(Value::Null)
    }
    pub fn ping(&self, addr: &str) -> bool {
        self.run(&["ping", "-c", "1", "-W", "2", "-q", addr])
            .status
            .success()
    }
    /// Names of the links in the namespace.
    pub fn links(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A temporary directory, empty when made, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A directory under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }
    /// A directory under `base`.
    pub fn new_in(base: &Path, tag: &str) -> TempDir {
        let p = base.join(unique(tag));
        // A leftover of an earlier process with the same PID.
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn str(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

//! Test bed shared by the workspace's tests: root and tool checks that skip
//! a test (or fail it, under `KINDNET_TEST_REQUIRE_ROOT=1`), temporary
//! directories and network namespaces of the test's own (removed on drop,
//! also when a test fails), and command runners.

// Raw syscalls: geteuid(2).
#![allow(unsafe_code)]

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

/// The environment variable that turns every skip into a failure: CI runs
/// as root with everything installed, so a test that would skip there is
/// broken, not optional.
pub const REQUIRE_ENV: &str = "KINDNET_TEST_REQUIRE_ROOT";

/// Whether [`REQUIRE_ENV`] is set to `1`.
pub fn skips_are_failures() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// The one way a test skips: prints `skipping: REASON` and lets the caller
/// return, or, under `KINDNET_TEST_REQUIRE_ROOT=1`, panics with the reason.
#[track_caller]
pub fn skip(reason: &str) {
    skip_or_fail(skips_are_failures(), reason)
}

#[track_caller]
fn skip_or_fail(fail: bool, reason: &str) {
    if fail {
        panic!("{reason}, and {REQUIRE_ENV}=1 says this test must run here, not skip");
    }
    eprintln!("skipping: {reason}");
}

/// Returns early (skipping the test) when not root; panics instead under
/// `KINDNET_TEST_REQUIRE_ROOT=1`.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            $crate::skip("this test needs root (network namespaces)");
            return;
        }
    };
}

/// Where the program `name` is: a path (containing `/`) when it is an
/// executable file, otherwise the first executable `name` in `PATH`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

/// `require_tool!(NAME)` or `require_tool!(NAME, HINT)`: the path of the
/// program `NAME` (see [`find_tool`]); when it is missing the test returns
/// early with `skipping: ...` (or panics under `KINDNET_TEST_REQUIRE_ROOT=1`),
/// with HINT (e.g. how to install it) in the message.
#[macro_export]
macro_rules! require_tool {
    ($name:expr) => {
        $crate::require_tool!($name, "")
    };
    ($name:expr, $hint:expr) => {{
        let name = $name;
        let name: &str = ::std::convert::AsRef::<str>::as_ref(&name);
        match $crate::find_tool(name) {
            Some(path) => path,
            None => {
                let hint: &str = $hint;
                if hint.is_empty() {
                    $crate::skip(&format!("{name} not found"));
                } else {
                    $crate::skip(&format!("{name} not found ({hint})"));
                }
                return;
            }
        }
    }};
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_tool_takes_names_in_path_and_executable_paths_only() {
        assert!(find_tool("sh").is_some());
        assert!(find_tool("/bin/sh").is_some());
        assert!(find_tool("kntb-no-such-tool").is_none());
        assert!(find_tool("/nonexistent/kntb-no-such-tool").is_none());
        let dir = TempDir::new("tool");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let plain = plain.display().to_string();
        assert!(find_tool(&plain).is_none(), "not executable");
        assert!(find_tool(&dir.str()).is_none(), "a directory");
    }

    #[test]
    fn a_skip_is_a_message_unless_required() {
        skip_or_fail(false, "reason");
    }

    #[test]
    #[should_panic(expected = "KINDNET_TEST_REQUIRE_ROOT=1 says this test must run here")]
    fn a_required_skip_panics() {
        skip_or_fail(true, "reason");
    }
}

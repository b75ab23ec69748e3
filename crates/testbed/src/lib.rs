//! Test bed shared by the workspace's tests: root and tool checks that skip
//! a test (or fail it, under `KINDNET_TEST_REQUIRE_ROOT=1`), temporary
//! directories ([`tempfile`]) and network namespaces of the test's own
//! (removed on drop, also when a test fails), child processes killed on
//! drop, polling with a deadline, and command runners.
//!
//! Test support only: every helper panics on a broken environment, which
//! is what a test wants and a product binary does not.

#![warn(missing_docs)]
// Only for `CommandExt::pre_exec` (unshare(2) and mount(2) in a child,
// hide_nft), which has no safe equivalent.
#![allow(unsafe_code)]

use serde_json::Value;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use tempfile::TempDir;

/// First part of every name made here, so leftovers are easy to spot.
pub const PREFIX: &str = "kntb";

/// Whether this process runs as root (what the namespace tests need).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
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

/// `<tag><6 base-36 digits>`: `tag` (at most 2 lowercase letters or
/// digits) and this process's id with a counter, 8 characters in all: for
/// names with a small budget (a `kindnet-lab` name, which prefixes
/// namespace and interface names). Unique across processes alive at the
/// same time (two checkouts running the tests at once) and within a
/// process for 64 names in a row.
pub fn unique_short(tag: &str) -> String {
    assert!(
        tag.len() <= 2
            && tag
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "unique_short({tag:?}): at most 2 lowercase letters or digits"
    );
    // A pid is below 2^22 (Linux's pid_max limit): with 6 counter bits the
    // number stays below 36^6.
    let n =
        (u64::from(std::process::id()) << 6) | (COUNTER.fetch_add(1, Ordering::SeqCst) as u64 & 63);
    let mut digits = [b'0'; 6];
    let mut rest = n;
    for d in digits.iter_mut().rev() {
        *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[(rest % 36) as usize];
        rest /= 36;
    }
    format!("{tag}{}", String::from_utf8_lossy(&digits))
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

/// Runs `cmd` (stdin closed); its stdout when it succeeds, else an error
/// naming the command, its status and its stderr.
fn output_text(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace (with `lo` up) that exists for the life of the value.
pub struct Ns {
    /// The namespace's name (`ip netns` name, see [`unique`]).
    pub name: String,
}

impl Ns {
    /// Creates namespace `<PREFIX>-<tag>-<pid>-<n>` with `lo` up.
    pub fn new(tag: &str) -> Ns {
        let name = unique(tag);
        sh_ok(&["ip", "netns", "add", &name]);
        // The guard exists from here on: a failure below still removes it.
        let ns = Ns { name };
        sh_ok(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
    /// The namespace's file (what `CNI_NETNS` and `setns` take).
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
    /// `ip -n NS ARGS...`: stdout, or an error with the command's stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        output_text(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }
    /// `ip netns exec NS ARGS...`: stdout, or an error with the command's
    /// stderr.
    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        output_text(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args),
        )
    }
    /// A command that runs `program` inside the namespace (to spawn, or to
    /// give stdin or environment first).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
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
    /// Whether one ping from inside the namespace to `addr` is answered
    /// within 2 s.
    pub fn ping(&self, addr: &str) -> bool {
        self.run(&["ping", "-c", "1", "-W", "2", "-q", addr])
            .status
            .success()
    }
    /// Whether `addr` answers a ping from inside the namespace within
    /// 10 s (one ping after another): for a path that must work, where one
    /// lost first packet (a neighbour still resolving on a loaded machine)
    /// is no failure. A path that must not work wants [`Ns::ping`].
    pub fn ping_eventually(&self, addr: &str) -> bool {
        wait_for(Duration::from_secs(10), || self.ping(addr).then_some(())).is_some()
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A temporary directory `<PREFIX>-<tag>-XXXXXX` under the system temp
/// dir (so a leftover names its test), removed on drop.
pub fn temp_dir(tag: &str) -> TempDir {
    temp_dir_in(&std::env::temp_dir(), tag)
}

/// [`temp_dir`] under `base` (e.g. `/dev/shm` for a tmpfs).
pub fn temp_dir_in(base: &Path, tag: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}-{tag}-"))
        .tempdir_in(base)
        .unwrap_or_else(|e| panic!("temporary directory in {}: {e}", base.display()))
}

/// The path of a temporary directory as text, for the configurations and
/// command lines the tests write it into.
pub trait TempDirExt {
    /// The directory's path, as a `String`.
    fn str(&self) -> String;
}

impl TempDirExt for TempDir {
    fn str(&self) -> String {
        self.path().display().to_string()
    }
}

/// A child process killed (SIGKILL, by its PID) and reaped when dropped,
/// also when the test fails.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Spawns `cmd`.
    pub fn spawn(cmd: &mut Command) -> io::Result<ChildGuard> {
        cmd.spawn().map(|c| ChildGuard(Some(c)))
    }

    /// The child's PID, while it has not been reaped.
    pub fn id(&self) -> Option<u32> {
        self.0.as_ref().map(|c| c.id())
    }

    /// Sends signal `sig` to the child, by its PID.
    pub fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        let Some(pid) = self.id() else {
            return Ok(());
        };
        let pid = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| io::Error::other(format!("PID {pid}")))?;
        let sig = rustix::process::Signal::from_named_raw(sig)
            .ok_or_else(|| io::Error::other(format!("signal {sig}")))?;
        // a child we spawned and have not reaped
        Ok(rustix::process::kill_process(pid, sig)?)
    }

    /// Waits for the child to exit, up to `timeout`; its exit status if it
    /// did (it is then reaped).
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        let Some(c) = self.0.as_mut() else {
            return Ok(None);
        };
        loop {
            if let Some(s) = c.try_wait()? {
                self.0 = None;
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` every 10 ms until it returns `Some` (that value) or `timeout`
/// passes (`None`).
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `nft -j list table FAMILY NAME` inside `ns`, without handles and
/// metainfo (they differ between two namespaces with the same ruleset):
/// the independent witness that two ways of programming a table agree.
pub fn nft_listing(ns: &Ns, family: &str, table: &str) -> Value {
    let text = ns.run_ok(&["nft", "-j", "list", "table", family, table]);
    let mut j: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("nft -j list table {family} {table}: not JSON: {e}"));
    fn strip(j: &mut Value) {
        match j {
            Value::Object(o) => {
                o.remove("handle");
                o.remove("metainfo");
                o.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut j);
    j
}

/// Where an `nft` binary could be (what a node without nftables lacks).
pub const NFT_PATHS: [&str; 4] = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"];

/// Makes `cmd` run in a mount namespace of its own where every `nft` is
/// the empty file `empty` (bind-mounted over it): a node without nftables,
/// as kind's node image is.
pub fn hide_nft(cmd: &mut Command, empty: &Path) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let empty = CString::new(empty.as_os_str().as_bytes()).expect("a path without NUL");
    let targets: Vec<CString> = NFT_PATHS
        .iter()
        .filter(|p| Path::new(p).exists())
        .filter_map(|p| CString::new(*p).ok())
        .collect();
    let root = CString::new("/").expect("no NUL");
    // SAFETY: pre_exec runs its closure in the forked child, where only
    // async-signal-safe calls are sound: these are plain syscalls on
    // strings made before the fork (no allocation, no lock). The mounts
    // live in the child's own mount namespace and go away with it. No
    // safe equivalent: std offers no other hook between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            let private = libc::MS_REC | libc::MS_PRIVATE;
            let null = std::ptr::null();
            if libc::mount(null, root.as_ptr(), null, private, std::ptr::null()) != 0 {
                return Err(io::Error::last_os_error());
            }
            for t in &targets {
                if libc::mount(
                    empty.as_ptr(),
                    t.as_ptr(),
                    null,
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
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
        let dir = temp_dir("tool");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let plain = plain.display().to_string();
        assert!(find_tool(&plain).is_none(), "not executable");
        assert!(find_tool(&dir.str()).is_none(), "a directory");
    }

    #[test]
    fn short_unique_names_fit_a_lab_name_and_differ() {
        let a = unique_short("np");
        let b = unique_short("np");
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert_eq!(n.len(), 8, "{n}");
            assert!(n.starts_with("np"), "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                "{n}"
            );
        }
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

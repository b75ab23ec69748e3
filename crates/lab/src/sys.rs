//! Running system tools (`ip`, `nft`, `ping`, `iperf3`) with errors that say
//! what failed.

use kindnet_netlink::Netns;
use std::process::{Command, Output, Stdio};

pub type Result<T> = std::result::Result<T, String>;

fn describe(args: &[&str]) -> String {
    args.join(" ")
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(args: &[&str]) -> Result<String> {
    let out = output(args)?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            describe(args),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn output(args: &[&str]) -> Result<Output> {
    let (cmd, rest) = args.split_first().ok_or("empty command")?;
    Command::new(cmd)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))
}

pub fn ok_in(ns: &str, args: &[&str]) -> bool {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    output(&full).map(|o| o.status.success()).unwrap_or(false)
}

/// `ip -n NS ARGS`.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    run(&full)
}

pub fn netns_list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn netns_add(name: &str) -> Result<()> {
    run(&["ip", "netns", "add", name])?;
    ip(name, &["link", "set", "lo", "up"]).map(|_| ())
}

pub fn netns_del(name: &str) {
    let _ = output(&["ip", "netns", "del", name]);
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Checks the tools the lab needs, naming the Debian package of a missing one.
pub fn require_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(bin, _)| {
            !std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
                .unwrap_or(false)
        })
        .map(|(bin, pkg)| format!("{bin} (apt-get install {pkg})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing tools: {}", missing.join(", ")))
    }
}

/// Where `ip netns` keeps the named network namespaces.
const NETNS_DIR: &str = "/var/run/netns";

/// The path of named network namespace `ns` (a pod's `CNI_NETNS`).
pub fn netns_path(ns: &str) -> String {
    format!("{NETNS_DIR}/{ns}")
}

/// Network namespace `ns`, as `ip netns` names them. The error starts
/// with "open ".
pub fn netns(ns: &str) -> Result<Netns> {
    Netns::open(netns_path(ns)).map_err(|e| format!("open netns {ns}: {e}"))
}

/// Runs `f` on a thread inside network namespace `ns`; processes it spawns
/// start in that namespace too (as `ip netns exec` would, without the exec).
pub fn in_netns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> Result<R> {
    netns(ns)?
        .run(f)
        .map_err(|e| format!("enter netns {ns}: {e}"))
}

/// [`in_netns`] for an `f` that fails with a message.
pub fn run_in_netns_fn<R: Send>(ns: &str, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    in_netns(ns, f)?
}

//! Delegation: finding and running another plugin binary (IPAM) the way a
//! runtime would, and recognising when that binary is this one.

use crate::env::{Command, Env};
use crate::error::{CniError, code};
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The first `name` found in the `CNI_PATH` directories.
pub fn find_plugin(name: &str, paths: &[PathBuf]) -> Result<PathBuf, CniError> {
    if name.is_empty() || name.contains('/') {
        return Err(CniError::invalid_config(format!(
            "invalid plugin type {name:?}"
        )));
    }
    paths
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("failed to find plugin {name:?} in CNI_PATH {paths:?}"),
            )
        })
}

/// Whether `path` is the executable of the running process (same file,
/// whatever name it was reached by), so its work can be done in-process.
pub fn is_this_binary(path: &Path) -> bool {
    let (Ok(a), Ok(b)) = (std::fs::metadata(path), std::fs::metadata("/proc/self/exe")) else {
        return false;
    };
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Runs a plugin binary for `cmd` with the caller's environment and `stdin`;
/// returns its parsed stdout (ADD) or the error object it printed.
pub fn exec_plugin(
    path: &Path,
    cmd: Command,
    env: &Env,
    stdin: &[u8],
) -> Result<Option<Value>, CniError> {
    let cmd_name = match cmd {
        Command::Add => "ADD",
        Command::Del => "DEL",
        Command::Check => "CHECK",
        Command::Version => "VERSION",
        Command::Status => "STATUS",
        Command::Gc => "GC",
    };
    let args: Vec<String> = env.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut child = std::process::Command::new(path)
        .env("CNI_COMMAND", cmd_name)
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_NETNS", &env.netns)
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_ARGS", args.join(";"))
        .env(
            "CNI_PATH",
            std::env::join_paths(&env.path).unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::io(format!("failed to run {}: {e}", path.display())))?;
    if let Some(mut w) = child.stdin.take() {
        w.write_all(stdin)
            .map_err(|e| CniError::io(format!("failed to write to {}: {e}", path.display())))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io(format!("failed to wait for {}: {e}", path.display())))?;
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let err = parsed
            .as_ref()
            .and_then(|v| {
                Some(CniError::new(
                    u32::try_from(v.get("code")?.as_u64()?).ok()?,
                    v.get("msg")?.as_str()?,
                ))
            })
            .unwrap_or_else(|| {
                CniError::internal(format!("{} failed with {}", path.display(), out.status))
            });
        return Err(err);
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parsed.map(Some).ok_or_else(|| {
        CniError::decode(format!(
            "{} printed a result that is not JSON",
            path.display()
        ))
    })
}

//! The `CNI_*` environment of one invocation, validated per command.

use crate::error::CniError;
use std::path::PathBuf;

/// `CNI_COMMAND`: the operation asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Set up an attachment.
    Add,
    /// Tear an attachment down (idempotent).
    Del,
    /// Verify an attachment is as ADD left it (0.4.0 on).
    Check,
    /// Report the versions the plugin supports.
    Version,
    /// Whether the plugin is ready to serve ADD (1.1.0).
    Status,
    /// Release everything not among the valid attachments (1.1.0).
    Gc,
}

impl Command {
    /// `ADD`, `DEL`, ... as the runtime spells them; `None` for anything else.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// The `CNI_*` variables of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// Empty when the runtime sent none (allowed for DEL).
    pub netns: String,
    /// `CNI_IFNAME`: the interface to create inside the container.
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`: where to look for delegated plugins.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads and validates the environment for `cmd` using `get` (so tests
    /// need not touch the process environment).
    pub fn from_lookup(
        cmd: Command,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Env, CniError> {
        let var = |k: &str| get(k).unwrap_or_default();
        let env = Env {
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: parse_args(&var("CNI_ARGS"))?,
            path: std::env::split_paths(&var("CNI_PATH"))
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
        };
        let (needs_id, needs_netns, needs_ifname) = match cmd {
            Command::Add | Command::Check => (true, true, true),
            Command::Del => (true, false, true),
            Command::Version | Command::Status | Command::Gc => (false, false, false),
        };
        if needs_id {
            validate_container_id(&env.container_id)?;
        }
        if needs_netns && env.netns.is_empty() {
            return Err(CniError::invalid_env("CNI_NETNS is required"));
        }
        if needs_ifname {
            validate_ifname(&env.ifname)?;
        }
        Ok(env)
    }

    /// The value of `CNI_ARGS` key `key`, if given.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `CNI_ARGS` is `K=V;K=V`. An item without `=` is malformed.
fn parse_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    CniError::invalid_env(format!("CNI_ARGS: item {p:?} is not KEY=VALUE"))
                })
        })
        .collect()
}

/// Spec: a container ID is non-empty, starts with an alphanumeric character
/// and holds only alphanumerics, `_`, `.` and `-`.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let first_ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if id.is_empty() {
        Err(CniError::invalid_env("CNI_CONTAINERID is required"))
    } else if !first_ok || !rest_ok {
        Err(CniError::invalid_env(format!(
            "CNI_CONTAINERID {id:?} is invalid: use letters, digits, '_', '.', '-', starting with a letter or digit"
        )))
    } else {
        Ok(())
    }
}

/// Spec: an interface name is at most 15 bytes, not `.` or `..`, and holds
/// no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = |why: &str| {
        Err(CniError::invalid_env(format!(
            "CNI_IFNAME {name:?} is invalid: {why}"
        )))
    };
    if name.is_empty() {
        return Err(CniError::invalid_env("CNI_IFNAME is required"));
    }
    if name.len() > 15 {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return bad("contains '/', ':' or whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(cmd: Command, vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(cmd, |k| m.get(k).cloned())
    }

    #[test]
    fn add_needs_id_netns_ifname() {
        let ok = [
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert!(env(Command::Add, &ok).is_ok());
        for missing in 0..3 {
            let vars: Vec<_> = ok
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != missing)
                .map(|(_, v)| *v)
                .collect();
            let e = env(Command::Add, &vars).unwrap_err();
            assert_eq!(e.code, 4);
            assert!(e.msg.contains(ok[missing].0), "{e}");
        }
    }

    #[test]
    fn del_allows_missing_netns() {
        assert!(
            env(
                Command::Del,
                &[("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "eth0")]
            )
            .is_ok()
        );
    }

    #[test]
    fn rejects_bad_ids_ifnames_and_args() {
        for id in ["-a", "a/b", "a b", "ä"] {
            assert_eq!(validate_container_id(id).unwrap_err().code, 4, "{id}");
        }
        for n in ["a/b", "eth:0", "sixteen-chars-xx", "..", "a b"] {
            assert_eq!(validate_ifname(n).unwrap_err().code, 4, "{n}");
        }
        let e = env(Command::Version, &[("CNI_ARGS", "A=1;broken")]).unwrap_err();
        assert!(e.msg.contains("broken"));
        let e = env(Command::Version, &[("CNI_ARGS", "A=1;IgnoreUnknown=1")]).unwrap();
        assert_eq!(e.arg("IgnoreUnknown"), Some("1"));
    }
}

//! The plugin skeleton: environment + stdin in, one [`Plugin`] call, result or
//! error object out, converted to the configuration's spec version.

use crate::env::{Command, Env};
use crate::error::{CniError, code};
use crate::netconf::NetConf;
use crate::result::CniResult;
use crate::version::{self, Version};
use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// One invocation, decoded and validated.
pub struct Request {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// The rest of the `CNI_*` environment.
    pub env: Env,
    /// The network configuration from stdin.
    pub conf: NetConf,
    /// stdin as received, for delegation to another plugin.
    pub stdin: Vec<u8>,
    /// The configuration's `cniVersion`, parsed.
    pub version: Version,
}

impl Request {
    /// The prevResult of a chained or CHECK/DEL call, if any.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        self.conf
            .prev_result
            .as_ref()
            .map(CniResult::from_value)
            .transpose()
    }
}

/// A plugin: one method per command, called by [`run`] with a validated request.
pub trait Plugin {
    /// ADD: set up the attachment; the result is converted to the request's version.
    fn add(&self, req: &Request) -> Result<CniResult, CniError>;
    /// DEL: tear the attachment down; must succeed when it is already gone.
    fn del(&self, req: &Request) -> Result<(), CniError>;
    /// CHECK: an error when the attachment is not as ADD left it.
    fn check(&self, req: &Request) -> Result<(), CniError>;
    /// STATUS: an error when ADD cannot be served now (by default: ready).
    fn status(&self, _req: &Request) -> Result<(), CniError> {
        Ok(())
    }
    /// GC: release what belongs to no valid attachment (by default: nothing).
    fn gc(&self, _req: &Request) -> Result<(), CniError> {
        Ok(())
    }
}

/// What the process prints on stdout and its exit code.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// What goes to stdout: the result, the error object or the version report (JSON).
    pub stdout: String,
    /// 0 on success, 1 on error.
    pub exit_code: i32,
}

/// Runs `plugin` for the process's real environment and stdin; returns the
/// exit code after printing the outcome.
pub fn run(plugin: &dyn Plugin) -> i32 {
    let mut stdin = Vec::new();
    let command = std::env::var("CNI_COMMAND").ok();
    // VERSION may come with an empty stdin; other commands report a decode error.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let out = dispatch(plugin, command.as_deref(), |k| std::env::var(k).ok(), stdin);
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(out.stdout.as_bytes());
    let _ = so.flush();
    out.exit_code
}

/// The skeleton without process I/O, for tests.
pub fn dispatch(
    plugin: &dyn Plugin,
    command: Option<&str>,
    get_env: impl Fn(&str) -> Option<String>,
    stdin: Vec<u8>,
) -> Outcome {
    let mut reply_version = version::LATEST.to_string();
    let result = catch_unwind(AssertUnwindSafe(|| {
        handle(plugin, command, &get_env, stdin, &mut reply_version)
    }))
    .unwrap_or_else(|_| Err(CniError::internal("internal error: the plugin panicked")));
    match result {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => {
            crate::log_warn!("{:?} failed: code {}: {e}", command.unwrap_or(""), e.code);
            Outcome {
                stdout: e.to_json(&reply_version) + "\n",
                exit_code: 1,
            }
        }
    }
}

fn handle(
    plugin: &dyn Plugin,
    command: Option<&str>,
    get_env: &dyn Fn(&str) -> Option<String>,
    stdin: Vec<u8>,
    reply_version: &mut String,
) -> Result<String, CniError> {
    let command = match command {
        None | Some("") => return Err(CniError::invalid_env("CNI_COMMAND is required")),
        Some(c) => Command::parse(c).ok_or_else(|| {
            CniError::invalid_env(format!("CNI_COMMAND {c:?} is not a CNI command"))
        })?,
    };
    if command == Command::Version {
        return Ok(version_reply(&stdin));
    }
    let conf = NetConf::parse(&stdin)?;
    if version::SUPPORTED.contains(&conf.cni_version.as_str()) {
        *reply_version = conf.cni_version.clone();
    }
    let version = version::require_supported(&conf.cni_version)?;
    let needs = match command {
        Command::Check => Some(Version::V0_4_0),
        Command::Status | Command::Gc => Some(Version::V1_1_0),
        _ => None,
    };
    if let Some(min) = needs.filter(|min| version < *min) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{command:?} needs cniVersion {}.{}.{} or later, the configuration has {}",
                min.0, min.1, min.2, conf.cni_version
            ),
        ));
    }
    let env = Env::from_lookup(command, get_env)?;
    let req = Request {
        command,
        env,
        conf,
        stdin,
        version,
    };
    match command {
        Command::Add => {
            let res = plugin.add(&req)?;
            Ok(res.to_version(&req.conf.cni_version).to_string() + "\n")
        }
        Command::Del => plugin.del(&req).map(|_| String::new()),
        Command::Check => plugin.check(&req).map(|_| String::new()),
        Command::Status => plugin.status(&req).map(|_| String::new()),
        Command::Gc => plugin.gc(&req).map(|_| String::new()),
        Command::Version => unreachable!("handled above"),
    }
}

fn version_reply(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .unwrap_or_else(|| version::LATEST.to_string());
    serde_json::json!({"cniVersion": asked, "supportedVersions": version::SUPPORTED}).to_string()
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::IpConfig;

    struct Fake;
    impl Plugin for Fake {
        fn add(&self, req: &Request) -> Result<CniResult, CniError> {
            if req.conf.name == "panic" {
                panic!("boom");
            }
            Ok(CniResult {
                ips: vec![IpConfig {
                    address: "10.0.0.2/24".parse().unwrap(),
                    gateway: None,
                    interface: None,
                }],
                ..Default::default()
            })
        }
        fn del(&self, _: &Request) -> Result<(), CniError> {
            Ok(())
        }
        fn check(&self, _: &Request) -> Result<(), CniError> {
            Err(CniError::internal("drift"))
        }
    }

    fn call(cmd: &str, stdin: &str) -> (serde_json::Value, i32) {
        let env = |k: &str| match k {
            "CNI_CONTAINERID" => Some("c1".to_string()),
            "CNI_NETNS" => Some("/var/run/netns/x".to_string()),
            "CNI_IFNAME" => Some("eth0".to_string()),
            _ => None,
        };
        let o = dispatch(&Fake, Some(cmd), env, stdin.as_bytes().to_vec());
        (
            serde_json::from_str(&o.stdout).unwrap_or(serde_json::Value::Null),
            o.exit_code,
        )
    }

    #[test]
    fn add_converts_to_config_version() {
        let (v, rc) = call("ADD", r#"{"cniVersion":"0.3.1","name":"n","type":"x"}"#);
        assert_eq!(rc, 0);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
    }

    #[test]
    fn version_lists_supported() {
        let (v, rc) = call("VERSION", r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(rc, 0);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"].as_array().unwrap().len(),
            version::SUPPORTED.len()
        );
        assert_eq!(call("VERSION", "").0["cniVersion"], version::LATEST);
    }

    #[test]
    fn errors_use_the_error_object() {
        let (v, rc) = call("ADD", r#"{"cniVersion":"0.9.9","name":"n"}"#);
        assert_eq!((v["code"].as_u64(), rc), (Some(1), 1));
        let (v, _) = call("CHECK", r#"{"cniVersion":"0.3.1","name":"n"}"#);
        assert_eq!(v["code"], 1, "CHECK before 0.4.0");
        let (v, _) = call("GC", r#"{"cniVersion":"1.0.0","name":"n"}"#);
        assert_eq!(v["code"], 1, "GC before 1.1.0");
        let (v, _) = call("CHECK", r#"{"cniVersion":"1.0.0","name":"n"}"#);
        assert_eq!(
            (v["code"].as_u64(), v["cniVersion"].as_str()),
            (Some(100), Some("1.0.0"))
        );
        let (v, _) = call("BOGUS", "{}");
        assert_eq!(v["code"], 4);
        let (v, _) = call("ADD", r#"{"cniVersion":"1.0.0","na"#);
        assert_eq!(v["code"], 6);
    }

    #[test]
    fn a_panic_becomes_an_error_object() {
        let (v, rc) = call("ADD", r#"{"cniVersion":"1.0.0","name":"panic"}"#);
        assert_eq!((v["code"].as_u64(), rc), (Some(100), 1));
    }
}

//! A small CNI runtime, doing what containerd's libcni does with a conflist:
//! pick the spec version, build each plugin's configuration (name, version,
//! `runtimeConfig` for the capabilities it declares, `prevResult`), run the
//! chain in order for ADD and in reverse for DEL, and keep the result for
//! CHECK and DEL.

use crate::sys::Result;
use serde_json::{Map, Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Runtime {
    /// Directory holding the plugin binaries (CNI_PATH).
    pub bin_dir: PathBuf,
    /// The newest spec version the plugins speak (a runtime learns it with
    /// VERSION; the reference plugins stop at 1.0.0).
    pub max_version: Option<String>,
}

/// One pod's attachment.
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub pod_name: &'a str,
    pub pod_namespace: &'a str,
    /// Capability arguments, e.g. `{"portMappings": [...]}`.
    pub capabilities: Map<String, Value>,
}

/// The version to speak: the highest of `cniVersions` we (and the plugins,
/// up to `max`) know, else `cniVersion`.
pub fn pick_version(list: &Value, max: Option<&str>) -> String {
    const KNOWN: &[&str] = kindnet_cni_spec::version::SUPPORTED; // oldest first
    let offered: Vec<&str> = list["cniVersions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    let limit = max
        .and_then(|m| KNOWN.iter().position(|k| *k == m))
        .unwrap_or(KNOWN.len() - 1);
    KNOWN[..=limit]
        .iter()
        .rev()
        .find(|k| offered.contains(k))
        .map(|s| s.to_string())
        .unwrap_or_else(|| list["cniVersion"].as_str().unwrap_or("1.0.0").to_string())
}

/// The configuration one plugin of the chain receives (pure).
pub fn plugin_conf(
    list: &Value,
    plugin: &Value,
    version: &str,
    att: &Attachment,
    prev: Option<&Value>,
) -> Value {
    let mut conf = plugin.as_object().cloned().unwrap_or_default();
    conf.insert("name".into(), list["name"].clone());
    conf.insert("cniVersion".into(), json!(version));
    let mut rc = Map::new();
    if let Some(caps) = plugin["capabilities"].as_object() {
        for (k, on) in caps {
            if on.as_bool() == Some(true)
                && let Some(v) = att.capabilities.get(k)
            {
                rc.insert(k.clone(), v.clone());
            }
        }
    }
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    if let Some(p) = prev {
        conf.insert("prevResult".into(), p.clone());
    }
    Value::Object(conf)
}

fn plugins(list: &Value) -> Result<&Vec<Value>> {
    list["plugins"]
        .as_array()
        .ok_or_else(|| "conflist has no \"plugins\"".to_string())
}

impl Runtime {
    fn exec(
        &self,
        command: &str,
        plugin_type: &str,
        conf: &Value,
        att: &Attachment,
    ) -> Result<Option<Value>> {
        let bin = self.bin_dir.join(plugin_type);
        let mut child = Command::new(&bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", att.container_id)
            .env("CNI_NETNS", att.netns)
            .env("CNI_IFNAME", att.ifname)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}", att.pod_namespace, att.pod_name, att.container_id),
            )
            .env("CNI_PATH", &self.bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        if let Some(mut w) = child.stdin.take() {
            w.write_all(conf.to_string().as_bytes())
                .map_err(|e| format!("write to {plugin_type}: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("wait for {plugin_type}: {e}"))?;
        let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success() {
            let msg = parsed
                .as_ref()
                .map(|v| format!("code {}: {}", v["code"], v["msg"].as_str().unwrap_or("")))
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            return Err(format!("{command} {plugin_type}: {msg}"));
        }
        Ok(parsed)
    }

    pub fn add(&self, list: &Value, att: &Attachment) -> Result<Value> {
        let version = pick_version(list, self.max_version.as_deref());
        let mut prev: Option<Value> = None;
        for p in plugins(list)? {
            let ty = p["type"].as_str().ok_or("plugin without \"type\"")?;
            let conf = plugin_conf(list, p, &version, att, prev.as_ref());
            prev = Some(
                self.exec("ADD", ty, &conf, att)?
                    .ok_or_else(|| format!("ADD {ty}: no result"))?,
            );
        }
        prev.ok_or_else(|| "empty plugin chain".to_string())
    }

    pub fn check(&self, list: &Value, att: &Attachment, result: &Value) -> Result<()> {
        let version = pick_version(list, self.max_version.as_deref());
        for p in plugins(list)? {
            let ty = p["type"].as_str().ok_or("plugin without \"type\"")?;
            self.exec(
                "CHECK",
                ty,
                &plugin_conf(list, p, &version, att, Some(result)),
                att,
            )?;
        }
        Ok(())
    }

    pub fn del(&self, list: &Value, att: &Attachment, result: Option<&Value>) -> Result<()> {
        let version = pick_version(list, self.max_version.as_deref());
        for p in plugins(list)?.iter().rev() {
            let ty = p["type"].as_str().ok_or("plugin without \"type\"")?;
            self.exec("DEL", ty, &plugin_conf(list, p, &version, att, result), att)?;
        }
        Ok(())
    }
}

pub fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("parse {}: {e}", path.display()))
}

/// Writes JSON atomically (temp + rename).
pub fn write_json(path: &Path, v: &Value) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("rename {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att() -> Attachment<'static> {
        let mut capabilities = Map::new();
        capabilities.insert(
            "portMappings".into(),
            json!([{"hostPort": 1, "containerPort": 2}]),
        );
        Attachment {
            container_id: "c",
            netns: "/n",
            ifname: "eth0",
            pod_name: "p",
            pod_namespace: "default",
            capabilities,
        }
    }

    #[test]
    fn picks_highest_known_version() {
        let list =
            json!({"cniVersion": "1.0.0", "cniVersions": ["0.3.1", "1.0.0", "1.1.0", "9.0.0"]});
        assert_eq!(pick_version(&list, None), "1.1.0");
        assert_eq!(pick_version(&list, Some("1.0.0")), "1.0.0");
        assert_eq!(pick_version(&json!({"cniVersion": "0.4.0"}), None), "0.4.0");
    }

    #[test]
    fn capabilities_only_for_plugins_that_declare_them() {
        let list = json!({"name": "kindnet", "cniVersion": "1.0.0"});
        let ptp = plugin_conf(&list, &json!({"type": "ptp"}), "1.1.0", &att(), None);
        assert!(ptp.get("runtimeConfig").is_none());
        assert_eq!(ptp["name"], "kindnet");
        assert_eq!(ptp["cniVersion"], "1.1.0");
        let prev = json!({"ips": []});
        let pm = plugin_conf(
            &list,
            &json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            "1.1.0",
            &att(),
            Some(&prev),
        );
        assert_eq!(pm["runtimeConfig"]["portMappings"][0]["hostPort"], 1);
        assert_eq!(pm["prevResult"], prev);
    }
}

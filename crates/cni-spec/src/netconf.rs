//! The network configuration envelope that every plugin receives on stdin.
//!
//! Only the keys the spec defines are typed here; plugin-specific keys are
//! decoded by each plugin from [`NetConf::raw`] with [`decode`].

use crate::error::CniError;
use crate::result::Dns;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;

pub use crate::decode::decode;

/// The spec-defined keys of a network configuration (a conflist's entry with `name` and `cniVersion` filled in).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The spec version the runtime speaks for this call.
    pub cni_version: String,
    /// The network's name.
    pub name: String,
    /// `type`: the plugin's name.
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// Capabilities the plugin declares (e.g. `portMappings`).
    #[serde(default)]
    pub capabilities: HashMap<String, bool>,
    /// The IPAM plugin's configuration.
    #[serde(default)]
    pub ipam: Option<Value>,
    /// DNS settings to put in the result.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// Capability arguments from the runtime (e.g. `portMappings`).
    #[serde(default)]
    pub runtime_config: Option<Map<String, Value>>,
    /// `args`: extra arguments from the runtime.
    #[serde(default)]
    pub args: Option<Value>,
    /// The previous plugin's result in a chain, or ADD's result for CHECK and DEL.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC (1.1.0): the attachments the runtime still knows about.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The whole configuration object, for plugin-specific keys.
    #[serde(skip)]
    pub raw: Map<String, Value>,
}

/// One attachment the runtime still knows about (GC's valid attachments).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    /// The runtime's container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name inside the container.
    pub ifname: String,
}

impl NetConf {
    /// Parses stdin. Malformed JSON and wrong types are code 6, a missing
    /// required key is code 7; messages name the offending key.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::decode(format!("failed to decode network configuration: {e}"))
        })?;
        let Value::Object(raw) = value else {
            return Err(CniError::decode(
                "network configuration must be a JSON object",
            ));
        };
        let mut conf: NetConf = decode("network configuration", &Value::Object(raw.clone()))?;
        if conf.cni_version.is_empty() {
            return Err(CniError::invalid_config(
                "network configuration: \"cniVersion\" is empty",
            ));
        }
        validate_network_name(&conf.name)?;
        conf.raw = raw;
        Ok(conf)
    }

    /// Refuses reference-plugin options this project does not implement
    /// (code 2, naming the key).
    pub fn refuse_unsupported(&self, keys: &[&str]) -> Result<(), CniError> {
        refuse_keys(&self.raw, keys)
    }

    /// `runtimeConfig.<key>`, when the runtime sent it.
    pub fn runtime(&self, key: &str) -> Option<&Value> {
        self.runtime_config.as_ref()?.get(key)
    }
}

/// Code 2 for the first of `keys` present in `obj`.
pub fn refuse_keys(obj: &Map<String, Value>, keys: &[&str]) -> Result<(), CniError> {
    match keys.iter().find(|k| obj.contains_key(**k)) {
        Some(k) => Err(CniError::unsupported_field(k)),
        None => Ok(()),
    }
}

/// The longest network name: it names a directory of the IPAM store.
pub const MAX_NETWORK_NAME: usize = 255;

/// Spec (and the reference libcni): a network name starts with a letter or
/// digit, then letters, digits, `_`, `.` and `-`. Code 7 otherwise.
pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if name.is_empty() {
        Err(CniError::invalid_config(
            "network configuration: \"name\" is empty",
        ))
    } else if !first_ok || !rest_ok || name == "." || name == ".." {
        Err(CniError::invalid_config(format!(
            "network configuration: \"name\" {name:?} is invalid: use letters, digits, '_', '.', '-', starting with a letter or digit"
        )))
    } else if name.len() > MAX_NETWORK_NAME {
        Err(CniError::invalid_config(format!(
            "network configuration: \"name\" is {} bytes long, more than {MAX_NETWORK_NAME}",
            name.len()
        )))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_names_follow_the_spec() {
        for bad in [
            "",
            " ",
            "a b",
            "blue team",
            "a\"b",
            "a;b",
            "a}b",
            "a\nb",
            "-a",
            ".",
            "..",
            "_a",
            "a/b",
            "é",
            "a\u{0}",
        ] {
            let e = validate_network_name(bad).unwrap_err();
            assert_eq!(e.code, 7, "{bad:?}");
            assert!(e.msg.contains("name"), "{e}");
        }
        assert_eq!(validate_network_name(&"a".repeat(256)).unwrap_err().code, 7);
        for good in ["kindnet", "a", "1", "my-net.v2_x", &"a".repeat(255)] {
            validate_network_name(good).unwrap();
        }
    }

    #[test]
    fn parses_envelope_and_keeps_raw() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"ptp","mtu":1400,"ipam":{"type":"host-local"},
                "runtimeConfig":{"portMappings":[]},"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.plugin_type, "ptp");
        assert_eq!(c.raw["mtu"], 1400);
        assert!(c.runtime("portMappings").is_some());
        assert_eq!(c.valid_attachments.unwrap()[0].ifname, "eth0");
    }

    #[test]
    fn malformed_input_codes_and_messages() {
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"#).unwrap_err();
        assert_eq!(e.code, 6);
        let e = NetConf::parse(br#"[1]"#).unwrap_err();
        assert_eq!(e.code, 6);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":5}"#).unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("name"), "{e}");
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("name"), "{e}");
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","dns":{"nameservers":"x"}}"#)
            .unwrap_err();
        assert!(e.msg.contains("dns.nameservers"), "{e}");
    }

    #[test]
    fn refuses_unimplemented_keys_with_code_2() {
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","vlan":3}"#).unwrap();
        let e = c.refuse_unsupported(&["vlanTrunk", "vlan"]).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.msg.contains("vlan"));
    }
}

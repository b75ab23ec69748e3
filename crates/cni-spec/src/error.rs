//! The spec's error object (`{"cniVersion","code","msg","details"}`) and codes.

use serde::Serialize;
use std::fmt;

/// Well-known error codes from the CNI spec ("Error" section).
pub mod code {
    /// The runtime asked for a version the plugin does not speak.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A configuration key the plugin does not implement.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container or its network namespace does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A `CNI_*` variable is missing or malformed.
    pub const INVALID_ENV: u32 = 4;
    /// Reading or writing a file failed.
    pub const IO_FAILURE: u32 = 5;
    /// stdin or a prevResult is not valid JSON of the expected shape.
    pub const DECODE_FAILURE: u32 = 6;
    /// The network configuration is invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// A transient failure: the runtime should retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: pods get limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// Plugin-specific failures (netlink, nftables, …) use 100 and above.
    pub const INTERNAL: u32 = 100;
}

/// The spec's error object, printed on stdout when a command fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    /// One of [`code`].
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Longer detail (omitted when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with `code` and `msg`, no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }
    /// The same error with `details` added.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
    /// Code 7, invalid configuration.
    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }
    /// Code 2, naming the configuration key that is not implemented.
    pub fn unsupported_field(key: &str) -> Self {
        Self::new(
            code::UNSUPPORTED_FIELD,
            format!("unsupported field {key:?}: this plugin does not implement it"),
        )
    }
    /// Code 4, invalid environment.
    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg)
    }
    /// Code 6, decoding failure.
    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(code::DECODE_FAILURE, msg)
    }
    /// Code 5, I/O failure.
    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(code::IO_FAILURE, msg)
    }
    /// Code 100, a plugin-specific failure.
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, msg)
    }
    /// Prefixes the message with what was being done when it failed.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    /// The error object as the spec prints it, for the given version.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            #[serde(flatten)]
            err: &'a CniError,
        }
        serde_json::to_string(&Wire {
            cni_version,
            err: self,
        })
        .unwrap_or_else(|_| {
            // Serialising plain strings and numbers cannot fail; keep a
            // hand-written fallback rather than a panic anyway.
            format!(
                r#"{{"cniVersion":"{cni_version}","code":{},"msg":"error"}}"#,
                self.code
            )
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_has_spec_fields() {
        let e = CniError::new(code::INVALID_CONFIG, "bad \"subnet\"").with_details("x");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "bad \"subnet\"");
        assert_eq!(v["details"], "x");
        let v: serde_json::Value =
            serde_json::from_str(&CniError::io("x").to_json("0.4.0")).unwrap();
        assert!(v.get("details").is_none());
    }
}

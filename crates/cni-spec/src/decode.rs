//! Typed decoding of JSON values with errors that name the offending key:
//! shared by the configuration envelope, prevResults and each plugin's own
//! keys.

use crate::error::{CniError, code};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Decodes a typed view of `value`; errors name the path of the bad key
/// (e.g. `ipam.ranges[0][0].subnet`) under `what`.
pub fn decode<T: DeserializeOwned>(what: &str, value: &Value) -> Result<T, CniError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let code = if inner.starts_with("missing field") {
            code::INVALID_CONFIG
        } else {
            code::DECODE_FAILURE
        };
        let at = if path == "." {
            String::new()
        } else {
            format!(" at {path:?}")
        };
        CniError::new(code, format!("{what}{at}: {inner}"))
    })
}

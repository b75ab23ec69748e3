//! nftables through the `nft` binary: scripts applied as one transaction,
//! and set/map elements tagged with an owner comment so DEL and GC remove
//! exactly what one attachment added (listed as JSON, deleted as JSON).

use kindnet_cni_spec::CniError;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};

fn nft_binary() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nft")
}

/// Runs `nft ARGS` with `input` on stdin; the error names nft's complaint.
fn nft(args: &[&str], input: &str) -> Result<String, CniError> {
    let mut child = Command::new(nft_binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CniError::internal(format!(
                "cannot run nft (is the nftables package installed?): {e}"
            ))
        })?;
    if let Some(mut w) = child.stdin.take() {
        w.write_all(input.as_bytes())
            .map_err(|e| CniError::io(format!("write to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io(format!("wait for nft: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(CniError::internal(format!("nft failed: {}", err.trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies an nft script atomically.
pub fn apply(script: &str) -> Result<(), CniError> {
    nft(&["-f", "-"], script).map(|_| ())
}

/// One element of a set or map, as listed.
#[derive(Debug, Clone)]
pub struct Element {
    pub set: String,
    /// The key in nft's JSON form, fed back verbatim to delete it.
    pub key: Value,
    pub comment: String,
}

/// Every element of every set and map of `family table`; empty when the
/// table does not exist.
pub fn elements(family: &str, table: &str) -> Result<Vec<Element>, CniError> {
    // (`nft -j -f -` prints nothing for a list command: pass it as arguments)
    let text = match nft(&["-j", "list", "table", family, table], "") {
        Ok(t) => t,
        Err(e) if e.msg.contains("No such file or directory") => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| CniError::internal(format!("nft printed bad JSON: {e}")))?;
    Ok(parse_elements(&doc))
}

fn parse_elements(doc: &Value) -> Vec<Element> {
    let mut out = Vec::new();
    for item in doc["nftables"].as_array().into_iter().flatten() {
        let Some(obj) = item.get("set").or_else(|| item.get("map")) else {
            continue;
        };
        let set = obj["name"].as_str().unwrap_or_default().to_string();
        for e in obj["elem"].as_array().into_iter().flatten() {
            // a map element is [key, value]; a set element is the key
            let key = if e.is_array() { &e[0] } else { e };
            let (key, comment) = match key.get("elem") {
                Some(inner) => (
                    inner["val"].clone(),
                    inner["comment"].as_str().unwrap_or_default().to_string(),
                ),
                None => (key.clone(), String::new()),
            };
            out.push(Element {
                set: set.clone(),
                key,
                comment,
            });
        }
    }
    out
}

/// Deletes `elems` of `family table` in one transaction.
pub fn delete(family: &str, table: &str, elems: &[Element]) -> Result<(), CniError> {
    if elems.is_empty() {
        return Ok(());
    }
    let cmds: Vec<Value> = elems
        .iter()
        .map(|e| json!({"delete": {"element": {"family": family, "table": table, "name": e.set, "elem": [e.key]}}}))
        .collect();
    nft(&["-j", "-f", "-"], &json!({ "nftables": cmds }).to_string()).map(|_| ())
}

/// The owner comment of an attachment's elements.
pub fn owner(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{network} {container_id} {ifname}")
}

/// Deletes the owned elements for whose owner comment `remove` is true;
/// returns how many.
pub fn delete_where(
    family: &str,
    table: &str,
    remove: impl Fn(&str) -> bool,
) -> Result<usize, CniError> {
    let doomed: Vec<Element> = elements(family, table)?
        .into_iter()
        .filter(|e| !e.comment.is_empty() && remove(&e.comment))
        .collect();
    delete(family, table, &doomed)?;
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_set_and_map_elements_with_comments() {
        let doc: Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {}}, {"map": {"family": "inet", "name": "hp4", "table": "t",
               "elem": [[{"elem": {"val": {"concat": ["tcp", 8080]}, "comment": "n c1 eth0"}}, {"concat": ["10.244.1.5", 80]}],
                        [{"concat": ["udp", 53]}, {"concat": ["10.244.1.6", 53]}]]}},
               {"set": {"name": "pods4", "elem": [{"elem": {"val": "10.0.0.1", "comment": "x"}}, "10.0.0.2"]}}]}"#,
        )
        .unwrap();
        let e = parse_elements(&doc);
        assert_eq!(e.len(), 4);
        assert_eq!(
            (e[0].set.as_str(), e[0].comment.as_str()),
            ("hp4", "n c1 eth0")
        );
        assert_eq!(e[0].key, json!({"concat": ["tcp", 8080]}));
        assert_eq!(e[1].comment, "");
        assert_eq!(e[2].key, json!("10.0.0.1"));
        assert_eq!(e[3].key, json!("10.0.0.2"));
    }
}

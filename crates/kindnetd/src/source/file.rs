//! Static node source: a Kubernetes NodeList in JSON or YAML (exactly what
//! `kubectl get nodes -o json` prints), re-read when it changes.
//!
//! Changes are noticed through inotify on the file's directory (which also
//! catches atomic renames and ConfigMap symlink swaps), with a slow poll as
//! a fallback. A file that does not parse is logged and counted, and the
//! nodes read before stay in force.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use inotify::{Inotify, WatchMask};
use serde::Deserialize;

use crate::node::{RawMeta, RawNode};
use crate::source::Sink;

const SOURCE: &str = "file";
/// Fallback poll interval when no inotify event arrives.
const POLL: Duration = Duration::from_secs(2);
/// Events arriving this close together are handled as one.
const SETTLE: Duration = Duration::from_millis(5);

#[derive(Deserialize)]
struct NameOnly {
    name: String,
}

#[derive(Deserialize)]
struct Named {
    metadata: NameOnly,
}

/// One list item; items that are not node-shaped still yield their name
/// when they have one, so the node keeps its previous state.
#[derive(Deserialize)]
#[serde(untagged)]
enum Item {
    Node(RawNode),
    Named(Named),
    Junk(serde::de::IgnoredAny),
}

impl From<Item> for RawNode {
    fn from(i: Item) -> RawNode {
        match i {
            Item::Node(n) => n,
            Item::Named(n) => RawNode {
                metadata: RawMeta {
                    name: Some(n.metadata.name),
                },
                malformed: Some("fields of the wrong type".into()),
                ..Default::default()
            },
            Item::Junk(_) => RawNode {
                malformed: Some("list item is not an object with metadata.name".into()),
                ..Default::default()
            },
        }
    }
}

#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    items: Option<Vec<Item>>,
}

fn looks_like_json(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// Parses a NodeList / List of Nodes (or one Node) in JSON or YAML.
pub fn parse_node_list(bytes: &[u8]) -> Result<Vec<RawNode>, String> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err("the file is empty".into());
    }
    let json = looks_like_json(bytes);
    let doc: Doc = if json {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        serde_yaml::from_slice(bytes).map_err(|e| format!("invalid YAML: {e}"))?
    };
    match (doc.items, doc.kind.as_deref()) {
        (Some(items), _) => Ok(items.into_iter().map(RawNode::from).collect()),
        (None, Some("Node")) => {
            let one: RawNode = if json {
                serde_json::from_slice(bytes).map_err(|e| format!("invalid Node: {e}"))?
            } else {
                serde_yaml::from_slice(bytes).map_err(|e| format!("invalid Node: {e}"))?
            };
            Ok(vec![one])
        }
        (None, kind) => Err(format!(
            "expected a NodeList (an object with \"items\"), got kind {:?}",
            kind.unwrap_or("<none>")
        )),
    }
}

/// What identifies one version of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn version(path: &Path) -> std::io::Result<Version> {
    let m = std::fs::metadata(path)?;
    Ok(Version {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Watches and re-reads `path` forever.
pub async fn run(path: PathBuf, sink: Sink) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut events = match Inotify::init().and_then(|i| {
        i.watches().add(
            &dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::DELETE
                | WatchMask::ATTRIB,
        )?;
        i.into_event_stream(vec![0u8; 4096])
    }) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "no inotify; polling the nodes file every {POLL:?}");
            None
        }
    };

    let mut last: Option<Version> = None;
    let mut missing_logged = false;
    loop {
        match version(&path) {
            Err(e) => {
                if !missing_logged {
                    sink.status().metrics.source_error(SOURCE);
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the nodes file; keeping the nodes known");
                    missing_logged = true;
                }
                last = None;
            }
            Ok(v) if last.as_ref() == Some(&v) => {}
            Ok(v) => {
                missing_logged = false;
                last = Some(v);
                read_and_apply(&path, &sink).await;
            }
        }
        match events.as_mut() {
            Some(stream) => {
                tokio::select! {
                    ev = stream.next() => {
                        if ev.is_none() {
                            events = None;
                            continue;
                        }
                        // Let a burst of events (rename + attrib ...) settle.
                        tokio::time::sleep(SETTLE).await;
                        while let Some(Some(_)) = stream.next().now_or_never() {}
                    }
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            None => tokio::time::sleep(POLL).await,
        }
    }
}

use futures::FutureExt;

async fn read_and_apply(path: &Path, sink: &Sink) {
    let p = path.to_path_buf();
    let parsed = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&p).map_err(|e| format!("read: {e}"))?;
        parse_node_list(&bytes)
    })
    .await
    .unwrap_or_else(|e| Err(format!("parser task failed: {e}")));
    match parsed {
        Ok(nodes) => {
            sink.replace_all(SOURCE, &nodes);
        }
        Err(e) => {
            sink.status().metrics.source_error(SOURCE);
            tracing::error!(path = %path.display(), error = %e, "nodes file ignored; keeping the nodes known");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::validate;

    const KUBECTL_JSON: &str = r#"{
    "apiVersion": "v1",
    "items": [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "annotations": {"kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock"},
                "creationTimestamp": "2024-05-01T10:00:00Z",
                "labels": {"kubernetes.io/hostname": "kind-control-plane"},
                "name": "kind-control-plane",
                "resourceVersion": "1234",
                "uid": "5b7e6a9c-0000-0000-0000-000000000000"
            },
            "spec": {
                "podCIDR": "10.244.0.0/24",
                "podCIDRs": ["10.244.0.0/24", "fd00:10:244::/64"],
                "providerID": "kind://docker/kind/kind-control-plane",
                "taints": [{"effect": "NoSchedule", "key": "node-role.kubernetes.io/control-plane"}]
            },
            "status": {
                "addresses": [
                    {"address": "172.18.0.2", "type": "InternalIP"},
                    {"address": "fc00:f853:ccd:e793::2", "type": "InternalIP"},
                    {"address": "kind-control-plane", "type": "Hostname"}
                ],
                "allocatable": {"cpu": "8", "memory": "32Gi"},
                "conditions": [{"type": "Ready", "status": "True"}],
                "images": [{"names": ["registry.k8s.io/pause:3.9"], "sizeBytes": 321520}],
                "nodeInfo": {"kubeletVersion": "v1.30.0"}
            }
        },
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "kind-worker"},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
            "status": {"addresses": [{"address": "172.18.0.3", "type": "InternalIP"}]}
        }
    ],
    "kind": "List",
    "metadata": {"resourceVersion": ""}
}"#;

    #[test]
    fn kubectl_json_output() {
        let nodes = parse_node_list(KUBECTL_JSON.as_bytes()).unwrap();
        assert_eq!(nodes.len(), 2);
        let (cp, w) = validate(&nodes[0]).unwrap();
        assert!(w.is_empty());
        assert_eq!(cp.name, "kind-control-plane");
        assert_eq!(cp.pod_cidrs.len(), 2);
        assert_eq!(cp.internal_ips.len(), 2);
        assert_eq!(validate(&nodes[1]).unwrap().0.name, "kind-worker");
    }

    #[test]
    fn yaml_node_list() {
        let y = r#"
apiVersion: v1
kind: NodeList
items:
- apiVersion: v1
  kind: Node
  metadata:
    name: a
  spec:
    podCIDRs: [10.244.1.0/24]
  status:
    addresses:
    - type: InternalIP
      address: 10.0.0.1
"#;
        let nodes = parse_node_list(y.as_bytes()).unwrap();
        let (n, _) = validate(&nodes[0]).unwrap();
        assert_eq!(n.name, "a");
        assert_eq!(n.pod_cidrs[0].to_string(), "10.244.1.0/24");
    }

    #[test]
    fn single_node_document() {
        let j = r#"{"kind":"Node","metadata":{"name":"solo"},"spec":{"podCIDR":"10.244.5.0/24"}}"#;
        let nodes = parse_node_list(j.as_bytes()).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].metadata.name.as_deref(), Some("solo"));
    }

    #[test]
    fn empty_items_is_a_valid_empty_cluster() {
        assert!(
            parse_node_list(br#"{"kind":"NodeList","items":[]}"#)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn invalid_documents_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"   \n",
            b"{",
            b"{\"items\": 5}",
            b"- just\n- a list\n",
            b"\x00\xff\xfe",
            b"kind: Pod\nmetadata: {name: x}\n",
            b"items: [",
        ] {
            assert!(
                parse_node_list(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn odd_items_are_kept_as_rejections_with_their_names() {
        let j = r#"{"items":[
            {"metadata":{"name":"typed-wrong"},"spec":{"podCIDRs":[5]}},
            "a string",
            {"metadata":{"name":"ok"},"spec":{"podCIDRs":["10.244.1.0/24"]}}
        ]}"#;
        let nodes = parse_node_list(j.as_bytes()).unwrap();
        assert_eq!(nodes.len(), 3);
        let e = validate(&nodes[0]).unwrap_err();
        assert_eq!(e.reason(), "malformed-object");
        assert_eq!(nodes[0].metadata.name.as_deref(), Some("typed-wrong"));
        assert!(validate(&nodes[1]).is_err());
        assert!(validate(&nodes[2]).is_ok());
    }
}

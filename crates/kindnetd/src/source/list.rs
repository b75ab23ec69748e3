//! The nodes file's format, read in one place: a Kubernetes `List` (what
//! `kubectl get -o json` prints) or `NodeList` in JSON or YAML, or one Node.
//! Items are told apart by `kind`: Nodes go to the node store; Pods,
//! Namespaces, NetworkPolicies and ClusterNetworkPolicies to the policy
//! inputs. An item of no policy kind is read as a node, and one that is not
//! node-shaped is kept as a rejection with its name when it has one, so the
//! node keeps its previous state.

use serde::{Deserialize, Deserializer};

use crate::inputs::node::{RawMeta, RawNode};
use crate::policy::Object;

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
enum NodeItem {
    Node(RawNode),
    Named(Named),
    Junk(serde::de::IgnoredAny),
}

impl From<NodeItem> for RawNode {
    fn from(i: NodeItem) -> RawNode {
        match i {
            NodeItem::Node(n) => n,
            NodeItem::Named(n) => RawNode {
                metadata: RawMeta {
                    name: Some(n.metadata.name),
                    ..Default::default()
                },
                malformed: Some("fields of the wrong type".into()),
                ..Default::default()
            },
            NodeItem::Junk(_) => RawNode {
                malformed: Some("list item is not an object with metadata.name".into()),
                ..Default::default()
            },
        }
    }
}

/// One item of no policy kind, read as a node.
fn raw_node_from_value(v: serde_json::Value) -> RawNode {
    match serde_json::from_value::<NodeItem>(v) {
        Ok(i) => RawNode::from(i),
        Err(e) => RawNode {
            malformed: Some(format!("list item: {e}")),
            ..Default::default()
        },
    }
}

fn looks_like_json(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// A parsed nodes file.
#[derive(Debug, Default)]
pub struct ClusterList {
    pub nodes: Vec<RawNode>,
    pub objects: Vec<Object>,
    /// ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`).
    pub cnps: Vec<kindnet_netpol::cnp::input::ClusterNetworkPolicy>,
    /// The List's `metadata.resourceVersion`, when a number.
    pub version: Option<u64>,
    /// Items of a policy kind that did not parse (logged by the caller).
    pub bad: Vec<String>,
}

enum Item {
    Node(RawNode),
    Object(Object),
    Cnp(kindnet_netpol::cnp::input::ClusterNetworkPolicy),
    Bad(String),
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Item, D::Error> {
        // one item at a time: only this item is held as a value
        let v = serde_json::Value::deserialize(d)?;
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        let parsed = match kind.as_str() {
            "Pod" => serde_json::from_value(v).map(Object::Pod),
            "Namespace" => serde_json::from_value(v).map(Object::Namespace),
            "NetworkPolicy" => serde_json::from_value(v).map(Object::Policy),
            kindnet_netpol::cnp::KIND => {
                return Ok(match serde_json::from_value(v) {
                    Ok(p) => Item::Cnp(p),
                    Err(e) => Item::Bad(format!("{kind}: {e}")),
                });
            }
            _ => return Ok(Item::Node(raw_node_from_value(v))),
        };
        Ok(match parsed {
            Ok(o) => Item::Object(o),
            Err(e) => Item::Bad(format!("{kind}: {e}")),
        })
    }
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<ListMeta>,
    #[serde(default)]
    items: Option<Vec<Item>>,
}

/// Parses the nodes file; a single Node document (no `items`) is a list of one.
pub fn parse_cluster_list(bytes: &[u8]) -> Result<ClusterList, String> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err("the file is empty".into());
    }
    let json = looks_like_json(bytes);
    let doc: Doc = if json {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        serde_yaml::from_slice(bytes).map_err(|e| format!("invalid YAML: {e}"))?
    };
    let Some(items) = doc.items else {
        if doc.kind.as_deref() != Some("Node") {
            return Err(format!(
                "expected a NodeList (an object with \"items\"), got kind {:?}",
                doc.kind.as_deref().unwrap_or("<none>")
            ));
        }
        let one: RawNode = if json {
            serde_json::from_slice(bytes).map_err(|e| format!("invalid Node: {e}"))?
        } else {
            serde_yaml::from_slice(bytes).map_err(|e| format!("invalid Node: {e}"))?
        };
        return Ok(ClusterList {
            nodes: vec![one],
            ..Default::default()
        });
    };
    let version = doc
        .metadata
        .and_then(|m| m.resource_version)
        .and_then(|v| match v {
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Number(n) => n.as_u64(),
            _ => None,
        });
    let mut out = ClusterList {
        version,
        ..Default::default()
    };
    for i in items {
        match i {
            Item::Node(n) => out.nodes.push(n),
            Item::Object(o) => out.objects.push(o),
            Item::Cnp(p) => out.cnps.push(p),
            Item::Bad(e) => out.bad.push(e),
        }
    }
    for b in &out.bad {
        tracing::warn!(source = "file", "policy input skipped: {b}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::node::validate;

    /// The nodes of a file, as the node store gets them.
    fn nodes(bytes: &[u8]) -> Result<Vec<RawNode>, String> {
        parse_cluster_list(bytes).map(|l| l.nodes)
    }

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
        let nodes = nodes(KUBECTL_JSON.as_bytes()).unwrap();
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
        let nodes = nodes(y.as_bytes()).unwrap();
        let (n, _) = validate(&nodes[0]).unwrap();
        assert_eq!(n.name, "a");
        assert_eq!(n.pod_cidrs[0].to_string(), "10.244.1.0/24");
    }

    #[test]
    fn single_node_document() {
        let j = r#"{"kind":"Node","metadata":{"name":"solo"},"spec":{"podCIDR":"10.244.5.0/24"}}"#;
        let nodes = nodes(j.as_bytes()).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].metadata.name.as_deref(), Some("solo"));
    }

    #[test]
    fn empty_items_is_a_valid_empty_cluster() {
        assert!(
            nodes(br#"{"kind":"NodeList","items":[]}"#)
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
            assert!(nodes(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn odd_items_are_kept_as_rejections_with_their_names() {
        let j = r#"{"items":[
            {"metadata":{"name":"typed-wrong"},"spec":{"podCIDRs":[5]}},
            "a string",
            {"metadata":{"name":"ok"},"spec":{"podCIDRs":["10.244.1.0/24"]}}
        ]}"#;
        let nodes = nodes(j.as_bytes()).unwrap();
        assert_eq!(nodes.len(), 3);
        let e = validate(&nodes[0]).unwrap_err();
        assert_eq!(e.reason(), "malformed-object");
        assert_eq!(nodes[0].metadata.name.as_deref(), Some("typed-wrong"));
        assert!(validate(&nodes[1]).is_err());
        assert!(validate(&nodes[2]).is_ok());
    }

    #[test]
    fn a_kubectl_list_is_split_by_kind() {
        let j = r#"{"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "12"}, "items": [
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
             "spec": {"podCIDRs": ["10.244.1.0/24"]},
             "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}},
            {"kind": "Pod", "metadata": {"namespace": "x", "name": "a", "labels": {"pod": "a"}},
             "spec": {"nodeName": "n1", "containers": [{"ports": [{"name": "serve-80-tcp", "containerPort": 80}]}]},
             "status": {"podIPs": [{"ip": "10.244.1.2"}]}},
            {"kind": "Namespace", "metadata": {"name": "x", "labels": {"ns": "x"}}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"namespace": "x", "name": "deny"}, "spec": {"podSelector": {}}},
            {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
             "metadata": {"name": "admin"}, "spec": {"tier": "Admin", "priority": 3,
                "subject": {"namespaces": {}}}},
            {"kind": "Pod", "metadata": "not an object"}
        ]}"#;
        let l = parse_cluster_list(j.as_bytes()).unwrap();
        assert_eq!(l.nodes.len(), 1);
        assert_eq!(l.nodes[0].metadata.name.as_deref(), Some("n1"));
        assert_eq!(l.objects.len(), 3);
        assert_eq!(l.cnps.len(), 1);
        assert_eq!(l.cnps[0].name, "admin");
        assert!(matches!(&l.objects[0], Object::Pod(p) if p.pod_ips == ["10.244.1.2"]));
        assert_eq!(l.version, Some(12));
        assert_eq!(l.bad.len(), 1);
    }

    #[test]
    fn yaml_lists_and_plain_node_lists_still_work() {
        let y = "kind: List\nitems:\n- kind: Namespace\n  metadata:\n    name: y\n- metadata:\n    name: n2\n  spec:\n    podCIDRs: [10.244.2.0/24]\n";
        let l = parse_cluster_list(y.as_bytes()).unwrap();
        assert_eq!((l.nodes.len(), l.objects.len(), l.version), (1, 1, None));
        let one = r#"{"kind": "Node", "metadata": {"name": "n1"}}"#;
        assert_eq!(parse_cluster_list(one.as_bytes()).unwrap().nodes.len(), 1);
        assert!(parse_cluster_list(b"  ").is_err());
        assert!(parse_cluster_list(b"{nope").is_err());
    }
}

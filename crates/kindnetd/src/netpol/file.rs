//! The nodes file as a Kubernetes `List` (what `kubectl get -o json`
//! prints) whose items may be Nodes, Pods, Namespaces and NetworkPolicies:
//! nodes go to the node store, the rest to the policy inputs.

use serde::{Deserialize, Deserializer};

use super::Object;
use crate::inputs::node::RawNode;
use crate::source::file::{looks_like_json, parse_node_list, raw_node_from_value};

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
    let doc: Doc = if looks_like_json(bytes) {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        serde_yaml::from_slice(bytes).map_err(|e| format!("invalid YAML: {e}"))?
    };
    let Some(items) = doc.items else {
        let _ = doc.kind;
        return parse_node_list(bytes).map(|nodes| ClusterList {
            nodes,
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

//! The Kubernetes objects as they arrive: slim serde types keeping only
//! the fields policy needs, deserializable from the API's JSON. Nothing
//! here is trusted; [`crate::Cluster::new`] validates it.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// A user's string as shown in a reason: escaped, at most 64 characters.
pub(crate) fn shown(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// `null` and absent both mean the default (the API sends either).
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Labels of an object (sorted, so comparisons and output are stable).
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default, deserialize_with = "nullable")]
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    namespace: String,
    #[serde(default, deserialize_with = "nullable")]
    labels: Labels,
}

/// A container port: what a named port resolves to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// The port's name (empty for an unnamed port).
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// Wider than a port so that an out-of-range value is refused by
    /// validation with a reason instead of failing the whole object.
    #[serde(rename = "containerPort", default)]
    pub port: i64,
    /// `TCP` when absent.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// A Pod (`kubectl get pod -o json`), flattened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "PodJson")]
pub struct Pod {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: Labels,
    /// `spec.nodeName`: empty until scheduled.
    pub node_name: String,
    /// `spec.hostNetwork`: a pod with the node's addresses, never isolated.
    pub host_network: bool,
    /// `status.podIPs` (or `status.podIP`), as sent.
    pub pod_ips: Vec<String>,
    /// The container ports of every container.
    pub ports: Vec<ContainerPort>,
    /// `status.phase`: `Succeeded`/`Failed` pods are gone from the network
    /// (their addresses may already belong to another pod).
    pub phase: String,
}

impl Pod {
    /// `Succeeded` or `Failed`: off the network, its addresses free for reuse.
    pub fn is_finished(&self) -> bool {
        self.phase == "Succeeded" || self.phase == "Failed"
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodJson {
    #[serde(default, deserialize_with = "nullable")]
    metadata: Meta,
    #[serde(default, deserialize_with = "nullable")]
    spec: PodSpecJson,
    #[serde(default, deserialize_with = "nullable")]
    status: PodStatusJson,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpecJson {
    #[serde(default, deserialize_with = "nullable")]
    node_name: String,
    #[serde(default, deserialize_with = "nullable")]
    host_network: bool,
    #[serde(default, deserialize_with = "nullable")]
    containers: Vec<ContainerJson>,
}

#[derive(Default, Deserialize)]
struct ContainerJson {
    #[serde(default, deserialize_with = "nullable")]
    ports: Vec<ContainerPort>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatusJson {
    #[serde(default, deserialize_with = "nullable")]
    phase: String,
    #[serde(rename = "podIP", default, deserialize_with = "nullable")]
    pod_ip: String,
    #[serde(rename = "podIPs", default, deserialize_with = "nullable")]
    pod_ips: Vec<PodIpJson>,
}

#[derive(Default, Deserialize)]
struct PodIpJson {
    #[serde(default, deserialize_with = "nullable")]
    ip: String,
}

impl From<PodJson> for Pod {
    fn from(p: PodJson) -> Pod {
        let mut pod_ips: Vec<String> = p.status.pod_ips.into_iter().map(|i| i.ip).collect();
        // podIP is podIPs[0]; older objects only have podIP
        if pod_ips.is_empty() && !p.status.pod_ip.is_empty() {
            pod_ips.push(p.status.pod_ip);
        }
        Pod {
            namespace: p.metadata.namespace,
            name: p.metadata.name,
            labels: p.metadata.labels,
            node_name: p.spec.node_name,
            host_network: p.spec.host_network,
            pod_ips,
            ports: p
                .spec
                .containers
                .into_iter()
                .flat_map(|c| c.ports)
                .collect(),
            phase: p.status.phase,
        }
    }
}

/// A Namespace, flattened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "NamespaceJson")]
pub struct Namespace {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: Labels,
}

#[derive(Deserialize)]
struct NamespaceJson {
    #[serde(default, deserialize_with = "nullable")]
    metadata: Meta,
}

impl From<NamespaceJson> for Namespace {
    fn from(n: NamespaceJson) -> Namespace {
        Namespace {
            name: n.metadata.name,
            labels: n.metadata.labels,
        }
    }
}

/// A label selector requirement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Requirement {
    /// The label key.
    #[serde(default, deserialize_with = "nullable")]
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist` (anything else is refused).
    #[serde(default, deserialize_with = "nullable")]
    pub operator: String,
    /// The values for `In` and `NotIn`.
    #[serde(default, deserialize_with = "nullable")]
    pub values: Vec<String>,
}

/// `metav1.LabelSelector`. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must all be set to these values.
    #[serde(default, deserialize_with = "nullable")]
    pub match_labels: Labels,
    /// Requirements that must all hold.
    #[serde(default, deserialize_with = "nullable")]
    pub match_expressions: Vec<Requirement>,
}

/// An `ipBlock` peer: a CIDR minus exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct IpBlock {
    /// The block.
    #[serde(default, deserialize_with = "nullable")]
    pub cidr: String,
    /// CIDRs inside it that are not part of the peer.
    #[serde(default, deserialize_with = "nullable")]
    pub except: Vec<String>,
}

/// One peer of a rule: selectors, or an ipBlock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Pods with these labels (in the policy's namespace, unless `namespace_selector` is set).
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces with these labels (every pod of them, or those `pod_selector` picks).
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses (a CIDR minus exceptions) instead of selectors.
    #[serde(default)]
    pub ip_block: Option<IpBlock>,
}

/// `IntOrString`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    /// A port number.
    Number(i64),
    /// A named container port.
    Name(String),
}

/// One `ports` entry of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPort {
    /// `TCP` when absent.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Every port of the protocol when absent.
    #[serde(default)]
    pub port: Option<PortValue>,
    /// With a numeric `port`: the last port of the range it starts.
    #[serde(default)]
    pub end_port: Option<i64>,
}

/// An ingress rule (`from`) or an egress rule (`to`): the peers (empty =
/// every peer) and ports (empty = every port and protocol).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Rule {
    /// `from` (ingress) or `to` (egress).
    #[serde(default, alias = "from", alias = "to", deserialize_with = "nullable")]
    pub peers: Vec<Peer>,
    /// The ports and protocols allowed.
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<PolicyPort>,
}

/// A NetworkPolicy's `spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// The pods of its namespace the policy applies to.
    #[serde(default, deserialize_with = "nullable")]
    pub pod_selector: LabelSelector,
    /// As sent; defaulted by [`crate::Cluster::new`] the way the API
    /// server does.
    #[serde(default, deserialize_with = "nullable")]
    pub policy_types: Vec<String>,
    /// Ingress rules: what may connect to the selected pods.
    #[serde(default, deserialize_with = "nullable")]
    pub ingress: Vec<Rule>,
    /// Egress rules: where the selected pods may connect.
    #[serde(default, deserialize_with = "nullable")]
    pub egress: Vec<Rule>,
}

/// A NetworkPolicy, flattened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "PolicyJson")]
pub struct NetworkPolicy {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec`.
    pub spec: PolicySpec,
}

#[derive(Deserialize)]
struct PolicyJson {
    #[serde(default, deserialize_with = "nullable")]
    metadata: Meta,
    #[serde(default, deserialize_with = "nullable")]
    spec: PolicySpec,
}

impl From<PolicyJson> for NetworkPolicy {
    fn from(p: PolicyJson) -> NetworkPolicy {
        NetworkPolicy {
            namespace: p.metadata.namespace,
            name: p.metadata.name,
            spec: p.spec,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_deserialize_from_the_api_json() {
        let p: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}, "uid": "u"},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "c", "image": "i", "ports": [
                    {"name": "serve-80-tcp", "containerPort": 80},
                    {"containerPort": 81, "protocol": "UDP"}]},
                {"name": "d", "ports": null}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}
        }))
        .unwrap();
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("x", "a"));
        assert_eq!(p.node_name, "n1");
        assert_eq!(p.pod_ips, ["10.0.0.1", "fd00::1"]);
        assert_eq!(p.ports.len(), 2);
        assert_eq!(p.ports[0].name, "serve-80-tcp");
        assert_eq!(p.ports[1].protocol.as_deref(), Some("UDP"));
        // an old object with podIP only
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "b"},
            "status": {"podIP": "10.0.0.2"}, "spec": null}))
        .unwrap();
        assert_eq!(p.pod_ips, ["10.0.0.2"]);
    }

    #[test]
    fn policies_deserialize_from_the_api_json() {
        let p: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [
                    {"podSelector": {}, "namespaceSelector": {"matchExpressions": [
                        {"key": "ns", "operator": "In", "values": ["y"]}]}},
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                    "ports": [{"port": "serve-80-tcp"}, {"protocol": "UDP", "port": 80, "endPort": 90}]}],
                "egress": [{"to": null, "ports": null}, {}]
            }
        }))
        .unwrap();
        assert_eq!(p.spec.policy_types, Vec::<String>::new());
        let r = &p.spec.ingress[0];
        assert_eq!(r.peers.len(), 2);
        assert_eq!(r.peers[0].pod_selector, Some(LabelSelector::default()));
        assert_eq!(
            r.ports[0].port,
            Some(PortValue::Name("serve-80-tcp".into()))
        );
        assert_eq!(r.ports[1].end_port, Some(90));
        assert_eq!(p.spec.egress.len(), 2);
        assert!(p.spec.egress[0].peers.is_empty());
    }
}

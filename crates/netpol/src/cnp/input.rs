//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`) and Node as
//! they arrive: slim serde types keeping the fields policy needs. Unknown
//! fields are ignored here; a peer or protocol left with no field this
//! crate knows is caught by validation and fails closed as the API says.

use serde::{Deserialize, Deserializer};

use crate::input::{LabelSelector, Labels};

/// `null` and absent both mean the default.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
struct Meta {
    #[serde(default, deserialize_with = "nullable")]
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    labels: Labels,
}

/// `NamespacedPod`: pods matching `pod_selector` in namespaces matching
/// `namespace_selector` (empty: every namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// Empty or absent: every namespace.
    #[serde(default, deserialize_with = "nullable")]
    pub namespace_selector: LabelSelector,
    /// Required by the API; absent is refused.
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
}

/// `spec.subject`: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Subject {
    /// Every pod of the namespaces matching.
    #[serde(default)]
    pub namespaces: Option<LabelSelector>,
    /// Pods by namespace AND pod selector.
    #[serde(default)]
    pub pods: Option<NamespacedPod>,
}

/// A peer of a rule: exactly one field. Ingress knows `namespaces` and
/// `pods`; egress also `networks`, `nodes` (experimental) and
/// `domainNames` (experimental, not supported: fails closed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Every pod of the namespaces matching.
    #[serde(default)]
    pub namespaces: Option<LabelSelector>,
    /// Pods by namespace AND pod selector.
    #[serde(default)]
    pub pods: Option<NamespacedPod>,
    /// The addresses in `status.addresses` of the Nodes matching (egress).
    #[serde(default)]
    pub nodes: Option<LabelSelector>,
    /// CIDRs of either family (egress); they match pod addresses too.
    #[serde(default)]
    pub networks: Option<Vec<String>>,
    /// Domain names (egress, experimental): not supported here.
    #[serde(default)]
    pub domain_names: Option<Vec<String>>,
}

/// `{number}` or `{range: {start, end}}`: exactly one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Port {
    /// One port, 1-65535.
    #[serde(default)]
    pub number: Option<i64>,
    /// `start` < `end`, both 1-65535.
    #[serde(default)]
    pub range: Option<PortRange>,
}

/// An inclusive port range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PortRange {
    /// The first port.
    #[serde(default)]
    pub start: Option<i64>,
    /// The last port (greater than `start`).
    #[serde(default)]
    pub end: Option<i64>,
}

/// `tcp` / `udp` / `sctp`: the destination port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPorts {
    /// Required in practice (the API needs one property).
    #[serde(default)]
    pub destination_port: Option<Port>,
}

/// One entry of `protocols`: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Protocol {
    /// TCP to a destination port.
    #[serde(default)]
    pub tcp: Option<ProtocolPorts>,
    /// UDP to a destination port.
    #[serde(default)]
    pub udp: Option<ProtocolPorts>,
    /// SCTP to a destination port.
    #[serde(default)]
    pub sctp: Option<ProtocolPorts>,
    /// A container port name of the destination pod (experimental).
    #[serde(default)]
    pub destination_named_port: Option<String>,
}

/// An ingress (`from`) or egress (`to`) rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Rule {
    /// For people (at most 100 characters in the API).
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// `Accept`, `Deny` or `Pass`.
    #[serde(default, deserialize_with = "nullable")]
    pub action: String,
    /// Ingress: the sources; required, at least one.
    #[serde(default)]
    pub from: Option<Vec<Peer>>,
    /// Egress: the destinations; required, at least one.
    #[serde(default)]
    pub to: Option<Vec<Peer>>,
    /// Absent: all traffic.
    #[serde(default)]
    pub protocols: Option<Vec<Protocol>>,
}

/// `spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Spec {
    /// `Admin` or `Baseline`.
    #[serde(default, deserialize_with = "nullable")]
    pub tier: String,
    /// 0-1000, lower first (absent is refused).
    #[serde(default)]
    pub priority: Option<i64>,
    /// The pods the policy applies to.
    #[serde(default)]
    pub subject: Option<Subject>,
    /// Ingress rules, first match decides.
    #[serde(default, deserialize_with = "nullable")]
    pub ingress: Vec<Rule>,
    /// Egress rules, first match decides.
    #[serde(default, deserialize_with = "nullable")]
    pub egress: Vec<Rule>,
}

/// A ClusterNetworkPolicy (cluster-scoped), flattened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "CnpJson")]
pub struct ClusterNetworkPolicy {
    /// `apiVersion` as sent (empty when absent).
    pub api_version: String,
    /// `kind` as sent (empty when absent).
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec`.
    pub spec: Spec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CnpJson {
    #[serde(default, deserialize_with = "nullable")]
    api_version: String,
    #[serde(default, deserialize_with = "nullable")]
    kind: String,
    #[serde(default, deserialize_with = "nullable")]
    metadata: Meta,
    #[serde(default, deserialize_with = "nullable")]
    spec: Spec,
}

impl From<CnpJson> for ClusterNetworkPolicy {
    fn from(p: CnpJson) -> ClusterNetworkPolicy {
        ClusterNetworkPolicy {
            api_version: p.api_version,
            kind: p.kind,
            name: p.metadata.name,
            spec: p.spec,
        }
    }
}

/// A Node, for `nodes` peers: its labels and the IP addresses in its
/// status (every type; host names are skipped).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "NodeJson")]
pub struct Node {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: Labels,
    /// `status.addresses[].address`, as sent.
    pub addresses: Vec<String>,
}

#[derive(Deserialize)]
struct NodeJson {
    #[serde(default, deserialize_with = "nullable")]
    metadata: Meta,
    #[serde(default, deserialize_with = "nullable")]
    status: NodeStatusJson,
}

#[derive(Default, Deserialize)]
struct NodeStatusJson {
    #[serde(default, deserialize_with = "nullable")]
    addresses: Vec<NodeAddressJson>,
}

#[derive(Default, Deserialize)]
struct NodeAddressJson {
    #[serde(default, deserialize_with = "nullable")]
    address: String,
}

impl From<NodeJson> for Node {
    fn from(n: NodeJson) -> Node {
        Node {
            name: n.metadata.name,
            labels: n.metadata.labels,
            addresses: n.status.addresses.into_iter().map(|a| a.address).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_policy_deserializes_from_the_api_json() {
        let p: ClusterNetworkPolicy = serde_json::from_value(json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "deny-monitoring"},
            "spec": {"tier": "Admin", "priority": 10,
                "subject": {"namespaces": {"matchLabels": {"team": "monitoring"}}},
                "ingress": [{"name": "prom", "action": "Accept",
                    "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "prometheus"}}}}],
                    "protocols": [{"tcp": {"destinationPort": {"number": 9090}}},
                                  {"udp": {"destinationPort": {"range": {"start": 1000, "end": 2000}}}},
                                  {"destinationNamedPort": "metrics"}]},
                    {"action": "Deny", "from": [{"namespaces": {}}]}],
                "egress": [{"action": "Pass", "to": [{"networks": ["10.0.0.0/8", "fd00::/8"]}, {"nodes": {}}, {"futurePeer": {}}]}]
            },
            "status": {"conditions": []}
        }))
        .unwrap();
        assert_eq!(p.name, "deny-monitoring");
        assert_eq!(p.spec.tier, "Admin");
        assert_eq!(p.spec.priority, Some(10));
        let r = &p.spec.ingress[0];
        assert_eq!((r.name.as_str(), r.action.as_str()), ("prom", "Accept"));
        let peers = r.from.as_ref().unwrap();
        assert!(peers[0].pods.as_ref().unwrap().pod_selector.is_some());
        let protos = r.protocols.as_ref().unwrap();
        assert_eq!(
            protos[0].tcp.as_ref().unwrap().destination_port,
            Some(Port {
                number: Some(9090),
                range: None
            })
        );
        assert_eq!(protos[2].destination_named_port.as_deref(), Some("metrics"));
        let to = p.spec.egress[0].to.as_ref().unwrap();
        assert_eq!(to.len(), 3);
        assert_eq!(to[2], Peer::default(), "an unknown peer kind has no field");
        let n: Node =
            serde_json::from_value(json!({"metadata": {"name": "n1", "labels": {"zone": "a"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"},
                                     {"type": "Hostname", "address": "n1"}]}}))
            .unwrap();
        assert_eq!(n.addresses, ["172.18.0.2", "n1"]);
    }
}

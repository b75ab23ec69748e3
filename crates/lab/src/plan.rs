//! The lab's topology as data (pure): which namespaces, which addresses,
//! which pod CIDRs, and the NodeList kindnetd reads. Nothing here touches
//! the system, so the whole layout is unit-tested.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Stack {
    Ipv4,
    Ipv6,
    Dual,
}

impl Stack {
    pub fn families(self) -> &'static [Family] {
        match self {
            Stack::Ipv4 => &[Family::V4],
            Stack::Ipv6 => &[Family::V6],
            Stack::Dual => &[Family::V4, Family::V6],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Ptp,
    Bridge,
}

/// The CNI chain kindnetd writes (its `--cni-chain`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Chain {
    /// One plugin, `kindnet`: the whole pod in one exec.
    #[default]
    Single,
    /// kind's `ptp`/`bridge` + `portmap`.
    Classic,
}

impl Chain {
    pub fn flag(self) -> &'static str {
        match self {
            Chain::Single => "single",
            Chain::Classic => "classic",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub nodes: usize,
    pub stack: Stack,
    pub mode: Mode,
    pub pods_per_node: usize,
    #[serde(default)]
    pub cni_chain: Chain,
    /// Whether the first pod of each node publishes HOST_PORT (the
    /// reference portmap needs iptables for that, so the benchmark's
    /// reference lab turns it off).
    #[serde(default = "yes")]
    pub host_ports: bool,
    /// The families of the node network (node addresses, default routes,
    /// the external host), independent of the pods' `stack`; None = the
    /// same as `stack`.
    #[serde(default)]
    pub node_stack: Option<Stack>,
}

impl Spec {
    /// The families the node network has.
    pub fn node_families(&self) -> &'static [Family] {
        self.node_stack.unwrap_or(self.stack).families()
    }
}

fn yes() -> bool {
    true
}

/// The L2 segment (kind's docker network) and the gateway/"external" host.
pub const SEGMENT_V4: &str = "172.18.0.0/16";
pub const SEGMENT_V6: &str = "fc00:f853:ccd:e793::/64";
/// Addresses of the external host, beyond the nodes' default gateway
/// (documentation ranges, and they only ever exist inside the lab).
pub const EXTERNAL_V4: &str = "198.51.100.10";
pub const EXTERNAL_V6: &str = "2001:db8:e::10";
/// Cluster pod CIDRs; node i gets the i-th /24 and /64.
pub const CLUSTER_V4: &str = "10.244.0.0/16";
pub const CLUSTER_V6: &str = "fd00:10:244::/56";
/// The route protocol of kindnetd's peer routes (kindnetd's
/// `routes::ROUTE_PROTOCOL`; the lab runs kindnetd, it does not link it).
pub const KINDNETD_ROUTE_PROTOCOL: u8 = 217;
/// The port every test server listens on, and the host port mapped to it.
pub const SERVICE_PORT: u16 = 8080;
pub const HOST_PORT: u16 = 30080;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub index: usize,
    pub netns: String,
    /// Addresses on the segment (with prefix).
    pub addrs: Vec<IpNet>,
    pub pod_cidrs: Vec<IpNet>,
}

impl Node {
    pub fn addr(&self, f: Family) -> Option<IpAddr> {
        self.addrs
            .iter()
            .map(|a| a.addr())
            .find(|a| Family::of(a) == f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    /// The first pod of each node publishes HOST_PORT.
    pub host_port: bool,
    /// The Kubernetes namespace (CNI_ARGS K8S_POD_NAMESPACE).
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

fn default_namespace() -> String {
    "default".into()
}

impl Pod {
    /// Unique in the lab: `name` in namespace default, else `namespace-name`.
    pub fn key(&self) -> String {
        if self.namespace == "default" {
            self.name.clone()
        } else {
            format!("{}-{}", self.namespace, self.name)
        }
    }

    /// How lab commands name it: `namespace/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Netns name prefix of a lab: everything the lab makes starts with it.
pub fn prefix(lab: &str) -> String {
    format!("kl-{lab}-")
}

pub fn segment_netns(lab: &str) -> String {
    format!("{}seg", prefix(lab))
}

pub fn external_netns(lab: &str) -> String {
    format!("{}ext", prefix(lab))
}

fn nth_addr(net: &str, host: u32) -> IpAddr {
    let net: IpNet = net
        .parse()
        .unwrap_or_else(|_| unreachable!("constant CIDR"));
    match net.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + host).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + u128::from(host)).into()),
    }
}

fn with_prefix(ip: IpAddr, net: &str) -> IpNet {
    let len = net.parse::<IpNet>().map(|n| n.prefix_len()).unwrap_or(0);
    IpNet::new(ip, len).unwrap_or_else(|_| unreachable!("prefix of a constant CIDR"))
}

/// The gateway/external host's address on the segment.
pub fn gateway(f: Family) -> IpAddr {
    match f {
        Family::V4 => nth_addr(SEGMENT_V4, 1),
        Family::V6 => nth_addr(SEGMENT_V6, 1),
    }
}

pub fn external(f: Family) -> IpAddr {
    let s = match f {
        Family::V4 => EXTERNAL_V4,
        Family::V6 => EXTERNAL_V6,
    };
    s.parse()
        .unwrap_or_else(|_| unreachable!("constant address"))
}

/// Node `index` (1-based) of lab `spec`.
pub fn node(spec: &Spec, index: usize) -> Node {
    let mut addrs = Vec::new();
    let mut pod_cidrs = Vec::new();
    let host = u32::try_from(index + 1).unwrap_or(u32::MAX);
    for f in spec.node_families() {
        addrs.push(match f {
            Family::V4 => with_prefix(nth_addr(SEGMENT_V4, host), SEGMENT_V4),
            Family::V6 => with_prefix(nth_addr(SEGMENT_V6, host), SEGMENT_V6),
        });
    }
    for f in spec.stack.families() {
        match f {
            Family::V4 => {
                let third = u8::try_from(index).unwrap_or(u8::MAX);
                pod_cidrs.push(
                    format!("10.244.{third}.0/24")
                        .parse()
                        .unwrap_or_else(|_| unreachable!()),
                );
            }
            Family::V6 => {
                pod_cidrs.push(
                    format!("fd00:10:244:{index:x}::/64")
                        .parse()
                        .unwrap_or_else(|_| unreachable!()),
                );
            }
        }
    }
    let name = format!("node{index}");
    Node {
        netns: format!("{}{name}", prefix(&spec.name)),
        name,
        index,
        addrs,
        pod_cidrs,
    }
}

pub fn nodes(spec: &Spec) -> Vec<Node> {
    (1..=spec.nodes).map(|i| node(spec, i)).collect()
}

pub fn pods(spec: &Spec, node: &Node) -> Vec<Pod> {
    (1..=spec.pods_per_node)
        .map(|j| pod(spec, node, j))
        .collect()
}

pub fn pod(spec: &Spec, node: &Node, j: usize) -> Pod {
    let name = format!("{}-pod{j}", node.name);
    Pod {
        netns: format!("{}{name}", prefix(&spec.name)),
        container_id: format!("{}-{name}", spec.name),
        node: node.name.clone(),
        host_port: spec.host_ports && j == 1,
        namespace: default_namespace(),
        name,
    }
}

/// `POD_SUBNET` for the stack.
pub fn cluster_cidrs(stack: Stack) -> Vec<String> {
    stack
        .families()
        .iter()
        .map(|f| match f {
            Family::V4 => CLUSTER_V4.to_string(),
            Family::V6 => CLUSTER_V6.to_string(),
        })
        .collect()
}

/// The NodeList kindnetd reads: what `kubectl get nodes -o json` prints,
/// reduced to the fields a network plugin uses.
pub fn node_list(nodes: &[Node]) -> Value {
    let items: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let cidrs: Vec<String> = n.pod_cidrs.iter().map(|c| c.to_string()).collect();
            let mut addresses: Vec<Value> = n
                .addrs
                .iter()
                .map(|a| json!({"type": "InternalIP", "address": a.addr().to_string()}))
                .collect();
            addresses.push(json!({"type": "Hostname", "address": n.name}));
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name}},
                "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
                "status": {"addresses": addresses},
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": ""}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(stack: Stack) -> Spec {
        Spec {
            name: "t".into(),
            nodes: 3,
            stack,
            mode: Mode::Ptp,
            pods_per_node: 2,
            cni_chain: Chain::Single,
            host_ports: true,
            node_stack: None,
        }
    }

    #[test]
    fn node_network_families_are_independent_of_the_pods() {
        let mut s = spec(Stack::Dual);
        s.node_stack = Some(Stack::Ipv4);
        let n = node(&s, 2);
        assert_eq!(n.addrs, vec!["172.18.0.3/16".parse::<IpNet>().unwrap()]);
        assert_eq!(n.pod_cidrs.len(), 2);
        assert_eq!(s.node_families(), &[Family::V4]);
        s.node_stack = Some(Stack::Ipv6);
        let n = node(&s, 2);
        assert_eq!(
            n.addrs,
            vec!["fc00:f853:ccd:e793::3/64".parse::<IpNet>().unwrap()]
        );
        assert_eq!(n.pod_cidrs.len(), 2);
        // The default: the pods' families.
        s.node_stack = None;
        assert_eq!(node(&s, 2).addrs.len(), 2);
        // An old lab.json without the field reads as "same as the pods".
        let mut v = serde_json::to_value(&s).unwrap();
        v.as_object_mut().unwrap().remove("node_stack");
        let back: Spec = serde_json::from_value(v).unwrap();
        assert_eq!(back.node_stack, None);
    }

    #[test]
    fn dual_stack_nodes_get_one_cidr_and_address_per_family() {
        let n = nodes(&spec(Stack::Dual));
        assert_eq!(n.len(), 3);
        assert_eq!(n[1].name, "node2");
        assert_eq!(n[1].netns, "kl-t-node2");
        assert_eq!(
            n[1].addrs,
            vec![
                "172.18.0.3/16".parse::<IpNet>().unwrap(),
                "fc00:f853:ccd:e793::3/64".parse().unwrap()
            ]
        );
        assert_eq!(
            n[1].pod_cidrs,
            vec![
                "10.244.2.0/24".parse::<IpNet>().unwrap(),
                "fd00:10:244:2::/64".parse().unwrap()
            ]
        );
        // pod CIDRs are disjoint and inside the cluster CIDRs
        let cluster: Vec<IpNet> = cluster_cidrs(Stack::Dual)
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        for a in &n {
            for c in &a.pod_cidrs {
                assert!(cluster.iter().any(|k| k.contains(c)), "{c}");
                for b in n.iter().filter(|b| b.name != a.name) {
                    assert!(b.pod_cidrs.iter().all(|d| !d.contains(c) && !c.contains(d)));
                }
            }
        }
    }

    #[test]
    fn single_stack_has_one_family() {
        let n = node(&spec(Stack::Ipv6), 1);
        assert!(n.addrs.iter().all(|a| a.addr().is_ipv6()));
        assert_eq!(n.addr(Family::V4), None);
        assert_eq!(cluster_cidrs(Stack::Ipv4), vec![CLUSTER_V4.to_string()]);
    }

    #[test]
    fn node_list_is_what_kubectl_prints() {
        let s = spec(Stack::Dual);
        let v = node_list(&nodes(&s));
        assert_eq!(v["kind"], "NodeList");
        let item = &v["items"][0];
        assert_eq!(item["metadata"]["name"], "node1");
        assert_eq!(item["spec"]["podCIDR"], "10.244.1.0/24");
        assert_eq!(item["spec"]["podCIDRs"][1], "fd00:10:244:1::/64");
        assert_eq!(item["status"]["addresses"][0]["type"], "InternalIP");
        assert_eq!(
            item["status"]["addresses"][1]["address"],
            "fc00:f853:ccd:e793::2"
        );
    }

    #[test]
    fn pods_are_named_per_node_and_first_has_the_host_port() {
        let s = spec(Stack::Dual);
        let n = node(&s, 2);
        let p = pods(&s, &n);
        assert_eq!(p[0].name, "node2-pod1");
        assert_eq!(p[0].netns, "kl-t-node2-pod1");
        assert!(p[0].host_port && !p[1].host_port);
        assert!(p[0].netns.starts_with(&prefix("t")));
    }
}

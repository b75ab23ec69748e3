//! The NetworkPolicy model's objects, kept in `netpol.json` in the lab's
//! state directory: namespaces and their labels, pod labels,
//! NetworkPolicies, ClusterNetworkPolicies, Node labels and Pod objects
//! without a sandbox. The cluster publishes them in the nodes file
//! ([`crate::cluster::node_list`]); [`crate::policy_model`] changes them.

use crate::plan::Pod;
use crate::runtime::{read_json, write_json};
use crate::sys::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The model's namespaces, pods (in each namespace) and served ports.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [u16; 2] = [80, 81];

pub type Labels = BTreeMap<String, String>;

/// The model's objects (netpol.json).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Bumped on every write of the nodes file.
    pub version: u64,
    pub namespaces: BTreeMap<String, Labels>,
    /// Labels per pod, by `namespace/name`.
    pub pod_labels: BTreeMap<String, Labels>,
    /// NetworkPolicy objects, by `namespace/name`.
    pub policies: BTreeMap<String, Value>,
    /// Pod objects without a sandbox (the benchmark's 1,000 pods).
    #[serde(default)]
    pub extra_pods: Vec<Value>,
    /// ClusterNetworkPolicy objects, by name.
    #[serde(default)]
    pub cluster_policies: BTreeMap<String, Value>,
    /// Labels set on Nodes (for `nodes` peers), by node name; replace the
    /// lab's own.
    #[serde(default)]
    pub node_labels: BTreeMap<String, Labels>,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("netpol.json")
}

/// The model of the lab whose state directory is `dir`; `None` without one.
pub fn load(dir: &Path) -> Option<State> {
    let v = read_json(&state_path(dir)).ok()?;
    serde_json::from_value(v).ok()
}

pub fn save(dir: &Path, s: &State) -> Result<()> {
    let v = serde_json::to_value(s).map_err(|e| e.to_string())?;
    write_json(&state_path(dir), &v)
}

pub fn is_model_pod(p: &Pod) -> bool {
    NAMESPACES.contains(&p.namespace.as_str()) && PODS.contains(&p.name.as_str())
}

/// The named container ports of a model pod, as upstream names them
/// (SCTP too: the lab probes it with raw sockets, see crate::sctp).
pub fn model_ports() -> Vec<Value> {
    let mut v = Vec::new();
    for port in PORTS {
        for proto in ["tcp", "udp", "sctp"] {
            v.push(
                json!({"name": format!("serve-{port}-{proto}"), "containerPort": port,
                "protocol": proto.to_uppercase()}),
            );
        }
    }
    v
}

//! NetworkPolicy in the lab (the lab's model of a cluster's policies, not
//! the compiler, which is the `kindnet-netpol` crate): the upstream
//! conformance model (namespaces x, y, z × pods a, b, c, serving TCP and
//! UDP on 80 and 81), `apply` / `delete` of policies and label changes,
//! `probe` and `reachability` ([`probe`]) compared with the direct
//! semantics (`kindnet_netpol::evaluate`).
//!
//! The model's objects live in `netpol.json` in the lab's state
//! directory ([`crate::model_state`]) and go into the nodes file as a
//! Kubernetes `List` (Nodes, Namespaces, Pods, NetworkPolicies) numbered by
//! `metadata.resourceVersion`; after each write the lab waits until every
//! node's kindnetd reports that version programmed
//! (`kindnet_netpol_programmed_version` in /metrics).

mod probe;

pub use probe::{ProbeResult, families, find_pod, print_matrix, print_probe, probe, reachability};

use crate::cluster::{Lab, pod_ips, result_addrs};
use crate::model_state::{self, Labels, NAMESPACES, PODS, State};
use crate::plan::{self, Pod};
use crate::pod_server;
use crate::sys::Result;
use kindnet_netpol::cnp::input::{ClusterNetworkPolicy, Node as CnpNode};
use kindnet_netpol::{Addressing, Attachment, Cluster, NodeContext};
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// The model's state, if this lab has one.
pub fn load(lab: &Lab) -> Option<State> {
    model_state::load(&lab.state_dir)
}

pub fn save(lab: &Lab, s: &State) -> Result<()> {
    model_state::save(&lab.state_dir, s)
}

/// The model as kindnetd sees it, for `evaluate`.
pub fn cluster(lab: &Lab) -> Result<Cluster> {
    let list = crate::cluster::node_list(lab)?;
    let (mut pods, mut nss, mut pols) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cnps, mut knodes) = (Vec::new(), Vec::new());
    for i in list["items"].as_array().into_iter().flatten() {
        let bad = |e: serde_json::Error| format!("model object: {e}");
        match i["kind"].as_str() {
            Some("Pod") => pods.push(serde_json::from_value(i.clone()).map_err(bad)?),
            Some("Namespace") => nss.push(serde_json::from_value(i.clone()).map_err(bad)?),
            Some("NetworkPolicy") => pols.push(serde_json::from_value(i.clone()).map_err(bad)?),
            Some(kindnet_netpol::cnp::KIND) => {
                cnps.push(serde_json::from_value::<ClusterNetworkPolicy>(i.clone()).map_err(bad)?)
            }
            Some("Node") => knodes.push(serde_json::from_value::<CnpNode>(i.clone()).map_err(bad)?),
            _ => {}
        }
    }
    let nodes: Vec<NodeContext> = lab
        .nodes
        .iter()
        .map(|n| NodeContext {
            node_name: n.name.clone(),
            node_ips: n.addrs.iter().map(|a| a.addr()).collect(),
            log_denied: false,
            pod_cidrs: n.pod_cidrs.clone(),
        })
        .collect();
    // as the kindnetds decide: podCIDRs checked, and every node's CNI
    // record (the lab made every sandbox) over the Pod objects
    let addressing = Addressing {
        check_pod_cidrs: true,
        node_name: String::new(),
        attached: lab
            .pods
            .iter()
            .map(|p| Attachment {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                ips: pod_ips(lab, p),
            })
            .collect(),
    };
    let mut c = Cluster::new_with(&pods, &nss, &pols, &nodes, &addressing).0;
    c.set_cluster_network_policies(&cnps, &knodes);
    Ok(c)
}

/// Writes the nodes file and waits until every kindnetd programmed it.
pub fn publish(lab: &Lab, s: &mut State) -> Result<()> {
    s.version += 1;
    save(lab, s)?;
    lab.write_node_list()?;
    wait_programmed(lab, s.version, Duration::from_secs(15))
}

pub fn metrics(netns: &str) -> Result<String> {
    crate::sys::in_netns(netns, || -> Result<String> {
        let to = SocketAddr::from(([127, 0, 0, 1], 19080));
        let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(500))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
    .map_err(|e| format!("enter {netns}: {e}"))?
}

/// A gauge's value in a metrics text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Polls every node's kindnetd until it reports `version` programmed.
pub fn wait_programmed(lab: &Lab, version: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for n in &lab.nodes {
        loop {
            let v = metrics(&n.netns)
                .ok()
                .and_then(|t| metric(&t, "kindnet_netpol_programmed_version"));
            if v.is_some_and(|v| v >= version as f64) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "kindnetd on {} did not program version {version} within {timeout:?} (see {})",
                    n.name,
                    lab.node_dir(&n.name).join("kindnetd.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

/// `up --netpol-model`: namespaces x, y, z and pods a, b, c in each,
/// spread over the nodes. The Pod objects are published before CNI ADD
/// (as the API server has them before the sandbox), then with their IPs.
pub fn create_model(lab: &mut Lab) -> Result<()> {
    let mut s = load(lab).unwrap_or_default();
    let mut pods = Vec::new();
    let mut i = 0;
    for ns in NAMESPACES {
        s.namespaces.insert(
            ns.into(),
            Labels::from([("ns".to_string(), ns.to_string())]),
        );
        for p in PODS {
            let node = &lab.nodes[i % lab.nodes.len()];
            i += 1;
            let pod = Pod {
                name: p.into(),
                namespace: ns.into(),
                node: node.name.clone(),
                netns: format!("{}{ns}-{p}", plan::prefix(&lab.spec.name)),
                container_id: format!("{}-{ns}-{p}", lab.spec.name),
                host_port: false,
            };
            s.pod_labels.insert(
                pod.full_name(),
                Labels::from([("pod".to_string(), p.to_string())]),
            );
            pods.push(pod);
        }
    }
    lab.pods.extend(pods.iter().cloned());
    lab.save()?;
    publish(lab, &mut s)?;
    for p in &pods {
        let res = lab.attach_pod(p)?;
        eprintln!(
            "  {}: {} on {}",
            p.full_name(),
            result_addrs(&res).join(" "),
            p.node
        );
        pod_server::start(&lab.state_dir, p)?;
    }
    for p in &pods {
        pod_server::wait_ready(p)?;
    }
    publish(lab, &mut s)
}

/// Adds one pod to the model (`namespace/name` with `labels`, on `node`):
/// the Pod object is published first (kindnetd makes its chains), then the
/// CNI ADD — which points the pod's address at them — and its server. The
/// address is not published: the pod is isolated by the ADD alone, the way a
/// fresh pod is before the API reports its IP.
pub fn add_model_pod(
    lab: &mut Lab,
    full: &str,
    labels: &[(String, String)],
    node: &str,
) -> Result<String> {
    let (ns, name) = full
        .split_once('/')
        .ok_or_else(|| format!("{full:?}: expected namespace/name"))?;
    // Both become part of a namespace name and a file name: DNS-1123 labels.
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 40
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if !label(ns) || !label(name) {
        return Err(format!(
            "{full:?}: namespace and name must be lowercase letters, digits and '-'"
        ));
    }
    let node = lab.node(node)?.name.clone();
    let mut s = load(lab).unwrap_or_default();
    if !s.namespaces.contains_key(ns) {
        return Err(format!("namespace {ns} is not in the model"));
    }
    let pod = Pod {
        name: name.into(),
        namespace: ns.into(),
        node,
        netns: format!("{}{ns}-{name}", plan::prefix(&lab.spec.name)),
        container_id: format!("{}-{ns}-{name}", lab.spec.name),
        host_port: false,
    };
    if lab.pods.iter().any(|p| p.full_name() == pod.full_name()) {
        return Err(format!("pod {full} exists"));
    }
    // x/a-b and x-a/b would share a namespace and a result file.
    if let Some(p) = lab
        .pods
        .iter()
        .find(|p| p.key() == pod.key() || p.netns == pod.netns)
    {
        return Err(format!(
            "pod {full} would share its network namespace {} with {}",
            pod.netns,
            p.full_name()
        ));
    }
    s.pod_labels
        .insert(pod.full_name(), labels.iter().cloned().collect());
    lab.pods.push(pod.clone());
    lab.save()?;
    publish(lab, &mut s)?;
    let res = lab.attach_pod(&pod)?;
    pod_server::start(&lab.state_dir, &pod)?;
    pod_server::wait_ready(&pod)?;
    Ok(result_addrs(&res).join(" "))
}

// ---- apply / delete ----

/// Objects of a Kubernetes YAML/JSON file: multi-document YAML, Lists
/// flattened.
pub fn parse_objects(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    if text.trim_start().starts_with('{') || text.trim_start().starts_with('[') {
        docs.push(serde_json::from_str::<Value>(text).map_err(|e| format!("invalid JSON: {e}"))?);
    } else {
        for d in serde_yaml::Deserializer::from_str(text) {
            let v = Value::deserialize(d).map_err(|e| format!("invalid YAML: {e}"))?;
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    let mut out = Vec::new();
    while let Some(d) = docs.pop() {
        match (&d["items"], &d) {
            (Value::Array(items), _) => docs.extend(items.iter().cloned()),
            (_, Value::Array(items)) => docs.extend(items.iter().cloned()),
            _ => out.push(d),
        }
    }
    out.reverse();
    Ok(out)
}

fn labels_of(v: &Value) -> Labels {
    serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default()
}

/// Applies (or deletes) objects to the model state: pure.
pub fn change(s: &mut State, pods: &[Pod], objects: &[Value], delete: bool) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or("");
        let name = o["metadata"]["name"].as_str().unwrap_or("");
        let ns = o["metadata"]["namespace"].as_str().unwrap_or("default");
        if name.is_empty() {
            return Err(format!("a {kind:?} object without metadata.name"));
        }
        let id = format!("{ns}/{name}");
        match kind {
            "NetworkPolicy" => {
                if delete {
                    if s.policies.remove(&id).is_none() {
                        return Err(format!("no networkpolicy {id}"));
                    }
                } else {
                    let mut p = o.clone();
                    p["metadata"]["namespace"] = json!(ns);
                    s.policies.insert(id.clone(), p);
                }
                done.push(format!("networkpolicy {id}"));
            }
            kindnet_netpol::cnp::KIND => {
                if delete {
                    if s.cluster_policies.remove(name).is_none() {
                        return Err(format!("no clusternetworkpolicy {name}"));
                    }
                } else {
                    s.cluster_policies.insert(name.to_string(), o.clone());
                }
                done.push(format!("clusternetworkpolicy {name}"));
            }
            "Node" => {
                if delete {
                    return Err(format!(
                        "node {name}: remove nodes with `kindnet-lab remove-node`"
                    ));
                }
                s.node_labels.insert(name.to_string(), labels_of(o));
                done.push(format!("node {name} labels"));
            }
            "Namespace" => {
                let labels = if delete { Labels::new() } else { labels_of(o) };
                s.namespaces.insert(name.to_string(), labels);
                done.push(format!("namespace {name} labels"));
            }
            // a Pod object the lab did not make: published as it is, with
            // no sandbox (what any kubelet may write, status included)
            "Pod" if !pods.iter().any(|p| p.full_name() == id) => {
                let same = |x: &Value| {
                    x["metadata"]["name"] == o["metadata"]["name"]
                        && x["metadata"]["namespace"].as_str().unwrap_or("default") == ns
                };
                let had = s.extra_pods.iter().any(same);
                s.extra_pods.retain(|x| !same(x));
                if delete {
                    if !had {
                        return Err(format!("no pod object {id}"));
                    }
                } else {
                    let mut p = o.clone();
                    p["metadata"]["namespace"] = json!(ns);
                    s.extra_pods.push(p);
                }
                done.push(format!("pod object {id}"));
            }
            "Pod" => {
                if delete {
                    return Err(format!(
                        "pod {id}: delete pods with `kindnet-lab del-pod {id}`"
                    ));
                }
                s.pod_labels.insert(id.clone(), labels_of(o));
                done.push(format!("pod {id} labels"));
            }
            k => {
                return Err(format!(
                    "{id}: kind {k:?} is not NetworkPolicy, ClusterNetworkPolicy, Namespace, Pod or Node"
                ));
            }
        }
    }
    Ok(done)
}

pub fn apply(lab: &Lab, file: &Path, delete: bool) -> Result<Vec<String>> {
    let mut s =
        load(lab).ok_or("this lab has no NetworkPolicy model: `kindnet-lab up --netpol-model`")?;
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("read {}: {e}", file.display()))?;
    let objects = parse_objects(&text)?;
    let done = change(&mut s, &lab.pods, &objects, delete)?;
    publish(lab, &mut s)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str) -> Pod {
        Pod {
            name: name.into(),
            namespace: ns.into(),
            node: "n1".into(),
            netns: String::new(),
            container_id: String::new(),
            host_port: false,
        }
    }

    #[test]
    fn files_are_multi_document_yaml_json_and_lists() {
        let y = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\nspec:\n  podSelector: {}\n---\nkind: Namespace\nmetadata:\n  name: y\n  labels:\n    ns: y\n    team: t\n";
        let o = parse_objects(y).unwrap();
        assert_eq!(o.len(), 2);
        let j = r#"{"kind": "List", "items": [{"kind": "Pod", "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "q"}}}]}"#;
        assert_eq!(parse_objects(j).unwrap().len(), 1);
        assert!(parse_objects("kind: [").is_err());
    }

    #[test]
    fn changes_apply_to_the_state() {
        let mut s = State::default();
        let pods = vec![pod("x", "a")];
        let objs = parse_objects("kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n---\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {pod: q}}\n").unwrap();
        let done = change(&mut s, &pods, &objs, false).unwrap();
        assert_eq!(done.len(), 2);
        assert!(s.policies.contains_key("x/p"));
        assert_eq!(s.pod_labels["x/a"]["pod"], "q");
        change(&mut s, &pods, &objs[..1], true).unwrap();
        assert!(s.policies.is_empty());
        assert!(
            change(&mut s, &pods, &objs[..1], true).is_err(),
            "already gone"
        );
        // a Pod the lab did not make: published as an object, no sandbox
        let other = parse_objects("kind: Pod\nmetadata: {name: zz, namespace: x}\n").unwrap();
        assert_eq!(
            change(&mut s, &pods, &other, false).unwrap(),
            ["pod object x/zz"]
        );
        change(&mut s, &pods, &other, false).unwrap();
        assert_eq!(s.extra_pods.len(), 1, "replaced, not added twice");
        change(&mut s, &pods, &other, true).unwrap();
        assert!(s.extra_pods.is_empty());
        assert!(change(&mut s, &pods, &other, true).is_err(), "already gone");
        let svc = parse_objects("kind: Service\nmetadata: {name: s}\n").unwrap();
        assert!(change(&mut s, &pods, &svc, false).is_err());
    }

    #[test]
    fn cluster_network_policies_apply_and_delete_by_name() {
        let mut s = State::default();
        let objs = parse_objects("apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: deny-x}\nspec: {tier: Admin, priority: 5, subject: {namespaces: {}}}\n").unwrap();
        assert_eq!(
            change(&mut s, &[], &objs, false).unwrap(),
            ["clusternetworkpolicy deny-x"]
        );
        assert_eq!(s.cluster_policies["deny-x"]["spec"]["priority"], 5);
        change(&mut s, &[], &objs, true).unwrap();
        assert!(s.cluster_policies.is_empty());
        assert!(change(&mut s, &[], &objs, true).is_err(), "already gone");
    }

    #[test]
    fn metrics_parse() {
        let t = "# HELP x\nkindnet_netpol_programmed_version 7\nkindnet_netpol_programmed_version_x 9\n";
        assert_eq!(metric(t, "kindnet_netpol_programmed_version"), Some(7.0));
    }
}

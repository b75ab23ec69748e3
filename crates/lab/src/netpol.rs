//! NetworkPolicy in the lab: the upstream conformance model (namespaces
//! x, y, z × pods a, b, c, serving TCP and UDP on 80 and 81), `apply` /
//! `delete` of policies and label changes, `probe` and `reachability`
//! compared with the direct semantics (`kindnet_netpol::evaluate`).
//!
//! The model's objects live in `netpol.json` in the lab's state
//! directory and go into the nodes file as a Kubernetes `List` (Nodes,
//! Namespaces, Pods, NetworkPolicies) numbered by `metadata.resourceVersion`;
//! after each write the lab waits until every node's kindnetd reports that
//! version programmed (`kindnet_netpol_programmed_version` in /metrics).

// Raw syscalls: signals and reaping of the lab's own pod servers.
#![allow(unsafe_code)]

use crate::cluster::{Lab, pod_ips, result_addrs};
use crate::plan::{self, Family, Pod};
use crate::runtime::{read_json, write_json};
use crate::sys::Result;
use kindnet_netlink::Netns;
use kindnet_netpol::cnp::input::{ClusterNetworkPolicy, Node as CnpNode};
use kindnet_netpol::{Addressing, Attachment, Cluster, Endpoint, NodeContext, Proto, evaluate};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [u16; 2] = [80, 81];
/// A probe waits this long for a connection or a reply.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

type Labels = BTreeMap<String, String>;

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

pub fn load(lab: &Lab) -> Option<State> {
    let v = read_json(&state_path(&lab.state_dir)).ok()?;
    serde_json::from_value(v).ok()
}

pub fn save(lab: &Lab, s: &State) -> Result<()> {
    let v = serde_json::to_value(s).map_err(|e| e.to_string())?;
    write_json(&state_path(&lab.state_dir), &v)
}

fn is_model_pod(p: &Pod) -> bool {
    NAMESPACES.contains(&p.namespace.as_str()) && PODS.contains(&p.name.as_str())
}

/// The named container ports of a model pod, as upstream names them
/// (SCTP too: the lab probes it with raw sockets, see crate::sctp).
fn model_ports() -> Vec<Value> {
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

/// The nodes file: a NodeList, or with the model a List of everything.
pub fn node_list(lab: &Lab) -> Result<Value> {
    let mut list = plan::node_list(&lab.nodes);
    // without the model: the pods still, so that kindnetd makes their
    // chains before CNI ADD (the plugin waits for them)
    let s = load(lab).unwrap_or_default();
    let items = list["items"]
        .as_array_mut()
        .ok_or("node list without items")?;
    for n in items.iter_mut() {
        if let Some(l) = n["metadata"]["name"]
            .as_str()
            .and_then(|name| s.node_labels.get(name))
        {
            n["metadata"]["labels"] = json!(l);
        }
    }
    for (ns, labels) in &s.namespaces {
        items.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": labels}}));
    }
    for p in &lab.pods {
        let labels = s
            .pod_labels
            .get(&p.full_name())
            .cloned()
            .unwrap_or_default();
        let ips: Vec<Value> = pod_ips(lab, p)
            .iter()
            .map(|i| json!({"ip": i.to_string()}))
            .collect();
        let ports = if is_model_pod(p) {
            model_ports()
        } else {
            Vec::new()
        };
        let phase = if ips.is_empty() { "Pending" } else { "Running" };
        items.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": p.namespace, "name": p.name, "labels": labels},
            "spec": {"nodeName": p.node, "containers": [{"name": "agnhost", "ports": ports}]},
            "status": {"phase": phase, "podIPs": ips}}));
    }
    items.extend(s.extra_pods.iter().cloned());
    for pol in s.policies.values() {
        items.push(pol.clone());
    }
    for pol in s.cluster_policies.values() {
        items.push(pol.clone());
    }
    list["kind"] = json!("List");
    if s.version > 0 {
        list["metadata"] = json!({"resourceVersion": s.version.to_string()});
    }
    Ok(list)
}

/// The model as kindnetd sees it, for `evaluate`.
pub fn cluster(lab: &Lab) -> Result<Cluster> {
    let list = node_list(lab)?;
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
    let n =
        Netns::open(format!("/var/run/netns/{netns}")).map_err(|e| format!("open {netns}: {e}"))?;
    n.run(|| -> Result<String> {
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

// ---- servers ----

/// `serve-pod`: answers TCP and UDP on 80 and 81 with "ns/name" (runs in
/// the pod's namespace until killed).
pub fn serve(identity: &str) -> Result<()> {
    let mut threads = Vec::new();
    for port in PORTS {
        let addr = SocketAddr::from(([0u16; 8], port));
        let l = std::net::TcpListener::bind(addr).map_err(|e| format!("tcp {port}: {e}"))?;
        let id = identity.to_string();
        threads.push(std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let id = id.clone();
                // the identity, then an echo until the client closes (a
                // long-lived connection for the restart tests)
                std::thread::spawn(move || {
                    if s.write_all(id.as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        }));
        let u = UdpSocket::bind(addr).map_err(|e| format!("udp {port}: {e}"))?;
        let id = identity.to_string();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            loop {
                if let Ok((_, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(id.as_bytes(), from);
                }
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn start_server(lab: &Lab, pod: &Pod) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log = lab
        .state_dir
        .join("pods")
        .join(format!("{}.serve.log", pod.key()));
    let f = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .arg(exe)
        .args(["serve-pod", "--identity", &pod.full_name(), "--state-dir"])
        .arg(&lab.state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the server of {}: {e}", pod.full_name()))?;
    Ok(())
}

fn is_our_server(pid: u32, dir: &Path) -> bool {
    let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let text = String::from_utf8_lossy(&c).replace('\0', " ");
    // the state directory is the last argument: exact, so lab "ab" never
    // matches lab "abc"
    text.contains("kindnet-lab")
        && text.contains("serve-pod")
        && text.trim_end().ends_with(&*dir.to_string_lossy())
}

/// Kills this lab's pod servers (found by their command line naming the
/// lab's state directory); returns how many.
pub fn stop_servers(dir: &Path) -> usize {
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .filter(|pid| is_our_server(*pid, dir))
                .collect()
        })
        .unwrap_or_default();
    for pid in &pids {
        if let Ok(p) = i32::try_from(*pid) {
            // SAFETY: a server this lab started (checked by its command line).
            unsafe { libc::kill(p, libc::SIGKILL) };
            let mut st = 0;
            // SAFETY: non-blocking reap, if it is our child.
            unsafe { libc::waitpid(p, &mut st, libc::WNOHANG) };
        }
    }
    pids.len()
}

/// Waits until the server of `pod` answers on TCP 80 from inside its own
/// namespace (loopback: no policy applies).
fn wait_server(pod: &Pod) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let to = SocketAddr::from(([127, 0, 0, 1], 80));
        if probe_in(&pod.netns, to, Proto::Tcp, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the server of {} does not answer", pod.full_name()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
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
        start_server(lab, p)?;
    }
    for p in &pods {
        wait_server(p)?;
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
    start_server(lab, &pod)?;
    wait_server(&pod)?;
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

// ---- probes ----

/// `PORT[/PROTO]`.
pub fn parse_port(s: &str) -> Result<(u16, Proto)> {
    let (p, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let port: u16 = p.parse().map_err(|_| format!("port {p:?}"))?;
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        // raw sockets: crafted INITs (see crate::sctp)
        "sctp" => Proto::Sctp,
        o => return Err(format!("protocol {o:?}: tcp, udp or sctp")),
    };
    Ok((port, proto))
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Sctp => "sctp",
        Proto::Other => "other",
    }
}

/// One connection attempt from inside `netns`: Ok(what answered).
fn probe_in(
    netns: &str,
    to: SocketAddr,
    proto: Proto,
    timeout: Duration,
) -> std::result::Result<String, String> {
    let n =
        Netns::open(format!("/var/run/netns/{netns}")).map_err(|e| format!("open {netns}: {e}"))?;
    n.run(move || -> std::result::Result<String, String> {
        match proto {
            Proto::Udp => {
                let bind = if to.is_ipv6() {
                    SocketAddr::from(([0u16; 8], 0))
                } else {
                    SocketAddr::from(([0u8; 4], 0))
                };
                let u = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
                u.connect(to).map_err(|e| e.to_string())?;
                let deadline = Instant::now() + timeout;
                let mut buf = [0u8; 512];
                // a few tries: a datagram has no retransmission
                while Instant::now() < deadline {
                    let _ = u.send(b"probe");
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(150));
                    if left.is_zero() {
                        break;
                    }
                    u.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
                    if let Ok(n) = u.recv(&mut buf) {
                        return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                }
                Err("no reply".into())
            }
            _ => {
                let mut s = TcpStream::connect_timeout(&to, timeout).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).map_err(|e| e.to_string())?;
                Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
        }
    })
    .map_err(|e| format!("enter {netns}: {e}"))?
}

/// One probe's outcome, with what the semantics say.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub proto: &'static str,
    pub family: &'static str,
    pub connected: bool,
    pub expected: bool,
    /// Allowed: the policies that allowed it; denied: those isolating.
    pub by: Vec<String>,
    pub reason: String,
    pub detail: String,
}

pub fn find_pod<'a>(lab: &'a Lab, name: &str) -> Result<&'a Pod> {
    let full = if name.contains('/') {
        name.to_string()
    } else {
        format!("default/{name}")
    };
    lab.pods
        .iter()
        .find(|p| p.full_name() == full)
        .ok_or_else(|| format!("no pod {name:?} (name pods namespace/name, e.g. x/a)"))
}

pub fn families(lab: &Lab) -> Vec<Family> {
    lab.spec.stack.families().to_vec()
}

/// Probes `from` → `to` on one family; Err only when it cannot run.
pub fn probe(
    lab: &Lab,
    c: &Cluster,
    from: &Pod,
    to: &Pod,
    port: u16,
    proto: Proto,
    f: Family,
) -> Result<ProbeResult> {
    let v6 = f == Family::V6;
    let ip = pod_ips(lab, to)
        .into_iter()
        .find(|i| i.is_ipv6() == v6)
        .ok_or_else(|| format!("{} has no {} address", to.full_name(), f.label()))?;
    let verdict = evaluate(
        c,
        &Endpoint::pod(&from.namespace, &from.name, v6),
        &Endpoint::pod(&to.namespace, &to.name, v6),
        port,
        proto,
    );
    // a pod reaching itself never leaves it (upstream: AllowLoopback)
    let verdict = if from.full_name() == to.full_name() {
        kindnet_netpol::Verdict {
            allowed: true,
            by: Vec::new(),
            reason: "loopback: a pod reaching its own address never leaves it".into(),
        }
    } else {
        verdict
    };
    let to_addr = SocketAddr::new(ip, port);
    let measured = match proto {
        // no SCTP sockets needed: an INIT from a raw socket, watched for
        // by a raw socket in the destination pod
        Proto::Sctp => match crate::sctp::probe(&from.netns, &to.netns, to_addr, PROBE_TIMEOUT)? {
            true => Ok(format!("SCTP INIT arrived in {}", to.netns)),
            false => Err("no SCTP INIT arrived".to_string()),
        },
        _ => probe_in(&from.netns, to_addr, proto, PROBE_TIMEOUT),
    };
    if let Err(e) = &measured
        && e.starts_with("open ")
    {
        return Err(e.clone());
    }
    Ok(ProbeResult {
        from: from.full_name(),
        to: to.full_name(),
        port,
        proto: proto_name(proto),
        family: f.label(),
        connected: measured.is_ok(),
        expected: verdict.allowed,
        by: verdict.by.iter().map(|(p, d)| format!("{d} {p}")).collect(),
        reason: verdict.reason,
        detail: measured.unwrap_or_else(|e| e),
    })
}

pub fn print_probe(r: &ProbeResult) -> String {
    let state = if r.connected { "connected" } else { "blocked" };
    let why = if r.expected {
        if r.by.is_empty() || r.by.iter().any(|b| b.contains("cnp:")) || r.reason.contains(" Pass ")
        {
            // a ClusterNetworkPolicy decided or passed: the reason names
            // tier and rule
            format!("allowed: {}", r.reason)
        } else {
            format!("allowed by {}", r.by.join(", "))
        }
    } else {
        format!("denied: {}", r.reason)
    };
    let mismatch = if r.connected != r.expected {
        "  (MISMATCH with the semantics)"
    } else {
        ""
    };
    format!(
        "{} -> {} {}/{} {}: {state} ({why}){mismatch}",
        r.from, r.to, r.port, r.proto, r.family
    )
}

/// The model's pods, in matrix order.
pub fn model_pods(lab: &Lab) -> Vec<Pod> {
    let mut v: Vec<Pod> = lab
        .pods
        .iter()
        .filter(|p| is_model_pod(p))
        .cloned()
        .collect();
    v.sort_by_key(|p| p.full_name());
    v
}

/// Every model pod to every model pod, concurrently.
pub fn reachability(lab: &Lab, port: u16, proto: Proto, f: Family) -> Result<Vec<ProbeResult>> {
    let c = cluster(lab)?;
    let pods = model_pods(lab);
    let results: Vec<Result<ProbeResult>> = std::thread::scope(|sc| {
        let hs: Vec<_> = pods
            .iter()
            .flat_map(|a| pods.iter().map(move |b| (a, b)))
            .map(|(a, b)| {
                let c = &c;
                sc.spawn(move || probe(lab, c, a, b, port, proto, f))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("probe thread panicked".into()))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// The matrix as upstream prints it: `.` connected, `X` blocked; a cell
/// that disagrees with the semantics is `!` (connected, should not be) or
/// `?` (blocked, should not be).
pub fn print_matrix(rs: &[ProbeResult]) -> String {
    let mut names: Vec<&str> = rs.iter().map(|r| r.from.as_str()).collect();
    names.dedup();
    let mut s = String::from("     ");
    for n in &names {
        s.push_str(&format!("{n:>4}"));
    }
    s.push('\n');
    for from in &names {
        s.push_str(&format!("{from:<5}"));
        for to in &names {
            let cell = rs.iter().find(|r| r.from == *from && r.to == *to).map(|r| {
                match (r.connected, r.expected) {
                    (true, true) => ".",
                    (false, false) => "X",
                    (true, false) => "!",
                    (false, true) => "?",
                }
            });
            s.push_str(&format!("{:>4}", cell.unwrap_or(" ")));
        }
        s.push('\n');
    }
    s
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
    fn ports_and_metrics_parse() {
        assert_eq!(parse_port("80").unwrap(), (80, Proto::Tcp));
        assert_eq!(parse_port("81/UDP").unwrap(), (81, Proto::Udp));
        assert!(parse_port("x/tcp").is_err());
        assert!(parse_port("80/icmp").is_err());
        assert_eq!(parse_port("80/SCTP").unwrap(), (80, Proto::Sctp));
        let t = "# HELP x\nkindnet_netpol_programmed_version 7\nkindnet_netpol_programmed_version_x 9\n";
        assert_eq!(metric(t, "kindnet_netpol_programmed_version"), Some(7.0));
    }
}

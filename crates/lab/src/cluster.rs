//! Building and removing a lab: namespaces, the segment, kindnetd per node,
//! pods through the CNI runtime. Everything the lab makes is named with
//! `kl-<lab>-` (namespaces) or lives under its state directory, so `down`
//! can remove it all, also after a crashed `up`.

use crate::model_state;
use crate::plan::{self, Family, Mode, Node, Pod, Spec};
use crate::runtime::{Attachment, Runtime, read_json, write_json};
use crate::sys::{self, Result};
use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the binaries come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Binaries {
    pub kindnetd: PathBuf,
    /// Directory with the CNI plugins (ours installed by `kindnet-cni
    /// install`, or the reference plugins' directory).
    pub cni_bin_dir: PathBuf,
    /// Cap on the spec version the runtime speaks (None: the newest offered).
    #[serde(default)]
    pub max_cni_version: Option<String>,
}

/// What `lab.json` records: enough for every later command and for `down`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lab {
    pub spec: Spec,
    pub state_dir: PathBuf,
    pub binaries: Binaries,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    /// kindnetd PID per node name.
    pub kindnetd: Vec<(String, u32)>,
}

pub fn state_root() -> PathBuf {
    std::env::var_os("KINDNET_LAB_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/kindnet-lab"))
}

pub fn state_dir(name: &str) -> PathBuf {
    state_root().join(name)
}

pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 8
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(format!(
            "lab name {name:?}: use 1-8 lowercase letters or digits (it prefixes interface and namespace names)"
        ));
    }
    Ok(())
}

impl Lab {
    pub fn load(name: &str) -> Result<Lab> {
        let path = state_dir(name).join("lab.json");
        let v = read_json(&path)
            .map_err(|e| format!("no lab {name:?} ({e}); start one with `kindnet-lab up`"))?;
        serde_json::from_value(v).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn save(&self) -> Result<()> {
        let v = serde_json::to_value(self).map_err(|e| e.to_string())?;
        write_json(&self.state_dir.join("lab.json"), &v)
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| format!("no node {name:?} in lab {}", self.spec.name))
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.state_dir.join(node)
    }

    pub fn conflist_path(&self, node: &str) -> PathBuf {
        self.node_dir(node)
            .join("net.d")
            .join("10-kindnet.conflist")
    }

    fn runtime(&self) -> Runtime {
        Runtime {
            bin_dir: self.binaries.cni_bin_dir.clone(),
            max_version: self.binaries.max_cni_version.clone(),
        }
    }

    pub fn write_node_list(&self) -> Result<()> {
        // with the NetworkPolicy model: a List with its pods and policies
        let list = node_list(self)?;
        write_json(&self.state_dir.join("nodes.json"), &list)
    }
}

fn progress(msg: &str) {
    eprintln!("  {msg}");
}

/// The segment (a bridge in a namespace of its own) and the gateway /
/// external host attached to it.
fn build_segment(spec: &Spec) -> Result<()> {
    let seg = plan::segment_netns(&spec.name);
    let ext = plan::external_netns(&spec.name);
    sys::netns_add(&seg)?;
    sys::ip(&seg, &["link", "add", "br0", "type", "bridge"])?;
    sys::ip(&seg, &["link", "set", "br0", "up"])?;
    sys::netns_add(&ext)?;
    sys::ip(
        &seg,
        &[
            "link", "add", "ext", "type", "veth", "peer", "name", "eth0", "netns", &ext,
        ],
    )?;
    sys::ip(&seg, &["link", "set", "ext", "master", "br0", "up"])?;
    for f in spec.node_families() {
        let (seg_len, host_len) = match f {
            Family::V4 => (16, 32),
            Family::V6 => (64, 128),
        };
        let gw = format!("{}/{seg_len}", plan::gateway(*f));
        sys::ip(&ext, &["addr", "add", &gw, "dev", "eth0", "nodad"])?;
        let outside = format!("{}/{host_len}", plan::external(*f));
        sys::ip(&ext, &["addr", "add", &outside, "dev", "lo"])?;
    }
    no_dad(&ext)?;
    sys::ip(&ext, &["link", "set", "eth0", "up"])?;
    Ok(())
}

/// A real node's uplink finished duplicate address detection long ago; in
/// the lab it would still be running for a second or two after `up`, and
/// while its link-local address is tentative the kernel sends no neighbour
/// solicitation for forwarded traffic.
fn no_dad(ns: &str) -> Result<()> {
    sys::run_in_netns_fn(ns, || {
        kindnet_netlink::sysctl::set("net/ipv6/conf/eth0/accept_dad", "0")
            .map_err(|e| format!("{ns}: accept_dad: {e}"))
    })
}

fn build_node(spec: &Spec, node: &Node) -> Result<()> {
    let seg = plan::segment_netns(&spec.name);
    sys::netns_add(&node.netns)?;
    sys::ip(
        &seg,
        &[
            "link",
            "add",
            &node.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &node.netns,
        ],
    )?;
    sys::ip(&seg, &["link", "set", &node.name, "master", "br0", "up"])?;
    for a in &node.addrs {
        sys::ip(
            &node.netns,
            &["addr", "add", &a.to_string(), "dev", "eth0", "nodad"],
        )?;
    }
    no_dad(&node.netns)?;
    sys::ip(&node.netns, &["link", "set", "eth0", "up"])?;
    for f in spec.node_families() {
        let fam = if *f == Family::V4 { "-4" } else { "-6" };
        sys::ip(
            &node.netns,
            &[
                fam,
                "route",
                "add",
                "default",
                "via",
                &plan::gateway(*f).to_string(),
            ],
        )?;
    }
    Ok(())
}

impl Lab {
    /// Starts kindnetd in the node's namespace, detached from this process
    /// (it keeps running after `up` returns), logging to the node's directory,
    /// with `env` added to the environment it inherits.
    fn start_kindnetd(&mut self, node: &Node, env: &[(&str, &str)]) -> Result<()> {
        let dir = self.node_dir(&node.name);
        std::fs::create_dir_all(dir.join("net.d")).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("kindnetd.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.netns])
            .arg(&self.binaries.kindnetd)
            .arg("--node-name")
            .arg(&node.name)
            .arg("--nodes-file")
            .arg(self.state_dir.join("nodes.json"))
            .arg("--cni-conf-dir")
            .arg(dir.join("net.d"))
            .arg("--ipam-data-dir")
            .arg(dir.join("ipam"))
            .arg("--pod-subnet")
            .arg(plan::cluster_cidrs(self.spec.stack).join(","))
            .arg("--metrics-bind-address")
            .arg(KINDNETD_HTTP)
            .arg("--resync-period")
            .arg("2s")
            .arg("--cni-chain")
            .arg(self.spec.cni_chain.flag());
        if self.spec.mode == Mode::Bridge {
            cmd.arg("--cni-bridge").arg("true");
        }
        let child = cmd
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start kindnetd: {e}"))?;
        // `ip netns exec` execs kindnetd: the PID is kindnetd's.
        self.kindnetd.retain(|(n, _)| n != &node.name);
        self.kindnetd.push((node.name.clone(), child.id()));
        self.save()
    }

    fn wait_conflist(&self, node: &Node) -> Result<Value> {
        let path = self.conflist_path(&node.name);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(v) = read_json(&path) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.node_dir(&node.name).join("kindnetd.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                return Err(format!(
                    "kindnetd on {} wrote no {} within 20 s; its log ends with:\n{}",
                    node.name,
                    path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn attachment<'a>(pod: &'a Pod, netns_path: &'a str) -> Attachment<'a> {
        let mut capabilities = Map::new();
        if pod.host_port {
            capabilities.insert(
                "portMappings".into(),
                json!([{"hostPort": plan::HOST_PORT, "containerPort": plan::SERVICE_PORT, "protocol": "tcp"}]),
            );
        }
        Attachment {
            container_id: &pod.container_id,
            netns: netns_path,
            ifname: "eth0",
            pod_name: &pod.name,
            pod_namespace: &pod.namespace,
            capabilities,
        }
    }

    fn result_path(&self, pod: &Pod) -> PathBuf {
        self.state_dir
            .join("pods")
            .join(format!("{}.json", pod.key()))
    }

    /// Creates a pod the way a runtime does: namespace, conflist chain ADD,
    /// result kept for CHECK and DEL.
    pub fn add_pod(&mut self, pod: Pod) -> Result<Value> {
        self.pods.push(pod.clone());
        self.save()?;
        // the Pod object first (as the API server has it before the
        // sandbox exists), then with its addresses
        self.write_node_list()?;
        let res = self.attach_pod(&pod)?;
        self.write_node_list()?;
        Ok(res)
    }

    /// The runtime's part of [`Lab::add_pod`] for a pod already recorded:
    /// its namespace, then CNI ADD.
    pub fn attach_pod(&self, pod: &Pod) -> Result<Value> {
        let pod = pod.clone();
        let node = self.node(&pod.node)?.clone();
        let list = read_json(&self.conflist_path(&node.name))?;
        sys::netns_add(&pod.netns)?;
        let path = sys::netns_path(&pod.netns);
        let res = sys::run_in_netns_fn(&node.netns, || {
            self.runtime().add(&list, &Self::attachment(&pod, &path))
        })?;
        std::fs::create_dir_all(self.state_dir.join("pods")).map_err(|e| e.to_string())?;
        write_json(&self.result_path(&pod), &res)?;
        Ok(res)
    }

    pub fn check_pod(&self, pod: &Pod) -> Result<()> {
        let node = self.node(&pod.node)?;
        let list = read_json(&self.conflist_path(&node.name))?;
        let res = read_json(&self.result_path(pod))?;
        let path = sys::netns_path(&pod.netns);
        sys::run_in_netns_fn(&node.netns, || {
            self.runtime()
                .check(&list, &Self::attachment(pod, &path), &res)
        })
    }

    /// Deletes a pod as a runtime does: chain DEL with the kept result, then
    /// the namespace.
    pub fn del_pod(&mut self, name: &str) -> Result<()> {
        let pod = self
            .pods
            .iter()
            .find(|p| p.name == name || p.full_name() == name)
            .cloned()
            .ok_or_else(|| format!("no pod {name:?}"))?;
        let node = self.node(&pod.node)?.clone();
        let list = read_json(&self.conflist_path(&node.name))?;
        let res = read_json(&self.result_path(&pod)).ok();
        let path = sys::netns_path(&pod.netns);
        sys::run_in_netns_fn(&node.netns, || {
            self.runtime()
                .del(&list, &Self::attachment(&pod, &path), res.as_ref())
        })?;
        sys::netns_del(&pod.netns);
        let _ = std::fs::remove_file(self.result_path(&pod));
        self.pods.retain(|p| p.key() != pod.key());
        self.save()?;
        self.write_node_list()
    }
}

/// `up`: builds the whole lab.
pub fn up(spec: Spec, binaries: Binaries) -> Result<Lab> {
    validate_name(&spec.name)?;
    if spec.nodes == 0 || spec.nodes > 200 {
        return Err("--nodes must be 1-200".into());
    }
    let dir = state_dir(&spec.name);
    if dir.join("lab.json").exists() {
        return Err(format!(
            "lab {:?} already exists; remove it with `kindnet-lab down --name {}`",
            spec.name, spec.name
        ));
    }
    if sys::netns_list()
        .iter()
        .any(|n| n.starts_with(&plan::prefix(&spec.name)))
    {
        return Err(format!(
            "namespaces of lab {:?} are left from a crashed run; run `kindnet-lab down --name {}`",
            spec.name, spec.name
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let mut lab = Lab {
        nodes: plan::nodes(&spec),
        spec,
        state_dir: dir,
        binaries,
        pods: Vec::new(),
        kindnetd: Vec::new(),
    };
    lab.save()?;
    eprintln!(
        "building lab {:?}: {} nodes, pods {:?}, node network {:?}, {:?}",
        lab.spec.name,
        lab.spec.nodes,
        lab.spec.stack,
        lab.spec.node_stack.unwrap_or(lab.spec.stack),
        lab.spec.mode
    );
    progress("segment (a bridge in its own namespace) and the external host");
    build_segment(&lab.spec)?;
    lab.write_node_list()?;
    for node in lab.nodes.clone() {
        progress(&format!(
            "{}: namespace {}, {}",
            node.name,
            node.netns,
            addrs_text(&node)
        ));
        build_node(&lab.spec, &node)?;
        lab.start_kindnetd(&node, &[])?;
    }
    for node in lab.nodes.clone() {
        lab.wait_conflist(&node)?;
        for pod in plan::pods(&lab.spec, &node) {
            let res = lab.add_pod(pod.clone())?;
            progress(&format!("{}: {}", pod.name, result_addrs(&res).join(" ")));
        }
    }
    Ok(lab)
}

fn addrs_text(n: &Node) -> String {
    let a: Vec<String> = n.addrs.iter().map(|a| a.addr().to_string()).collect();
    let c: Vec<String> = n.pod_cidrs.iter().map(|c| c.to_string()).collect();
    format!("address {} pod CIDRs {}", a.join(" "), c.join(" "))
}

pub fn result_addrs(res: &Value) -> Vec<String> {
    res["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str().map(str::to_string))
        .collect()
}

/// The addresses the CNI result of `pod` gave it (none if it has none yet).
pub fn pod_ips(lab: &Lab, pod: &Pod) -> Vec<std::net::IpAddr> {
    let path = lab
        .state_dir
        .join("pods")
        .join(format!("{}.json", pod.key()));
    read_json(&path)
        .map(|r| {
            result_addrs(&r)
                .iter()
                .filter_map(|a| a.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The nodes file: a NodeList, or with the model a List of everything.
pub fn node_list(lab: &Lab) -> Result<Value> {
    let mut list = plan::node_list(&lab.nodes);
    // without the model: the pods still, so that kindnetd makes their
    // chains before CNI ADD (the plugin waits for them)
    let s = model_state::load(&lab.state_dir).unwrap_or_default();
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
        let ports = if model_state::is_model_pod(p) {
            model_state::model_ports()
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

/// Adds a node to a running lab: namespace, kindnetd, NodeList update (the
/// other nodes' kindnetd see the file change and route to it), its pods.
pub fn add_node(lab: &mut Lab) -> Result<Node> {
    let index = lab.nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1;
    let node = plan::node(&lab.spec, index);
    build_node(&lab.spec, &node)?;
    lab.nodes.push(node.clone());
    lab.save()?;
    lab.write_node_list()?;
    lab.start_kindnetd(&node, &[])?;
    lab.wait_conflist(&node)?;
    for pod in plan::pods(&lab.spec, &node) {
        lab.add_pod(pod)?;
    }
    Ok(node)
}

/// Removes a node: its pods, its kindnetd, its namespace, its NodeList entry.
pub fn remove_node(lab: &mut Lab, name: &str) -> Result<()> {
    let node = lab.node(name)?.clone();
    let pods: Vec<String> = lab
        .pods
        .iter()
        .filter(|p| p.node == name)
        .map(|p| p.name.clone())
        .collect();
    for p in pods {
        lab.del_pod(&p)?;
    }
    lab.nodes.retain(|n| n.name != name);
    lab.write_node_list()?;
    if let Some((_, pid)) = lab.kindnetd.iter().find(|(n, _)| n == name).cloned() {
        stop_kindnetd(pid, &lab.state_dir);
    }
    lab.kindnetd.retain(|(n, _)| n != name);
    sys::netns_del(&node.netns);
    sys::ip(&plan::segment_netns(&lab.spec.name), &["link", "del", name]).ok();
    lab.save()
}

/// Restarts one node's kindnetd (SIGTERM, then start again).
/// Where each node's kindnetd serves /metrics, /healthz, /readyz and
/// /config (in the node's namespace).
pub const KINDNETD_HTTP: &str = "127.0.0.1:19080";

/// `kindnetd doctor` in the node's namespace, asking the node's running
/// kindnetd for its configuration; its output passes through and its exit
/// status is ours.
pub fn doctor(lab: &Lab, node: &str, json: bool) -> Result<std::process::ExitCode> {
    let n = lab.node(node)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &n.netns])
        .arg(&lab.binaries.kindnetd)
        .args(["doctor", "--daemon", KINDNETD_HTTP])
        .arg("--cni-bin-dir")
        .arg(&lab.binaries.cni_bin_dir);
    if json {
        cmd.arg("--json");
    }
    let st = cmd
        .status()
        .map_err(|e| format!("cannot run kindnetd doctor: {e}"))?;
    Ok(if st.success() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

pub fn restart_kindnetd(lab: &mut Lab, name: &str) -> Result<()> {
    restart_kindnetd_with_env(lab, name, &[])
}

/// [`restart_kindnetd`], with `env` added to the new kindnetd's environment.
pub fn restart_kindnetd_with_env(lab: &mut Lab, name: &str, env: &[(&str, &str)]) -> Result<()> {
    let node = lab.node(name)?.clone();
    if let Some((_, pid)) = lab.kindnetd.iter().find(|(n, _)| n == name).cloned() {
        stop_kindnetd(pid, &lab.state_dir);
    }
    lab.start_kindnetd(&node, env)
}

/// Whether `pid` is a kindnetd this lab started (so `down` never signals a
/// process that merely reused the PID).
fn is_our_kindnetd(pid: u32, state_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    // the directory with a separator: lab "ab" must not match lab "abc"
    let dir = format!("{}/", state_dir.to_string_lossy());
    text.contains("kindnetd") && text.contains(&dir)
}

/// SIGTERM, then SIGKILL after 3 s.
pub fn stop_kindnetd(pid: u32, state_dir: &Path) {
    if !is_our_kindnetd(pid, state_dir) {
        return;
    }
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    // a process we started (checked above)
    let _ = kill_process(p, Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while is_our_kindnetd(pid, state_dir) && Instant::now() < deadline {
        reap(p);
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_our_kindnetd(pid, state_dir) {
        let _ = kill_process(p, Signal::KILL);
    }
    reap(p);
}

/// Non-blocking wait on a child of ours, if it is one.
fn reap(pid: Pid) {
    let _ = waitpid(Some(pid), WaitOptions::NOHANG);
}

/// Every kindnetd whose command line names this lab's state directory
/// (found also when lab.json is gone).
fn lab_kindnetds(state_dir: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
                .filter(|pid| is_our_kindnetd(*pid, state_dir))
                .collect()
        })
        .unwrap_or_default()
}

/// `down`: removes everything of lab `name`, whatever state it is in.
pub fn down(name: &str) -> Result<usize> {
    validate_name(name)?;
    let dir = state_dir(name);
    let mut removed = crate::pod_server::stop_all(&dir);
    for pid in lab_kindnetds(&dir) {
        stop_kindnetd(pid, &dir);
        removed += 1;
    }
    let prefix = plan::prefix(name);
    // pods first, then nodes, then the segment (the veths go with them)
    let mut spaces: Vec<String> = sys::netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    spaces.sort_by_key(|n| std::cmp::Reverse(n.matches('-').count()));
    for ns in &spaces {
        sys::netns_del(ns);
        removed += 1;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
        removed += 1;
    }
    Ok(removed)
}

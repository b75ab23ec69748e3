//! `kindnet-lab bench-netpol`: NetworkPolicy figures on a 2-node lab (JSON
//! lines; a benchmark, not a test).
//!
//! - 1,000 pods and 200 policies on node1 (pods as objects in the nodes
//!   file, without sandboxes): full programming (a kindnetd restart: start
//!   → enforced, and kindnetd's own compile + apply time);
//! - one label change → enforced on node1 (p50/p99), one new pod →
//!   enforced: wall time from the atomic file write to kindnetd reporting
//!   the version programmed (includes the file source's 50 ms settle),
//!   and kindnetd's own programming time;
//! - kindnetd's resident memory;
//! - ipBlock excepts (`--excepts 1000,10000`): policies of `::/0` minus N
//!   addresses: set elements, update and full programming time, resident
//!   memory now and at its peak;
//! - pod↔pod across the nodes, TCP throughput (iperf3) and RTT (ping),
//!   the two real pods selected by policies among the 200, against policy
//!   off (kindnetd restarted with --network-policy=false), interleaved.

use crate::cluster::{self, Lab};
use crate::model_state::State;
use crate::plan::{Family, Mode, Spec, Stack};
use crate::policy_model;
use crate::stats::{median, nearest_rank};
use crate::sys::Result;
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchNetpolArgs {
    #[arg(long, default_value_t = 1000)]
    pub pods: usize,
    #[arg(long, default_value_t = 200)]
    pub policies: usize,
    /// ClusterNetworkPolicies, half Admin and half Baseline (issue 18's
    /// figures: 50).
    #[arg(long, default_value_t = 0)]
    pub cluster_policies: usize,
    #[arg(long, default_value_t = 30)]
    pub changes: usize,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value_t = 3)]
    pub seconds: u32,
    #[arg(long, default_value = "npb")]
    pub name: String,
    /// Leave the lab up afterwards (kindnetd logs in /run/kindnet-lab/NAME).
    #[arg(long)]
    pub keep: bool,
    /// ipBlock excepts per policy for the except phase (comma-separated;
    /// empty: no except phase).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub excepts: Vec<usize>,
    /// How many such policies at once (the node's budget is for all).
    #[arg(long, default_value_t = 1)]
    pub except_policies: usize,
    /// Only the full program and the except phase (no label changes, new
    /// pods or per-packet figures).
    #[arg(long)]
    pub only_excepts: bool,
    /// Directory with kindnetd and kindnet-cni (default: next to kindnet-lab).
    #[arg(long)]
    pub bin_dir: Option<std::path::PathBuf>,
    /// Where kindnetd reads the cluster: `file`, the 2-node lab's cluster
    /// file (rewritten and re-read whole for every change), or `kube`, a
    /// fake API server (one object per change, as in a cluster; kindnetd's
    /// programming only: first program, label changes, memory).
    #[arg(long, default_value = "file", value_parser = ["file", "kube"])]
    pub source: String,
}

/// `k` policies in namespace bench selecting app-0's pods on node1, each
/// allowing ingress from `::/0` minus `n` single addresses (the issue's
/// case: as prefixes, 1,000 excepts made 53,001 elements).
fn except_policies(n: usize, k: usize) -> Vec<Value> {
    (0..k)
        .map(|j| {
            let except: Vec<String> = (0..n)
                .map(|i| format!("fd00:ff:{j:x}::{:x}/128", 2 * i + 1))
                .collect();
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"namespace": "bench", "name": format!("excepts-{j}")},
                "spec": {"podSelector": {"matchLabels": {"app": "app-0"}},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "::/0", "except": except}}]}]}})
        })
        .collect()
}

/// Per except count: the policies published (an update of a running
/// kindnetd), then kindnetd restarted (a full program from nothing):
/// elements, programming times, resident memory now and at its peak.
fn measure_excepts(a: &BenchNetpolArgs, lab: &mut Lab, s: &mut State) -> Result<()> {
    let node1 = lab.nodes[0].name.clone();
    for &n in &a.excepts {
        s.policies.retain(|id, _| !id.starts_with("bench/excepts-"));
        for p in except_policies(n, a.except_policies) {
            let id = format!("bench/{}", p["metadata"]["name"].as_str().unwrap_or(""));
            s.policies.insert(id, p);
        }
        let (update_wall, update_own) = publish_timed(lab, s)?;
        let t = Instant::now();
        cluster::restart_kindnetd(lab, &node1)?;
        wait_version_on(lab, 0, s.version)?;
        let restart_ms = t.elapsed().as_secs_f64() * 1e3;
        let text = policy_model::metrics(&lab.nodes[0].netns)?;
        let (sum, count) = histogram(&text);
        let pid = pid_of(lab, &node1)?;
        let mb = |k: Option<u64>| k.map(|k| k as f64 / 1024.0);
        println!(
            "{}",
            json!({"bench": "netpol-excepts", "excepts_per_policy": n, "policies": a.except_policies,
                "elements": policy_model::metric(&text, "kindnet_netpol_elements"),
                "policies_over_budget": policy_model::metric(&text, "kindnet_netpol_policies_over_budget"),
                "update_wall_ms": update_wall, "update_kindnetd_ms": update_own,
                "restart_to_enforced_ms": restart_ms,
                "full_program_kindnetd_ms": if count > 0.0 { sum / count * 1e3 } else { f64::NAN },
                "kindnetd_rss_mb": mb(crate::nodes_bench::rss_kb(pid, "VmRSS:")),
                "kindnetd_peak_rss_mb": mb(crate::nodes_bench::rss_kb(pid, "VmHWM:"))})
        );
    }
    s.policies.retain(|id, _| !id.starts_with("bench/excepts-"));
    Ok(())
}

/// A Pod object on node1 without a sandbox. Its addresses lie in node1's
/// pod CIDRs (kindnetd gives a Pod no address outside its node's): IPv6
/// for all, IPv4 for the first 200 (the /24 has room for no more beside
/// the real pod).
pub(crate) fn fake_pod(i: usize, app: usize) -> Value {
    let mut ips = vec![json!({"ip": format!("fd00:10:244:1::1:{:x}", i + 1)})];
    if i < 200 {
        ips.insert(0, json!({"ip": format!("10.244.1.{}", 50 + i)}));
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "bench", "name": format!("p{i}"),
            "labels": {"app": format!("app-{app}"), "tier": format!("t-{}", i % 4)}},
        "spec": {"nodeName": "node1", "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIPs": ips}})
}

pub(crate) fn policies(n: usize) -> Vec<Value> {
    let mut v: Vec<Value> = (0..n.saturating_sub(2))
        .map(|k| {
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"namespace": "bench", "name": format!("pol-{k}")},
                "spec": {"podSelector": {"matchLabels": {"app": format!("app-{}", k % 50)}},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": format!("t-{}", k % 4)}}},
                                          {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.99.0.0/16"]}}],
                                 "ports": [{"port": 80 + (k % 20) as u16}, {"port": "http"}, {"protocol": "UDP", "port": 53}]}],
                    "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": 443}, {"port": 8000, "endPort": 8100}]}]}})
        })
        .collect();
    // the two real pods: isolated both ways, allowed to each other
    for (name, dir, peer, ty) in [
        ("bench-in", "ingress", "from", "Ingress"),
        ("bench-out", "egress", "to", "Egress"),
    ] {
        let mut rule = serde_json::Map::new();
        rule.insert(
            peer.into(),
            json!([{"podSelector": {"matchLabels": {"role": "bench"}}}]),
        );
        let mut spec = serde_json::Map::new();
        spec.insert(
            "podSelector".into(),
            json!({"matchLabels": {"role": "bench"}}),
        );
        spec.insert("policyTypes".into(), json!([ty]));
        spec.insert(dir.into(), json!([Value::Object(rule)]));
        v.push(
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "default", "name": name}, "spec": Value::Object(spec)}),
        );
    }
    v
}

/// `n` ClusterNetworkPolicies over the bench pods, half in each tier
/// (`version` is in cnp-0's port, so a new version is one change), and
/// (when any) one Admin policy the two real pods' traffic is accepted by.
fn cluster_policies(n: usize, version: usize) -> Vec<Value> {
    let bench = json!({"matchLabels": {"bench": "yes"}});
    let mut v: Vec<Value> = (0..n.saturating_sub(1))
        .map(|k| {
            let admin = k % 2 == 0;
            let subject = json!({"pods": {"namespaceSelector": bench,
                "podSelector": {"matchLabels": {"app": format!("app-{}", k % 50)}}}});
            let spec = if admin {
                json!({"tier": "Admin", "priority": k, "subject": subject,
                    "ingress": [
                        {"name": "deny-tier", "action": "Deny",
                         "from": [{"pods": {"namespaceSelector": bench, "podSelector": {"matchLabels": {"tier": format!("t-{}", k % 4)}}}}],
                         "protocols": [{"tcp": {"destinationPort": {"number": 9000 + if k == 0 { version % 1000 } else { k % 50 } as u16}}}]},
                        {"name": "pass-bench", "action": "Pass", "from": [{"namespaces": bench}]}],
                    "egress": [
                        {"action": "Accept", "to": [{"networks": ["10.0.0.0/8", "fd00::/8"]}],
                         "protocols": [{"tcp": {"destinationPort": {"number": 443}}}]},
                        {"action": "Deny", "to": [{"networks": ["192.0.2.0/24"]}]}]})
            } else {
                json!({"tier": "Baseline", "priority": k % 1000, "subject": subject,
                    "ingress": [{"action": "Deny", "from": [{"namespaces": {}}],
                        "protocols": [{"udp": {"destinationPort": {"range": {"start": 5000, "end": 5100}}}},
                                      {"destinationNamedPort": "http"}]}],
                    "egress": [{"action": "Accept", "to": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "t-0"}}}}]}]})
            };
            json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
                "metadata": {"name": format!("cnp-{k}")}, "spec": spec})
        })
        .collect();
    if n > 0 {
        let real = json!({"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "bench"}}}});
        v.push(json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "bench-real"},
            "spec": {"tier": "Admin", "priority": 0, "subject": real,
                "ingress": [{"action": "Accept", "from": [real]}],
                "egress": [{"action": "Accept", "to": [real]}]}}));
    }
    v
}

fn set_cluster_policies(s: &mut State, n: usize, version: usize) {
    s.cluster_policies = cluster_policies(n, version)
        .into_iter()
        .map(|p| (p["metadata"]["name"].as_str().unwrap_or("").to_string(), p))
        .collect();
}

pub(crate) fn histogram(text: &str) -> (f64, f64) {
    (
        policy_model::metric(text, "kindnet_netpol_programming_duration_seconds_sum")
            .unwrap_or(0.0),
        policy_model::metric(text, "kindnet_netpol_programming_duration_seconds_count")
            .unwrap_or(0.0),
    )
}

fn pid_of(lab: &Lab, node: &str) -> Result<u32> {
    lab.kindnetd
        .iter()
        .find(|(n, _)| n == node)
        .map(|(_, p)| *p)
        .ok_or_else(|| format!("no kindnetd on {node}"))
}

/// Publishes and waits for node1 only (the other node has nothing to do
/// with the bench pods but the two real ones).
fn publish_timed(lab: &Lab, s: &mut State) -> Result<(f64, f64)> {
    let node1 = lab.nodes[0].netns.clone();
    let before = histogram(&policy_model::metrics(&node1)?);
    s.version += 1;
    policy_model::save(lab, s)?;
    let t = Instant::now();
    lab.write_node_list()?;
    wait_version_on(lab, 0, s.version)?;
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let after = histogram(&policy_model::metrics(&node1)?);
    let own = if after.1 > before.1 {
        (after.0 - before.0) / (after.1 - before.1) * 1e3
    } else {
        f64::NAN
    };
    Ok((wall, own))
}

fn wait_version_on(lab: &Lab, node: usize, v: u64) -> Result<()> {
    let ns = &lab.nodes[node].netns;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(t) = policy_model::metrics(ns)
            && policy_model::metric(&t, "kindnet_netpol_programmed_version")
                .is_some_and(|x| x >= v as f64)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not program version {v}",
                lab.nodes[node].name
            ));
        }
        // Each poll makes kindnetd render its whole /metrics while it
        // programs: at 1 kHz that took CPU from the pass being measured on
        // a 2-core machine. 5 ms bounds the wall figure's resolution.
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn restart_all(lab: &mut Lab, on: bool, version: u64) -> Result<()> {
    let env = [("KINDNET_NETWORK_POLICY", if on { "true" } else { "false" })];
    for n in lab.nodes.clone() {
        cluster::restart_kindnetd_with_env(lab, &n.name, &env)?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, n) in lab.nodes.clone().iter().enumerate() {
        if on {
            wait_version_on(lab, i, version)?;
        } else {
            let has_table = || {
                crate::sys::run_in_netns_fn(&n.netns, || {
                    kindnet_netlink::nftables::NfTables::open()
                        .and_then(|mut t| t.has_table(kindnet_netpol::TABLE))
                        .map_err(|e| e.to_string())
                })
            };
            while has_table()? {
                if Instant::now() > deadline {
                    return Err("the policy table was not removed".into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    Ok(())
}

pub fn run(a: &BenchNetpolArgs, binaries: cluster::Binaries) -> Result<ExitCode> {
    let spec = Spec {
        name: a.name.clone(),
        nodes: 2,
        // dual: node1's IPv6 pod CIDR holds the 1,000 Pod objects
        stack: Stack::Dual,
        mode: Mode::Ptp,
        pods_per_node: 1,
        cni_chain: crate::plan::Chain::Single,
        node_stack: None,
        host_ports: false,
    };
    let mut lab = cluster::up(spec, binaries)?;
    let result = measure(a, &mut lab);
    if !a.keep {
        let _ = cluster::down(&a.name);
    }
    result.map(|_| ExitCode::SUCCESS)
}

fn measure(a: &BenchNetpolArgs, lab: &mut Lab) -> Result<()> {
    let mut s = State::default();
    for p in &lab.pods {
        s.pod_labels.insert(
            p.full_name(),
            [("role".to_string(), "bench".to_string())].into(),
        );
    }
    s.namespaces.insert(
        "bench".into(),
        [("bench".to_string(), "yes".to_string())].into(),
    );
    set_cluster_policies(&mut s, a.cluster_policies, 0);
    s.extra_pods = (0..a.pods).map(|i| fake_pod(i, i % 60)).collect();
    for p in policies(a.policies) {
        let id = format!(
            "{}/{}",
            p["metadata"]["namespace"].as_str().unwrap_or(""),
            p["metadata"]["name"].as_str().unwrap_or("")
        );
        s.policies.insert(id, p);
    }
    let (first_wall, first_own) = publish_timed(lab, &mut s)?;
    // a full program: kindnetd restarted on node1 replaces the table
    let t = Instant::now();
    let node1 = lab.nodes[0].name.clone();
    cluster::restart_kindnetd(lab, &node1)?;
    wait_version_on(lab, 0, s.version)?;
    let restart_ms = t.elapsed().as_secs_f64() * 1e3;
    let text = policy_model::metrics(&lab.nodes[0].netns)?;
    let (sum, count) = histogram(&text);
    let rules = policy_model::metric(&text, "kindnet_netpol_rules").unwrap_or(0.0);
    let selected = policy_model::metric(&text, "kindnet_netpol_selected_pods").unwrap_or(0.0);
    println!(
        "{}",
        json!({"bench": "netpol-full-program", "pods": a.pods, "policies": a.policies,
            "cluster_policies": a.cluster_policies,
            "rules": rules, "selected_pods": selected,
            "first_program_wall_ms": first_wall, "first_program_kindnetd_ms": first_own,
            "restart_to_enforced_ms": restart_ms,
            "full_program_kindnetd_ms": if count > 0.0 { sum / count * 1e3 } else { f64::NAN }})
    );
    measure_excepts(a, lab, &mut s)?;
    if a.only_excepts {
        return Ok(());
    }
    // label changes: pod p{j} moves between apps (other policies select it)
    let (mut walls, mut owns) = (Vec::new(), Vec::new());
    for k in 0..a.changes {
        let j = (k * 37) % a.pods;
        s.extra_pods[j] = fake_pod(j, (j + k + 1) % 50);
        let (w, o) = publish_timed(lab, &mut s)?;
        walls.push(w);
        owns.push(o);
    }
    println!(
        "{}",
        json!({"bench": "netpol-label-change", "changes": a.changes,
            "enforced_wall_p50_ms": median(&walls), "enforced_wall_p99_ms": nearest_rank(&walls, 0.99),
            "kindnetd_p50_ms": median(&owns), "kindnetd_p99_ms": nearest_rank(&owns, 0.99)})
    );
    if a.cluster_policies > 0 {
        // one ClusterNetworkPolicy change at a time: cnp-0's port moves
        let (mut walls, mut owns) = (Vec::new(), Vec::new());
        for k in 0..a.changes {
            set_cluster_policies(&mut s, a.cluster_policies, k + 1);
            let (w, o) = publish_timed(lab, &mut s)?;
            walls.push(w);
            owns.push(o);
        }
        println!(
            "{}",
            json!({"bench": "cnp-change", "changes": a.changes, "cluster_policies": a.cluster_policies,
                "enforced_wall_p50_ms": median(&walls), "enforced_wall_p99_ms": nearest_rank(&walls, 0.99),
                "kindnetd_p50_ms": median(&owns), "kindnetd_p99_ms": nearest_rank(&owns, 0.99)})
        );
    }
    let (mut walls, mut owns) = (Vec::new(), Vec::new());
    for k in 0..10 {
        s.extra_pods.push(fake_pod(a.pods + k, k % 50));
        let (w, o) = publish_timed(lab, &mut s)?;
        walls.push(w);
        owns.push(o);
    }
    let pid = pid_of(lab, &node1)?;
    println!(
        "{}",
        json!({"bench": "netpol-new-pod", "pods_added": 10,
            "enforced_wall_p50_ms": median(&walls), "enforced_wall_max_ms": nearest_rank(&walls, 1.0),
            "kindnetd_p50_ms": median(&owns), "kindnetd_max_ms": nearest_rank(&owns, 1.0),
            "kindnetd_rss_mb": crate::nodes_bench::rss_kb(pid, "VmRSS:").map(|k| k as f64 / 1024.0)})
    );
    // per-packet cost, interleaved: policy on (200 policies) vs off
    let p1 = lab
        .pods
        .iter()
        .find(|p| p.node == lab.nodes[0].name)
        .ok_or("no pod on node1")?
        .clone();
    let p2 = lab
        .pods
        .iter()
        .find(|p| p.node == lab.nodes[1].name)
        .ok_or("no pod on node2")?
        .clone();
    let res = crate::runtime::read_json(
        &lab.state_dir
            .join("pods")
            .join(format!("{}.json", p2.key())),
    )?;
    let ip2 = cluster::result_addrs(&res)
        .iter()
        .filter_map(|a| a.split('/').next()?.parse::<std::net::IpAddr>().ok())
        .find(|ip| Family::of(ip) == Family::V4)
        .ok_or("pod2 has no IPv4 address")?;
    let (mut on_bps, mut off_bps, mut on_rtt, mut off_rtt) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut on = true;
    for r in 0..a.rounds * 2 {
        if r > 0 {
            on = !on;
            restart_all(lab, on, s.version)?;
        }
        let bps = crate::bench::iperf(&p2.netns, &p1.netns, ip2, a.seconds)?;
        let rtt = crate::bench::rtt(&p1.netns, ip2)?;
        if on {
            on_bps.push(bps);
            on_rtt.push(rtt);
        } else {
            off_bps.push(bps);
            off_rtt.push(rtt);
        }
    }
    let (on_t, off_t) = (median(&on_bps), median(&off_bps));
    let (on_r, off_r) = (median(&on_rtt), median(&off_rtt));
    println!(
        "{}",
        json!({"bench": "netpol-per-packet", "rounds": a.rounds, "policies": a.policies,
            "cluster_policies": a.cluster_policies,
            "pod_pod_gbps_policy_on": on_t / 1e9, "pod_pod_gbps_policy_off": off_t / 1e9,
            "throughput_ratio_on_off": on_t / off_t,
            "rtt_ms_policy_on": on_r, "rtt_ms_policy_off": off_r, "rtt_ratio_on_off": on_r / off_r})
    );
    Ok(())
}

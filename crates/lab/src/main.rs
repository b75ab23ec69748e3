//! `kindnet-lab`: a whole kindnet cluster inside network namespaces on one
//! machine — the quick-start demo, the end-to-end test bed and the
//! benchmarks (dataplane, NetworkPolicy, kindnetd at scale). The binary
//! only wires the modules of this crate.

mod bench;
mod check;
mod cluster;
mod model_state;
mod netpol_bench;
mod netpol_kube_bench;
mod nft_bench;
mod nodes_bench;
mod plan;
mod pod_server;
mod policy_model;
mod port;
mod runtime;
mod sctp;
mod spoof;
mod stats;
mod sys;
mod trace;
mod trace_live;

use clap::{Parser, Subcommand};
use cluster::{Binaries, Lab};
use plan::{Mode, Spec, Stack};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kindnet-lab",
    version,
    about = "A kindnet cluster in network namespaces: up, check, trace, down, demo, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct UpArgs {
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The pods' IP families.
    #[arg(long, value_enum, default_value = "dual")]
    stack: Stack,
    /// The node network's IP families (node addresses, default routes);
    /// default: the same as --stack. `--stack dual --node-stack ipv4` gives
    /// dual-stack pods on an IPv4-only node network.
    #[arg(long, value_enum)]
    node_stack: Option<Stack>,
    #[arg(long, value_enum, default_value = "ptp")]
    mode: Mode,
    #[arg(long, default_value_t = 2)]
    pods_per_node: usize,
    /// The conflist kindnetd writes: one `kindnet` plugin, or kind's chain.
    #[arg(long, value_enum, default_value = "single")]
    cni_chain: plan::Chain,
    #[arg(long, default_value = "kindnet")]
    name: String,
    /// Directory with kindnetd and kindnet-cni (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Use the CNI plugins in this directory instead of installing ours
    /// (e.g. /usr/lib/cni for the reference plugins).
    #[arg(long)]
    cni_bin_dir: Option<PathBuf>,
    /// Also create the upstream NetworkPolicy model: namespaces x, y, z
    /// (ns=x…) with pods a, b, c (pod=a…) serving TCP/UDP on 80 and 81.
    #[arg(long)]
    netpol_model: bool,
}

#[derive(clap::Args)]
struct NameArg {
    #[arg(long, default_value = "kindnet")]
    name: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a lab: segment, nodes each running kindnetd, pods via the CNI plugins.
    Up(UpArgs),
    /// Run the connectivity matrix and layout checks; non-zero exit on failure.
    Check(NameArg),
    /// Remove everything of a lab (also after a crashed `up`).
    Down(NameArg),
    /// up + check + down, explained.
    Demo(UpArgs),
    /// Add a node (and its pods) to a running lab.
    AddNode(NameArg),
    /// Remove a node (and its pods) from a running lab.
    RemoveNode {
        #[command(flatten)]
        lab: NameArg,
        node: String,
    },
    /// Delete a pod as a runtime does (CNI DEL, then its namespace).
    DelPod {
        #[command(flatten)]
        lab: NameArg,
        pod: String,
    },
    /// Add pod number N on NODE (CNI ADD through the conflist).
    AddPod {
        #[command(flatten)]
        lab: NameArg,
        node: String,
        #[arg(long)]
        number: usize,
    },
    /// Run `kindnetd doctor` on NODE: it asks the node's running kindnetd
    /// for its configuration and checks the node as kindnetd sees it.
    Doctor {
        #[command(flatten)]
        lab: NameArg,
        node: String,
        /// Print JSON for tools.
        #[arg(long)]
        json: bool,
    },
    /// Restart one node's kindnetd.
    RestartKindnetd {
        #[command(flatten)]
        lab: NameArg,
        node: String,
    },
    /// Dataplane benchmark: iperf3 and ping node<->node vs pod<->pod on 2-node labs.
    Bench(bench::BenchArgs),
    /// Walk a packet hop by hop through the live lab, then send a real one.
    Trace(trace_live::TraceArgs),
    /// Apply NetworkPolicies, ClusterNetworkPolicies and namespace/pod/node label changes (YAML/JSON).
    Apply {
        #[command(flatten)]
        lab: NameArg,
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Delete NetworkPolicies and ClusterNetworkPolicies (namespace objects: their labels are cleared).
    Delete {
        #[command(flatten)]
        lab: NameArg,
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Try source spoofing: FROM sends UDP to TO from raw sockets with
    /// forged source addresses (an unused pod address, another pod's, one
    /// outside the cluster; or --source), then with its own. Exits 1 when a
    /// forged packet arrived.
    Spoof {
        #[command(flatten)]
        lab: NameArg,
        from: String,
        to: String,
        /// A source address to forge (repeatable; default: see above).
        #[arg(long)]
        source: Vec<std::net::IpAddr>,
        /// Seconds to wait for the packet with the true source.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
        #[arg(long)]
        json: bool,
    },
    /// Probe FROM -> TO (namespace/name) on PORT[/PROTO] (tcp, udp or
    /// sctp, any case; port 1-65535): connected or blocked, and which
    /// policy allowed it or why nothing did.
    Probe {
        #[command(flatten)]
        lab: NameArg,
        from: String,
        to: String,
        port: String,
        #[arg(long)]
        json: bool,
    },
    /// Add one pod to the NetworkPolicy model (`namespace/name`), serving
    /// at once; its address reaches kindnetd only through the CNI ADD.
    AddModelPod {
        #[command(flatten)]
        lab: NameArg,
        pod: String,
        /// `key=value`, comma-separated.
        #[arg(long, default_value = "")]
        labels: String,
        #[arg(long, default_value = "node1")]
        node: String,
    },
    /// The full matrix of the model's pods, as the upstream suite prints it.
    Reachability {
        #[command(flatten)]
        lab: NameArg,
        #[arg(default_value = "80/tcp")]
        port: String,
        #[arg(long)]
        json: bool,
    },
    /// NetworkPolicy benchmark: 1,000 pods / 200 policies programming,
    /// change → enforced, memory, per-packet cost vs policy off (JSON lines).
    BenchNetpol(netpol_bench::BenchNetpolArgs),
    /// nf_tables over netlink vs the nft binary: counters read with N
    /// elements in the table, applying them (JSON lines).
    BenchNft(nft_bench::BenchNftArgs),
    /// kindnetd at scale: an N-node cluster (5,000) from a nodes file and
    /// from a fake API server; start → all routes, node change → route,
    /// memory (JSON lines).
    BenchNodes(nodes_bench::BenchNodesArgs),
    /// (internal) a pod's TCP/UDP server on 80 and 81.
    #[command(hide = true)]
    ServePod {
        #[arg(long)]
        identity: String,
        #[arg(long)]
        state_dir: PathBuf,
    },
}

/// The directory of this binary, where the build puts kindnetd and
/// kindnet-cni too.
fn exe_dir() -> Result<PathBuf, String> {
    std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| "cannot find the directory of kindnet-lab".to_string())
}

fn binaries(args: &UpArgs) -> Result<Binaries, String> {
    let dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => exe_dir()?,
    };
    let kindnetd = dir.join("kindnetd");
    let cni = dir.join("kindnet-cni");
    for b in [&kindnetd, &cni] {
        if !b.is_file() {
            return Err(format!(
                "{} not found: build with `cargo build --release` or pass --bin-dir",
                b.display()
            ));
        }
    }
    let cni_bin_dir = match &args.cni_bin_dir {
        Some(d) => d.clone(),
        None => {
            let d = cluster::state_dir(&args.name).join("bin");
            sys::run(&[&cni.to_string_lossy(), "install", &d.to_string_lossy()])?;
            d
        }
    };
    // The reference plugins (Debian's 1.1.1) speak up to 1.0.0.
    let max_cni_version = args.cni_bin_dir.as_ref().map(|_| "1.0.0".to_string());
    Ok(Binaries {
        kindnetd,
        cni_bin_dir,
        max_cni_version,
    })
}

fn spec(a: &UpArgs) -> Spec {
    Spec {
        name: a.name.clone(),
        nodes: a.nodes,
        stack: a.stack,
        mode: a.mode,
        pods_per_node: a.pods_per_node,
        cni_chain: a.cni_chain,
        host_ports: true,
        node_stack: a.node_stack.filter(|n| *n != a.stack),
    }
}

fn preflight() -> Result<(), String> {
    if !sys::is_root() {
        return Err("kindnet-lab needs root: it creates network namespaces (and touches nothing outside them)".into());
    }
    sys::require_tools(&[("ip", "iproute2"), ("ping", "iputils-ping")])
}

fn up(a: &UpArgs) -> Result<Lab, String> {
    cluster::validate_name(&a.name)?;
    let b = binaries(a)?;
    match cluster::up(spec(a), b) {
        Ok(lab) => Ok(lab),
        Err(e) => {
            eprintln!("up failed: {e}\ncleaning up lab {:?}", a.name);
            let _ = cluster::down(&a.name);
            Err(e)
        }
    }
}

fn check(lab: &Lab) -> Result<usize, String> {
    let results = check::run(lab)?;
    Ok(check::print(lab, &results))
}

const DEMO_INTRO: &str = "\
kindnet-lab demo: a whole kindnet cluster in network namespaces.

What gets built (nothing outside namespaces named kl-<lab>-*):
  - an L2 segment: a bridge in its own namespace (like kind's docker network),
    with a gateway host that also plays 'the internet' (198.51.100.10, 2001:db8:e::10);
  - N nodes, each a namespace with eth0 on the segment, running a real kindnetd that
    reads a NodeList file, writes 10-kindnet.conflist, installs one route per peer
    pod CIDR via that peer's node address, masquerades traffic leaving the cluster;
  - pods created through the CNI plugins exactly as a container runtime does:
    load the conflist kindnetd wrote, run ptp|bridge + host-local + portmap in order.
";

const DEMO_CHECKS: &str = "\
What the checks prove:
  pod -> pod, same node ........ the node's veths/bridge and host routes (the ptp layout)
  pod -> pod, across nodes ..... kindnetd's peer routes; the receiver sees the sender's
                                 pod address: no NAT between pods
  pod -> own node, node -> pod . the gateway on the host side; nodes reach every pod
  pod -> external .............. masquerade: the external host sees the NODE's address
  hostPort from another node ... portmap's DNAT on the node
  layout ....................... routes and addresses are where the ptp/bridge layout puts them
  CNI CHECK .................... the plugins confirm every pod is as they left it
";

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.cmd {
        Cmd::Up(a) => {
            preflight()?;
            let mut lab = up(&a)?;
            if a.netpol_model
                && let Err(e) = policy_model::create_model(&mut lab)
            {
                eprintln!("up failed: {e}\ncleaning up lab {:?}", a.name);
                let _ = cluster::down(&a.name);
                return Err(e);
            }
            println!(
                "lab {:?} is up: {} nodes, {} pods. Next: kindnet-lab check --name {0}",
                lab.spec.name,
                lab.nodes.len(),
                lab.pods.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check(n) => {
            preflight()?;
            let lab = Lab::load(&n.name)?;
            Ok(if check(&lab)? == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Down(n) => {
            preflight()?;
            let removed = cluster::down(&n.name)?;
            println!(
                "lab {:?} removed ({removed} namespaces, processes and directories)",
                n.name
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo(a) => {
            preflight()?;
            println!("{DEMO_INTRO}");
            let lab = up(&a)?;
            println!("\n{DEMO_CHECKS}");
            let failures = check(&lab);
            let traced = trace_live::demo(&lab);
            println!("\nremoving the lab");
            cluster::down(&a.name)?;
            Ok(if failures? == 0 && traced? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::AddNode(n) => {
            preflight()?;
            let mut lab = Lab::load(&n.name)?;
            let node = cluster::add_node(&mut lab)?;
            println!("added {} ({} pods)", node.name, lab.spec.pods_per_node);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::RemoveNode { lab, node } => {
            preflight()?;
            let mut l = Lab::load(&lab.name)?;
            cluster::remove_node(&mut l, &node)?;
            println!("removed {node}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::DelPod { lab, pod } => {
            preflight()?;
            let mut l = Lab::load(&lab.name)?;
            l.del_pod(&pod)?;
            println!("deleted {pod}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::AddPod { lab, node, number } => {
            preflight()?;
            let mut l = Lab::load(&lab.name)?;
            let n = l.node(&node)?.clone();
            let pod = plan::pod(&l.spec, &n, number);
            if l.pods.iter().any(|p| p.name == pod.name) {
                return Err(format!("pod {} exists", pod.name));
            }
            let res = l.add_pod(pod.clone())?;
            println!(
                "added {}: {}",
                pod.name,
                cluster::result_addrs(&res).join(" ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Doctor { lab, node, json } => {
            preflight()?;
            let l = Lab::load(&lab.name)?;
            cluster::doctor(&l, &node, json)
        }
        Cmd::RestartKindnetd { lab, node } => {
            preflight()?;
            let mut l = Lab::load(&lab.name)?;
            cluster::restart_kindnetd(&mut l, &node)?;
            println!("restarted kindnetd on {node}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Trace(t) => {
            preflight()?;
            trace_live::run(&t)
        }
        Cmd::Apply { lab, file } => {
            preflight()?;
            let l = Lab::load(&lab.name)?;
            for d in policy_model::apply(&l, &file, false)? {
                println!("{d} applied");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Delete { lab, file } => {
            preflight()?;
            let l = Lab::load(&lab.name)?;
            for d in policy_model::apply(&l, &file, true)? {
                println!("{d} deleted");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::AddModelPod {
            lab,
            pod,
            labels,
            node,
        } => {
            preflight()?;
            let mut l = Lab::load(&lab.name)?;
            let labels: Vec<(String, String)> = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| format!("--labels: {kv:?} is not key=value"))
                })
                .collect::<std::result::Result<_, _>>()?;
            let addrs = policy_model::add_model_pod(&mut l, &pod, &labels, &node)?;
            println!("added {pod}: {addrs}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Spoof {
            lab,
            from,
            to,
            source,
            timeout,
            json,
        } => spoof_cmd(&lab, &from, &to, &source, timeout, json),
        Cmd::Probe {
            lab,
            from,
            to,
            port,
            json,
        } => probe_cmd(&lab, &from, &to, &port, json),
        Cmd::Reachability { lab, port, json } => reachability_cmd(&lab, &port, json),
        Cmd::BenchNft(b) => {
            preflight()?;
            nft_bench::run(&b)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::BenchNetpol(b) if b.source == "kube" => {
            preflight()?;
            let dir = match &b.bin_dir {
                Some(d) => d.clone(),
                None => exe_dir()?,
            };
            netpol_kube_bench::run(&b, &dir.join("kindnetd"))
        }
        Cmd::BenchNetpol(b) => {
            preflight()?;
            sys::require_tools(&[("iperf3", "iperf3")])?;
            let up = UpArgs {
                nodes: 2,
                stack: Stack::Dual,
                mode: Mode::Ptp,
                pods_per_node: 1,
                cni_chain: plan::Chain::Single,
                node_stack: None,
                name: b.name.clone(),
                bin_dir: b.bin_dir.clone(),
                cni_bin_dir: None,
                netpol_model: false,
            };
            let _ = cluster::down(&b.name);
            std::fs::create_dir_all(cluster::state_dir(&b.name)).map_err(|e| e.to_string())?;
            let bins = binaries(&up)?;
            netpol_bench::run(&b, bins)
        }
        Cmd::ServePod {
            identity,
            state_dir,
        } => {
            let _ = state_dir;
            pod_server::serve(&identity)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(b) => {
            preflight()?;
            sys::require_tools(&[("iperf3", "iperf3")])?;
            bench::run(&b)
        }
        Cmd::BenchNodes(args) => {
            preflight()?;
            let dir = match &args.bin_dir {
                Some(d) => d.clone(),
                None => exe_dir()?,
            };
            let kindnetd = dir.join("kindnetd");
            if !kindnetd.is_file() {
                return Err(format!(
                    "{} not found: build with `cargo build --release` or pass --bin-dir",
                    kindnetd.display()
                ));
            }
            nodes_bench::run(&args, &kindnetd)
        }
    }
}

/// `spoof`: forged and honest sources from one pod to another, per family;
/// exit 1 if a forged packet arrived.
fn spoof_cmd(
    lab: &NameArg,
    from: &str,
    to: &str,
    source: &[std::net::IpAddr],
    timeout: f64,
    json: bool,
) -> Result<ExitCode, String> {
    preflight()?;
    let l = Lab::load(&lab.name)?;
    let (a, b) = (
        policy_model::find_pod(&l, from)?,
        policy_model::find_pod(&l, to)?,
    );
    let mut leaked = false;
    for f in policy_model::families(&l) {
        let sources = if source.is_empty() {
            spoof::default_sources(&l, a, b, f)
        } else {
            source
                .iter()
                .copied()
                .filter(|s| plan::Family::of(s) == f)
                .collect()
        };
        let wait = std::time::Duration::from_secs_f64(timeout.clamp(0.1, 60.0));
        let (outcomes, counted) = spoof::run(&l, a, b, f, &sources, wait)?;
        for o in &outcomes {
            leaked |= o.forged && o.received;
            if json {
                println!("{}", serde_json::to_string(o).map_err(|e| e.to_string())?);
            } else {
                println!(
                    "{} {} -> {} from {}{}: {}",
                    o.family,
                    o.from,
                    o.to,
                    o.source,
                    if o.forged { " (forged)" } else { "" },
                    if o.received {
                        "received"
                    } else {
                        "not received"
                    }
                );
            }
        }
        if json {
            println!(
                "{}",
                serde_json::to_string(&counted).map_err(|e| e.to_string())?
            );
        } else {
            println!(
                "{} anti-spoofing drops on {}: {} -> {}",
                f.label(),
                counted.node,
                counted.spoofed_before,
                counted.spoofed_after
            );
        }
    }
    Ok(if leaked {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `probe`: one connection per family, with what the semantics say.
fn probe_cmd(
    lab: &NameArg,
    from: &str,
    to: &str,
    port: &str,
    json: bool,
) -> Result<ExitCode, String> {
    preflight()?;
    let l = Lab::load(&lab.name)?;
    let (port, proto) = port::parse_port(port)?;
    let c = policy_model::cluster(&l)?;
    let (a, b) = (
        policy_model::find_pod(&l, from)?,
        policy_model::find_pod(&l, to)?,
    );
    for f in policy_model::families(&l) {
        let r = policy_model::probe(&l, &c, a, b, port, proto, f)?;
        if json {
            println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
        } else {
            println!("{}", policy_model::print_probe(&r));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `reachability`: the model's matrix per family, as upstream prints it.
fn reachability_cmd(lab: &NameArg, port: &str, json: bool) -> Result<ExitCode, String> {
    preflight()?;
    let l = Lab::load(&lab.name)?;
    let (port, proto) = port::parse_port(port)?;
    for f in policy_model::families(&l) {
        let rs = policy_model::reachability(&l, port, proto, f)?;
        let wrong: Vec<&policy_model::ProbeResult> =
            rs.iter().filter(|r| r.connected != r.expected).collect();
        if json {
            let v = serde_json::json!({"port": port, "family": f.label(),
                "cells": rs, "mismatches": wrong.len()});
            println!("{v}");
        } else {
            println!(
                "reachability {port} {} ({}): . connected, X blocked; ! or ? = differs from the semantics",
                f.label(),
                rs.first().map(|r| r.proto).unwrap_or("")
            );
            print!("{}", policy_model::print_matrix(&rs));
            for w in &wrong {
                println!("  {}", policy_model::print_probe(w));
            }
            println!(
                "{} cells, {} differ from the semantics\n",
                rs.len(),
                wrong.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kindnet-lab: {e}");
            ExitCode::FAILURE
        }
    }
}

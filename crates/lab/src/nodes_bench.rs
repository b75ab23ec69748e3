//! `kindnet-lab bench-nodes`: kindnetd's control plane at scale. A real
//! kindnetd (run with `ip netns exec`) is fed an N-node cluster inside a
//! network namespace of this lab, once per node source (a nodes file, then
//! a fake API server: crate `kindnet-fakeapi`), and one JSON line per
//! source gives:
//! - time from start to all peer routes installed,
//! - time from one node change to the routing table reflecting it,
//! - resident memory after convergence.
//!
//! Everything lives under the lab's name (namespace `kl-NAME-SOURCE`, state
//! in `/run/kindnet-lab/NAME/`), so `kindnet-lab down NAME` removes what an
//! interrupted run left; a finished run removes it itself.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kindnet_fakeapi::{FakeApi, Served, kubeconfig, node_json};
use kindnet_netlink::{Family, Handle, Netns, RouteEvent, RouteEvents, RouteFilter};
use serde_json::{Value, json};

use crate::cluster;
use crate::plan::{self, KINDNETD_ROUTE_PROTOCOL};
use crate::sys::{self, Result};

#[derive(clap::Args)]
pub struct BenchNodesArgs {
    /// Number of nodes in the cluster (this node included).
    #[arg(long, default_value_t = 5000)]
    pub nodes: usize,
    /// Node source to measure.
    #[arg(long, default_value = "both", value_parser = ["file", "kube", "both"])]
    pub source: String,
    /// Node changes to time (the median and max are reported).
    #[arg(long, default_value_t = 10)]
    pub changes: usize,
    /// kindnetd's log filter; its log is copied to stderr at the end.
    #[arg(long, default_value = "warn")]
    pub log_level: String,
    /// The lab's name (its namespaces and state directory).
    #[arg(long, default_value = "bnodes")]
    pub name: String,
    /// Directory with kindnetd (default: next to this binary).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 2)) + i as u32)
}

fn pod_cidr(i: usize) -> IpNet {
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + ((i as u32) << 8);
    IpNet::new(IpAddr::V4(Ipv4Addr::from(base)), 24).unwrap_or_default()
}

fn node(i: usize, ip: Ipv4Addr) -> Value {
    let cidr = pod_cidr(i).to_string();
    node_json(&format!("node-{i:05}"), &[&cidr], &[&ip.to_string()])
}

pub(crate) fn rss_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The namespace of one source's run, with one L2 segment (eth0) with
/// room for every node address, and its state directory; the namespace is
/// removed on drop.
pub(crate) struct Setup {
    pub(crate) ns: String,
    pub(crate) netns: Netns,
    pub(crate) dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        sys::netns_del(&self.ns);
    }
}

/// The kindnetd of one run (its PID), stopped on drop.
pub(crate) struct Kindnetd<'a> {
    pub(crate) pid: u32,
    pub(crate) lab: &'a str,
}

impl Drop for Kindnetd<'_> {
    fn drop(&mut self) {
        cluster::stop_kindnetd(self.pid, &cluster::state_dir(self.lab));
    }
}

pub(crate) fn setup(lab: &str, source: &str) -> Result<Setup> {
    let ns = format!("{}{source}", plan::prefix(lab));
    sys::netns_add(&ns)?;
    let netns = match sys::netns(&ns) {
        Ok(n) => n,
        Err(e) => {
            sys::netns_del(&ns);
            return Err(e);
        }
    };
    let dir = cluster::state_dir(lab).join(source);
    let s = Setup { ns, netns, dir };
    let ns = &s.ns;
    sys::ip(
        ns,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ],
    )?;
    sys::ip(ns, &["addr", "add", "10.0.0.1/16", "dev", "eth0"])?;
    sys::ip(ns, &["link", "set", "eth0", "up"])?;
    sys::ip(ns, &["link", "set", "peer0", "up"])?;
    std::fs::create_dir_all(&s.dir).map_err(|e| e.to_string())?;
    Ok(s)
}

/// A fake API server listening on the namespace's loopback, and a
/// kubeconfig for it in the state directory.
pub(crate) fn fake_api(s: &Setup) -> Result<(Served, PathBuf)> {
    let listener = s
        .netns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let served = FakeApi::new()
        .spawn(listener)
        .map_err(|e| format!("fake API server: {e}"))?;
    let kc = s.dir.join("kubeconfig");
    std::fs::write(&kc, kubeconfig(&served.url())).map_err(|e| e.to_string())?;
    Ok((served, kc))
}

/// Starts `kindnetd` with `args` in the namespace, its log in the state
/// directory (`kindnetd.log`).
pub(crate) fn start_kindnetd<'a>(
    s: &Setup,
    lab: &'a str,
    kindnetd: &Path,
    args: &[String],
    log_level: &str,
) -> Result<Kindnetd<'a>> {
    let log = std::fs::File::create(s.dir.join("kindnetd.log")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &s.ns])
        .arg(kindnetd)
        .args(args)
        .env("KINDNET_LOG_LEVEL", log_level)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // `ip netns exec` execs kindnetd: the PID is kindnetd's.
    let pid = cmd
        .spawn()
        .map_err(|e| format!("start kindnetd: {e}"))?
        .id();
    Ok(Kindnetd { pid, lab })
}

/// Removes whatever is left of the lab (its state directory, and anything
/// a killed run left) when dropped.
pub(crate) struct Down<'a>(pub(crate) &'a str);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if let Err(e) = cluster::down(self.0) {
            eprintln!("kindnet-lab bench-nodes: cleaning up lab {}: {e}", self.0);
        }
    }
}

/// Waits until the kernel has a kindnetd route for every `want` (dst → gw),
/// following route events; falls back to a dump when events overflow.
fn wait_routes(
    events: &mut RouteEvents,
    h: &mut Handle,
    want: &HashMap<IpNet, IpAddr>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut have: HashMap<IpNet, IpAddr> = HashMap::new();
    let matches = |have: &HashMap<IpNet, IpAddr>| want.iter().all(|(d, g)| have.get(d) == Some(g));
    // Start from what is installed now.
    let dump = |h: &mut Handle| -> Result<HashMap<IpNet, IpAddr>> {
        let f = RouteFilter {
            protocol: Some(KINDNETD_ROUTE_PROTOCOL),
            ..Default::default()
        };
        Ok(h.routes(Family::V4, f)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter_map(|r| r.gateway.map(|g| (r.dst, g)))
            .collect())
    };
    have.extend(dump(h)?);
    while !matches(&have) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "timeout: {} of {} routes right",
                want.iter().filter(|(d, g)| have.get(d) == Some(g)).count(),
                want.len()
            ));
        }
        match events.next(Some(left.min(Duration::from_millis(100)))) {
            Ok(evs) => {
                for e in evs {
                    match e {
                        RouteEvent::Added(r) if r.protocol == KINDNETD_ROUTE_PROTOCOL => {
                            if let Some(g) = r.gateway {
                                have.insert(r.dst, g);
                            }
                        }
                        RouteEvent::Deleted(r)
                            if r.protocol == KINDNETD_ROUTE_PROTOCOL
                                && have.get(&r.dst) == r.gateway.as_ref() =>
                        {
                            have.remove(&r.dst);
                        }
                        _ => {}
                    }
                }
            }
            Err(e) if e.is_overrun() => {
                have = dump(h)?;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

enum Feed {
    File(PathBuf),
    Kube(Served),
}

impl Feed {
    /// Prepares a new version of the node list; the returned closure
    /// publishes it (the moment of change: a rename for the file source).
    fn stage(&self, nodes: &[Value]) -> Result<Box<dyn FnOnce() -> Result<()> + '_>> {
        match self {
            Feed::File(p) => {
                let body = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": nodes});
                let tmp = p.with_extension("tmp");
                std::fs::write(&tmp, body.to_string()).map_err(|e| e.to_string())?;
                Ok(Box::new(move || {
                    std::fs::rename(&tmp, p).map_err(|e| e.to_string())
                }))
            }
            Feed::Kube(served) => {
                let nodes = nodes.to_vec();
                Ok(Box::new(move || {
                    served.api.preload(nodes);
                    Ok(())
                }))
            }
        }
    }
}

fn bench(args: &BenchNodesArgs, source: &str, kindnetd: &Path) -> Result<Value> {
    let s = setup(&args.name, source)?;
    let n = args.nodes.max(2);
    let mut nodes: Vec<Value> = (0..n).map(|i| node(i, node_ip(i))).collect();
    let cni = s.dir.join("net.d");

    // Every path names the lab's state directory: `down` finds this
    // kindnetd by it.
    let mut daemon_args: Vec<String> = vec![
        "--node-name=node-00000".into(),
        format!("--cni-conf-dir={}", cni.display()),
        "--pod-subnet=10.128.0.0/9".into(),
        "--metrics-bind-address=127.0.0.1:19080".into(),
    ];
    let feed = if source == "file" {
        let p = s.dir.join("nodes.json");
        daemon_args.push(format!("--nodes-file={}", p.display()));
        Feed::File(p)
    } else {
        let (served, kc) = fake_api(&s)?;
        daemon_args.push(format!("--kubeconfig={}", kc.display()));
        Feed::Kube(served)
    };
    feed.stage(&nodes)?()?;

    let mut h = Handle::in_netns(&s.netns).map_err(|e| e.to_string())?;
    let mut events = RouteEvents::in_netns(&s.netns).map_err(|e| e.to_string())?;
    let mut want: HashMap<IpNet, IpAddr> = (1..n)
        .map(|i| (pod_cidr(i), IpAddr::V4(node_ip(i))))
        .collect();

    let t0 = Instant::now();
    let daemon = start_kindnetd(&s, &args.name, kindnetd, &daemon_args, &args.log_level)?;
    let pid = daemon.pid;
    let logtail =
        |dir: &PathBuf| std::fs::read_to_string(dir.join("kindnetd.log")).unwrap_or_default();
    wait_routes(&mut events, &mut h, &want, Duration::from_secs(60))
        .map_err(|e| format!("{e}\n{}", logtail(&s.dir)))?;
    let converge = t0.elapsed();

    // Let the post-install reconcile (triggered by our own route events) finish.
    std::thread::sleep(Duration::from_millis(500));
    let mut change_ms = Vec::new();
    for k in 0..args.changes {
        let i = 1 + (k * 7919) % (n - 1);
        let new_ip = Ipv4Addr::new(10, 0, 250, (k % 250) as u8 + 1);
        nodes[i] = node(i, new_ip);
        want.clear();
        want.insert(pod_cidr(i), IpAddr::V4(new_ip));
        let publish: Box<dyn FnOnce() -> Result<()>> = match &feed {
            Feed::File(_) => feed.stage(&nodes)?,
            Feed::Kube(served) => {
                let n = nodes[i].clone();
                Box::new(move || {
                    served.api.apply(n);
                    Ok(())
                })
            }
        };
        let t1 = Instant::now();
        publish()?;
        wait_routes(&mut events, &mut h, &want, Duration::from_secs(10))
            .map_err(|e| format!("change {k}: {e}\n{}", logtail(&s.dir)))?;
        change_ms.push(t1.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss = rss_kb(pid, "VmRSS:").unwrap_or(0);
    let hwm = rss_kb(pid, "VmHWM:").unwrap_or(0);
    let installed = h
        .routes(
            Family::V4,
            RouteFilter {
                protocol: Some(KINDNETD_ROUTE_PROTOCOL),
                ..Default::default()
            },
        )
        .map(|r| r.len())
        .unwrap_or(0);
    drop(daemon);
    if args.log_level != "warn" {
        eprintln!("--- kindnetd log ({source}) ---\n{}", logtail(&s.dir));
    }
    let max = crate::stats::nearest_rank(&change_ms, 1.0);
    Ok(json!({
        "bench": "kindnetd",
        "source": source,
        "nodes": n,
        "routes_installed": installed,
        "start_to_all_routes_ms": (converge.as_secs_f64() * 1e3 * 10.0).round() / 10.0,
        "node_change_to_route_ms_p50": (crate::stats::median(&change_ms) * 10.0).round() / 10.0,
        "node_change_to_route_ms_max": (max * 10.0).round() / 10.0,
        "node_changes": args.changes,
        "rss_mb_after_convergence": (rss as f64 / 1024.0 * 10.0).round() / 10.0,
        "peak_rss_mb": (hwm as f64 / 1024.0 * 10.0).round() / 10.0,
        "targets": {"start_to_all_routes_ms": 2000, "node_change_to_route_ms": 100, "rss_mb": 30}
    }))
}

/// Runs the benchmark for the chosen sources with `kindnetd`; one JSON
/// line per source (an `error` line for a source that failed).
pub fn run(args: &BenchNodesArgs, kindnetd: &Path) -> Result<ExitCode> {
    cluster::validate_name(&args.name)?;
    // A leftover of an interrupted run.
    cluster::down(&args.name)?;
    let _down = Down(&args.name);
    let sources: Vec<&str> = match args.source.as_str() {
        "both" => vec!["file", "kube"],
        s => vec![s],
    };
    let mut ok = true;
    for src in sources {
        match bench(args, src, kindnetd) {
            Ok(v) => println!("{v}"),
            Err(e) => {
                ok = false;
                println!(
                    "{}",
                    json!({"bench": "kindnetd", "source": src, "error": e})
                );
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

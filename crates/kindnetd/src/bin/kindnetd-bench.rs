//! kindnetd benchmark: feeds a real kindnetd (run with `ip netns exec`) an
//! N-node cluster inside a network namespace this program creates and
//! removes, and prints one JSON line per node source with:
//! - time from start to all peer routes installed,
//! - time from one node change to the routing table reflecting it,
//! - resident memory after convergence.
//!
//! Usage (as root):
//!   cargo build --release -p kindnetd
//!   target/release/kindnetd-bench [--nodes 5000] [--source file|kube|both]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use ipnet::IpNet;
use kindnet_netlink::{Family, Handle, Netns, RouteEvent, RouteEvents, RouteFilter};
use kindnetd::fakeapi::{FakeApi, node_json};
use kindnetd::routes::ROUTE_PROTOCOL;
use kindnetd::testutil::{ChildGuard, NetnsGuard, is_root};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "kindnetd-bench",
    about = "Measure kindnetd convergence, change latency and memory"
)]
struct Args {
    /// Number of nodes in the cluster (this node included).
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Node source to measure.
    #[arg(long, default_value = "both", value_parser = ["file", "kube", "both"])]
    source: String,
    /// Node changes to time (the median and max are reported).
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// The kindnetd binary (default: next to this one).
    #[arg(long)]
    kindnetd: Option<PathBuf>,
    /// kindnetd's log filter; its log is copied to stderr at the end.
    #[arg(long, default_value = "warn")]
    log_level: String,
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

fn rss_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

struct Setup {
    ns: NetnsGuard,
    netns: Netns,
    dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(tag: &str) -> Result<Setup, String> {
    let ns = NetnsGuard::new("kd-bench")?;
    // One L2 segment with room for every node address.
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ])?;
    ns.ip(&["addr", "add", "10.0.0.1/16", "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["link", "set", "peer0", "up"])?;
    let netns = Netns::open(ns.path()).map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("kindnetd-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(Setup { ns, netns, dir })
}

/// Waits until the kernel has a kindnetd route for every `want` (dst → gw),
/// following route events; falls back to a dump when events overflow.
fn wait_routes(
    events: &mut RouteEvents,
    h: &mut Handle,
    want: &std::collections::HashMap<IpNet, IpAddr>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut have: std::collections::HashMap<IpNet, IpAddr> = std::collections::HashMap::new();
    let matches = |have: &std::collections::HashMap<IpNet, IpAddr>| {
        want.iter().all(|(d, g)| have.get(d) == Some(g))
    };
    // Start from what is installed now.
    let dump = |h: &mut Handle| -> Result<std::collections::HashMap<IpNet, IpAddr>, String> {
        let f = RouteFilter {
            protocol: Some(ROUTE_PROTOCOL),
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
                        RouteEvent::Added(r) if r.protocol == ROUTE_PROTOCOL => {
                            if let Some(g) = r.gateway {
                                have.insert(r.dst, g);
                            }
                        }
                        RouteEvent::Deleted(r)
                            if r.protocol == ROUTE_PROTOCOL
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

enum Feed {
    File(PathBuf),
    Kube(FakeApi),
}

impl Feed {
    /// Prepares a new version of the node list; the returned closure
    /// publishes it (the moment of change: a rename for the file source).
    fn stage(
        &self,
        nodes: &[Value],
    ) -> Result<Box<dyn FnOnce() -> Result<(), String> + '_>, String> {
        match self {
            Feed::File(p) => {
                let body = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": nodes});
                let tmp = p.with_extension("tmp");
                std::fs::write(&tmp, body.to_string()).map_err(|e| e.to_string())?;
                Ok(Box::new(move || {
                    std::fs::rename(&tmp, p).map_err(|e| e.to_string())
                }))
            }
            Feed::Kube(api) => {
                let nodes = nodes.to_vec();
                Ok(Box::new(move || {
                    api.preload(nodes);
                    Ok(())
                }))
            }
        }
    }
}

fn bench(args: &Args, source: &str, kindnetd: &Path) -> Result<Value, String> {
    let s = setup(source)?;
    let n = args.nodes.max(2);
    let mut nodes: Vec<Value> = (0..n).map(|i| node(i, node_ip(i))).collect();
    let cni = s.dir.join("net.d");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

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
        let api = FakeApi::new();
        // The API server listens inside the namespace, on its loopback.
        let std_listener = s
            .netns
            .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let port = std_listener.local_addr().map_err(|e| e.to_string())?.port();
        std_listener
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let a = api.clone();
        rt.spawn(async move {
            if let Ok(l) = tokio::net::TcpListener::from_std(std_listener) {
                let _ = a.serve(l).await;
            }
        });
        let kc = s.dir.join("kubeconfig");
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster:\n    server: http://127.0.0.1:{port}\n\
                 contexts:\n- name: b\n  context:\n    cluster: b\n    user: b\ncurrent-context: b\nusers:\n- name: b\n  user:\n    token: t\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        daemon_args.push(format!("--kubeconfig={}", kc.display()));
        Feed::Kube(api)
    };
    feed.stage(&nodes)?()?;

    let mut h = Handle::in_netns(&s.netns).map_err(|e| e.to_string())?;
    let mut events = RouteEvents::in_netns(&s.netns).map_err(|e| e.to_string())?;
    let mut want: std::collections::HashMap<IpNet, IpAddr> = (1..n)
        .map(|i| (pod_cidr(i), IpAddr::V4(node_ip(i))))
        .collect();

    let log = std::fs::File::create(s.dir.join("kindnetd.log")).map_err(|e| e.to_string())?;
    let mut cmd = s.ns.command(&kindnetd.display().to_string());
    cmd.args(&daemon_args)
        .env("KINDNET_LOG_LEVEL", &args.log_level)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let t0 = Instant::now();
    let mut child = ChildGuard::spawn(&mut cmd).map_err(|e| format!("start kindnetd: {e}"))?;
    let pid = child.id().unwrap_or(0);
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
        let publish: Box<dyn FnOnce() -> Result<(), String>> = match &feed {
            Feed::File(_) => feed.stage(&nodes)?,
            Feed::Kube(api) => {
                let n = nodes[i].clone();
                Box::new(move || {
                    api.apply(n);
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
                protocol: Some(ROUTE_PROTOCOL),
                ..Default::default()
            },
        )
        .map(|r| r.len())
        .unwrap_or(0);
    let _ = child.signal(libc::SIGTERM);
    let _ = child.wait_timeout(Duration::from_secs(5));
    if args.log_level != "warn" {
        eprintln!("--- kindnetd log ({source}) ---\n{}", logtail(&s.dir));
    }
    drop(rt);
    let max = change_ms.iter().cloned().fold(0.0, f64::max);
    Ok(json!({
        "bench": "kindnetd",
        "source": source,
        "nodes": n,
        "routes_installed": installed,
        "start_to_all_routes_ms": (converge.as_secs_f64() * 1e3 * 10.0).round() / 10.0,
        "node_change_to_route_ms_p50": (median(&mut change_ms) * 10.0).round() / 10.0,
        "node_change_to_route_ms_max": (max * 10.0).round() / 10.0,
        "node_changes": args.changes,
        "rss_mb_after_convergence": (rss as f64 / 1024.0 * 10.0).round() / 10.0,
        "peak_rss_mb": (hwm as f64 / 1024.0 * 10.0).round() / 10.0,
        "targets": {"start_to_all_routes_ms": 2000, "node_change_to_route_ms": 100, "rss_mb": 30}
    }))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !is_root() {
        eprintln!("kindnetd-bench: needs root (it creates a network namespace)");
        return std::process::ExitCode::from(2);
    }
    let kindnetd = args.kindnetd.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("kindnetd")))
            .unwrap_or_else(|| PathBuf::from("kindnetd"))
    });
    let sources: Vec<&str> = match args.source.as_str() {
        "both" => vec!["file", "kube"],
        s => vec![s],
    };
    let mut ok = true;
    for src in sources {
        match bench(&args, src, &kindnetd) {
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
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

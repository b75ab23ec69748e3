//! The compiled rules in a real kernel: one "node" namespace, the upstream
//! conformance model (namespaces x, y, z; pods a, b, c in each, each its own
//! network namespace on a ptp veth with /32 and /128 routes), TCP and UDP
//! servers on 80 and 81, and every (from, to, family, port) probed at once
//! and compared with `evaluate_on`. Root only; everything happens inside
//! namespaces this test makes.

mod common;

use kindnet_netpol::*;
use kindnet_nft::{Nft, NftNetlink};
use kindnet_testbed::{Ns, require_root};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::net::{RecvFlags, SendFlags, recvfrom, sendto};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
use serde_json::{Value as Json, json};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

const NODE: &str = "node1";
const NODE4: &str = "172.18.0.2";
const NODE6: &str = "fc00:f853::2";
const GW4: &str = "10.244.1.1";
const GW6: &str = "fd00:10:244:1::1";
const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// (protocol, port) probed to every pod.
const SERVICES: [(Proto, u16); 4] = [
    (Proto::Tcp, 80),
    (Proto::Tcp, 81),
    (Proto::Udp, 80),
    (Proto::Udp, 81),
];

fn setns(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // only this thread moves
    move_into_link_name_space(f.as_fd(), Some(LinkNameSpaceType::Network))
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

struct PodNs {
    ns: String,
    name: String,
    netns: Ns,
    v4: IpAddr,
    v6: IpAddr,
}

/// Echo servers in one pod: accept TCP, echo UDP, until stopped.
fn serve(path: String, stop: Arc<AtomicBool>, ready: std::sync::mpsc::Sender<()>) {
    setns(&path);
    let mut socks = Vec::new();
    for (proto, port) in SERVICES {
        let (ty, p) = match proto {
            Proto::Udp => (Type::DGRAM, Protocol::UDP),
            _ => (Type::STREAM, Protocol::TCP),
        };
        let s = Socket::new(Domain::IPV6, ty, Some(p)).unwrap();
        s.set_only_v6(false).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SockAddr::from(SocketAddr::new(
            "::".parse().unwrap(),
            port,
        )))
        .unwrap();
        if ty == Type::STREAM {
            s.listen(256).unwrap();
        }
        s.set_nonblocking(true).unwrap();
        socks.push((s, ty == Type::DGRAM));
    }
    let _ = ready.send(());
    let mut buf = [0u8; 64];
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    while !stop.load(Ordering::Relaxed) {
        let mut fds: Vec<PollFd> = socks
            .iter()
            .map(|(s, _)| PollFd::new(s, PollFlags::IN))
            .collect();
        let _ = poll(&mut fds, Some(&tick));
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        for ((s, udp), ready) in socks.iter().zip(ready) {
            if !ready {
                continue;
            }
            if *udp {
                while let Ok((n, _, Some(from))) = recvfrom(s, &mut buf, RecvFlags::empty()) {
                    let _ = sendto(s, &buf[..n], SendFlags::empty(), &from);
                }
            } else {
                while s.accept().is_ok() {}
            }
        }
    }
}

/// A UDP source port used once in the whole run, so a conntrack entry of
/// an earlier case can never make a probe look like a reply.
static UDP_PORT: AtomicU16 = AtomicU16::new(20000);

/// Probes `targets` from the calling thread's namespace all at once;
/// `true` = the handshake (TCP) or an echo (UDP) came back before `wait`.
fn probe(
    bind: Option<(IpAddr, IpAddr)>,
    targets: &[(SocketAddr, bool)],
    wait: Duration,
) -> Vec<bool> {
    let mut out = vec![false; targets.len()];
    let mut pending: Vec<(usize, Socket, bool)> = Vec::new();
    for (i, &(addr, udp)) in targets.iter().enumerate() {
        let dom = if addr.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let s = if udp {
            Socket::new(dom, Type::DGRAM, Some(Protocol::UDP))
        } else {
            Socket::new(dom, Type::STREAM, Some(Protocol::TCP))
        }
        .unwrap();
        s.set_nonblocking(true).unwrap();
        let src_ip = match bind {
            Some((a, b)) => {
                if addr.is_ipv6() {
                    b
                } else {
                    a
                }
            }
            None => {
                if addr.is_ipv6() {
                    "::".parse().unwrap()
                } else {
                    "0.0.0.0".parse().unwrap()
                }
            }
        };
        let src_port = if udp {
            UDP_PORT.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        s.bind(&SockAddr::from(SocketAddr::new(src_ip, src_port)))
            .unwrap();
        if udp {
            s.send_to(b"probe", &SockAddr::from(addr)).unwrap();
            pending.push((i, s, true));
        } else {
            match s.connect(&SockAddr::from(addr)) {
                Ok(()) => out[i] = true,
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                    pending.push((i, s, false))
                }
                Err(_) => {}
            }
        }
    }
    let deadline = Instant::now() + wait;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut fds: Vec<PollFd> = pending
            .iter()
            .map(|(_, s, udp)| PollFd::new(s, if *udp { PollFlags::IN } else { PollFlags::OUT }))
            .collect();
        let _ = poll(&mut fds, Timespec::try_from(left).ok().as_ref());
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        let mut still = Vec::new();
        for ((i, s, udp), ready) in pending.into_iter().zip(ready) {
            if !ready {
                still.push((i, s, udp));
                continue;
            }
            out[i] = if udp {
                s.recv(&mut buf).is_ok()
            } else {
                // connected; a refusal would also mean the packet got through
                match s.take_error() {
                    Ok(None) => true,
                    Ok(Some(e)) => e.raw_os_error() == Some(libc::ECONNREFUSED),
                    Err(_) => false,
                }
            };
        }
        pending = still;
    }
    out
}

/// A prober: its name, namespace path, the addresses to bind (the node
/// binds its own), and its v4 and v6 source addresses.
type Source = (String, String, Option<(IpAddr, IpAddr)>, IpAddr, IpAddr);

struct Lab {
    node: Ns,
    pods: Vec<PodNs>,
    stop: Arc<AtomicBool>,
    servers: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
    }
}

fn sysctls(ns: &Ns, kv: &[&str]) {
    let mut args = vec!["sysctl", "-q", "-w"];
    args.extend_from_slice(kv);
    ns.run_ok(&args);
}

impl Lab {
    fn new() -> Lab {
        let node = Ns::new("np-node");
        sysctls(
            &node,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.accept_dad=0",
            ],
        );
        let n = node.name.clone();
        let ip = |args: &[&str]| {
            let mut a = vec!["ip", "-n", n.as_str()];
            a.extend_from_slice(args);
            kindnet_testbed::sh_ok(&a);
        };
        // the node's own address (no dummy module here: on lo)
        ip(&["addr", "add", &format!("{NODE4}/32"), "dev", "lo"]);
        ip(&["addr", "add", &format!("{NODE6}/128"), "dev", "lo", "nodad"]);
        let mut pods = Vec::new();
        for (i, ns) in NAMESPACES.iter().enumerate() {
            for (j, name) in PODS.iter().enumerate() {
                let k = 10 + i * 3 + j;
                let p = Ns::new(&format!("np-{ns}{name}"));
                sysctls(
                    &p,
                    &[
                        "net.ipv6.conf.default.accept_dad=0",
                        "net.ipv6.conf.all.accept_dad=0",
                    ],
                );
                let v4: IpAddr = format!("10.244.1.{k}").parse().unwrap();
                let v6: IpAddr = format!("fd00:10:244:1::{k:x}").parse().unwrap();
                let veth = format!("veth{:08x}", 0x5eed_0000 + k);
                ip(&[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &p.name,
                ]);
                ip(&["addr", "add", &format!("{GW4}/32"), "dev", &veth]);
                ip(&["addr", "add", &format!("{GW6}/128"), "dev", &veth, "nodad"]);
                ip(&["link", "set", &veth, "up"]);
                ip(&["route", "add", &format!("{v4}/32"), "dev", &veth]);
                ip(&["-6", "route", "add", &format!("{v6}/128"), "dev", &veth]);
                for args in [
                    vec!["addr", "add", &format!("{v4}/32"), "dev", "eth0"],
                    vec!["addr", "add", &format!("{v6}/128"), "dev", "eth0", "nodad"],
                    vec!["link", "set", "eth0", "up"],
                    vec!["route", "add", GW4, "dev", "eth0", "scope", "link"],
                    vec!["route", "add", "default", "via", GW4, "dev", "eth0"],
                    vec!["-6", "route", "add", GW6, "dev", "eth0"],
                    vec!["-6", "route", "add", "default", "via", GW6, "dev", "eth0"],
                ] {
                    let mut a = vec!["ip", "-n", p.name.as_str()];
                    a.extend(args.iter().copied());
                    kindnet_testbed::sh_ok(&a);
                }
                pods.push(PodNs {
                    ns: ns.to_string(),
                    name: name.to_string(),
                    netns: p,
                    v4,
                    v6,
                });
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let servers = pods
            .iter()
            .map(|p| {
                let (path, stop, tx) = (p.netns.path(), stop.clone(), tx.clone());
                std::thread::spawn(move || serve(path, stop, tx))
            })
            .collect();
        let lab = Lab {
            node,
            pods,
            stop,
            servers,
        };
        for _ in 0..lab.pods.len() {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("servers listening");
        }
        lab
    }

    fn pod_objects(&self, pending: Option<(&str, &str)>) -> Vec<Pod> {
        self.pods
            .iter()
            .map(|p| {
                let ips: Vec<Json> = if pending == Some((p.ns.as_str(), p.name.as_str())) {
                    vec![]
                } else {
                    vec![
                        json!({"ip": p.v4.to_string()}),
                        json!({"ip": p.v6.to_string()}),
                    ]
                };
                serde_json::from_value(json!({
                    "metadata": {"namespace": p.ns, "name": p.name, "labels": {"pod": p.name}},
                    "spec": {"nodeName": NODE, "containers": [{"ports": [
                        {"name": "serve-80-tcp", "containerPort": 80},
                        {"name": "serve-81-tcp", "containerPort": 81, "protocol": "TCP"},
                        {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"},
                        {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"}]}]},
                    "status": {"phase": "Running", "podIPs": ips}
                }))
                .unwrap()
            })
            .collect()
    }

    fn apply(&self, batch: &kindnet_nft::Batch) {
        let path = self.node.path();
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&path);
                NftNetlink::open()
                    .and_then(|mut n| n.apply(batch))
                    .unwrap_or_else(|e| panic!("nft: {e}"));
            })
            .join()
            .unwrap()
        })
    }

    fn nft_json(&self, args: &[&str]) -> Json {
        let mut a = vec!["nft", "-j"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.node.run_ok(&a)).unwrap_or(Json::Null)
    }

    /// Sources: every pod, then the node itself (bound to its address).
    fn sources(&self) -> Vec<Source> {
        let mut s: Vec<_> = self
            .pods
            .iter()
            .map(|p| {
                (
                    format!("{}/{}", p.ns, p.name),
                    p.netns.path(),
                    None,
                    p.v4,
                    p.v6,
                )
            })
            .collect();
        let (n4, n6): (IpAddr, IpAddr) = (NODE4.parse().unwrap(), NODE6.parse().unwrap());
        s.push(("node".into(), self.node.path(), Some((n4, n6)), n4, n6));
        s
    }

    /// The reachability of every (source, destination pod, family,
    /// service); cells whose answer was "blocked" are probed again with a
    /// longer wait before they count, so a loaded machine cannot fake a
    /// block (an open cell cannot be faked).
    fn measure(
        &self,
        only: Option<&[(usize, usize, usize)]>,
        wait: Duration,
    ) -> Vec<(usize, usize, usize, bool)> {
        let sources = self.sources();
        std::thread::scope(|sc| {
            let handles: Vec<_> = sources
                .iter()
                .enumerate()
                .map(|(si, (_, path, bind, _, _))| {
                    sc.spawn(move || {
                        setns(path);
                        let mut cells = Vec::new();
                        let mut targets = Vec::new();
                        for (di, d) in self.pods.iter().enumerate() {
                            if di == si {
                                continue;
                            }
                            for (k, (proto, port)) in SERVICES.iter().enumerate() {
                                for (f, addr) in [d.v4, d.v6].into_iter().enumerate() {
                                    let cell = k * 2 + f;
                                    if only.is_some_and(|o| !o.contains(&(si, di, cell))) {
                                        continue;
                                    }
                                    cells.push((si, di, cell));
                                    targets
                                        .push((SocketAddr::new(addr, *port), *proto == Proto::Udp));
                                }
                            }
                        }
                        let got = probe(*bind, &targets, wait);
                        cells
                            .into_iter()
                            .zip(got)
                            .map(|((a, b, c), g)| (a, b, c, g))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        })
    }

    /// Runs one case; returns the cells that differ from `evaluate_on`.
    fn case(
        &self,
        name: &str,
        policies: &[Json],
        pending: Option<(&str, &str)>,
        log: bool,
    ) -> Vec<String> {
        self.case_with_tiers(name, policies, &[], pending, log)
    }

    /// [`Lab::case`] with ClusterNetworkPolicies too.
    fn case_with_tiers(
        &self,
        name: &str,
        policies: &[Json],
        cluster_policies: &[Json],
        pending: Option<(&str, &str)>,
        log: bool,
    ) -> Vec<String> {
        let t0 = Instant::now();
        let namespaces: Vec<Namespace> = NAMESPACES
            .iter()
            .map(|n| {
                serde_json::from_value(json!({"metadata": {"name": n, "labels": {"ns": n}}}))
                    .unwrap()
            })
            .collect();
        let pols: Vec<NetworkPolicy> = policies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut p = p.clone();
                if p["metadata"]["name"].is_null() {
                    p["metadata"]["name"] = json!(format!("np{i}"));
                }
                serde_json::from_value(p).unwrap()
            })
            .collect();
        let ctx = NodeContext {
            node_name: NODE.into(),
            node_ips: vec![NODE4.parse().unwrap(), NODE6.parse().unwrap()],
            log_denied: log,
            pod_cidrs: Vec::new(),
        };
        let cnps: Vec<cnp::input::ClusterNetworkPolicy> = cluster_policies
            .iter()
            .map(|p| serde_json::from_value(p.clone()).unwrap())
            .collect();
        let (mut c, report) = Cluster::new(
            &self.pod_objects(pending),
            &namespaces,
            &pols,
            std::slice::from_ref(&ctx),
        );
        assert!(report.refused.is_empty(), "{name}: {report:?}");
        let report = c.set_cluster_network_policies(&cnps, &[]);
        assert!(report.refused.is_empty(), "{name}: {report:?}");
        let compiled = compile(&c, &ctx);
        self.apply(&compiled.batch);
        // the CNI's hand-off: the pod's addresses, unknown to kindnetd
        let (mut full, _) = Cluster::new(&self.pod_objects(None), &namespaces, &pols, &[]);
        full.set_cluster_network_policies(&cnps, &[]);
        if let Some((ns, pod)) = pending {
            let p = self
                .pods
                .iter()
                .find(|p| p.ns == ns && p.name == pod)
                .unwrap();
            self.apply(&pod_dispatch_elements(ns, pod, &[p.v4, p.v6]));
        }
        let mut got = self.measure(None, Duration::from_millis(400));
        let retry: Vec<(usize, usize, usize)> = got
            .iter()
            .filter(|c| !c.3)
            .map(|&(a, b, c, _)| (a, b, c))
            .collect();
        if !retry.is_empty() {
            let again = self.measure(Some(&retry), Duration::from_millis(1500));
            for (a, b, c, g) in again {
                if g && let Some(x) = got.iter_mut().find(|x| (x.0, x.1, x.2) == (a, b, c)) {
                    x.3 = true;
                }
            }
        }
        let sources = self.sources();
        let mut bad = Vec::new();
        let (mut open, mut blocked) = (0, 0);
        for (si, di, cell, reached) in got {
            let (sname, _, _, s4, s6) = &sources[si];
            let d = &self.pods[di];
            let (proto, port) = SERVICES[cell / 2];
            let v6 = cell % 2 == 1;
            let (s, dst) = if v6 { (*s6, d.v6) } else { (*s4, d.v4) };
            // the semantics of the full cluster: the pending pod has its
            // addresses by now, only kindnetd has not heard of them
            let want = evaluate_on(
                &full,
                &ctx,
                &Endpoint::Addr(s),
                &Endpoint::Addr(dst),
                port,
                proto,
            );
            if reached {
                open += 1
            } else {
                blocked += 1
            }
            if reached != want.allowed {
                bad.push(format!(
                    "{name}: {sname} -> {}/{} {:?}/{port} {}: measured {}, expected {} ({})",
                    d.ns,
                    d.name,
                    proto,
                    if v6 { "v6" } else { "v4" },
                    if reached { "open" } else { "blocked" },
                    if want.allowed { "open" } else { "blocked" },
                    want.reason
                ));
            }
        }
        eprintln!(
            "case {name:<40} {open:>3} open {blocked:>3} blocked, {} rules {} sets, {:?}",
            compiled.stats.rules,
            compiled.stats.sets,
            t0.elapsed()
        );
        bad
    }
}

fn np(ns: &str, spec: Json) -> Json {
    json!({"metadata": {"namespace": ns}, "spec": spec})
}

fn pod_is(p: &str) -> Json {
    json!({"matchLabels": {"pod": p}})
}

fn ns_is(n: &str) -> Json {
    json!({"matchLabels": {"ns": n}})
}

/// Default-deny ingress in x, for the cases that build on it.
fn deny_in(ns: &str) -> Json {
    np(ns, json!({"podSelector": {}, "policyTypes": ["Ingress"]}))
}

/// One case in a lab of its own: every cell as `evaluate_on` says.
fn truth_case(name: &str, policies: &[Json]) {
    let t0 = Instant::now();
    let lab = Lab::new();
    let bad = lab.case(name, policies, None, false);
    eprintln!("{name}: {:?} with the lab", t0.elapsed());
    assert!(
        bad.is_empty(),
        "{} cells differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// One `#[test]` per case, each with a lab of its own, so cargo runs them
/// in parallel.
macro_rules! truth_table {
    ($($test:ident: $name:literal => $policies:expr;)+) => {$(
        #[test]
        fn $test() {
            require_root!();
            let policies: Vec<Json> = $policies;
            truth_case($name, &policies);
        }
    )+};
}

truth_table! {
    no_policies_everything_open: "no policies: everything open" => vec![];
    default_deny_egress_in_x: "default-deny egress in x" => vec![np(
        "x",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    )];
    allow_all_ingress_beside_deny_all_union: "allow-all ingress beside deny-all (union)" => vec![
        deny_in("x"),
        np("x", json!({"podSelector": {}, "ingress": [{}]})),
    ];
    same_namespace_only: "same namespace only" => vec![np(
        "x",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    )];
    namespace_selector_ns_y_to_x_a: "namespace selector ns=y to x/a" => vec![np(
        "x",
        json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}]}),
    )];
    pod_selector_pod_b_to_x_a: "pod selector pod=b to x/a" => vec![np(
        "x",
        json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": pod_is("b")}]}]}),
    )];
    pod_and_namespace_in_one_peer: "pod AND namespace in one peer" => vec![np(
        "x",
        json!({"podSelector": pod_is("a"), "ingress": [{"from": [
    {"podSelector": pod_is("b"), "namespaceSelector": ns_is("y")}]}]}),
    )];
    pod_or_namespace_in_two_peers: "pod OR namespace in two peers" => vec![np(
        "x",
        json!({"podSelector": pod_is("a"), "ingress": [{"from": [
    {"podSelector": pod_is("b")}, {"namespaceSelector": ns_is("y")}]}]}),
    )];
    ipblock_with_except_both_families: "ipBlock with except, both families" => vec![np(
        "x",
        json!({"podSelector": pod_is("a"), "ingress": [{"from": [
    {"ipBlock": {"cidr": "10.244.1.0/24", "except": ["10.244.1.12/30", "10.244.1.16/32"]}},
    {"ipBlock": {"cidr": "fd00:10:244:1::/64", "except": ["fd00:10:244:1::10/124"]}}]}]}),
    )];
    named_ports_serve_80_tcp_serve_81_udp: "named ports serve-80-tcp, serve-81-udp" => vec![np(
        "x",
        json!({"podSelector": {}, "ingress": [{"ports": [
    {"port": "serve-80-tcp"}, {"protocol": "UDP", "port": "serve-81-udp"}]}]}),
    )];
    endport_range_79_80_tcp: "endPort range 79-80 TCP" => vec![np(
        "y",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 79, "endPort": 80}]}]}),
    )];
    udp_81_only_from_z: "UDP 81 only from z" => vec![np(
        "x",
        json!({"podSelector": pod_is("b"), "ingress": [{"from": [{"namespaceSelector": ns_is("z")}],
    "ports": [{"protocol": "UDP", "port": 81}]}]}),
    )];
    egress_to_tcp_80_only: "egress to TCP 80 only" => vec![np(
        "x",
        json!({"podSelector": pod_is("a"), "egress": [{"ports": [{"protocol": "TCP", "port": 80}]}]}),
    )];
    egress_named_port_serve_81_udp_to_y: "egress named port serve-81-udp to y" => vec![np(
        "z",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
    "to": [{"namespaceSelector": ns_is("y")}], "ports": [{"protocol": "UDP", "port": "serve-81-udp"}]}]}),
    )];
    several_policies_on_x_a_union: "several policies on x/a (union)" => vec![
        np(
            "x",
            json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": pod_is("b")}], "ports": [{"port": 80}]}]}),
        ),
        np(
            "x",
            json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": ns_is("y")}], "ports": [{"port": 81}]}]}),
        ),
        np(
            "x",
            json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "c"]}]},
        "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x", "y"]}]}}]}]}),
        ),
    ];
    deny_all_ingress_and_egress_everywhere: "deny all ingress and egress everywhere" => ["x", "y", "z"]
        .iter()
        .map(|n| {
            np(
                n,
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            )
        })
        .collect();
}

/// Default-deny ingress in x with logging on (the kernel takes the limit +
/// log rules); the ingress deny counter counts; the table goes away whole.
#[test]
fn default_deny_ingress_in_x_logged_and_counted() {
    require_root!();
    let lab = Lab::new();
    let mut bad = lab.case("default-deny ingress in x", &[deny_in("x")], None, true);
    let counters = lab.nft_json(&["list", "counter", "inet", TABLE, DENIED_INGRESS_COUNTER]);
    let packets = counters["nftables"][1]["counter"]["packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(packets > 0, "the ingress deny counter counts: {counters}");
    // x/a pending: kindnetd made its chains, the CNI adds its addresses
    bad.extend(lab.case(
        "pending x/a + CNI dispatch elements",
        &[deny_in("x")],
        Some(("x", "a")),
        false,
    ));
    lab.apply(&{
        let mut b = kindnet_nft::Batch::new();
        b.remove_table(&table());
        b
    });
    assert!(
        bad.is_empty(),
        "{} cells differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

fn cnp(name: &str, tier: &str, priority: u32, subject: Json, ingress: Json, egress: Json) -> Json {
    json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"tier": tier, "priority": priority, "subject": subject,
            "ingress": ingress, "egress": egress}})
}

fn cnp_ns(n: &str) -> Json {
    json!({"namespaces": ns_is(n)})
}

#[test]
fn cluster_network_policy_tiers_in_a_real_kernel() {
    require_root!();
    let t0 = Instant::now();
    let lab = Lab::new();
    let allow_all_in = |ns: &str| np(ns, json!({"podSelector": {}, "ingress": [{}]}));
    let all = json!({"namespaces": {}});
    let cases: Vec<(&str, Vec<Json>, Vec<Json>)> = vec![
        (
            "Admin Deny beats a v1 allow",
            vec![allow_all_in("x")],
            vec![cnp(
                "deny-y",
                "Admin",
                10,
                cnp_ns("x"),
                json!([{"action": "Deny", "from": [cnp_ns("y")]}]),
                json!([]),
            )],
        ),
        (
            "Admin Accept beats a v1 deny, TCP 80 only",
            vec![np(
                "y",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            )],
            vec![cnp(
                "accept-z",
                "Admin",
                10,
                cnp_ns("y"),
                json!([{"action": "Accept", "from": [cnp_ns("z")],
                    "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]),
                json!([]),
            )],
        ),
        (
            "Admin Pass hands over to v1 and to Baseline",
            vec![np(
                "x",
                json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": pod_is("b")}]}]}),
            )],
            vec![
                cnp(
                    "pass-x",
                    "Admin",
                    1,
                    all.clone(),
                    json!([{"action": "Pass", "from": [cnp_ns("x")]}]),
                    json!([]),
                ),
                cnp(
                    "deny-all",
                    "Admin",
                    2,
                    all.clone(),
                    json!([{"action": "Deny", "from": [all.clone()]}]),
                    json!([]),
                ),
                cnp(
                    "baseline",
                    "Baseline",
                    1,
                    all.clone(),
                    json!([{"action": "Deny", "from": [{"pods": {"namespaceSelector": {}, "podSelector": pod_is("c")}}]}]),
                    json!([]),
                ),
            ],
        ),
        (
            "Baseline Deny overridden by a v1 allow",
            vec![allow_all_in("x")],
            vec![cnp(
                "isolate",
                "Baseline",
                5,
                all.clone(),
                json!([{"action": "Deny", "from": [all.clone()]}]),
                json!([]),
            )],
        ),
        (
            "egress: networks catch pods, ranges, named ports",
            vec![],
            vec![cnp(
                "egress-z",
                "Admin",
                3,
                cnp_ns("z"),
                json!([]),
                json!([
                    {"action": "Accept", "to": [{"pods": {"namespaceSelector": ns_is("x"), "podSelector": {}}}],
                     "protocols": [{"destinationNamedPort": "serve-81-udp"}]},
                    {"action": "Deny", "to": [{"networks": ["10.244.1.0/24", "fd00:10:244:1::/64"]}],
                     "protocols": [{"tcp": {"destinationPort": {"range": {"start": 81, "end": 90}}}},
                                   {"udp": {"destinationPort": {"number": 81}}}]}
                ]),
            )],
        ),
    ];
    let mut bad = Vec::new();
    for (i, (name, pols, cnps)) in cases.iter().enumerate() {
        bad.extend(lab.case_with_tiers(name, pols, cnps, None, i == 0));
    }
    // x/a pending under an Admin Deny: enforced from the CNI hand-off
    bad.extend(lab.case_with_tiers(
        "pending x/a under an Admin Deny + CNI dispatch elements",
        &[],
        &[cnp(
            "deny-y",
            "Admin",
            10,
            cnp_ns("x"),
            json!([{"action": "Deny", "from": [cnp_ns("y")]}]),
            json!([]),
        )],
        Some(("x", "a")),
        false,
    ));
    let counters = lab.nft_json(&["list", "counter", "inet", TABLE, "admin-denied-ingress"]);
    let packets = counters["nftables"][1]["counter"]["packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(packets > 0, "the Admin deny counter counts: {counters}");
    lab.apply(&{
        let mut b = kindnet_nft::Batch::new();
        b.remove_table(&table());
        b
    });
    eprintln!("total {:?}", t0.elapsed());
    assert!(
        bad.is_empty(),
        "{} cells differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

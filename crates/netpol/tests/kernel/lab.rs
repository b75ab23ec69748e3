//! The kernel test bed: a "node" namespace with the x/y/z pods on ptp
//! veths, echo servers, a prober, and one case = compile, apply, probe
//! every cell, compare with `evaluate_on`.

use kindnet_netpol::*;
use kindnet_nft::{Nft, NftNetlink};
use kindnet_testbed::Ns;
use serde_json::{Value as Json, json};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
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
    // SAFETY: plain syscall on a valid fd; only this thread moves.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
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
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
    while !stop.load(Ordering::Relaxed) {
        let mut fds: Vec<libc::pollfd> = socks
            .iter()
            .map(|(s, _)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd for its length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        for (i, (s, udp)) in socks.iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            if *udp {
                while let Ok((n, from)) = s.recv_from(&mut buf) {
                    // SAFETY: recv_from initialized the first n bytes.
                    let data: Vec<u8> = buf[..n]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    let _ = s.send_to(&data, &from);
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
        let mut fds: Vec<libc::pollfd> = pending
            .iter()
            .map(|(_, s, udp)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: if *udp { libc::POLLIN } else { libc::POLLOUT },
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd for its length.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                left.as_millis().max(1) as i32,
            )
        };
        let mut still = Vec::new();
        for ((i, s, udp), fd) in pending.into_iter().zip(fds) {
            if fd.revents == 0 {
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

pub(crate) struct Lab {
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
    pub(crate) fn new() -> Lab {
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

    pub(crate) fn apply(&self, batch: &kindnet_nft::Batch) {
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

    pub(crate) fn nft_json(&self, args: &[&str]) -> Json {
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
    pub(crate) fn case(
        &self,
        name: &str,
        policies: &[Json],
        pending: Option<(&str, &str)>,
        log: bool,
    ) -> Vec<String> {
        self.case_with_tiers(name, policies, &[], pending, log)
    }

    /// [`Lab::case`] with ClusterNetworkPolicies too.
    pub(crate) fn case_with_tiers(
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

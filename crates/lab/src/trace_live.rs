//! The effectful half of `kindnet-lab trace`: gathers the view from the
//! live lab (route lookups over netlink inside each namespace, kindnet's
//! nftables tables), walks it (pure, [`crate::trace`]), then sends a real
//! packet and reports what the receiver saw.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kindnet_netlink::{Handle, RouteQuery};
use kindnet_nft::{L4Proto, Nft, NftNetlink, TableRef};
use rustix::net::sockopt::{Timeout, set_socket_timeout};
use rustix::net::{
    AddressFamily, RecvFlags, SocketFlags, SocketType, ipproto, recvfrom, socket_with,
};
use serde::Serialize;

use crate::cluster::Lab;
use crate::plan::{self, Family, Mode};
use crate::sys::{self, Result};
use crate::trace::{
    self, Answer, Host, HostKind, MASQ_TABLE, NETPOL_TABLE, Need, NftTables, PORTMAP_TABLE, Query,
    Target, Verdict, View, Walk,
};

#[derive(clap::Args, Clone)]
pub struct TraceArgs {
    /// A pod (node1-pod1), a node (node2) or `external`.
    pub from: String,
    pub to: String,
    /// PORT or PORT/PROTO (tcp, udp or sctp, any case; port 1-65535);
    /// without it an ICMP echo is sent.
    pub target: Option<String>,
    /// One family only (default: every family of the lab).
    #[arg(long, value_parser = ["4", "6"])]
    pub family: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "kindnet")]
    pub name: String,
}

/// What the real packet did.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    pub sent: String,
    pub arrived: bool,
    /// The source address the receiver saw.
    pub seen_src: Option<IpAddr>,
    /// What the walk predicted it would see.
    pub expected_src: Option<IpAddr>,
    pub note: String,
}

impl Probe {
    pub fn ok(&self) -> bool {
        self.arrived && (self.seen_src.is_none() || self.seen_src == self.expected_src)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Traced {
    #[serde(flatten)]
    pub walk: Walk,
    pub probe: Probe,
}

/// Every namespace of the lab as a [`Host`] of family `f`.
pub fn hosts(lab: &Lab, f: Family) -> Vec<Host> {
    let mut out = Vec::new();
    for n in &lab.nodes {
        out.push(Host {
            name: n.name.clone(),
            netns: n.netns.clone(),
            kind: HostKind::Node,
            addrs: n.addr(f).into_iter().collect(),
            pod_cidrs: n
                .pod_cidrs
                .iter()
                .filter(|c| Family::of(&c.addr()) == f)
                .copied()
                .collect(),
        });
    }
    for p in &lab.pods {
        out.push(Host {
            // As lab commands name pods: `name` in default, else `namespace/name`.
            name: if p.namespace == "default" {
                p.name.clone()
            } else {
                p.full_name()
            },
            netns: p.netns.clone(),
            kind: HostKind::Pod {
                node: p.node.clone(),
            },
            addrs: crate::cluster::pod_ips(lab, p)
                .into_iter()
                .filter(|ip| Family::of(ip) == f)
                .collect(),
            pod_cidrs: Vec::new(),
        });
    }
    out.push(Host {
        name: "external".into(),
        netns: plan::external_netns(&lab.spec.name),
        kind: HostKind::External,
        addrs: vec![plan::external(f), plan::gateway(f)],
        pod_cidrs: Vec::new(),
    });
    out
}

/// Route lookups in lab namespaces, one netlink handle per namespace.
#[derive(Default)]
struct Kernel {
    handles: HashMap<String, Handle>,
}

impl Kernel {
    fn handle(&mut self, ns: &str) -> Result<&mut Handle> {
        if !self.handles.contains_key(ns) {
            let n = sys::netns(ns)?;
            let h = Handle::in_netns(&n).map_err(|e| format!("netlink in {ns}: {e}"))?;
            self.handles.insert(ns.to_string(), h);
        }
        self.handles
            .get_mut(ns)
            .ok_or_else(|| format!("no handle for {ns}"))
    }

    fn lookup(&mut self, q: &Query) -> Result<std::result::Result<Answer, String>> {
        let h = self.handle(&q.netns)?;
        let iif = match &q.iif {
            Some(name) => match h.link_by_name(name) {
                Ok(Some(l)) => Some(l.index),
                Ok(None) => return Ok(Err(format!("no device {name} in {}", q.netns))),
                Err(e) => return Ok(Err(e.to_string())),
            },
            None => None,
        };
        let rq = RouteQuery {
            dst: Some(q.dst),
            src: q.src,
            iif,
            oif: None,
            fib_match: q.fib_match,
        };
        let a = match h.route_get(&rq) {
            Ok(a) => a,
            Err(e) if e.errno() == Some(libc::EXDEV) => {
                return Ok(Err(format!(
                    "Invalid cross-device link (EXDEV): the kernel's reverse-path check refused {} arriving on {}",
                    q.src.map(|s| s.to_string()).unwrap_or_default(),
                    q.iif.as_deref().unwrap_or("?")
                )));
            }
            Err(e) => return Ok(Err(e.to_string())),
        };
        let link = match a.oif {
            Some(i) => h.link_by_index(i).ok().flatten(),
            None => None,
        };
        Ok(Ok(Answer {
            kind: a.kind.as_str().to_string(),
            dst: a.dst,
            gateway: a.gateway,
            dev: link.as_ref().map(|l| l.name.clone()),
            dev_kind: link.and_then(|l| l.kind),
            src: a.src,
            table: a.table,
            protocol: a.protocol,
        }))
    }
}

fn nft_tables(ns: &str) -> Result<NftTables> {
    sys::run_in_netns_fn(ns, || {
        let mut nft = NftNetlink::open().map_err(|e| format!("nf_tables netlink in {ns}: {e}"))?;
        let mut list = |name: &str| -> Result<Option<kindnet_nft::Listing>> {
            let t = TableRef::new(kindnet_nft::Family::Inet, name).map_err(|e| e.to_string())?;
            nft.list(&t)
                .map_err(|e| format!("nft list table inet {name} in {ns}: {e}"))
        };
        Ok(NftTables {
            masq: list(MASQ_TABLE)?,
            portmap: list(PORTMAP_TABLE)?,
            netpol: list(NETPOL_TABLE)?.is_some(),
        })
    })
}

fn find<'a>(hosts: &'a [Host], name: &str) -> Result<&'a Host> {
    hosts.iter().find(|h| h.name == name).ok_or_else(|| {
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        format!("no {name:?} in this lab; endpoints: {}", names.join(", "))
    })
}

/// Gathers the view from the live lab and walks it.
pub fn walk_live(lab: &Lab, f: Family, from: &str, to: &str, t: Target) -> Result<Walk> {
    let hosts = hosts(lab, f);
    let from_h = find(&hosts, from)?.clone();
    let to_h = find(&hosts, to)?.clone();
    for h in [&from_h, &to_h] {
        if h.addrs.is_empty() {
            return Err(format!("{} has no {} address", h.name, f.label()));
        }
    }
    let mut view = View {
        family: f,
        hosts,
        segment_netns: plan::segment_netns(&lab.spec.name),
        bridge: lab.spec.mode == Mode::Bridge,
        lookups: HashMap::new(),
        nft: HashMap::new(),
        // The same model `probe` evaluates (the lab's nodes file).
        policy: crate::policy_model::cluster(lab).ok(),
    };
    let mut kernel = Kernel::default();
    trace::resolve(
        &mut view,
        &from_h,
        &to_h,
        t,
        |need| match need {
            Need::Route(q) => Ok(Some((q.clone(), kernel.lookup(q)?))),
            Need::Nft(_) => Ok(None),
        },
        nft_tables,
    )
}

/// Connects from `from_ns`; a listener of ours in the receiver's namespace
/// records the peer address (else whatever listens there is asked: the
/// lab's check servers answer with it too).
fn probe_tcp(from_ns: &str, to: SocketAddr, recv_ns: &str, recv: SocketAddr) -> Probe {
    let sent = format!("tcp connect to {to}");
    let (tx, rx) = mpsc::channel::<IpAddr>();
    let ours = sys::netns(recv_ns)
        .and_then(|n| {
            n.run(move || TcpListener::bind(recv))
                .map_err(|e| e.to_string())
        })
        .and_then(|r| r.map_err(|e| e.to_string()));
    let own_listener = ours.is_ok();
    if let Ok(l) = ours {
        std::thread::spawn(move || {
            let _ = l.set_nonblocking(true);
            let end = Instant::now() + Duration::from_secs(4);
            while Instant::now() < end {
                if let Ok((mut s, peer)) = l.accept() {
                    let seen = peer.ip().to_canonical();
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(seen.to_string().as_bytes());
                    let _ = tx.send(seen);
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }
    let client = sys::netns(from_ns).and_then(|n| {
        n.run(move || -> std::result::Result<String, String> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .map_err(|e| format!("connect {to}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            Ok(out)
        })
        .map_err(|e| e.to_string())
    });
    match client.and_then(|r| r) {
        Ok(reply) => {
            let seen = if own_listener {
                rx.recv_timeout(Duration::from_secs(1)).ok()
            } else {
                reply.trim().parse::<IpAddr>().ok()
            };
            Probe {
                sent,
                arrived: true,
                seen_src: seen,
                expected_src: None,
                note: if own_listener {
                    format!("accepted by trace's listener on {recv} in {recv_ns}")
                } else {
                    format!(
                        "{recv} in {recv_ns} was taken; answered by the process listening there"
                    )
                },
            }
        }
        Err(e) => Probe {
            sent,
            arrived: false,
            seen_src: None,
            expected_src: None,
            note: e,
        },
    }
}

fn probe_udp(from_ns: &str, to: SocketAddr, recv_ns: &str, recv: SocketAddr) -> Probe {
    let sent = format!("udp datagram to {to}");
    let sock = sys::netns(recv_ns)
        .and_then(|n| {
            n.run(move || UdpSocket::bind(recv))
                .map_err(|e| e.to_string())
        })
        .and_then(|r| r.map_err(|e| e.to_string()));
    let sock = match sock {
        Ok(s) => s,
        Err(e) => {
            return Probe {
                sent,
                arrived: false,
                seen_src: None,
                expected_src: None,
                note: format!("cannot listen on {recv} in {recv_ns}: {e}"),
            };
        }
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(3)));
    let recv_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        sock.recv_from(&mut buf)
            .ok()
            .map(|(_, p)| p.ip().to_canonical())
    });
    let any: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0u8; 4], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sender = sys::netns(from_ns).and_then(|n| {
        n.run(move || -> std::io::Result<()> {
            let s = UdpSocket::bind(any)?;
            for _ in 0..3 {
                s.send_to(b"kindnet-lab trace", to)?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
        .map_err(|e| e.to_string())
    });
    let send_err = sender.and_then(|r| r.map_err(|e| e.to_string())).err();
    let seen = recv_thread.join().ok().flatten();
    Probe {
        sent,
        arrived: seen.is_some(),
        seen_src: seen,
        expected_src: None,
        note: send_err
            .unwrap_or_else(|| format!("received by trace's socket on {recv} in {recv_ns}")),
    }
}

/// Payload marker of our echo requests (`ping -p`).
const MARKER: &[u8] = b"kn-trace";

/// A raw ICMP socket in `ns`: it sees a copy of every echo request that
/// arrives, with the source address as the receiver sees it.
fn raw_icmp(ns: &str, v6: bool) -> Result<OwnedFd> {
    let (dom, proto) = if v6 {
        (AddressFamily::INET6, ipproto::ICMPV6)
    } else {
        (AddressFamily::INET, ipproto::ICMP)
    };
    sys::netns(ns)?
        .run(move || {
            socket_with(dom, SocketType::RAW, SocketFlags::CLOEXEC, Some(proto))
                .map_err(|e| e.to_string())
        })
        .map_err(|e| e.to_string())?
}

fn recv_echo(fd: &OwnedFd, v6: bool, deadline: Instant) -> Option<IpAddr> {
    let _ = set_socket_timeout(fd, Timeout::Recv, Some(Duration::from_millis(200)));
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Ok((n, _, from)) = recvfrom(fd, &mut buf, RecvFlags::empty()) else {
            continue;
        };
        let pkt = &buf[..n.min(buf.len())];
        // IPv4 raw sockets get the IP header, IPv6 ones the ICMPv6 message.
        let (icmp, echo_request) = if v6 {
            (pkt, 128u8)
        } else {
            let ihl = usize::from(pkt.first().copied().unwrap_or(0) & 0x0f) * 4;
            (pkt.get(ihl..).unwrap_or(&[]), 8u8)
        };
        if icmp.first() != Some(&echo_request) || !icmp.windows(MARKER.len()).any(|w| w == MARKER) {
            continue;
        }
        match from.map(SocketAddr::try_from) {
            Some(Ok(from)) => return Some(from.ip()),
            _ => continue,
        }
    }
    None
}

fn probe_icmp(from_ns: &str, to: IpAddr, recv_ns: &str) -> Probe {
    let sent = format!("icmp echo to {to}");
    let v6 = to.is_ipv6();
    let raw = raw_icmp(recv_ns, v6);
    let watcher = raw.as_ref().ok().map(|_| ());
    let (tx, rx) = mpsc::channel();
    if let Ok(fd) = raw {
        std::thread::spawn(move || {
            let _ = tx.send(recv_echo(&fd, v6, Instant::now() + Duration::from_secs(4)));
        });
    }
    let hex: String = MARKER.iter().map(|b| format!("{b:02x}")).collect();
    let replied = sys::ok_in(
        from_ns,
        &[
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-q",
            "-p",
            &hex,
            &to.to_string(),
        ],
    );
    let seen = watcher.and_then(|_| rx.recv_timeout(Duration::from_secs(5)).ok().flatten());
    Probe {
        sent,
        arrived: seen.is_some() || replied,
        seen_src: seen,
        expected_src: None,
        note: if replied {
            "echo reply received".into()
        } else {
            "no echo reply".into()
        },
    }
}

/// An SCTP INIT from a raw socket (the kernel may have no SCTP, see
/// [`crate::sctp`]), watched for in `recv_ns` on `recv_port`. A raw socket
/// reports no peer, so the source the receiver saw is not known.
fn probe_sctp(from_ns: &str, to: SocketAddr, recv_ns: &str, recv_port: u16) -> Probe {
    let sent = format!("sctp INIT to {to}");
    let (arrived, note) = match crate::sctp::probe_arriving(
        from_ns,
        to,
        recv_ns,
        recv_port,
        Duration::from_secs(2),
    ) {
        Ok(true) => (
            true,
            format!("the INIT arrived in {recv_ns} on port {recv_port}"),
        ),
        Ok(false) => (false, format!("no SCTP INIT arrived in {recv_ns}")),
        Err(e) => (false, e),
    };
    Probe {
        sent,
        arrived,
        seen_src: None,
        expected_src: None,
        note,
    }
}

/// Sends the real packet along `w` and reports what arrived.
pub fn probe(lab: &Lab, w: &Walk) -> Result<Probe> {
    let hosts = hosts(
        lab,
        if w.family == "IPv4" {
            Family::V4
        } else {
            Family::V6
        },
    );
    let from = find(&hosts, &w.from)?;
    let to = find(&hosts, &w.to)?;
    let dst = to.addrs.first().copied().ok_or("no destination address")?;
    // Listen where the walk says it arrives (after DNAT), else at `to`.
    let (recv_ns, recv_ip, recv_port, expected) = match &w.verdict {
        Verdict::Delivered {
            netns,
            dst,
            port,
            src,
            ..
        } => (netns.clone(), *dst, *port, Some(*src)),
        Verdict::Dropped { .. } => (to.netns.clone(), dst, w.target.port(), None),
    };
    let mut p = match w.target {
        Target::Port(L4Proto::Tcp, port) => probe_tcp(
            &from.netns,
            SocketAddr::new(dst, port),
            &recv_ns,
            SocketAddr::new(recv_ip, recv_port.unwrap_or(port)),
        ),
        Target::Port(L4Proto::Udp, port) => probe_udp(
            &from.netns,
            SocketAddr::new(dst, port),
            &recv_ns,
            SocketAddr::new(recv_ip, recv_port.unwrap_or(port)),
        ),
        Target::Port(L4Proto::Sctp, port) => probe_sctp(
            &from.netns,
            SocketAddr::new(dst, port),
            &recv_ns,
            recv_port.unwrap_or(port),
        ),
        Target::Echo => probe_icmp(&from.netns, dst, &recv_ns),
    };
    p.expected_src = expected;
    Ok(p)
}

fn nat_word(w: &Walk, seen: IpAddr) -> String {
    let masq_at = w
        .hops
        .iter()
        .find(|h| h.nft.iter().any(|n| n.contains(": masquerade")))
        .map(|h| h.host.clone());
    let own = w
        .hops
        .first()
        .is_some_and(|h| h.packet.starts_with(&format!("{seen} ")));
    match masq_at {
        _ if own => "the sender's own address: no NAT".into(),
        Some(node) => format!("masqueraded by {node} to its address"),
        None => "rewritten on the way".into(),
    }
}

pub fn render_probe(w: &Walk, p: &Probe) -> String {
    let mut s = format!("    real packet: {} from {}: ", p.sent, w.from);
    match (p.arrived, p.seen_src) {
        (false, _) => s.push_str(&format!("did NOT arrive ({})\n", p.note)),
        (true, Some(seen)) => {
            s.push_str(&format!(
                "arrived, the receiver saw source {seen} ({})",
                nat_word(w, seen)
            ));
            match p.expected_src {
                Some(e) if e == seen => s.push_str(", as the walk predicted\n"),
                Some(e) => s.push_str(&format!(", but the walk predicted {e}!\n")),
                None => s.push('\n'),
            }
        }
        (true, None) => s.push_str(&format!("arrived ({})\n", p.note)),
    }
    s
}

pub fn trace_one(lab: &Lab, f: Family, from: &str, to: &str, t: Target) -> Result<Traced> {
    let walk = walk_live(lab, f, from, to, t)?;
    let probe = probe(lab, &walk)?;
    Ok(Traced { walk, probe })
}

pub fn run(a: &TraceArgs) -> Result<ExitCode> {
    let lab = Lab::load(&a.name)?;
    let t = Target::parse(a.target.as_deref())?;
    let fams: Vec<Family> = lab
        .spec
        .stack
        .families()
        .iter()
        .copied()
        .filter(|f| match a.family.as_deref() {
            Some("4") => *f == Family::V4,
            Some("6") => *f == Family::V6,
            _ => true,
        })
        .collect();
    if fams.is_empty() {
        return Err(format!(
            "lab {} has no IPv{} addresses",
            a.name,
            a.family.as_deref().unwrap_or("?")
        ));
    }
    let mut all = Vec::new();
    for f in fams {
        all.push(trace_one(&lab, f, &a.from, &a.to, t)?);
    }
    let ok = all
        .iter()
        .all(|t| matches!(t.walk.verdict, Verdict::Delivered { .. }) && t.probe.ok());
    if a.json {
        let v = serde_json::json!({ "traces": all });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
    } else {
        for t in &all {
            print!("{}", trace::render(&t.walk));
            println!("{}", render_probe(&t.walk, &t.probe));
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The demo's last act: one packet's day, pod to pod across nodes (or on
/// one node when the lab has only one).
pub fn demo(lab: &Lab) -> Result<bool> {
    let Some(first) = lab.pods.first() else {
        return Ok(true);
    };
    let other = lab
        .pods
        .iter()
        .find(|p| p.node != first.node)
        .or_else(|| lab.pods.get(1));
    let Some(other) = other else { return Ok(true) };
    let f = lab
        .spec
        .stack
        .families()
        .first()
        .copied()
        .unwrap_or(Family::V4);
    println!(
        "\nA day in the life of a packet, from the live lab: kindnet-lab trace {} {} {}/tcp --name {}",
        first.name,
        other.name,
        plan::SERVICE_PORT,
        lab.spec.name
    );
    let t = Target::Port(L4Proto::Tcp, plan::SERVICE_PORT);
    let tr = trace_one(lab, f, &first.name, &other.name, t)?;
    print!("{}", trace::render(&tr.walk));
    print!("{}", render_probe(&tr.walk, &tr.probe));
    Ok(tr.probe.ok())
}

//! Host names without NSS: kindnetd is a static binary, and a static glibc
//! cannot load the NSS modules `getaddrinfo` relies on. kind passes
//! `CONTROL_PLANE_ENDPOINT` as a host name (`<cluster>-control-plane:6443`),
//! which the node resolves through its `/etc/hosts` or the DNS server in
//! its `/etc/resolv.conf` (Docker's embedded one on a kind network).
//!
//! [`resolve`]: an address literal is itself; else the hosts file; else one
//! A and one AAAA query over UDP to each name server of the resolver file,
//! in order, with its search domains as glibc applies them (`ndots`). The
//! parsers are pure; the paths and the servers are the caller's, so tests
//! never depend on the machine's resolver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Where names are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// The hosts file (`/etc/hosts`).
    pub hosts: PathBuf,
    /// The resolver configuration (`/etc/resolv.conf`).
    pub resolv_conf: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            hosts: "/etc/hosts".into(),
            resolv_conf: "/etc/resolv.conf".into(),
        }
    }
}

/// The addresses `name` has in a hosts file's text (case-insensitive, any
/// of the names on a line; comments and malformed lines skipped), in file
/// order, without repeats.
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let name = name.trim_end_matches('.');
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(addr) = fields.next() else { continue };
        // A zone index (fe80::1%eth0) is not something to connect to here.
        let Ok(addr) = addr.parse::<IpAddr>() else {
            continue;
        };
        if fields.any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(name))
            && !out.contains(&addr)
        {
            out.push(addr);
        }
    }
    out
}

/// What a resolver file says: name servers (port 53), search domains and
/// `ndots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub servers: Vec<SocketAddr>,
    pub search: Vec<String>,
    pub ndots: usize,
}

impl Default for ResolvConf {
    fn default() -> Self {
        ResolvConf {
            servers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
        }
    }
}

/// Parses a resolver file (resolv.conf(5)): the last `search`/`domain`
/// line wins, at most three name servers are used, as glibc does.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut rc = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => {
                // An IPv6 server may carry a zone index: not usable here.
                if let Some(ip) = f.next().and_then(|a| a.parse::<IpAddr>().ok())
                    && rc.servers.len() < 3
                {
                    rc.servers.push(SocketAddr::new(ip, 53));
                }
            }
            Some("search") | Some("domain") => {
                rc.search = f
                    .map(|d| d.trim_end_matches('.').to_string())
                    .filter(|d| !d.is_empty())
                    .collect();
            }
            Some("options") => {
                for o in f {
                    if let Some(n) = o.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                        rc.ndots = usize::min(n, 15);
                    }
                }
            }
            _ => {}
        }
    }
    rc
}

/// The names to ask for, in order: as given first when it has at least
/// `ndots` dots (or ends with a dot), else after the search domains.
pub fn candidates(name: &str, rc: &ResolvConf) -> Vec<String> {
    if let Some(abs) = name.strip_suffix('.') {
        return vec![abs.to_string()];
    }
    let searched = rc.search.iter().map(|d| format!("{name}.{d}"));
    if name.matches('.').count() >= rc.ndots {
        std::iter::once(name.to_string()).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(name.to_string())).collect()
    }
}

/// A query for `name`'s A (or AAAA) records, with recursion desired.
pub fn query(id: u16, name: &str, v6: bool) -> Result<Vec<u8>, String> {
    use simple_dns::{CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, TYPE};
    let qname = Name::new(name).map_err(|e| format!("{name:?}: {e}"))?;
    let mut p = Packet::new_query(id);
    p.set_flags(PacketFlag::RECURSION_DESIRED);
    let ty = if v6 { TYPE::AAAA } else { TYPE::A };
    p.questions.push(Question::new(
        qname,
        QTYPE::TYPE(ty),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    p.build_bytes_vec().map_err(|e| e.to_string())
}

/// What an answer to query `id` says: `Some(addresses)` (maybe none: the
/// name exists without that family, or does not exist), `None` when the
/// packet is not an answer to that query (another id, not a response,
/// truncated, malformed: keep waiting or try elsewhere).
pub fn answer(id: u16, packet: &[u8]) -> Option<Vec<IpAddr>> {
    use simple_dns::rdata::RData;
    use simple_dns::{Packet, PacketFlag, RCODE};
    let p = Packet::parse(packet).ok()?;
    if p.id() != id || !p.has_flags(PacketFlag::RESPONSE) || p.has_flags(PacketFlag::TRUNCATION) {
        return None;
    }
    match p.rcode() {
        RCODE::NoError | RCODE::NameError => {}
        _ => return None,
    }
    Some(
        p.answers
            .iter()
            .filter_map(|rr| match &rr.rdata {
                RData::A(a) => Some(IpAddr::V4(Ipv4Addr::from(a.address))),
                RData::AAAA(a) => Some(IpAddr::V6(Ipv6Addr::from(a.address))),
                _ => None,
            })
            .collect(),
    )
}

/// How long one server has to answer one query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks `server` for `name`'s addresses of one family over UDP.
async fn ask(server: SocketAddr, name: &str, v6: bool) -> Result<Vec<IpAddr>, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    let id = random_id();
    sock.send(&query(id, name, v6)?)
        .await
        .map_err(|e| e.to_string())?;
    let wait = async {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
            if let Some(a) = answer(id, &buf[..n]) {
                return Ok(a);
            }
        }
    };
    tokio::time::timeout(QUERY_TIMEOUT, wait)
        .await
        .map_err(|_| format!("no answer within {QUERY_TIMEOUT:?}"))?
}

fn random_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u16
}

/// Asks the servers of `rc` for `name` (each candidate name, each server in
/// order, A then AAAA) until one knows it.
pub async fn dns_lookup(name: &str, rc: &ResolvConf) -> Result<Vec<IpAddr>, String> {
    if rc.servers.is_empty() {
        return Err("no name server configured".into());
    }
    let mut errors = Vec::new();
    for n in candidates(name, rc) {
        for &server in &rc.servers {
            let mut found = Vec::new();
            let mut answered = false;
            for v6 in [false, true] {
                match ask(server, &n, v6).await {
                    Ok(a) => {
                        answered = true;
                        found.extend(a);
                    }
                    Err(e) => errors.push(format!("{server}: {e}")),
                }
            }
            if !found.is_empty() {
                return Ok(found);
            }
            if answered {
                // This server knows the name has no address: the next
                // candidate, not the next server.
                break;
            }
        }
    }
    errors.dedup();
    Err(if errors.is_empty() {
        "no such host".into()
    } else {
        errors.join("; ")
    })
}

/// `host`'s addresses: itself if an address literal, else from the hosts
/// file, else from DNS.
pub async fn resolve(host: &str, src: &Sources) -> Result<Vec<IpAddr>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    if let Ok(text) = std::fs::read_to_string(&src.hosts) {
        let found = hosts_lookup(&text, bare);
        if !found.is_empty() {
            return Ok(found);
        }
    }
    let rc = match std::fs::read_to_string(&src.resolv_conf) {
        Ok(t) => parse_resolv_conf(&t),
        Err(e) => {
            return Err(format!(
                "{bare}: not in {} and {}: {e}",
                src.hosts.display(),
                src.resolv_conf.display()
            ));
        }
    };
    dns_lookup(bare, &rc).await.map_err(|e| {
        format!(
            "{bare}: not in {}, DNS ({}): {e}",
            src.hosts.display(),
            src.resolv_conf.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTS: &str = "\
127.0.0.1\tlocalhost
::1     localhost ip6-localhost ip6-loopback
# 10.0.0.9 kind-control-plane
172.18.0.2\tkind-control-plane   # kind's node
fc00:f853:ccd:e793::2\tkind-control-plane
172.18.0.3 kind-worker kind-worker.example.
not-an-address kind-worker
fe80::1%eth0 kind-worker
172.18.0.2 KIND-CONTROL-PLANE
";

    #[test]
    fn hosts_file_lookup() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            hosts_lookup(HOSTS, "kind-control-plane"),
            vec![ip("172.18.0.2"), ip("fc00:f853:ccd:e793::2")],
            "both families, in order, the commented line and the repeat skipped"
        );
        assert_eq!(hosts_lookup(HOSTS, "Kind-Worker"), vec![ip("172.18.0.3")]);
        assert_eq!(
            hosts_lookup(HOSTS, "kind-worker.example"),
            vec![ip("172.18.0.3")]
        );
        assert_eq!(
            hosts_lookup(HOSTS, "kind-worker.example."),
            vec![ip("172.18.0.3")]
        );
        assert!(hosts_lookup(HOSTS, "kind").is_empty(), "whole names only");
        assert!(hosts_lookup(HOSTS, "172.18.0.2").is_empty());
        assert!(hosts_lookup("", "x").is_empty());
    }

    #[test]
    fn resolver_file() {
        let rc = parse_resolv_conf(
            "# generated\nsearch a.example b.example.\nnameserver 127.0.0.11\n\
             nameserver fe80::1%eth0\nnameserver ::1 ; comment\noptions ndots:2 edns0\n\
             nameserver 10.0.0.1\nnameserver 10.0.0.2\n",
        );
        assert_eq!(
            rc.servers,
            vec![
                "127.0.0.11:53".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
                "10.0.0.1:53".parse().unwrap(),
            ],
            "three at most, a zone index skipped"
        );
        assert_eq!(rc.search, vec!["a.example", "b.example"]);
        assert_eq!(rc.ndots, 2);
        assert_eq!(parse_resolv_conf("domain x\nsearch y\n").search, vec!["y"]);
        assert_eq!(parse_resolv_conf("").ndots, 1);
    }

    #[test]
    fn search_order_follows_ndots() {
        let rc = ResolvConf {
            search: vec!["a.example".into()],
            ..Default::default()
        };
        assert_eq!(
            candidates("kind-control-plane", &rc),
            vec!["kind-control-plane.a.example", "kind-control-plane"]
        );
        assert_eq!(candidates("x.y", &rc), vec!["x.y", "x.y.a.example"]);
        assert_eq!(candidates("x.y.", &rc), vec!["x.y"]);
    }

    /// An answer to `q` with the given addresses (or an rcode).
    fn reply(q: &[u8], addrs: &[IpAddr], rcode: simple_dns::RCODE) -> Vec<u8> {
        use simple_dns::rdata::{A, AAAA, RData};
        use simple_dns::{CLASS, Packet, ResourceRecord};
        let q = Packet::parse(q).unwrap();
        let mut p = q.clone().into_reply();
        *p.rcode_mut() = rcode;
        let name = q.questions[0].qname.clone();
        for a in addrs {
            let rd = match a {
                IpAddr::V4(v) => RData::A(A {
                    address: u32::from(*v),
                }),
                IpAddr::V6(v) => RData::AAAA(AAAA {
                    address: u128::from(*v),
                }),
            };
            p.answers
                .push(ResourceRecord::new(name.clone(), CLASS::IN, 30, rd));
        }
        p.build_bytes_vec_compressed().unwrap()
    }

    #[test]
    fn answers_are_matched_to_their_query() {
        let q = query(7, "kind-control-plane", false).unwrap();
        let ip: IpAddr = "172.18.0.2".parse().unwrap();
        let r = reply(&q, &[ip], simple_dns::RCODE::NoError);
        assert_eq!(answer(7, &r), Some(vec![ip]));
        assert_eq!(answer(8, &r), None, "another query's answer");
        assert_eq!(answer(7, &q), None, "a query is not an answer");
        assert_eq!(answer(7, &r[..r.len() - 3]), None, "truncated");
        assert_eq!(answer(7, b"\x00\x07"), None);
        let nx = reply(&q, &[], simple_dns::RCODE::NameError);
        assert_eq!(answer(7, &nx), Some(vec![]));
        let fail = reply(&q, &[], simple_dns::RCODE::ServerFailure);
        assert_eq!(answer(7, &fail), None);
        assert!(
            query(1, &"a".repeat(64), false).is_err(),
            "a label over 63 bytes"
        );
    }

    /// A DNS server on loopback that knows one name; returns its address.
    async fn fake_dns(name: &'static str, v4: Ipv4Addr, v6: Ipv6Addr) -> SocketAddr {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let q = simple_dns::Packet::parse(&buf[..n]).unwrap();
                let qn = q.questions[0].qname.to_string();
                let aaaa = matches!(
                    q.questions[0].qtype,
                    simple_dns::QTYPE::TYPE(simple_dns::TYPE::AAAA)
                );
                let (addrs, rcode) = if qn == name {
                    let a: IpAddr = if aaaa { v6.into() } else { v4.into() };
                    (vec![a], simple_dns::RCODE::NoError)
                } else {
                    (vec![], simple_dns::RCODE::NameError)
                };
                let r = reply(&buf[..n], &addrs, rcode);
                let _ = sock.send_to(&r, from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn hosts_file_first_then_dns_never_the_machines_resolver() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&hosts, "172.18.0.2 kind-control-plane\n").unwrap();
        std::fs::write(&resolv, "search svc.example\n").unwrap();
        let src = Sources {
            hosts: hosts.clone(),
            resolv_conf: resolv.clone(),
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            resolve("kind-control-plane", &src).await.unwrap(),
            vec![ip("172.18.0.2")]
        );
        assert_eq!(
            resolve("10.96.0.1", &src).await.unwrap(),
            vec![ip("10.96.0.1")]
        );
        assert_eq!(
            resolve("[fd00::1]", &src).await.unwrap(),
            vec![ip("fd00::1")]
        );
        let e = resolve("elsewhere", &src).await.unwrap_err();
        assert!(e.contains("no name server"), "{e}");

        // Not in the hosts file: the name server (on a port of its own, so
        // the machine's resolver is never involved), with the search list.
        let server = fake_dns(
            "api.svc.example",
            "10.1.2.3".parse().unwrap(),
            "fd00::3".parse().unwrap(),
        )
        .await;
        let rc = ResolvConf {
            servers: vec![server],
            search: vec!["svc.example".into()],
            ndots: 1,
        };
        assert_eq!(
            dns_lookup("api", &rc).await.unwrap(),
            vec![ip("10.1.2.3"), ip("fd00::3")]
        );
        let e = dns_lookup("nothere", &rc).await.unwrap_err();
        assert!(e.contains("no such host"), "{e}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // bound, never answering
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rc = ResolvConf {
            servers: vec![sock.local_addr().unwrap()],
            ..Default::default()
        };
        let e = dns_lookup("x", &rc).await.unwrap_err();
        assert!(e.contains("no answer"), "{e}");
    }
}

//! `kindnet-lab spoof`: can a pod send with a source address that is not
//! its own? It forges UDP packets the way an attacker pod with the default
//! CAP_NET_RAW would — a raw socket with the IP header included
//! (IPPROTO_RAW) — from one pod to another: first one per forged source,
//! then the same packet with the pod's true source, resent until it arrives
//! (or the timeout passes). Packets of one path keep their order, so once
//! the true one is in, a forged one that got through is in too: what
//! arrived is read without waiting any longer. It also reports the sending
//! node's anti-spoofing drop counter before and after.

use crate::cluster::{self, Lab};
use crate::plan::{Family, Mode, Pod};
use crate::sys::{self, Result};
use serde::Serialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// IPPROTO_RAW: a raw socket whose packets carry their own IP header.
const IPPROTO_RAW: i32 = 255;
const RESEND: Duration = Duration::from_millis(150);

/// The one's complement sum of `data` as 16-bit words, folded.
fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        acc += u32::from(w);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

fn finish(acc: u32) -> u16 {
    !(sum16(acc, &[]) as u16)
}

/// A whole IPv4 or IPv6 packet carrying one UDP datagram from `src` to
/// `dst`, checksums filled in (pure). Both addresses of one family.
pub fn udp_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let ulen = 8 + payload.len();
    let mut udp = Vec::with_capacity(ulen);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&(ulen as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    // the pseudo-header: addresses, protocol 17, UDP length
    let (s, d) = (octets(src.ip()), octets(dst.ip()));
    let mut acc = sum16(0, &s);
    acc = sum16(acc, &d);
    acc = sum16(acc, &[0, 17]);
    acc = sum16(acc, &(ulen as u16).to_be_bytes());
    acc = sum16(acc, &udp);
    let mut ck = finish(acc);
    if ck == 0 {
        ck = 0xffff;
    }
    udp[6..8].copy_from_slice(&ck.to_be_bytes());
    let mut p = Vec::new();
    if src.is_ipv4() {
        let total = (20 + ulen) as u16;
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]); // DF, TTL 64, UDP
        p.extend_from_slice(&s);
        p.extend_from_slice(&d);
        let hc = finish(sum16(0, &p));
        p[10..12].copy_from_slice(&hc.to_be_bytes());
    } else {
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&(ulen as u16).to_be_bytes());
        p.extend_from_slice(&[17, 64]); // next header UDP, hop limit 64
        p.extend_from_slice(&s);
        p.extend_from_slice(&d);
    }
    p.extend_from_slice(&udp);
    p
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> std::io::Result<T> + Send) -> Result<T> {
    sys::in_netns(netns, f)?.map_err(|e| format!("socket in {netns}: {e}"))
}

fn domain(v6: bool) -> Domain {
    if v6 { Domain::IPV6 } else { Domain::IPV4 }
}

/// What became of the packet from one source.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub from: String,
    pub to: String,
    pub family: &'static str,
    pub source: IpAddr,
    /// Not one of the sending pod's addresses.
    pub forged: bool,
    pub received: bool,
}

/// The sending node's anti-spoofing drops, before and after.
#[derive(Debug, Clone, Serialize)]
pub struct Counted {
    pub node: String,
    pub spoofed_before: u64,
    pub spoofed_after: u64,
}

/// Packets dropped by the anti-spoofing check on `node` (0 without the
/// table): the named counter of the layout's table.
pub fn spoofed(lab: &Lab, node_netns: &str) -> u64 {
    let f = match lab.spec.mode {
        Mode::Bridge => kindnet_nft::Family::Bridge,
        _ => kindnet_nft::Family::Inet,
    };
    let t = kindnet_cni::antispoof::table(f);
    let read = sys::run_in_netns_fn(node_netns, || {
        kindnet_nft::NftNetlink::open()
            .and_then(|mut nl| nl.counters(&t))
            .map_err(|e| e.to_string())
    });
    let Ok(Some(counters)) = read else { return 0 };
    counters
        .into_iter()
        .find(|(n, _)| n == kindnet_cni::antispoof::COUNTER)
        .map(|(_, p)| p)
        .unwrap_or(0)
}

/// Sources worth forging for `from`: an address of its node's pod range
/// no pod has, another pod's address, and one outside the cluster.
pub fn default_sources(lab: &Lab, from: &Pod, to: &Pod, f: Family) -> Vec<IpAddr> {
    let used: Vec<IpAddr> = lab
        .pods
        .iter()
        .flat_map(|p| cluster::pod_ips(lab, p))
        .collect();
    let mut out = Vec::new();
    let node = lab.nodes.iter().find(|n| n.name == from.node);
    if let Some(cidr) = node.and_then(|n| n.pod_cidrs.iter().find(|c| Family::of(&c.addr()) == f)) {
        // from the top of the range down: host-local hands out from the bottom
        let top = cidr.broadcast();
        if let Some(a) = (1u8..=64)
            .filter_map(|i| match top {
                IpAddr::V4(t) => u32::from(t)
                    .checked_sub(u32::from(i))
                    .map(|a| IpAddr::V4(a.into())),
                IpAddr::V6(t) => u128::from(t)
                    .checked_sub(u128::from(i))
                    .map(|a| IpAddr::V6(a.into())),
            })
            .find(|a| cidr.contains(a) && !used.contains(a))
        {
            out.push(a);
        }
    }
    if let Some(other) = lab
        .pods
        .iter()
        .filter(|p| p.full_name() != from.full_name() && p.full_name() != to.full_name())
        .flat_map(|p| cluster::pod_ips(lab, p))
        .find(|a| Family::of(a) == f)
    {
        out.push(other);
    }
    out.push(match f {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9)),
    });
    out
}

/// Sends one UDP packet per `sources` then the true one from `from` to
/// `to` (family `f`), and reports what arrived.
pub fn run(
    lab: &Lab,
    from: &Pod,
    to: &Pod,
    f: Family,
    sources: &[IpAddr],
    timeout: Duration,
) -> Result<(Vec<Outcome>, Counted)> {
    let v6 = f == Family::V6;
    let mine = cluster::pod_ips(lab, from);
    let own = *mine
        .iter()
        .find(|a| Family::of(a) == f)
        .ok_or_else(|| format!("{} has no {} address", from.full_name(), f.label()))?;
    let dst = *cluster::pod_ips(lab, to)
        .iter()
        .find(|a| Family::of(a) == f)
        .ok_or_else(|| format!("{} has no {} address", to.full_name(), f.label()))?;
    let node_ns = lab
        .nodes
        .iter()
        .find(|n| n.name == from.node)
        .map(|n| n.netns.clone())
        .ok_or("the sending pod's node is gone")?;
    let before = spoofed(lab, &node_ns);
    let any: IpAddr = if v6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let rx = in_netns(&to.netns, || {
        let s = Socket::new(domain(v6), Type::DGRAM, Some(Protocol::UDP))?;
        s.bind(&SockAddr::from(SocketAddr::new(any, 0)))?;
        Ok(s)
    })?;
    let port = rx
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .ok_or("receiver port")?;
    let tx = in_netns(&from.netns, || {
        Socket::new(domain(v6), Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
    })?;
    let to_sa = SockAddr::from(SocketAddr::new(dst, 0));
    let send = |src: IpAddr, tag: usize| -> Result<()> {
        let pkt = udp_packet(
            SocketAddr::new(src, 40_000 + tag as u16),
            SocketAddr::new(dst, port),
            format!("kindnet-spoof {tag}").as_bytes(),
        );
        tx.send_to(&pkt, &to_sa)
            .map(drop)
            .map_err(|e| format!("send from {src}: {e}"))
    };
    for (i, s) in sources.iter().enumerate() {
        send(*s, i + 1)?;
    }
    let mut got: Vec<IpAddr> = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    'wait: while Instant::now() < deadline {
        send(own, 0)?;
        let until = (Instant::now() + RESEND).min(deadline);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            rx.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
            match rx.recv_from(&mut buf) {
                Ok((_, from_sa)) => {
                    if let Some(a) = from_sa.as_socket() {
                        got.push(a.ip());
                        if a.ip() == own {
                            break 'wait;
                        }
                    }
                }
                Err(_) => break,
            }
        }
    }
    // whatever else is queued arrived before the true packet
    rx.set_nonblocking(true).map_err(|e| e.to_string())?;
    while let Ok((_, a)) = rx.recv_from(&mut buf) {
        if let Some(a) = a.as_socket() {
            got.push(a.ip());
        }
    }
    let after = spoofed(lab, &node_ns);
    let mut out: Vec<Outcome> = sources
        .iter()
        .chain(std::iter::once(&own))
        .map(|s| Outcome {
            from: from.full_name(),
            to: to.full_name(),
            family: f.label(),
            source: *s,
            forged: !mine.contains(s),
            received: got.contains(s),
        })
        .collect();
    out.dedup_by(|a, b| a.source == b.source);
    Ok((
        out,
        Counted {
            node: from.node.clone(),
            spoofed_before: before,
            spoofed_after: after,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_packets_carry_valid_checksums() {
        let p = udp_packet(
            "10.0.0.1:1000".parse().unwrap(),
            "10.0.0.2:2000".parse().unwrap(),
            b"hi",
        );
        assert_eq!(p.len(), 20 + 8 + 2);
        // a header whose checksum is right sums to 0xffff
        assert_eq!(sum16(0, &p[..20]), 0xffff);
        assert_eq!(&p[12..16], &[10, 0, 0, 1]);
        // UDP: the pseudo-header plus the datagram sums to 0xffff too
        let mut acc = sum16(0, &p[12..20]);
        acc = sum16(acc, &[0, 17, 0, 10]);
        assert_eq!(sum16(acc, &p[20..]), 0xffff);
        let p6 = udp_packet(
            "[fd00::1]:1000".parse().unwrap(),
            "[fd00::2]:2000".parse().unwrap(),
            b"hi",
        );
        assert_eq!(p6.len(), 40 + 8 + 2);
        assert_eq!(p6[0] >> 4, 6);
        let mut acc = sum16(0, &p6[8..40]);
        acc = sum16(acc, &[0, 17, 0, 10]);
        assert_eq!(sum16(acc, &p6[40..]), 0xffff);
    }
}

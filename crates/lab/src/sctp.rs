//! SCTP probes without SCTP sockets: the kernels the lab runs on may have
//! no SCTP protocol (`CONFIG_IP_SCTP` off), but conntrack still tracks
//! SCTP and nftables still matches it. A probe sends crafted SCTP INIT
//! packets (the first packet of an association) from a raw IP socket,
//! protocol 132, in the source pod and watches for them with a raw socket
//! of the same protocol in the destination pod: "connected" means the INIT
//! arrived, which is what a NetworkPolicy decides.
//!
//! The packets must be valid SCTP: conntrack checks the CRC32c checksum and
//! the chunks, and the ruleset drops `ct state invalid`.

use kindnet_netlink::Netns;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// IPPROTO_SCTP.
pub const PROTO: i32 = 132;
/// Common header (12 bytes) + one INIT chunk without parameters (20).
pub const INIT_LEN: usize = 32;
/// How often a probe sends its INIT again while nothing arrived (a lost
/// datagram is not retransmitted by anyone else).
const RESEND: Duration = Duration::from_millis(150);

/// An SCTP packet carrying one INIT chunk (RFC 9260 3.3.2), from
/// `src_port` to `dst_port`, with `init_tag` as the chunk's Initiate Tag
/// (non-zero) and the CRC32c checksum filled in. The common header's
/// verification tag is 0, as an INIT's must be.
pub fn init_packet(src_port: u16, dst_port: u16, init_tag: u32) -> [u8; INIT_LEN] {
    let mut p = [0u8; INIT_LEN];
    p[0..2].copy_from_slice(&src_port.to_be_bytes());
    p[2..4].copy_from_slice(&dst_port.to_be_bytes());
    // p[4..8]: verification tag 0; p[8..12]: checksum, below
    p[12] = 1; // chunk type INIT
    p[13] = 0; // flags
    p[14..16].copy_from_slice(&20u16.to_be_bytes()); // chunk length
    p[16..20].copy_from_slice(&init_tag.to_be_bytes());
    p[20..24].copy_from_slice(&65_536u32.to_be_bytes()); // a_rwnd
    p[24..26].copy_from_slice(&1u16.to_be_bytes()); // outbound streams
    p[26..28].copy_from_slice(&1u16.to_be_bytes()); // inbound streams
    p[28..32].copy_from_slice(&init_tag.wrapping_add(1).to_be_bytes()); // initial TSN
    let sum = checksum(&p);
    p[8..12].copy_from_slice(&sum);
    p
}

/// The checksum field of an SCTP packet: CRC32c over the packet with the
/// field zeroed, stored least significant byte first (RFC 9260 appendix
/// A; what Linux's `sctp_compute_cksum` gives).
pub fn checksum(packet: &[u8]) -> [u8; 4] {
    let mut zeroed = packet.to_vec();
    if let Some(f) = zeroed.get_mut(8..12) {
        f.fill(0);
    }
    crc32c::crc32c(&zeroed).to_le_bytes()
}

/// What identifies one probe's INIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Init {
    pub src_port: u16,
    pub dst_port: u16,
    pub init_tag: u32,
}

/// The INIT in what a raw socket read: IPv4 raw sockets deliver the IP
/// header too, IPv6 ones only the payload. `None` for anything else (the
/// checksum is not checked: that is the network's job here).
pub fn parse_init(buf: &[u8], ip_header: bool) -> Option<Init> {
    let sctp = if ip_header {
        let first = *buf.first()?;
        if first >> 4 != 4 || *buf.get(9)? != PROTO as u8 {
            return None;
        }
        buf.get(usize::from(first & 0x0f) * 4..)?
    } else {
        buf
    };
    if sctp.len() < INIT_LEN {
        return None;
    }
    let be16 = |i: usize| Some(u16::from_be_bytes([*sctp.get(i)?, *sctp.get(i + 1)?]));
    let be32 = |i: usize| {
        Some(u32::from_be_bytes([
            *sctp.get(i)?,
            *sctp.get(i + 1)?,
            *sctp.get(i + 2)?,
            *sctp.get(i + 3)?,
        ]))
    };
    if be32(4)? != 0 || *sctp.get(12)? != 1 || be16(14)? < 20 {
        return None;
    }
    Some(Init {
        src_port: be16(0)?,
        dst_port: be16(2)?,
        init_tag: be32(16)?,
    })
}

/// A fresh probe identity: a non-zero tag and an ephemeral source port
/// that no other probe of this process uses at the same time.
pub fn fresh(dst_port: u16) -> Init {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().rotate_left(16);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let init_tag = (seed ^ n.wrapping_mul(0x9e37_79b9)) | 1;
    Init {
        src_port: 32_768 + ((seed.wrapping_add(n) % 28_000) as u16),
        dst_port,
        init_tag,
    }
}

/// A raw SCTP socket opened inside network namespace `netns`
/// (`/var/run/netns/NAME`); it stays there whichever thread uses it.
pub fn open(netns: &str, v6: bool) -> Result<Socket, String> {
    // (no crate::sys here: the lab's tests include this file on its own)
    let n =
        Netns::open(format!("/var/run/netns/{netns}")).map_err(|e| format!("open {netns}: {e}"))?;
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    n.run(|| Socket::new(domain, Type::RAW, Some(Protocol::from(PROTO))))
        .map_err(|e| format!("enter {netns}: {e}"))?
        .map_err(|e| format!("open a raw SCTP socket in {netns}: {e}"))
}

/// Sends `packet` to `to` (the kernel adds the IP header).
pub fn send(s: &Socket, to: IpAddr, packet: &[u8]) -> Result<(), String> {
    s.send_to(packet, &SockAddr::from(SocketAddr::new(to, 0)))
        .map(|_| ())
        .map_err(|e| format!("send SCTP to {to}: {e}"))
}

/// Waits until `want` arrives on `rx` or `timeout` passes.
pub fn wait(rx: &Socket, v6: bool, want: Init, timeout: Duration) -> Result<bool, String> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        rx.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match (&*rx).read(&mut buf) {
            Ok(n) => {
                if parse_init(buf.get(..n).unwrap_or_default(), !v6) == Some(want) {
                    return Ok(true);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("receive SCTP: {e}")),
        }
    }
}

/// One probe: INITs from `from_netns` to `to` port `dst_port`, resent
/// every 150 ms, until one arrives in `to_netns` (`Ok(true)`) or `timeout`
/// passes (`Ok(false)`); `Err` when the probe cannot run.
pub fn probe(
    from_netns: &str,
    to_netns: &str,
    to: SocketAddr,
    timeout: Duration,
) -> Result<bool, String> {
    probe_arriving(from_netns, to, to_netns, to.port(), timeout)
}

/// [`probe`] of a packet that arrives on port `arrives_on` of `to_netns`
/// (a DNAT on the way changes the port).
pub fn probe_arriving(
    from_netns: &str,
    to: SocketAddr,
    to_netns: &str,
    arrives_on: u16,
    timeout: Duration,
) -> Result<bool, String> {
    let v6 = to.is_ipv6();
    let rx = open(to_netns, v6)?;
    let tx = open(from_netns, v6)?;
    let id = fresh(to.port());
    let packet = init_packet(id.src_port, id.dst_port, id.init_tag);
    let id = Init {
        dst_port: arrives_on,
        ..id
    };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        send(&tx, to.ip(), &packet)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if wait(&rx, v6, id, left.min(RESEND))? {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_the_castagnoli_crc() {
        // the check value of CRC-32C (iSCSI)
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn init_packets_are_checksummed_as_sctp_wants() {
        let p = init_packet(40_000, 80, 0x1234_5678);
        // the checksum computed independently (a bitwise CRC-32C,
        // polynomial 0x82f63b78, in Python) over the same 32 bytes with
        // the field zero: 0xefabef08, stored least significant byte first
        assert_eq!(
            p,
            [
                0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 0, 0x08, 0xef, 0xab, 0xef, 1, 0, 0, 20, 0x12,
                0x34, 0x56, 0x78, 0, 1, 0, 0, 0, 1, 0, 1, 0x12, 0x34, 0x56, 0x79
            ]
        );
        assert_eq!(checksum(&p), p[8..12]);
        let mut bad = p;
        bad[17] ^= 1;
        assert_ne!(checksum(&bad), bad[8..12]);
    }

    #[test]
    fn inits_parse_back_with_and_without_an_ip_header() {
        let p = init_packet(40_001, 81, 7);
        let want = Init {
            src_port: 40_001,
            dst_port: 81,
            init_tag: 7,
        };
        assert_eq!(parse_init(&p, false), Some(want));
        let mut v4 = vec![0x45, 0, 0, 52, 0, 0, 0x40, 0, 64, 132, 0, 0];
        v4.extend([10, 0, 0, 1, 10, 0, 0, 2]);
        v4.extend(p);
        assert_eq!(parse_init(&v4, true), Some(want));
        v4[9] = 6;
        assert_eq!(parse_init(&v4, true), None, "not SCTP");
        assert_eq!(parse_init(&p[..20], false), None, "truncated");
        let mut not_init = p;
        not_init[12] = 0; // DATA
        assert_eq!(parse_init(&not_init, false), None);
        let mut tagged = p;
        tagged[7] = 1;
        assert_eq!(parse_init(&tagged, false), None, "an INIT's vtag is 0");
    }

    #[test]
    fn probe_identities_differ() {
        let (a, b) = (fresh(80), fresh(80));
        assert_ne!(a, b);
        assert!(a.init_tag != 0 && b.init_tag != 0);
        assert!(a.src_port >= 32_768);
    }
}

//! Makes the neighbour tables learn what an IPv6 next hop for an IPv4-only
//! peer needs when no `--ipv6-prefix` is set: a
//! peer's MAC (ARP) and the IPv6 link-local addresses of the nodes on an
//! uplink (all-nodes echo). Effects only; what to solicit is decided in
//! [`crate::host::routes`], and the answer is read back from the neighbour table
//! on the next pass, never guessed.

// One raw syscall: setsockopt(ICMP6_FILTER), which neither rustix nor
// socket2 offers.
#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::net::sockopt::{set_ipv6_multicast_if, set_ipv6_multicast_loop};
use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, ipproto, recvfrom, sendto,
    socket_with,
};

/// How long replies to the all-nodes echo are collected.
pub const LISTEN: Duration = Duration::from_millis(150);

const ICMP6_ECHO_REQUEST: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
/// `ICMP6_FILTER` (netinet/icmp6.h), an IPPROTO_ICMPV6 socket option.
const ICMP6_FILTER: libc::c_int = 1;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// The discard port: a datagram there makes the kernel resolve the
/// peer's MAC (ARP); the peer drops it.
const DISCARD: u16 = 9;

/// Passes only ICMPv6 echo replies to the socket (ICMP6_FILTER: a set
/// bit blocks the type).
fn only_echo_replies(fd: &OwnedFd) -> io::Result<()> {
    let mut filter = [u32::MAX; 8];
    filter[usize::from(ICMP6_ECHO_REPLY >> 5)] &= !(1u32 << (ICMP6_ECHO_REPLY & 31));
    // SAFETY: setsockopt(2) reads exactly `size_of_val(&filter)` bytes from
    // the live array passed; the fd is open. No safe equivalent: neither
    // rustix nor socket2 wraps ICMP6_FILTER.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_ICMPV6,
            ICMP6_FILTER,
            filter.as_ptr().cast(),
            std::mem::size_of_val(&filter) as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn echo(fd: &OwnedFd, to: Ipv6Addr, scope: u32, id: u16) -> io::Result<()> {
    let mut pkt = [0u8; 16];
    pkt[0] = ICMP6_ECHO_REQUEST;
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    pkt[8..16].copy_from_slice(b"kindnetd");
    // The kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets.
    let to = SocketAddrV6::new(to, 0, 0, scope);
    sendto(fd, &pkt, SendFlags::empty(), &to)?;
    Ok(())
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

/// Solicits on link `oif`: a datagram to the discard port of each address
/// in `arp` (whose MAC is not known), then an ICMPv6 echo to all nodes (ff02::1);
/// every node answering from a link-local address gets a unicast echo too,
/// which makes the kernel resolve (NS/NA) and record its MAC. Returns the
/// link-local addresses that answered. Needs CAP_NET_RAW.
pub fn solicit(oif: u32, arp: &[Ipv4Addr]) -> io::Result<Vec<Ipv6Addr>> {
    if !arp.is_empty() {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        for peer in arp {
            // Unreachable peers are what we are finding out about: ignore.
            let _ = s.send_to(b"kindnetd", SocketAddrV4::new(*peer, DISCARD));
        }
    }
    let fd = socket_with(
        AddressFamily::INET6,
        SocketType::RAW,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        Some(ipproto::ICMPV6),
    )?;
    set_ipv6_multicast_if(&fd, oif)?;
    set_ipv6_multicast_loop(&fd, false)?;
    only_echo_replies(&fd)?;
    let id = (std::process::id() as u16) ^ (oif as u16).rotate_left(8);
    echo(&fd, ALL_NODES, oif, id)?;

    let mut found: Vec<Ipv6Addr> = Vec::new();
    let deadline = Instant::now() + LISTEN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut pfd = [PollFd::new(&fd, PollFlags::IN)];
        if !matches!(poll(&mut pfd, Timespec::try_from(left).ok().as_ref()), Ok(n) if n > 0) {
            continue;
        }
        let mut buf = [0u8; 256];
        let Ok((got, _, Some(from))) = recvfrom(&fd, &mut buf, RecvFlags::empty()) else {
            continue;
        };
        let Ok(from) = SocketAddrV6::try_from(from) else {
            continue;
        };
        if got < 8 {
            continue;
        }
        let reply_id = u16::from_be_bytes([buf[4], buf[5]]);
        let src = *from.ip();
        if buf[0] == ICMP6_ECHO_REPLY
            && reply_id == id
            && is_link_local(&src)
            && (from.scope_id() == 0 || from.scope_id() == oif)
            && !found.contains(&src)
        {
            found.push(src);
        }
    }
    for a in &found {
        let _ = echo(&fd, *a, oif, id);
    }
    Ok(found)
}

//! Makes the neighbour tables learn what seed 004's last resort needs: a
//! peer's MAC (ARP) and the IPv6 link-local addresses of the nodes on an
//! uplink (all-nodes echo). Effects only; what to solicit is decided in
//! [`crate::host::routes`], and the answer is read back from the neighbour table
//! on the next pass, never guessed.

// Raw syscalls: a raw ICMPv6 socket (socket/setsockopt/sendto/recvfrom/poll
// with sockaddr_in6 scope ids), which std does not offer.
#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

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

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a live value of the size passed; the fd is open.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

fn sockaddr(addr: Ipv6Addr, scope: u32) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain old data; all zeroes is valid.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_addr.s6_addr = addr.octets();
    sa.sin6_scope_id = scope;
    sa
}

fn echo(fd: &OwnedFd, to: Ipv6Addr, scope: u32, id: u16) -> io::Result<()> {
    let mut pkt = [0u8; 16];
    pkt[0] = ICMP6_ECHO_REQUEST;
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    pkt[8..16].copy_from_slice(b"kindnetd");
    let sa = sockaddr(to, scope);
    // SAFETY: the buffer and address are live and sized as passed. The
    // kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets.
    cvt(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sa as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        ) as libc::c_int
    })
    .map(|_| ())
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
    // SAFETY: plain socket(2); the result is checked and owned below.
    let raw = cvt(unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::IPPROTO_ICMPV6,
        )
    })?;
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let ifindex = oif as libc::c_int;
    setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &ifindex)?;
    setsockopt(
        &fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_LOOP,
        &0 as &libc::c_int,
    )?;
    // Pass echo replies only (a set bit blocks the type).
    let mut filter = [u32::MAX; 8];
    filter[usize::from(ICMP6_ECHO_REPLY >> 5)] &= !(1u32 << (ICMP6_ECHO_REPLY & 31));
    setsockopt(&fd, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &filter)?;
    let id = (std::process::id() as u16) ^ (oif as u16).rotate_left(8);
    echo(&fd, ALL_NODES, oif, id)?;

    let mut found: Vec<Ipv6Addr> = Vec::new();
    let deadline = Instant::now() + LISTEN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, live for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) };
        if n <= 0 {
            continue;
        }
        let mut buf = [0u8; 256];
        // SAFETY: sockaddr_in6 is plain old data.
        let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: buffers live and sized as passed.
        let got = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_in6).cast(),
                &mut len,
            )
        };
        if got < 8 {
            continue;
        }
        let reply_id = u16::from_be_bytes([buf[4], buf[5]]);
        let src = Ipv6Addr::from(from.sin6_addr.s6_addr);
        if buf[0] == ICMP6_ECHO_REPLY
            && reply_id == id
            && is_link_local(&src)
            && (from.sin6_scope_id == 0 || from.sin6_scope_id == oif)
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

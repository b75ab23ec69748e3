//! The one place for wire constants and attribute decoding shared by the
//! reply parsers (`route.rs`, `link.rs`, `events.rs`, `socket.rs`).
//!
//! Constants come from `libc` (the kernel's uapi headers) where it has
//! them; netlink-packet-route keeps its own private. The few `libc` lacks
//! are declared here with the header they come from.

use std::net::IpAddr;

use netlink_packet_core::NlasIterator;
use netlink_packet_route::AddressFamily;

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (AF_INET).
    V4,
    /// IPv6 (AF_INET6).
    V6,
}

impl Family {
    /// The family of `addr`.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub(crate) fn af(self) -> AddressFamily {
        match self {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        }
    }

    pub(crate) fn from_af(af: AddressFamily) -> Option<Family> {
        match af {
            AddressFamily::Inet => Some(Family::V4),
            AddressFamily::Inet6 => Some(Family::V6),
            _ => None,
        }
    }
}

// Public constants, re-exported at the crate root.

/// RTPROT_KERNEL: made by the kernel (connected subnets, own addresses).
pub const RTPROT_KERNEL: u8 = libc::RTPROT_KERNEL;
/// RTPROT_BOOT: the default for routes added by hand (`ip route add`).
pub const RTPROT_BOOT: u8 = libc::RTPROT_BOOT;
/// RTPROT_STATIC: added by an administrator as permanent.
pub const RTPROT_STATIC: u8 = libc::RTPROT_STATIC;
/// The main routing table (`ip route`).
pub const RT_TABLE_MAIN: u32 = libc::RT_TABLE_MAIN as u32;
/// The local table (this host's own and broadcast addresses).
pub const RT_TABLE_LOCAL: u32 = libc::RT_TABLE_LOCAL as u32;

/// IFA_F_NODAD: no duplicate address detection (IPv6).
pub const IFA_F_NODAD: u32 = libc::IFA_F_NODAD;
/// IFA_F_DADFAILED: duplicate address detection failed (IPv6).
pub const IFA_F_DADFAILED: u32 = libc::IFA_F_DADFAILED;
/// IFA_F_TENTATIVE: duplicate address detection still running (IPv6): not usable yet.
pub const IFA_F_TENTATIVE: u32 = libc::IFA_F_TENTATIVE;
/// IFA_F_PERMANENT: configured, not learned (e.g. from router advertisements).
pub const IFA_F_PERMANENT: u32 = libc::IFA_F_PERMANENT;
/// IFA_F_NOPREFIXROUTE: no connected route for the prefix (not in `libc`).
pub const IFA_F_NOPREFIXROUTE: u32 = 0x200;

/// Neighbour states (NUD_*), as `ip neigh` prints them.
pub const NUD_INCOMPLETE: u16 = libc::NUD_INCOMPLETE;
/// Confirmed reachable.
pub const NUD_REACHABLE: u16 = libc::NUD_REACHABLE;
/// Not confirmed recently; used, and re-confirmed when sent to.
pub const NUD_STALE: u16 = libc::NUD_STALE;
/// Waiting before re-confirming.
pub const NUD_DELAY: u16 = libc::NUD_DELAY;
/// Being re-confirmed.
pub const NUD_PROBE: u16 = libc::NUD_PROBE;
/// Resolution failed.
pub const NUD_FAILED: u16 = libc::NUD_FAILED;
/// No resolution needed (e.g. point-to-point).
pub const NUD_NOARP: u16 = libc::NUD_NOARP;
/// Set by hand, never expires.
pub const NUD_PERMANENT: u16 = libc::NUD_PERMANENT;

// Message types (linux/rtnetlink.h).
pub(crate) const RTM_NEWLINK: u16 = libc::RTM_NEWLINK;
pub(crate) const RTM_NEWADDR: u16 = libc::RTM_NEWADDR;
pub(crate) const RTM_NEWROUTE: u16 = libc::RTM_NEWROUTE;
pub(crate) const RTM_DELROUTE: u16 = libc::RTM_DELROUTE;
pub(crate) const RTM_NEWNEIGH: u16 = libc::RTM_NEWNEIGH;

// Multicast groups (enum rtnetlink_groups).
pub(crate) const RTNLGRP_IPV4_ROUTE: u32 = libc::RTNLGRP_IPV4_ROUTE;
pub(crate) const RTNLGRP_IPV6_ROUTE: u32 = libc::RTNLGRP_IPV6_ROUTE;

// Fixed headers in front of the attributes.
/// `struct rtmsg`.
pub(crate) const ROUTE_HEADER_LEN: usize = 12;
/// `struct ifinfomsg`.
pub(crate) const LINK_HEADER_LEN: usize = 16;

// Route attributes (enum rtattr_type_t).
pub(crate) const RTA_DST: u16 = libc::RTA_DST;
pub(crate) const RTA_OIF: u16 = libc::RTA_OIF;
pub(crate) const RTA_GATEWAY: u16 = libc::RTA_GATEWAY;
pub(crate) const RTA_PRIORITY: u16 = libc::RTA_PRIORITY;
pub(crate) const RTA_PREFSRC: u16 = libc::RTA_PREFSRC;
pub(crate) const RTA_MULTIPATH: u16 = libc::RTA_MULTIPATH;
pub(crate) const RTA_TABLE: u16 = libc::RTA_TABLE;
pub(crate) const RTA_VIA: u16 = libc::RTA_VIA;
/// `RTA_NH_ID` (a route using a nexthop object; not in `libc`).
pub(crate) const RTA_NH_ID: u16 = 30;

// Link attributes (linux/if_link.h).
pub(crate) const IFLA_ADDRESS: u16 = libc::IFLA_ADDRESS;
pub(crate) const IFLA_IFNAME: u16 = libc::IFLA_IFNAME;
pub(crate) const IFLA_MTU: u16 = libc::IFLA_MTU;
pub(crate) const IFLA_LINK: u16 = libc::IFLA_LINK;
pub(crate) const IFLA_MASTER: u16 = libc::IFLA_MASTER;
pub(crate) const IFLA_LINKINFO: u16 = libc::IFLA_LINKINFO;
pub(crate) const IFLA_IFALIAS: u16 = libc::IFLA_IFALIAS;
pub(crate) const IFLA_LINK_NETNSID: u16 = libc::IFLA_LINK_NETNSID;
pub(crate) const IFLA_INFO_KIND: u16 = libc::IFLA_INFO_KIND;
/// `IFLA_BRPORT_MODE` inside `IFLA_PROTINFO`: a bridge port's hairpin flag
/// (not in `libc`).
pub(crate) const IFLA_BRPORT_MODE: u16 = 4;
/// `IFNAMSIZ` (linux/if.h): names are shorter than this.
pub(crate) const IFNAMSIZ: usize = libc::IFNAMSIZ;

// Netlink error messages (linux/netlink.h).
/// `nlmsgerr` TLV carrying the kernel's human readable error (extended ack).
pub(crate) const NLMSGERR_ATTR_MSG: u16 = 1;
pub(crate) const NLM_F_CAPPED: u16 = libc::NLM_F_CAPPED as u16;
pub(crate) const NLM_F_ACK_TLVS: u16 = libc::NLM_F_ACK_TLVS as u16;

/// The attributes (type, value) after a fixed header of `header_len`
/// bytes; `None` when the message is shorter than its header. Malformed or
/// truncated attributes end the walk instead of failing it, so a new kernel
/// cannot break a listing.
pub(crate) fn attrs(
    payload: &[u8],
    header_len: usize,
) -> Option<impl Iterator<Item = (u16, &[u8])>> {
    Some(nested(payload.get(header_len..)?))
}

/// The attributes nested inside an attribute's value.
pub(crate) fn nested(v: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    NlasIterator::new(v).flatten().map(|n| {
        let (kind, len) = (n.kind(), usize::from(n.length()));
        // The iterator checked 4 <= len <= the buffer's length.
        (kind, n.into_inner().get(4..len).unwrap_or_default())
    })
}

/// A native-endian `u32` attribute; `None` unless exactly four bytes.
pub(crate) fn u32_of(v: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(v).ok().map(u32::from_ne_bytes)
}

/// A native-endian `u16` at the start of `v`.
pub(crate) fn u16_at(v: &[u8]) -> Option<u16> {
    <[u8; 2]>::try_from(v.get(..2)?)
        .ok()
        .map(u16::from_ne_bytes)
}

/// An address attribute of family `fam`; `None` on a wrong length.
pub(crate) fn ip(fam: Family, v: &[u8]) -> Option<IpAddr> {
    match fam {
        Family::V4 => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
        Family::V6 => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
    }
}

/// A NUL-terminated (or unterminated) string attribute, lossily decoded.
pub(crate) fn c_str(v: &[u8]) -> String {
    let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_need_their_exact_length() {
        assert_eq!(u32_of(&7u32.to_ne_bytes()), Some(7));
        assert_eq!(u32_of(&[1, 2, 3]), None);
        assert_eq!(u16_at(&[10, 0, 9]), Some(u16::from_ne_bytes([10, 0])));
        assert_eq!(u16_at(&[1]), None);
        assert_eq!(ip(Family::V4, &[10, 0, 0, 1]), "10.0.0.1".parse().ok());
        assert_eq!(ip(Family::V6, &[10, 0, 0, 1]), None);
        assert_eq!(c_str(b"eth0\0\0"), "eth0");
        assert_eq!(c_str(b"eth0"), "eth0");
    }

    #[test]
    fn attribute_walk_stops_at_a_truncated_attribute() {
        // Header of 2 bytes, one u32 attribute of type 4, then a cut one.
        let mut p = vec![9, 9, 8, 0, 4, 0];
        p.extend_from_slice(&5u32.to_ne_bytes());
        p.extend_from_slice(&[40, 0, 1]);
        let got: Vec<_> = attrs(&p, 2).unwrap().collect();
        assert_eq!(got, vec![(4, &5u32.to_ne_bytes()[..])]);
        assert!(attrs(&p[..1], 2).is_none());
    }
}

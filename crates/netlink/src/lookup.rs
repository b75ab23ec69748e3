//! `ip route get`: ask the kernel which route it would use for one packet
//! (RTM_GETROUTE without NLM_F_DUMP), and the neighbour table.
//!
//! Unlike [`crate::Route`], an answer can be any route type (local,
//! unreachable, ...), because that is what a lookup reports.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_DUMP, NlasIterator};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::neighbour::{NeighbourHeader, NeighbourMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType,
};

use crate::error::{Error, Result};
use crate::route::{Family, RTM_NEWROUTE};
use crate::socket::Handle;

const ROUTE_HEADER_LEN: usize = 12;
const NEIGH_HEADER_LEN: usize = 12;
const RTM_NEWNEIGH: u16 = 28;
const RTA_DST: u16 = 1;
const RTA_IIF: u16 = 3;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
const RTA_VIA: u16 = 18;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

/// One lookup, as `ip route get DST [from SRC] [iif DEV] [oif DEV]
/// [fibmatch]` takes it. With `iif` the kernel simulates a packet
/// arriving on that link (a forwarding decision, with reverse-path
/// filtering); without, a packet this host sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteQuery {
    /// The destination to look up (required).
    pub dst: Option<IpAddr>,
    /// The source address (`from`).
    pub src: Option<IpAddr>,
    /// The interface the packet arrives on (`iif`).
    pub iif: Option<u32>,
    /// The interface the packet must leave by (`oif`).
    pub oif: Option<u32>,
    /// Report the FIB entry that matched (its prefix and protocol) instead
    /// of the resolved route.
    pub fib_match: bool,
}

impl RouteQuery {
    /// A lookup of `dst` as this host sends to it.
    pub fn to(dst: IpAddr) -> RouteQuery {
        RouteQuery {
            dst: Some(dst),
            ..Default::default()
        }
    }

    fn validate(&self) -> Result<Family> {
        let dst = self
            .dst
            .ok_or_else(|| Error::Invalid("route get needs a destination".into()))?;
        let fam = Family::of(&dst);
        if self.src.is_some_and(|s| Family::of(&s) != fam) {
            return Err(Error::Invalid(format!(
                "route get {dst}: source family differs"
            )));
        }
        Ok(fam)
    }

    fn to_message(self, fam: Family) -> RouteMessage {
        let mut m = RouteMessage::default();
        let h = &mut m.header;
        h.address_family = fam.af();
        // RTM_F_LOOKUP_TABLE: the answer names the table that matched.
        h.flags = RouteFlags::LookupTable;
        if self.fib_match {
            h.flags |= RouteFlags::FibMatch;
        }
        let a = &mut m.attributes;
        if let Some(d) = self.dst {
            h.destination_prefix_length = if fam == Family::V4 { 32 } else { 128 };
            a.push(RouteAttribute::Destination(RouteAddress::from(d)));
        }
        if let Some(s) = self.src {
            h.source_prefix_length = if fam == Family::V4 { 32 } else { 128 };
            a.push(RouteAttribute::Source(RouteAddress::from(s)));
        }
        if let Some(i) = self.iif {
            a.push(RouteAttribute::Iif(i));
        }
        if let Some(o) = self.oif {
            a.push(RouteAttribute::Oif(o));
        }
        m
    }
}

/// The kernel's route types, as `ip route` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// A normal route: via a gateway or on-link.
    Unicast,
    /// An address of this host.
    Local,
    /// A broadcast address.
    Broadcast,
    /// A multicast route.
    Multicast,
    /// Dropped silently.
    Blackhole,
    /// Dropped with "host unreachable".
    Unreachable,
    /// Dropped with "administratively prohibited".
    Prohibit,
    /// Any other type (RTN_* number).
    Other(u8),
}

impl RouteKind {
    fn from_wire(k: RouteType) -> RouteKind {
        match k {
            RouteType::Unicast => RouteKind::Unicast,
            RouteType::Local => RouteKind::Local,
            RouteType::Broadcast => RouteKind::Broadcast,
            RouteType::Multicast => RouteKind::Multicast,
            RouteType::BlackHole => RouteKind::Blackhole,
            RouteType::Unreachable => RouteKind::Unreachable,
            RouteType::Prohibit => RouteKind::Prohibit,
            other => RouteKind::Other(u8::from(other)),
        }
    }

    /// The type's name in `ip route` output.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Unicast => "unicast",
            RouteKind::Local => "local",
            RouteKind::Broadcast => "broadcast",
            RouteKind::Multicast => "multicast",
            RouteKind::Blackhole => "blackhole",
            RouteKind::Unreachable => "unreachable",
            RouteKind::Prohibit => "prohibit",
            RouteKind::Other(_) => "other",
        }
    }
}

/// What the kernel answered to a [`RouteQuery`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteLookup {
    /// The route's type.
    pub kind: RouteKind,
    /// The looked-up address as a host prefix, or with `fib_match` the
    /// prefix of the route that matched.
    pub dst: IpNet,
    /// The gateway; also an IPv6 next hop of an IPv4 route (RTA_VIA).
    pub gateway: Option<IpAddr>,
    /// The outgoing interface.
    pub oif: Option<u32>,
    /// The incoming interface, for a query with `iif`.
    pub iif: Option<u32>,
    /// The source address the kernel would use (RTA_PREFSRC).
    pub src: Option<IpAddr>,
    /// The routing table of the route used.
    pub table: u32,
    /// The protocol (RTPROT_*) of the route used.
    pub protocol: u8,
}

impl RouteLookup {
    pub(crate) fn parse(payload: &[u8]) -> Option<RouteLookup> {
        let h = RouteHeader::parse(payload).ok()?;
        let fam = Family::from_af(h.address_family)?;
        let mut dst_addr = None;
        let mut out = RouteLookup {
            kind: RouteKind::from_wire(h.kind),
            dst: match fam {
                Family::V4 => IpNet::V4(Default::default()),
                Family::V6 => IpNet::V6(Default::default()),
            },
            gateway: None,
            oif: None,
            iif: None,
            src: None,
            table: u32::from(h.table),
            protocol: u8::from(h.protocol),
        };
        for nla in NlasIterator::new(payload.get(ROUTE_HEADER_LEN..)?).flatten() {
            let v = nla.value();
            match nla.kind() {
                RTA_DST => dst_addr = Some(ip_any(v)?),
                RTA_GATEWAY => out.gateway = Some(ip_any(v)?),
                // struct rtvia: a 16-bit family, then the address.
                RTA_VIA => out.gateway = Some(ip_any(v.get(2..)?)?),
                RTA_PREFSRC => out.src = Some(ip_any(v)?),
                RTA_OIF => out.oif = Some(u32_of(v)?),
                RTA_IIF => out.iif = Some(u32_of(v)?),
                RTA_TABLE => out.table = u32_of(v)?,
                _ => {}
            }
        }
        if let Some(a) = dst_addr {
            out.dst = IpNet::new(a, h.destination_prefix_length).ok()?;
        }
        Some(out)
    }
}

fn ip_any(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
        _ => None,
    }
}

fn u32_of(v: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(v).ok().map(u32::from_ne_bytes)
}

impl fmt::Display for RouteLookup {
    /// Like `ip route get` prints it (devices as indexes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind != RouteKind::Unicast {
            write!(f, "{} ", self.kind.as_str())?;
        }
        if self.dst.prefix_len() == 0 {
            f.write_str("default")?;
        } else if self.dst.prefix_len() == self.dst.max_prefix_len() {
            write!(f, "{}", self.dst.addr())?;
        } else {
            write!(f, "{}", self.dst)?;
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(o) = self.oif {
            write!(f, " dev #{o}")?;
        }
        if let Some(s) = self.src {
            write!(f, " src {s}")?;
        }
        Ok(())
    }
}

/// Neighbour states (NUD_*), as `ip neigh` prints them.
pub const NUD_INCOMPLETE: u16 = 0x01;
/// Confirmed reachable.
pub const NUD_REACHABLE: u16 = 0x02;
/// Not confirmed recently; used, and re-confirmed when sent to.
pub const NUD_STALE: u16 = 0x04;
/// Waiting before re-confirming.
pub const NUD_DELAY: u16 = 0x08;
/// Being re-confirmed.
pub const NUD_PROBE: u16 = 0x10;
/// Resolution failed.
pub const NUD_FAILED: u16 = 0x20;
/// No resolution needed (e.g. point-to-point).
pub const NUD_NOARP: u16 = 0x40;
/// Set by hand, never expires.
pub const NUD_PERMANENT: u16 = 0x80;

/// One entry of the ARP / NDP table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Neighbour {
    /// The neighbour's address.
    pub addr: IpAddr,
    /// The interface it is on.
    pub index: u32,
    /// NUD_* bits.
    pub state: u16,
    /// The link-layer address, once known.
    pub lladdr: Option<Vec<u8>>,
}

impl Neighbour {
    /// A usable link-layer address is known (possibly being re-confirmed).
    pub fn is_resolved(&self) -> bool {
        self.lladdr.is_some()
            && self.state
                & (NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT | NUD_NOARP)
                != 0
    }

    /// The state's name as `ip neigh` prints it.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            s if s & NUD_PERMANENT != 0 => "PERMANENT",
            s if s & NUD_NOARP != 0 => "NOARP",
            s if s & NUD_REACHABLE != 0 => "REACHABLE",
            s if s & NUD_STALE != 0 => "STALE",
            s if s & NUD_DELAY != 0 => "DELAY",
            s if s & NUD_PROBE != 0 => "PROBE",
            s if s & NUD_FAILED != 0 => "FAILED",
            s if s & NUD_INCOMPLETE != 0 => "INCOMPLETE",
            _ => "NONE",
        }
    }

    pub(crate) fn parse(payload: &[u8]) -> Option<Neighbour> {
        let h = NeighbourHeader::parse(payload).ok()?;
        Family::from_af(h.family)?;
        let mut addr = None;
        let mut lladdr = None;
        for nla in NlasIterator::new(payload.get(NEIGH_HEADER_LEN..)?).flatten() {
            match nla.kind() {
                NDA_DST => addr = ip_any(nla.value()),
                NDA_LLADDR => lladdr = Some(nla.value().to_vec()),
                _ => {}
            }
        }
        Some(Neighbour {
            addr: addr?,
            index: h.ifindex,
            state: u16::from(h.state),
            lladdr,
        })
    }
}

impl Handle {
    /// The route the kernel would pick for `q` (`ip route get`). A
    /// destination without a route fails with the kernel's errno (e.g.
    /// ENETUNREACH); a packet that reverse-path filtering would drop fails
    /// with EXDEV.
    pub fn route_get(&mut self, q: &RouteQuery) -> Result<RouteLookup> {
        let fam = q.validate()?;
        let msg = RouteNetlinkMessage::GetRoute(q.to_message(fam));
        let ctx = || match q.dst {
            Some(d) => format!("route get {d}"),
            None => "route get".to_string(),
        };
        let mut answers = self.sock.collect(msg, 0, true, ctx, |kind, payload| {
            (kind == RTM_NEWROUTE)
                .then(|| RouteLookup::parse(payload))
                .flatten()
        })?;
        answers
            .pop()
            .ok_or_else(|| Error::Invalid(format!("{}: no answer from the kernel", ctx())))
    }

    /// The neighbour (ARP or NDP) entries of one family.
    pub fn neighbours(&mut self, family: Family) -> Result<Vec<Neighbour>> {
        let mut req = NeighbourMessage::default();
        req.header.family = family.af();
        let msg = RouteNetlinkMessage::GetNeighbour(req);
        self.sock.collect(
            msg,
            NLM_F_DUMP,
            true,
            || format!("list {family:?} neighbours"),
            |kind, payload| {
                (kind == RTM_NEWNEIGH)
                    .then(|| Neighbour::parse(payload))
                    .flatten()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    fn wire(m: &RouteMessage) -> Vec<u8> {
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        buf
    }

    #[test]
    fn query_carries_dst_src_iif_and_flags() {
        let q = RouteQuery {
            dst: Some("10.244.2.2".parse().unwrap()),
            src: Some("10.244.1.2".parse().unwrap()),
            iif: Some(7),
            oif: None,
            fib_match: true,
        };
        let m = q.to_message(q.validate().unwrap());
        assert_eq!(m.header.destination_prefix_length, 32);
        assert_eq!(m.header.source_prefix_length, 32);
        assert!(m.header.flags.contains(RouteFlags::FibMatch));
        assert!(m.attributes.contains(&RouteAttribute::Iif(7)));
        let mut bad = q;
        bad.src = Some("fd00::1".parse().unwrap());
        assert!(bad.validate().is_err());
        assert!(RouteQuery::default().validate().is_err());
    }

    #[test]
    fn answers_of_any_type_parse() {
        let mut m = RouteMessage::default();
        m.header.address_family = Family::V4.af();
        m.header.destination_prefix_length = 32;
        m.header.kind = RouteType::Local;
        m.header.table = 255;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                "10.0.0.1".parse::<IpAddr>().unwrap(),
            )));
        m.attributes.push(RouteAttribute::Oif(1));
        let a = RouteLookup::parse(&wire(&m)).unwrap();
        assert_eq!(a.kind, RouteKind::Local);
        assert_eq!(a.table, 255);
        assert_eq!(a.to_string(), "local 10.0.0.1 dev #1");
        assert_eq!(RouteLookup::parse(&[1, 2]), None);
    }

    #[test]
    fn neighbour_states() {
        let n = Neighbour {
            addr: "172.18.0.3".parse().unwrap(),
            index: 2,
            state: NUD_STALE,
            lladdr: Some(vec![2, 0, 0, 0, 0, 3]),
        };
        assert!(n.is_resolved());
        assert_eq!(n.state_name(), "STALE");
        let f = Neighbour {
            state: NUD_FAILED,
            lladdr: None,
            ..n
        };
        assert!(!f.is_resolved());
        assert_eq!(f.state_name(), "FAILED");
    }
}

//! `ip route get`: ask the kernel which route it would use for one packet
//! (RTM_GETROUTE without NLM_F_DUMP), and the neighbour table.
//!
//! Unlike [`crate::Route`], an answer can be any route type (local,
//! unreachable, ...), because that is what a lookup reports.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_DUMP, Parseable};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType, RouteVia,
};

use crate::error::{Error, Result};
use crate::route::Family;
use crate::socket::Handle;
use crate::wire::{
    NUD_DELAY, NUD_FAILED, NUD_INCOMPLETE, NUD_NOARP, NUD_PERMANENT, NUD_PROBE, NUD_REACHABLE,
    NUD_STALE, RTM_NEWNEIGH, RTM_NEWROUTE,
};

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
    /// Decodes an answer with netlink-packet-route (one message, not a
    /// dump: its allocations do not matter).
    pub(crate) fn parse(payload: &[u8]) -> Option<RouteLookup> {
        let m = RouteMessage::parse(payload).ok()?;
        let h = &m.header;
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
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(d) => dst_addr = Some(route_ip(d)?),
                RouteAttribute::Gateway(g) => out.gateway = Some(route_ip(g)?),
                RouteAttribute::Via(RouteVia::Inet(g)) => out.gateway = Some(IpAddr::V4(*g)),
                RouteAttribute::Via(RouteVia::Inet6(g)) => out.gateway = Some(IpAddr::V6(*g)),
                RouteAttribute::Via(_) => return None,
                RouteAttribute::PrefSource(s) => out.src = Some(route_ip(s)?),
                RouteAttribute::Oif(o) => out.oif = Some(*o),
                RouteAttribute::Iif(i) => out.iif = Some(*i),
                RouteAttribute::Table(t) => out.table = *t,
                _ => {}
            }
        }
        if let Some(a) = dst_addr {
            out.dst = IpNet::new(a, h.destination_prefix_length).ok()?;
        }
        Some(out)
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
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

    /// Decodes an RTM_NEWNEIGH body with netlink-packet-route (the table
    /// is small and read by tools, not on a hot path).
    pub(crate) fn parse(payload: &[u8]) -> Option<Neighbour> {
        let m = NeighbourMessage::parse(payload).ok()?;
        Family::from_af(m.header.family)?;
        let mut addr = None;
        let mut lladdr = None;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    addr = Some(IpAddr::V4(*v4));
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    addr = Some(IpAddr::V6(*v6));
                }
                NeighbourAttribute::Destination(_) => addr = None,
                NeighbourAttribute::LinkLayerAddress(l) => lladdr = Some(l.clone()),
                _ => {}
            }
        }
        Some(Neighbour {
            addr: addr?,
            index: m.header.ifindex,
            state: u16::from(m.header.state),
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
    fn neighbours_parse_and_other_families_are_skipped() {
        use netlink_packet_route::AddressFamily;
        use netlink_packet_route::neighbour::NeighbourState;
        let mut m = NeighbourMessage::default();
        m.header.family = Family::V6.af();
        m.header.ifindex = 3;
        m.header.state = NeighbourState::Reachable;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(
                "fd00::3".parse().unwrap(),
            )));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 3]));
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        let n = Neighbour::parse(&buf).unwrap();
        assert_eq!(
            n,
            Neighbour {
                addr: "fd00::3".parse().unwrap(),
                index: 3,
                state: NUD_REACHABLE,
                lladdr: Some(vec![2, 0, 0, 0, 0, 3]),
            }
        );
        m.header.family = AddressFamily::Bridge;
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        assert_eq!(Neighbour::parse(&buf), None);
        assert_eq!(Neighbour::parse(&[10, 0]), None);
    }

    #[test]
    fn an_ipv6_next_hop_of_an_ipv4_lookup_is_the_gateway() {
        let mut m = RouteMessage::default();
        m.header.address_family = Family::V4.af();
        m.header.kind = RouteType::Unicast;
        m.attributes.push(RouteAttribute::Via(RouteVia::Inet6(
            "fd00::1".parse().unwrap(),
        )));
        m.attributes.push(RouteAttribute::Table(1000));
        let a = RouteLookup::parse(&wire(&m)).unwrap();
        assert_eq!(a.gateway, "fd00::1".parse().ok());
        assert_eq!(a.table, 1000);
        assert_eq!(a.to_string(), "default via fd00::1");
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

//! Unicast routes: a flat `Route` value, its wire conversions and the
//! add/replace/delete/list requests.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType, RouteVia,
};

use crate::error::{Error, Result};
use crate::socket::Handle;
use crate::wire::{
    ROUTE_HEADER_LEN, RT_TABLE_MAIN, RTA_DST, RTA_GATEWAY, RTA_MULTIPATH, RTA_NH_ID, RTA_OIF,
    RTA_PREFSRC, RTA_PRIORITY, RTA_TABLE, RTA_VIA, RTM_NEWROUTE, RTPROT_BOOT, attrs, ip, u16_at,
    u32_of,
};

pub use crate::wire::Family;

/// Route scope; the kernel's other scopes (site, nowhere) do not occur on
/// the unicast routes this crate manages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Reaches beyond this link (via a gateway).
    #[default]
    Universe,
    /// On the attached link.
    Link,
    /// This host only.
    Host,
}

impl Scope {
    fn to_wire(self) -> RouteScope {
        match self {
            Scope::Universe => RouteScope::Universe,
            Scope::Link => RouteScope::Link,
            Scope::Host => RouteScope::Host,
        }
    }

    fn from_wire(s: RouteScope) -> Option<Scope> {
        match s {
            RouteScope::Universe => Some(Scope::Universe),
            RouteScope::Link => Some(Scope::Link),
            RouteScope::Host => Some(Scope::Host),
            _ => None,
        }
    }
}

/// A single-path unicast route. Listings and events leave out what this
/// cannot represent faithfully: cached clones, non-unicast types (local,
/// broadcast, blackhole, ...), multipath / nexthop-object routes and
/// site/nowhere scopes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// The destination prefix.
    pub dst: IpNet,
    /// The next hop; `None` for an on-link route.
    pub gateway: Option<IpAddr>,
    /// The outgoing interface.
    pub oif: Option<u32>,
    /// Preferred source address (RTA_PREFSRC).
    pub src: Option<IpAddr>,
    /// The scope.
    pub scope: Scope,
    /// RTPROT_*; own numbers let a daemon recognise its routes.
    pub protocol: u8,
    /// The routing table (RT_TABLE_MAIN unless said otherwise).
    pub table: u32,
    /// The metric (RTA_PRIORITY).
    pub priority: Option<u32>,
    /// RTNH_F_ONLINK: the gateway is on the link even outside its subnets.
    pub onlink: bool,
}

impl Route {
    /// A universe-scope route in the main table with protocol "boot", like
    /// `ip route add` makes.
    pub fn new(dst: IpNet) -> Route {
        Route {
            dst,
            gateway: None,
            oif: None,
            src: None,
            scope: Scope::Universe,
            protocol: RTPROT_BOOT,
            table: RT_TABLE_MAIN,
            priority: None,
            onlink: false,
        }
    }

    /// The destination's family.
    pub fn family(&self) -> Family {
        Family::of(&self.dst.addr())
    }

    /// An IPv4 route may have an IPv6 gateway (sent as RTA_VIA, `ip route
    /// add 10.0.0.0/8 via inet6 fd00::1`, RFC 5549 style); the reverse is
    /// not supported by the kernel, and the source must be of the route's
    /// family.
    fn validate(&self) -> Result<()> {
        let fam = self.family();
        if self.src.is_some_and(|a| Family::of(&a) != fam) {
            return Err(Error::Invalid(format!("route {self}: src family differs")));
        }
        if let Some(gw) = self.gateway
            && Family::of(&gw) != fam
            && !(fam == Family::V4 && gw.is_ipv6())
        {
            return Err(Error::Invalid(format!(
                "route {self}: an IPv6 route cannot have an IPv4 gateway"
            )));
        }
        Ok(())
    }

    /// Whether the gateway is of the other family (an IPv4 route via an
    /// IPv6 next hop: RTA_VIA).
    pub fn gateway_via_other_family(&self) -> bool {
        self.gateway
            .is_some_and(|gw| Family::of(&gw) != self.family())
    }

    /// Builds the RTM_NEWROUTE / RTM_DELROUTE body. For deletes the scope
    /// and type are left as wildcards (like iproute2) so the kernel matches
    /// on destination, table, protocol and whatever next hop is given;
    /// protocol 0 matches any protocol.
    pub(crate) fn to_message(&self, delete: bool) -> RouteMessage {
        let mut m = RouteMessage::default();
        let h = &mut m.header;
        h.address_family = self.family().af();
        h.destination_prefix_length = self.dst.prefix_len();
        h.table = u8::try_from(self.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        h.protocol = RouteProtocol::from(self.protocol);
        if delete {
            h.scope = RouteScope::NoWhere;
            h.kind = RouteType::Unspec;
        } else {
            h.scope = self.scope.to_wire();
            h.kind = RouteType::Unicast;
        }
        if self.onlink {
            h.flags = RouteFlags::Onlink;
        }
        let a = &mut m.attributes;
        if self.dst.prefix_len() > 0 {
            a.push(RouteAttribute::Destination(RouteAddress::from(
                self.dst.network(),
            )));
        }
        a.push(RouteAttribute::Table(self.table));
        match self.gateway {
            Some(IpAddr::V6(gw)) if self.family() == Family::V4 => {
                a.push(RouteAttribute::Via(RouteVia::Inet6(gw)));
            }
            Some(gw) => a.push(RouteAttribute::Gateway(RouteAddress::from(gw))),
            None => {}
        }
        if let Some(oif) = self.oif {
            a.push(RouteAttribute::Oif(oif));
        }
        if let Some(src) = self.src {
            a.push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        if let Some(p) = self.priority {
            a.push(RouteAttribute::Priority(p));
        }
        m
    }

    /// Decodes an RTM_NEWROUTE/RTM_DELROUTE body straight from the receive
    /// buffer. Returns None for routes a `Route` cannot represent faithfully:
    /// cached clones, non-unicast types (local, broadcast, blackhole, ...),
    /// multipath / nexthop-object routes and odd scopes.
    pub(crate) fn parse(payload: &[u8]) -> Option<Route> {
        let h = RouteHeader::parse(payload).ok()?;
        let fam = Family::from_af(h.address_family)?;
        if h.flags.contains(RouteFlags::Cloned) || h.kind != RouteType::Unicast {
            return None;
        }
        let mut dst_addr = None;
        let mut r = Route::new(match fam {
            Family::V4 => IpNet::V4(Default::default()),
            Family::V6 => IpNet::V6(Default::default()),
        });
        r.scope = Scope::from_wire(h.scope)?;
        r.protocol = u8::from(h.protocol);
        r.table = u32::from(h.table);
        r.onlink = h.flags.contains(RouteFlags::Onlink);
        for (kind, v) in attrs(payload, ROUTE_HEADER_LEN)? {
            match kind {
                RTA_DST => dst_addr = Some(ip(fam, v)?),
                RTA_GATEWAY => r.gateway = Some(ip(fam, v)?),
                RTA_PREFSRC => r.src = Some(ip(fam, v)?),
                RTA_OIF => r.oif = Some(u32_of(v)?),
                RTA_PRIORITY => r.priority = Some(u32_of(v)?),
                RTA_TABLE => r.table = u32_of(v)?,
                // struct rtvia: family (u16), then the address. Only an
                // IPv6 next hop of an IPv4 route is represented.
                RTA_VIA if fam == Family::V4 => {
                    if u16_at(v)? != libc::AF_INET6 as u16 {
                        return None;
                    }
                    r.gateway = Some(ip(Family::V6, v.get(2..)?)?);
                }
                RTA_MULTIPATH | RTA_VIA | RTA_NH_ID => return None,
                _ => {}
            }
        }
        if let Some(a) = dst_addr {
            r.dst = IpNet::new(a, h.destination_prefix_length).ok()?;
        } else if h.destination_prefix_length != 0 {
            return None;
        }
        Some(r)
    }
}

impl fmt::Display for Route {
    /// `ip route`-like text, used in error contexts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        if self.table != RT_TABLE_MAIN {
            write!(f, " table {}", self.table)?;
        }
        write!(f, " proto {}", self.protocol)?;
        match self.scope {
            Scope::Universe => {}
            Scope::Link => write!(f, " scope link")?,
            Scope::Host => write!(f, " scope host")?,
        }
        if let Some(p) = self.priority {
            write!(f, " metric {p}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        Ok(())
    }
}

/// Userspace filter for [`Handle::routes`]; `None` fields match anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteFilter {
    /// Only routes of this protocol.
    pub protocol: Option<u8>,
    /// Only routes of this table.
    pub table: Option<u32>,
    /// Only routes out of this interface.
    pub oif: Option<u32>,
}

impl RouteFilter {
    /// Whether `r` passes the filter.
    pub fn matches(&self, r: &Route) -> bool {
        self.protocol.is_none_or(|p| p == r.protocol)
            && self.table.is_none_or(|t| t == r.table)
            && self.oif.is_none_or(|o| Some(o) == r.oif)
    }
}

impl crate::socket::Batch {
    /// Adds a route; one that is already there is fine.
    pub fn ensure_route(&mut self, r: &Route) -> Result<&mut Self> {
        r.validate()?;
        let msg = RouteNetlinkMessage::NewRoute(r.to_message(false));
        Ok(self.push(
            msg,
            NLM_F_CREATE | NLM_F_EXCL,
            true,
            format!("add route {r}"),
        ))
    }

    /// Adds or replaces the route with the same destination/table/metric.
    pub fn replace_route(&mut self, r: &Route) -> Result<&mut Self> {
        r.validate()?;
        let msg = RouteNetlinkMessage::NewRoute(r.to_message(false));
        Ok(self.push(
            msg,
            NLM_F_CREATE | NLM_F_REPLACE,
            false,
            format!("replace route {r}"),
        ))
    }
}

impl Handle {
    /// Adds a route; fails with `is_exists()` if it is already there.
    pub fn add_route(&mut self, r: &Route) -> Result<()> {
        r.validate()?;
        let msg = RouteNetlinkMessage::NewRoute(r.to_message(false));
        self.sock
            .ack(msg, NLM_F_CREATE | NLM_F_EXCL, || format!("add route {r}"))
    }

    /// Adds or replaces the route with the same destination/table/metric.
    pub fn replace_route(&mut self, r: &Route) -> Result<()> {
        r.validate()?;
        let msg = RouteNetlinkMessage::NewRoute(r.to_message(false));
        self.sock.ack(msg, NLM_F_CREATE | NLM_F_REPLACE, || {
            format!("replace route {r}")
        })
    }

    /// Deletes a route. The kernel matches destination, table and (unless
    /// 0) protocol, plus gateway/oif/src/priority when set; a missing route
    /// fails with `is_not_found()`.
    pub fn del_route(&mut self, r: &Route) -> Result<()> {
        r.validate()?;
        let msg = RouteNetlinkMessage::DelRoute(r.to_message(true));
        self.sock.ack(msg, 0, || format!("delete route {r}"))
    }

    /// Lists the unicast routes of one family (see [`Route`] for what is
    /// left out), filtered in userspace.
    pub fn routes(&mut self, family: Family, filter: RouteFilter) -> Result<Vec<Route>> {
        let mut req = RouteMessage::default();
        req.header.address_family = family.af();
        let msg = RouteNetlinkMessage::GetRoute(req);
        self.sock.collect(
            msg,
            NLM_F_DUMP,
            true,
            || format!("list {family:?} routes"),
            |kind, payload| {
                if kind != RTM_NEWROUTE {
                    return None;
                }
                Route::parse(payload).filter(|r| filter.matches(r))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{RT_TABLE_LOCAL, RTPROT_KERNEL};
    use netlink_packet_core::{Emitable, Parseable};

    fn wire(r: &Route, delete: bool) -> Vec<u8> {
        let m = r.to_message(delete);
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        buf
    }

    fn sample() -> Vec<Route> {
        let mut a = Route::new("10.244.1.0/24".parse().unwrap());
        a.gateway = Some("172.18.0.3".parse().unwrap());
        a.oif = Some(7);
        a.protocol = 99;
        a.priority = Some(100);
        a.src = Some("172.18.0.2".parse().unwrap());
        a.onlink = true;

        let mut b = Route::new("fd00:10:244:1::/64".parse().unwrap());
        b.gateway = Some("fc00:f853:ccd:e793::3".parse().unwrap());
        b.table = 1000;

        let mut c = Route::new("0.0.0.0/0".parse().unwrap());
        c.oif = Some(2);
        c.scope = Scope::Link;

        let mut e = Route::new("10.244.2.0/24".parse().unwrap());
        e.gateway = Some("fd00::3".parse().unwrap());
        e.oif = Some(3);
        e.protocol = 217;

        let mut d = Route::new("10.0.0.5/32".parse().unwrap());
        d.scope = Scope::Host;
        d.table = RT_TABLE_LOCAL;
        d.protocol = RTPROT_KERNEL;
        vec![a, b, c, d, e, Route::new("::/0".parse().unwrap())]
    }

    #[test]
    fn route_round_trips_through_the_wire_format() {
        for r in sample() {
            let bytes = wire(&r, false);
            assert_eq!(Route::parse(&bytes).as_ref(), Some(&r), "{r}");
            // The library's own decoder agrees with ours.
            let lib = RouteMessage::parse(&bytes[..]).unwrap();
            assert_eq!(lib, r.to_message(false));
        }
    }

    #[test]
    fn big_table_ids_go_in_the_attribute() {
        let mut r = Route::new("10.1.0.0/16".parse().unwrap());
        r.table = 1000;
        let m = r.to_message(false);
        assert_eq!(m.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
        r.table = 254;
        assert_eq!(r.to_message(false).header.table, 254);
    }

    #[test]
    fn delete_uses_wildcard_scope_and_type() {
        let mut r = Route::new("10.1.0.0/16".parse().unwrap());
        r.scope = Scope::Link;
        let m = r.to_message(true);
        assert_eq!(m.header.scope, RouteScope::NoWhere);
        assert_eq!(m.header.kind, RouteType::Unspec);
        assert_eq!(u8::from(m.header.protocol), RTPROT_BOOT);
    }

    #[test]
    fn unrepresentable_routes_are_skipped() {
        let r = Route::new("10.1.0.0/16".parse().unwrap());
        let mut m = r.to_message(false);
        m.header.kind = RouteType::Local;
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        assert_eq!(Route::parse(&buf), None);

        let mut m = r.to_message(false);
        m.header.flags = RouteFlags::Cloned;
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        assert_eq!(Route::parse(&buf), None);

        assert_eq!(Route::parse(&[2, 24]), None);
        let mut m = r.to_message(false);
        m.header.address_family = netlink_packet_route::AddressFamily::Bridge;
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        assert_eq!(Route::parse(&buf), None);
    }

    #[test]
    fn unknown_and_malformed_attributes_do_not_panic() {
        let r = &sample()[0];
        let mut bytes = wire(r, false);
        // An unknown attribute (type 200) is ignored.
        bytes.extend_from_slice(&[8, 0, 200, 0, 1, 2, 3, 4]);
        assert_eq!(Route::parse(&bytes).as_ref(), Some(r));
        // A gateway of the wrong length makes the route undecodable.
        let mut bytes = wire(&Route::new("10.0.0.0/8".parse().unwrap()), false);
        bytes.extend_from_slice(&[6, 0, RTA_GATEWAY as u8, 0, 1, 2, 0, 0]);
        assert_eq!(Route::parse(&bytes), None);
        // A truncated trailing attribute is ignored.
        let mut bytes = wire(r, false);
        bytes.extend_from_slice(&[40, 0, 1]);
        assert_eq!(Route::parse(&bytes).as_ref(), Some(r));
    }

    #[test]
    fn filter_and_display() {
        let r = &sample()[0];
        assert!(RouteFilter::default().matches(r));
        let f = RouteFilter {
            protocol: Some(99),
            table: Some(254),
            oif: Some(7),
        };
        assert!(f.matches(r));
        assert!(!RouteFilter { oif: Some(8), ..f }.matches(r));
        assert!(
            !RouteFilter {
                protocol: Some(3),
                ..f
            }
            .matches(r)
        );
        assert!(
            !RouteFilter {
                table: Some(255),
                ..f
            }
            .matches(r)
        );
        assert_eq!(
            r.to_string(),
            "10.244.1.0/24 via 172.18.0.3 dev #7 src 172.18.0.2 proto 99 metric 100 onlink"
        );
    }

    #[test]
    fn mixed_families_are_rejected_except_ipv4_via_ipv6() {
        let mut r = Route::new("fd00:1::/64".parse().unwrap());
        r.gateway = Some("10.0.0.1".parse().unwrap());
        assert!(matches!(r.validate(), Err(Error::Invalid(_))));
        let mut r = Route::new("10.0.0.0/8".parse().unwrap());
        r.src = Some("fd00::1".parse().unwrap());
        assert!(matches!(r.validate(), Err(Error::Invalid(_))));
        let mut r = Route::new("10.0.0.0/8".parse().unwrap());
        r.gateway = Some("fd00::1".parse().unwrap());
        assert!(r.validate().is_ok());
        assert!(r.gateway_via_other_family());
        let m = r.to_message(false);
        assert!(m.attributes.contains(&RouteAttribute::Via(RouteVia::Inet6(
            "fd00::1".parse().unwrap()
        ))));
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_)))
        );
    }

    #[test]
    fn via_of_another_kind_is_skipped() {
        // An IPv4 RTA_VIA (family AF_INET) is not something we make.
        let r = Route::new("10.0.0.0/8".parse().unwrap());
        let mut bytes = wire(&r, false);
        bytes.extend_from_slice(&[
            10,
            0,
            RTA_VIA as u8,
            0,
            libc::AF_INET as u8,
            0,
            1,
            2,
            3,
            4,
            0,
            0,
        ]);
        assert_eq!(Route::parse(&bytes), None);
    }
}

//! Range arithmetic, pure (no I/O): a [`Range`] is the inclusive interval
//! `[start, end]` of one subnet, with a gateway; a [`RangeSet`] is the ranges
//! one address is drawn from (one family). Addresses are handled as `u128`
//! (IPv4 as the low 32 bits) so both families share one code path.
//!
//! Never allocatable, even inside `[start, end]`: the gateway, the subnet's
//! network address and, for IPv4, its broadcast address.

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `ip` (an IPv4-mapped IPv6 address is IPv6 here: canonicalise first).
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
    /// `IPv4` or `IPv6`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
    fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// The address as a number (IPv4 in the low 32 bits).
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Inverse of [`to_u128`]; IPv4 values are truncated to 32 bits.
pub fn from_u128(family: Family, n: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// An IPv4-mapped IPv6 address becomes the IPv4 address (as the reference's
/// `To4()` does), so an address has one spelling on disk.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Why a range is invalid: which of its keys, and what is wrong (without the
/// key path, which the caller knows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeError {
    /// `subnet`, `rangeStart`, `rangeEnd`, `gateway`, or empty for the range
    /// as a whole.
    pub field: &'static str,
    /// What is wrong.
    pub msg: String,
}

fn err(field: &'static str, msg: String) -> RangeError {
    RangeError { field, msg }
}

/// One validated range: a subnet with its allocatable span and gateway, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    subnet: IpNet,
    family: Family,
    network: u128,
    last: u128,
    start: u128,
    end: u128,
    gateway: u128,
}

impl Range {
    /// Validates and fills the reference's defaults: `rangeStart` = network+1,
    /// `rangeEnd` = the last address (IPv4: broadcast-1; IPv6: the all-ones
    /// address, as the reference does), `gateway` = network+1.
    pub fn new(
        subnet: IpNet,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Range, RangeError> {
        if let IpNet::V6(n) = subnet
            && n.addr().to_ipv4_mapped().is_some()
        {
            return Err(err(
                "subnet",
                format!("{subnet}: IPv4-mapped IPv6 subnets are not supported"),
            ));
        }
        let family = Family::of(subnet.addr());
        if subnet.prefix_len() > family.bits() - 2 {
            return Err(err(
                "subnet",
                format!(
                    "{subnet} is too small to allocate from (the longest prefix is /{} for {})",
                    family.bits() - 2,
                    family.name()
                ),
            ));
        }
        if subnet.addr() != subnet.network() {
            return Err(err(
                "subnet",
                format!(
                    "{subnet} has host bits set: the network address for /{} is {}",
                    subnet.prefix_len(),
                    subnet.network()
                ),
            ));
        }
        let network = to_u128(subnet.network());
        let last = to_u128(subnet.broadcast());
        let in_subnet = |field: &'static str, ip: IpAddr| -> Result<u128, RangeError> {
            let ip = canonical(ip);
            if Family::of(ip) != family {
                return Err(err(
                    field,
                    format!(
                        "{ip} is {} but subnet {subnet} is {}",
                        Family::of(ip).name(),
                        family.name()
                    ),
                ));
            }
            let n = to_u128(ip);
            if n < network || n > last {
                return Err(err(field, format!("{ip} is outside subnet {subnet}")));
            }
            Ok(n)
        };
        let gateway = match gateway {
            Some(g) => in_subnet("gateway", g)?,
            None => network + 1,
        };
        let start = match start {
            Some(s) => in_subnet("rangeStart", s)?,
            None => network + 1,
        };
        let end = match end {
            Some(e) => in_subnet("rangeEnd", e)?,
            None if family == Family::V4 => last - 1,
            None => last,
        };
        if start > end {
            return Err(err(
                "rangeStart",
                format!(
                    "{} is after rangeEnd {}",
                    from_u128(family, start),
                    from_u128(family, end)
                ),
            ));
        }
        let r = Range {
            subnet,
            family,
            network,
            last,
            start,
            end,
            gateway,
        };
        if r.capacity() == 0 {
            return Err(err(
                "",
                format!(
                    "{r} holds no allocatable address (the gateway, network and broadcast addresses are never allocated)"
                ),
            ));
        }
        Ok(r)
    }

    /// The subnet.
    pub fn subnet(&self) -> IpNet {
        self.subnet
    }
    /// The subnet's family.
    pub fn family(&self) -> Family {
        self.family
    }
    /// `rangeStart`: the first address handed out.
    pub fn start(&self) -> IpAddr {
        from_u128(self.family, self.start)
    }
    /// `rangeEnd`: the last address handed out.
    pub fn end(&self) -> IpAddr {
        from_u128(self.family, self.end)
    }
    /// The gateway (never handed out).
    pub fn gateway(&self) -> IpAddr {
        from_u128(self.family, self.gateway)
    }
    pub(crate) fn start_n(&self) -> u128 {
        self.start
    }
    pub(crate) fn end_n(&self) -> u128 {
        self.end
    }

    fn number(&self, ip: IpAddr) -> Option<u128> {
        let ip = canonical(ip);
        (Family::of(ip) == self.family).then(|| to_u128(ip))
    }

    /// `ip` lies in `[start, end]` (reserved addresses included).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.number(ip)
            .is_some_and(|n| (self.start..=self.end).contains(&n))
    }

    /// Gateway, network address, or IPv4 broadcast: never handed out.
    pub(crate) fn is_reserved_n(&self, n: u128) -> bool {
        n == self.gateway || n == self.network || (self.family == Family::V4 && n == self.last)
    }

    /// Gateway, network address, or IPv4 broadcast: never handed out.
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        self.number(ip).is_some_and(|n| self.is_reserved_n(n))
    }

    /// In `[start, end]` and not reserved.
    pub fn is_allocatable(&self, ip: IpAddr) -> bool {
        self.number(ip)
            .is_some_and(|n| (self.start..=self.end).contains(&n) && !self.is_reserved_n(n))
    }

    /// How many addresses can be handed out (saturating at `u128::MAX`).
    pub fn capacity(&self) -> u128 {
        let size = (self.end - self.start).saturating_add(1);
        let mut reserved = vec![self.gateway, self.network];
        if self.family == Family::V4 {
            reserved.push(self.last);
        }
        reserved.sort_unstable();
        reserved.dedup();
        let inside = reserved
            .iter()
            .filter(|n| (self.start..=self.end).contains(*n))
            .count();
        size - inside as u128
    }

    /// The `[start, end]` intervals intersect (same family only).
    pub fn overlaps(&self, other: &Range) -> bool {
        self.family == other.family && self.start <= other.end && other.start <= self.end
    }

    fn is_default_span(&self) -> bool {
        let end = if self.family == Family::V4 {
            self.last - 1
        } else {
            self.last
        };
        self.start == self.network + 1 && self.end == end
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.subnet)?;
        if !self.is_default_span() {
            write!(f, " [{}-{}]", self.start(), self.end())?;
        }
        Ok(())
    }
}

/// The ranges one address is drawn from, in order; all of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<Range>,
    key: String,
}

impl RangeSet {
    /// `ranges` must be non-empty, of one family and non-overlapping; the
    /// config layer checks that and reports it with key paths. `key` says
    /// where the set came from (e.g. `ipam.ranges[0]`), for messages.
    pub(crate) fn new(ranges: Vec<Range>, key: impl Into<String>) -> RangeSet {
        RangeSet {
            ranges,
            key: key.into(),
        }
    }

    /// The ranges, in allocation order.
    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    /// The configuration key the set came from, e.g. `ipam.ranges[1]`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The family of the set's ranges.
    pub fn family(&self) -> Family {
        self.ranges.first().map_or(Family::V4, Range::family)
    }

    /// The range whose `[start, end]` holds `ip`.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    /// Whether `ip` lies in one of the ranges (reserved addresses included).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    /// Whether `ip` could be handed out from this set.
    pub fn is_allocatable(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.is_allocatable(ip))
    }

    /// How many addresses the set can hand out (saturating).
    pub fn capacity(&self) -> u128 {
        self.ranges
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.capacity()))
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn range(
        subnet: &str,
        start: Option<&str>,
        end: Option<&str>,
        gw: Option<&str>,
    ) -> Result<Range, RangeError> {
        Range::new(
            subnet.parse().unwrap(),
            start.map(ip),
            end.map(ip),
            gw.map(ip),
        )
    }

    #[test]
    fn v4_defaults_match_the_reference() {
        let r = range("10.1.2.0/24", None, None, None).unwrap();
        assert_eq!(r.start(), ip("10.1.2.1"));
        assert_eq!(r.end(), ip("10.1.2.254"));
        assert_eq!(r.gateway(), ip("10.1.2.1"));
        assert_eq!(r.capacity(), 253, ".2 to .254");
        assert!(!r.is_allocatable(ip("10.1.2.1")));
        assert!(r.is_allocatable(ip("10.1.2.254")));
        assert_eq!(r.to_string(), "10.1.2.0/24");
    }

    #[test]
    fn v6_defaults_match_the_reference() {
        let r = range("2001:db8:1::/64", None, None, None).unwrap();
        assert_eq!(r.start(), ip("2001:db8:1::1"));
        assert_eq!(
            r.end(),
            ip("2001:db8:1:0:ffff:ffff:ffff:ffff"),
            "IPv6 keeps the last address"
        );
        assert_eq!(r.gateway(), ip("2001:db8:1::1"));
        let small = range("fd00::/126", None, None, None).unwrap();
        assert_eq!(small.capacity(), 2, "::2 and ::3");
        assert!(small.is_allocatable(ip("fd00::3")));
    }

    #[test]
    fn smallest_subnets() {
        let r = range("10.0.0.0/30", None, None, None).unwrap();
        assert_eq!(r.capacity(), 1);
        assert_eq!(
            range("10.0.0.0/31", None, None, None).unwrap_err().field,
            "subnet"
        );
        assert_eq!(
            range("10.0.0.0/32", None, None, None).unwrap_err().field,
            "subnet"
        );
        assert_eq!(
            range("fd00::/127", None, None, None).unwrap_err().field,
            "subnet"
        );
    }

    #[test]
    fn explicit_values_are_checked() {
        let e = range("10.0.0.0/24", Some("10.0.1.5"), None, None).unwrap_err();
        assert_eq!(
            (e.field, e.msg.as_str()),
            ("rangeStart", "10.0.1.5 is outside subnet 10.0.0.0/24")
        );
        let e = range("10.0.0.0/24", None, Some("10.0.1.5"), None).unwrap_err();
        assert_eq!(e.field, "rangeEnd");
        let e = range("10.0.0.0/24", None, None, Some("10.0.1.1")).unwrap_err();
        assert_eq!(e.field, "gateway");
        let e = range("10.0.0.0/24", Some("10.0.0.20"), Some("10.0.0.10"), None).unwrap_err();
        assert_eq!(e.field, "rangeStart");
        assert!(e.msg.contains("after rangeEnd 10.0.0.10"), "{}", e.msg);
        let e = range("10.0.0.0/24", Some("fd00::1"), None, None).unwrap_err();
        assert!(e.msg.contains("IPv6"), "{}", e.msg);
        let e = range("10.0.0.1/24", None, None, None).unwrap_err();
        assert!(e.msg.contains("host bits"), "{}", e.msg);
        let e = range("10.0.0.0/24", Some("10.0.0.1"), Some("10.0.0.1"), None).unwrap_err();
        assert_eq!(e.field, "", "only the gateway in range");
    }

    #[test]
    fn reserved_addresses_inside_an_explicit_span() {
        let r = range(
            "10.0.0.0/29",
            Some("10.0.0.0"),
            Some("10.0.0.7"),
            Some("10.0.0.3"),
        )
        .unwrap();
        assert_eq!(r.capacity(), 5, "8 minus network, broadcast, gateway");
        for a in ["10.0.0.0", "10.0.0.3", "10.0.0.7"] {
            assert!(r.contains(ip(a)) && !r.is_allocatable(ip(a)), "{a}");
        }
        assert_eq!(r.to_string(), "10.0.0.0/29 [10.0.0.0-10.0.0.7]");
    }

    #[test]
    fn overlap_is_on_start_end_intervals() {
        let a = range("10.0.0.0/24", None, Some("10.0.0.100"), None).unwrap();
        let b = range("10.0.0.0/24", Some("10.0.0.101"), None, None).unwrap();
        let c = range("10.0.0.0/24", Some("10.0.0.100"), None, None).unwrap();
        let v6 = range("fd00::/120", None, None, None).unwrap();
        assert!(!a.overlaps(&b));
        assert!(a.overlaps(&c) && c.overlaps(&a));
        assert!(!a.overlaps(&v6));
    }

    #[test]
    fn mapped_addresses_are_canonical() {
        let r = range("10.0.0.0/24", None, None, None).unwrap();
        assert!(r.contains(ip("::ffff:10.0.0.5")));
        assert!(range("::ffff:10.0.0.0/120", None, None, None).is_err());
    }
}

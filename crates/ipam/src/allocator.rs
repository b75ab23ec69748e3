//! The allocation decision, pure: given a range set, the addresses already
//! taken and the last one reserved in this set, which address comes next.
//!
//! The order is the reference's round robin: start right after the last
//! reserved address when it lies in the set (so a crash-looping container
//! does not get the same address back until the whole set has been used),
//! else at the first range's `rangeStart`; walk each range up to `rangeEnd`,
//! go on with the next range, wrap around, and stop after one full lap. The
//! gateway, network and IPv4 broadcast addresses are skipped.

use crate::range::{Family, RangeSet, canonical, from_u128};
use std::net::{IpAddr, Ipv6Addr};

/// A set of addresses (both families), as a sorted vector: built once per
/// operation from a directory listing, then queried; cheaper than hashing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Taken(Vec<u128>);

/// One number per address of either family: IPv4 as its IPv4-mapped IPv6
/// form (which, canonicalised, no IPv6 address takes).
fn key(ip: IpAddr) -> u128 {
    match canonical(ip) {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn unkey(k: u128) -> IpAddr {
    canonical(IpAddr::V6(Ipv6Addr::from(k)))
}

impl Taken {
    /// An empty set.
    pub fn new() -> Taken {
        Taken::default()
    }
    /// Whether `ip` is in the set (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.binary_search(&key(ip)).is_ok()
    }
    /// `false` if it was already there.
    pub fn insert(&mut self, ip: IpAddr) -> bool {
        match self.0.binary_search(&key(ip)) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, key(ip));
                true
            }
        }
    }
    /// `false` if it was not there.
    pub fn remove(&mut self, ip: IpAddr) -> bool {
        match self.0.binary_search(&key(ip)) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }
    /// The number of addresses.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The addresses, sorted by their IPv6 form (IPv4 as IPv4-mapped).
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.0.iter().map(|k| unkey(*k))
    }
}

impl FromIterator<IpAddr> for Taken {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(iter: I) -> Taken {
        let mut v: Vec<u128> = iter.into_iter().map(key).collect();
        v.sort_unstable();
        v.dedup();
        Taken(v)
    }
}

/// Every allocatable address of `set` once, in round-robin order after `last`.
pub fn candidates(set: &RangeSet, last: Option<IpAddr>) -> Candidates<'_> {
    let first = last
        .and_then(|ip| {
            let idx = set.ranges().iter().position(|r| r.contains(ip))?;
            let n = crate::range::to_u128(crate::range::canonical(ip));
            Some(successor(set, (idx, n)))
        })
        .or_else(|| set.ranges().first().map(|r| (0, r.start_n())));
    Candidates {
        set,
        family: set.family(),
        first,
        pos: None,
    }
}

/// The first candidate not in `taken`, or `None` when the set is exhausted.
pub fn next_free(set: &RangeSet, last: Option<IpAddr>, taken: &Taken) -> Option<IpAddr> {
    if used(set, taken) >= set.capacity() {
        return None;
    }
    // A free address exists, so this stops within |taken| + a few steps
    // even in a huge IPv6 range.
    candidates(set, last).find(|ip| !taken.contains(*ip))
}

/// How many allocatable addresses of `set` are in `taken`.
pub fn used(set: &RangeSet, taken: &Taken) -> u128 {
    taken.iter().filter(|ip| set.is_allocatable(*ip)).count() as u128
}

/// Position = (range index, address as a number).
type Pos = (usize, u128);

fn successor(set: &RangeSet, (idx, n): Pos) -> Pos {
    let ranges = set.ranges();
    if n >= ranges[idx].end_n() {
        let next = (idx + 1) % ranges.len();
        (next, ranges[next].start_n())
    } else {
        (idx, n + 1)
    }
}

pub struct Candidates<'a> {
    set: &'a RangeSet,
    family: Family,
    /// Where the lap starts; `None` for an empty set.
    first: Option<Pos>,
    /// The last position visited.
    pos: Option<Pos>,
}

impl Iterator for Candidates<'_> {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        let first = self.first?;
        loop {
            let p = match self.pos {
                None => first,
                Some(p) => {
                    let s = successor(self.set, p);
                    if s == first {
                        self.first = None; // lap complete
                        return None;
                    }
                    s
                }
            };
            self.pos = Some(p);
            if !self.set.ranges()[p.0].is_reserved_n(p.1) {
                return Some(from_u128(self.family, p.1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::Range;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    /// (subnet, rangeStart, rangeEnd, gateway)
    type Spec<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);

    fn set(specs: &[Spec<'_>]) -> RangeSet {
        RangeSet::new(
            specs
                .iter()
                .map(|(s, a, b, g)| {
                    Range::new(s.parse().unwrap(), a.map(ip), b.map(ip), g.map(ip)).unwrap()
                })
                .collect(),
            "test",
        )
    }

    #[test]
    fn starts_at_range_start_then_after_last_reserved() {
        let s = set(&[("10.0.0.0/29", None, None, None)]);
        let all: Vec<_> = candidates(&s, None).collect();
        let want: Vec<IpAddr> = (2..=6).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        assert_eq!(all, want, "gateway .1 and broadcast .7 skipped");
        let after4: Vec<_> = candidates(&s, Some(ip("10.0.0.4"))).collect();
        assert_eq!(after4, [5, 6, 2, 3, 4].map(|i| ip(&format!("10.0.0.{i}"))));
        // A last-reserved outside the set (ranges changed) restarts at rangeStart.
        assert_eq!(
            candidates(&s, Some(ip("192.168.0.1"))).next(),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            candidates(&s, Some(ip("fd00::1"))).next(),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn walks_ranges_in_order_and_wraps() {
        let s = set(&[
            ("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.11"), None),
            (
                "10.0.1.0/24",
                Some("10.0.1.20"),
                Some("10.0.1.21"),
                Some("10.0.1.21"),
            ),
        ]);
        let got: Vec<_> = candidates(&s, Some(ip("10.0.0.11"))).collect();
        assert_eq!(got, [ip("10.0.1.20"), ip("10.0.0.10"), ip("10.0.0.11")]);
    }

    #[test]
    fn next_free_skips_taken_and_reports_exhaustion() {
        let s = set(&[("10.0.0.0/30", None, None, None)]);
        let mut taken = Taken::new();
        assert_eq!(next_free(&s, None, &taken), Some(ip("10.0.0.2")));
        taken.insert(ip("10.0.0.2"));
        assert_eq!(next_free(&s, None, &taken), None);
        // Files for reserved or foreign addresses do not count as used.
        let mut other: Taken = [ip("10.0.0.1"), ip("10.0.0.3"), ip("10.9.9.9")]
            .into_iter()
            .collect();
        assert_eq!(next_free(&s, None, &other), Some(ip("10.0.0.2")));
        other.insert(ip("10.0.0.2"));
        assert_eq!(used(&s, &other), 1);
    }

    #[test]
    fn huge_v6_range_is_lazy() {
        let s = set(&[("fd00::/64", None, None, None)]);
        let taken: Taken = (2..1000u32).map(|i| ip(&format!("fd00::{i:x}"))).collect();
        assert_eq!(next_free(&s, None, &taken), Some(ip("fd00::3e8")));
    }

    #[test]
    fn taken_keeps_families_apart() {
        let mut t: Taken = [ip("10.0.0.1"), ip("::a00:1"), ip("10.0.0.1")]
            .into_iter()
            .collect();
        assert_eq!(
            t.len(),
            2,
            "10.0.0.1 and ::10.0.0.1 differ; duplicates collapse"
        );
        assert!(
            t.contains(ip("::ffff:10.0.0.1")),
            "IPv4-mapped is the IPv4 address"
        );
        assert!(!t.insert(ip("10.0.0.1")));
        assert!(t.insert(ip("0.0.0.0")));
        assert!(t.remove(ip("::a00:1")));
        assert!(!t.remove(ip("::a00:1")));
        let back: Vec<IpAddr> = t.iter().collect();
        assert_eq!(back, [ip("0.0.0.0"), ip("10.0.0.1")]);
    }

    /// A small range set: one or two v4 ranges inside a /26, or one v6 range.
    fn arb_set() -> impl Strategy<Value = RangeSet> {
        let v4 = (
            26u8..=30,
            any::<u16>(),
            any::<u16>(),
            any::<u16>(),
            any::<bool>(),
            0u8..3,
        )
            .prop_map(|(prefix, a, b, g, two, gw_mode)| {
                let size = 1u32 << (32 - prefix);
                let base = 0x0a00_0000u32; // 10.0.0.0
                let mk = |net: u32| {
                    let (x, y) = ((a as u32) % size, (b as u32) % size);
                    let (lo, hi) = (x.min(y), x.max(y));
                    let gw = match gw_mode {
                        0 => None,
                        _ => Some(IpAddr::from((net + (g as u32) % size).to_be_bytes())),
                    };
                    let sn = format!("{}/{prefix}", std::net::Ipv4Addr::from(net))
                        .parse()
                        .unwrap();
                    Range::new(
                        sn,
                        Some(IpAddr::from((net + lo).to_be_bytes())),
                        Some(IpAddr::from((net + hi).to_be_bytes())),
                        gw,
                    )
                };
                let mut ranges: Vec<Range> = [base, base + 256]
                    .iter()
                    .filter_map(|n| mk(*n).ok())
                    .collect();
                if !two {
                    ranges.truncate(1);
                }
                ranges
            });
        let v6 = (120u8..=126, any::<u8>(), any::<u8>()).prop_map(|(prefix, a, b)| {
            let size = 1u32 << (128 - prefix);
            let (x, y) = ((a as u32) % size, (b as u32) % size);
            let (lo, hi) = (x.min(y), x.max(y));
            let at = |o: u32| IpAddr::V6(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | o as u128));
            let sn = format!("fd00::/{prefix}").parse().unwrap();
            Range::new(sn, Some(at(lo)), Some(at(hi)), None)
                .into_iter()
                .collect::<Vec<_>>()
        });
        prop_oneof![v4, v6]
            .prop_filter("at least one valid range", |r| !r.is_empty())
            .prop_map(|r| RangeSet::new(r, "test"))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc,
        Release(usize),
    }

    proptest! {
        #[test]
        fn allocate_release_never_duplicates(set in arb_set(), ops in prop::collection::vec(
            prop_oneof![3 => Just(Op::Alloc), 1 => any::<usize>().prop_map(Op::Release)], 1..200)) {
            let cap = set.capacity();
            let mut taken = Taken::new();
            let mut held: Vec<IpAddr> = Vec::new();
            let mut last = None;
            for op in ops {
                match op {
                    Op::Alloc => match next_free(&set, last, &taken) {
                        Some(ip) => {
                            prop_assert!(!taken.contains(ip), "duplicate {ip}");
                            let r = set.range_for(ip);
                            prop_assert!(r.is_some(), "{ip} outside every [start,end]");
                            let r = r.unwrap();
                            prop_assert!(ip != r.gateway(), "gateway {ip} handed out");
                            prop_assert!(ip != r.subnet().network(), "network {ip} handed out");
                            prop_assert!(!(ip.is_ipv4() && ip == r.subnet().broadcast()), "broadcast {ip}");
                            taken.insert(ip);
                            held.push(ip);
                            last = Some(ip);
                        }
                        None => prop_assert_eq!(held.len() as u128, cap, "exhausted before capacity"),
                    },
                    Op::Release(i) if !held.is_empty() => {
                        let ip = held.swap_remove(i % held.len());
                        prop_assert!(taken.remove(ip));
                    }
                    Op::Release(_) => {}
                }
                prop_assert!(held.len() as u128 <= cap);
            }
        }

        #[test]
        fn exhausts_exactly_at_capacity(set in arb_set(), start_after in any::<bool>()) {
            let mut taken = Taken::new();
            let mut last = if start_after { set.ranges()[0].end().into() } else { None };
            let mut n = 0u128;
            while let Some(ip) = next_free(&set, last, &taken) {
                prop_assert!(taken.insert(ip));
                last = Some(ip);
                n += 1;
                prop_assert!(n <= set.capacity());
            }
            prop_assert_eq!(n, set.capacity());
            // One lap of candidates is exactly the allocatable addresses.
            let lap: Vec<_> = candidates(&set, None).collect();
            prop_assert_eq!(lap.len() as u128, set.capacity());
            prop_assert_eq!(lap.iter().collect::<HashSet<_>>().len(), lap.len());
        }

        #[test]
        fn round_robin_continues_after_last(set in arb_set(), k in 0usize..64) {
            let lap: Vec<_> = candidates(&set, None).collect();
            let last = lap[k % lap.len()];
            let next = candidates(&set, Some(last)).next();
            let want = lap[(k % lap.len() + 1) % lap.len()];
            prop_assert_eq!(next, Some(want));
        }

        #[test]
        fn taken_behaves_like_a_set(ops in prop::collection::vec((any::<bool>(), any::<bool>(), 0u8..16), 0..100)) {
            let mut model: HashSet<IpAddr> = HashSet::new();
            let mut t = Taken::new();
            for (insert, v6, low) in ops {
                let a = if v6 { ip(&format!("::{low:x}")) } else { ip(&format!("0.0.0.{low}")) };
                if insert {
                    prop_assert_eq!(t.insert(a), model.insert(a));
                } else {
                    prop_assert_eq!(t.remove(a), model.remove(&a));
                }
                prop_assert_eq!(t.len(), model.len());
                prop_assert!(model.iter().all(|m| t.contains(*m)));
            }
        }
    }
}

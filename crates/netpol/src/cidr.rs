//! Address ranges: ipBlock `cidr` minus `except` as disjoint intervals and
//! unions. Interval sets take the intervals as they are (one element per
//! range, `a-b`): N excepts make at most N+1 ranges, where prefixes would
//! take up to 2·128 per except.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Inclusive address intervals of one family, sorted, disjoint and not
/// adjacent (so equal sets have equal representations).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ranges {
    /// IPv6 rather than IPv4.
    pub v6: bool,
    iv: Vec<(u128, u128)>,
}

fn bits(v6: bool) -> u32 {
    if v6 { 128 } else { 32 }
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v6: bool, x: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(x))
    } else {
        // a v4 range never holds more than 32 bits
        IpAddr::V4(Ipv4Addr::from(x as u32))
    }
}

/// The last address of the aligned block of 2^size addresses at `x`
/// (`x` is aligned, so this cannot overflow).
fn block_end(x: u128, size: u32) -> u128 {
    if size >= 128 {
        u128::MAX
    } else {
        x + ((1u128 << size) - 1)
    }
}

fn net_bounds(n: &IpNet) -> (u128, u128) {
    let n = n.trunc();
    (to_u128(n.network()), to_u128(n.broadcast()))
}

impl Ranges {
    /// No address of the family.
    pub fn empty(v6: bool) -> Ranges {
        Ranges { v6, iv: Vec::new() }
    }

    /// Every address of the family.
    pub fn all(v6: bool) -> Ranges {
        let max = if v6 { u128::MAX } else { u32::MAX as u128 };
        Ranges {
            v6,
            iv: vec![(0, max)],
        }
    }

    /// The addresses of `n`.
    pub fn of_net(n: &IpNet) -> Ranges {
        Ranges {
            v6: matches!(n, IpNet::V6(_)),
            iv: vec![net_bounds(n)],
        }
    }

    /// Whether there is no address.
    pub fn is_empty(&self) -> bool {
        self.iv.is_empty()
    }

    /// Whether `a` is in the ranges (an address of the other family never is).
    pub fn contains(&self, a: IpAddr) -> bool {
        if a.is_ipv6() != self.v6 {
            return false;
        }
        let x = to_u128(a);
        self.iv.iter().any(|&(lo, hi)| lo <= x && x <= hi)
    }

    /// Adds one address.
    pub fn add_addr(&mut self, a: IpAddr) {
        if a.is_ipv6() == self.v6 {
            let x = to_u128(a);
            self.iv.push((x, x));
            self.normalize();
        }
    }

    /// Many addresses at once (one sort and merge, not one per address).
    pub fn add_addrs(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        let v6 = self.v6;
        self.iv.extend(
            addrs
                .into_iter()
                .filter(|a| a.is_ipv6() == v6)
                .map(|a| (to_u128(a), to_u128(a))),
        );
        self.normalize();
    }

    /// Sorts and merges overlapping or adjacent intervals.
    fn normalize(&mut self) {
        self.iv.sort_unstable();
        let mut out: Vec<(u128, u128)> = Vec::with_capacity(self.iv.len());
        for &(lo, hi) in &self.iv {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        self.iv = out;
    }

    /// Adds the ranges of `other` (of the same family; of the other, nothing).
    pub fn add(&mut self, other: &Ranges) {
        if other.v6 == self.v6 {
            self.iv.extend_from_slice(&other.iv);
            self.normalize();
        }
    }

    /// Removes `n` (an `except`).
    pub fn subtract(&mut self, n: &IpNet) {
        if matches!(n, IpNet::V6(_)) != self.v6 {
            return;
        }
        let (slo, shi) = net_bounds(n);
        let mut out = Vec::with_capacity(self.iv.len() + 1);
        for &(lo, hi) in &self.iv {
            if shi < lo || hi < slo {
                out.push((lo, hi));
                continue;
            }
            if lo < slo {
                out.push((lo, slo - 1));
            }
            if shi < hi {
                out.push((shi + 1, hi));
            }
        }
        self.iv = out;
    }

    /// Removes every net of `nets` in one sort and sweep (N excepts cost
    /// N log N, not N times the ranges).
    pub fn subtract_all<'n>(&mut self, nets: impl IntoIterator<Item = &'n IpNet>) {
        let v6 = self.v6;
        let mut cut = Ranges {
            v6,
            iv: nets
                .into_iter()
                .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                .map(net_bounds)
                .collect(),
        };
        cut.normalize();
        let mut out = Vec::with_capacity(self.iv.len() + cut.iv.len());
        let mut j = 0;
        for &(lo, hi) in &self.iv {
            let mut x = lo;
            let mut open = true;
            // cuts ending before this range cannot touch later ones either
            while j < cut.iv.len() && cut.iv[j].1 < x {
                j += 1;
            }
            let mut k = j;
            while open && k < cut.iv.len() && cut.iv[k].0 <= hi {
                let (clo, chi) = cut.iv[k];
                if clo > x {
                    out.push((x, clo - 1));
                }
                if chi >= hi {
                    open = false;
                } else {
                    x = chi + 1;
                    k += 1;
                }
            }
            if open {
                out.push((x, hi));
            }
        }
        self.iv = out;
    }

    /// The number of ranges (elements of an interval set).
    pub fn len(&self) -> usize {
        self.iv.len()
    }

    /// The fewest prefixes covering exactly these ranges, ascending.
    pub fn to_nets(&self) -> Vec<IpNet> {
        let w = bits(self.v6);
        let mut out = Vec::new();
        for &(lo, hi) in &self.iv {
            let mut x = lo;
            loop {
                // the largest aligned block at x that stays within hi
                let mut size = if x == 0 { w } else { x.trailing_zeros().min(w) };
                while block_end(x, size) > hi {
                    size -= 1;
                }
                let len = (w - size) as u8;
                let net = if self.v6 {
                    Ipv6Net::new(Ipv6Addr::from(x), len).map(IpNet::V6)
                } else {
                    Ipv4Net::new(Ipv4Addr::from(x as u32), len).map(IpNet::V4)
                };
                // lengths are within the family's bits by construction
                if let Ok(n) = net {
                    out.push(n);
                }
                let end = block_end(x, size);
                if end >= hi {
                    break;
                }
                x = end + 1;
            }
        }
        out
    }

    /// The first and last address of each range (for tests and listings).
    pub fn intervals(&self) -> Vec<(IpAddr, IpAddr)> {
        self.iv
            .iter()
            .map(|&(lo, hi)| (from_u128(self.v6, lo), from_u128(self.v6, hi)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn nets(r: &Ranges) -> Vec<String> {
        r.to_nets().iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn except_is_a_cidr_difference() {
        let mut r = Ranges::of_net(&net("10.0.0.0/8"));
        r.subtract(&net("10.1.0.0/16"));
        assert_eq!(
            nets(&r),
            [
                "10.0.0.0/16",
                "10.2.0.0/15",
                "10.4.0.0/14",
                "10.8.0.0/13",
                "10.16.0.0/12",
                "10.32.0.0/11",
                "10.64.0.0/10",
                "10.128.0.0/9"
            ]
        );
        assert!(r.contains("10.0.255.255".parse().unwrap()));
        assert!(!r.contains("10.1.2.3".parse().unwrap()));
        assert!(!r.contains("fd00::1".parse().unwrap()), "other family");
        // an except covering everything leaves nothing
        r.subtract(&net("0.0.0.0/0"));
        assert!(r.is_empty());
    }

    #[test]
    fn host_bits_are_ignored_and_whole_families_work() {
        assert_eq!(nets(&Ranges::of_net(&net("10.1.2.3/24"))), ["10.1.2.0/24"]);
        assert_eq!(nets(&Ranges::all(false)), ["0.0.0.0/0"]);
        assert_eq!(nets(&Ranges::all(true)), ["::/0"]);
        let mut r = Ranges::all(true);
        r.subtract(&net("::/1"));
        assert_eq!(nets(&r), ["8000::/1"]);
        let mut r = Ranges::all(false);
        r.subtract(&net("255.255.255.255/32"));
        assert_eq!(nets(&r).len(), 32);
    }

    #[test]
    fn unions_merge_adjacent_ranges() {
        let mut r = Ranges::empty(false);
        r.add_addr("10.0.0.1".parse().unwrap());
        r.add_addr("10.0.0.0".parse().unwrap());
        r.add(&Ranges::of_net(&net("10.0.0.2/31")));
        assert_eq!(nets(&r), ["10.0.0.0/30"]);
        r.add_addr("fd00::1".parse().unwrap()); // other family: ignored
        assert_eq!(r.intervals().len(), 1);
    }

    #[test]
    fn n_excepts_make_at_most_n_plus_one_ranges() {
        let mut r = Ranges::all(true);
        let ex: Vec<IpNet> = (1..=1000u32)
            .map(|i| IpNet::V6(Ipv6Net::new(Ipv6Addr::from((i as u128) << 64 | 7), 128).unwrap()))
            .collect();
        r.subtract_all(&ex);
        assert_eq!(r.len(), 1001);
        assert!(!r.contains("0:0:0:1::7".parse().unwrap()));
        assert!(r.contains("0:0:0:1::8".parse().unwrap()));
        assert!(r.to_nets().len() > 50_000, "as prefixes it would be");
    }

    proptest! {
        #[test]
        fn subtract_all_is_subtract_one_by_one(
            base in any::<u32>(), len in 0u8..=32,
            excepts in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..12),
        ) {
            let block = IpNet::V4(Ipv4Net::new(Ipv4Addr::from(base), len).unwrap());
            let ex: Vec<IpNet> = excepts.iter()
                .map(|&(a, l)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap())).collect();
            let mut one = Ranges::of_net(&block);
            for e in &ex { one.subtract(e); }
            let mut all = Ranges::of_net(&block);
            all.add(&Ranges::of_net(&"fd00::/8".parse().unwrap())); // other family: no-op
            all.subtract_all(&ex);
            prop_assert_eq!(one, all);
        }

        #[test]
        fn prefixes_cover_exactly_the_ranges(
            base in any::<u32>(), len in 0u8..=32,
            excepts in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..4),
            probes in proptest::collection::vec(any::<u32>(), 32),
        ) {
            let block = IpNet::V4(Ipv4Net::new(Ipv4Addr::from(base), len).unwrap());
            let ex: Vec<IpNet> = excepts.iter()
                .map(|&(a, l)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap())).collect();
            let mut r = Ranges::of_net(&block);
            for e in &ex { r.subtract(e); }
            let covered = r.to_nets();
            // probe near the edges too
            let mut points: Vec<u32> = probes;
            for n in covered.iter().chain(ex.iter()).chain([&block]) {
                if let (IpAddr::V4(a), IpAddr::V4(b)) = (n.network(), n.broadcast()) {
                    let (a, b) = (u32::from(a), u32::from(b));
                    points.extend([a, b, a.wrapping_sub(1), b.wrapping_add(1)]);
                }
            }
            for p in points {
                let a = IpAddr::V4(Ipv4Addr::from(p));
                let direct = block.contains(&a) && !ex.iter().any(|e| e.contains(&a));
                prop_assert_eq!(r.contains(a), direct);
                prop_assert_eq!(covered.iter().filter(|n| n.contains(&a)).count(), direct as usize);
            }
        }
    }
}

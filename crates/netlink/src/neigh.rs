//! The neighbour tables (ARP for IPv4, NDP for IPv6): listing only.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_DUMP, NlasIterator};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::neighbour::NeighbourMessage;

use crate::error::Result;
use crate::route::Family;
use crate::socket::Handle;

const RTM_NEWNEIGH: u16 = 28;
const NDMSG_LEN: usize = 12;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

pub const NUD_INCOMPLETE: u16 = 0x01;
pub const NUD_REACHABLE: u16 = 0x02;
pub const NUD_STALE: u16 = 0x04;
pub const NUD_DELAY: u16 = 0x08;
pub const NUD_PROBE: u16 = 0x10;
pub const NUD_FAILED: u16 = 0x20;
pub const NUD_NOARP: u16 = 0x40;
pub const NUD_PERMANENT: u16 = 0x80;

/// One neighbour entry: an address on a link and, once resolved, its
/// link-layer address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Neighbour {
    pub index: u32,
    pub addr: IpAddr,
    /// The link-layer address (a MAC on Ethernet), when known.
    pub lladdr: Option<Vec<u8>>,
    /// NUD_* bits.
    pub state: u16,
}

impl Neighbour {
    /// Whether the entry says which link-layer address the neighbour had
    /// (reachable, or seen and not yet re-confirmed: stale/delay/probe, or
    /// permanent): not incomplete, failed or without an address.
    pub fn is_resolved(&self) -> bool {
        let good = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT;
        self.state & good != 0 && self.lladdr.as_ref().is_some_and(|l| !l.is_empty())
    }

    pub(crate) fn parse(payload: &[u8]) -> Option<Neighbour> {
        let h = payload.get(..NDMSG_LEN)?;
        let fam = match i32::from(h[0]) {
            libc::AF_INET => Family::V4,
            libc::AF_INET6 => Family::V6,
            _ => return None,
        };
        let index = u32::from_ne_bytes(<[u8; 4]>::try_from(&h[4..8]).ok()?);
        let state = u16::from_ne_bytes(<[u8; 2]>::try_from(&h[8..10]).ok()?);
        let mut addr = None;
        let mut lladdr = None;
        for nla in NlasIterator::new(payload.get(NDMSG_LEN..)?).flatten() {
            let v = nla.value();
            match nla.kind() {
                NDA_DST => {
                    addr = Some(match fam {
                        Family::V4 => IpAddr::from(<[u8; 4]>::try_from(v).ok()?),
                        Family::V6 => IpAddr::from(<[u8; 16]>::try_from(v).ok()?),
                    })
                }
                NDA_LLADDR => lladdr = Some(v.to_vec()),
                _ => {}
            }
        }
        Some(Neighbour {
            index,
            addr: addr?,
            lladdr,
            state,
        })
    }
}

impl Handle {
    /// The neighbour entries of both families (of one link, or all).
    pub fn neighbours(&mut self, index: Option<u32>) -> Result<Vec<Neighbour>> {
        self.sock.collect(
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            NLM_F_DUMP,
            true,
            || "list neighbours".to_string(),
            |kind, p| {
                if kind != RTM_NEWNEIGH {
                    return None;
                }
                Neighbour::parse(p).filter(|n| index.is_none_or(|i| i == n.index))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(family: u8, index: u32, state: u16, dst: &[u8], ll: Option<&[u8]>) -> Vec<u8> {
        let mut b = vec![family, 0, 0, 0];
        b.extend_from_slice(&index.to_ne_bytes());
        b.extend_from_slice(&state.to_ne_bytes());
        b.extend_from_slice(&[0, 1]);
        let mut attr = |kind: u16, v: &[u8]| {
            let len = 4 + v.len();
            b.extend_from_slice(&(len as u16).to_ne_bytes());
            b.extend_from_slice(&kind.to_ne_bytes());
            b.extend_from_slice(v);
            b.resize(b.len().div_ceil(4) * 4, 0);
        };
        attr(NDA_DST, dst);
        if let Some(l) = ll {
            attr(NDA_LLADDR, l);
        }
        b
    }

    #[test]
    fn parses_both_families_and_states() {
        let mac = [0x02, 0x42, 0xac, 0x12, 0, 3];
        let n = Neighbour::parse(&msg(
            libc::AF_INET as u8,
            2,
            NUD_REACHABLE,
            &[172, 18, 0, 3],
            Some(&mac),
        ))
        .unwrap();
        assert_eq!(n.addr, "172.18.0.3".parse::<IpAddr>().unwrap());
        assert_eq!((n.index, n.lladdr.as_deref()), (2, Some(&mac[..])));
        assert!(n.is_resolved());
        let ll: std::net::Ipv6Addr = "fe80::42:acff:fe12:3".parse().unwrap();
        let n = Neighbour::parse(&msg(
            libc::AF_INET6 as u8,
            2,
            NUD_STALE,
            &ll.octets(),
            Some(&mac),
        ))
        .unwrap();
        assert_eq!(n.addr, IpAddr::V6(ll));
        assert!(n.is_resolved());
        // Incomplete or failed entries, or none without an address, do not count.
        for (state, ll) in [
            (NUD_INCOMPLETE, None),
            (NUD_FAILED, Some(&mac[..])),
            (NUD_REACHABLE, None),
        ] {
            let n =
                Neighbour::parse(&msg(libc::AF_INET as u8, 2, state, &[10, 0, 0, 1], ll)).unwrap();
            assert!(!n.is_resolved(), "{n:?}");
        }
        // Garbage does not panic.
        assert_eq!(Neighbour::parse(&[2, 0, 0]), None);
        assert_eq!(
            Neighbour::parse(&msg(7, 1, NUD_REACHABLE, &[1, 2, 3, 4], None)),
            None
        );
        assert_eq!(
            Neighbour::parse(&msg(
                libc::AF_INET as u8,
                1,
                NUD_REACHABLE,
                &[1, 2, 3],
                None
            )),
            None
        );
    }
}

//! Interface addresses.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NlasIterator};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};

use crate::error::Result;
use crate::route::Family;
use crate::socket::Handle;

/// IFA_F_NODAD: no duplicate address detection (IPv6).
pub const IFA_F_NODAD: u32 = 0x02;
/// IFA_F_DADFAILED: duplicate address detection failed (IPv6).
pub const IFA_F_DADFAILED: u32 = 0x08;
/// IFA_F_TENTATIVE: duplicate address detection still running (IPv6): not usable yet.
pub const IFA_F_TENTATIVE: u32 = 0x40;
/// IFA_F_PERMANENT: configured, not learned (e.g. from router advertisements).
pub const IFA_F_PERMANENT: u32 = 0x80;
/// IFA_F_NOPREFIXROUTE: no connected route for the prefix.
pub const IFA_F_NOPREFIXROUTE: u32 = 0x200;

const RTM_NEWADDR: u16 = 20;
const ADDR_HEADER_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;

/// Options for adding an address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrFlags {
    /// Skip IPv6 duplicate address detection, so the address is usable
    /// immediately (a pod cannot wait ~1 s for DAD).
    pub nodad: bool,
    /// Do not install the connected prefix route.
    pub noprefixroute: bool,
}

impl AddrFlags {
    fn bits(self) -> u32 {
        let mut f = 0;
        if self.nodad {
            f |= IFA_F_NODAD;
        }
        if self.noprefixroute {
            f |= IFA_F_NOPREFIXROUTE;
        }
        f
    }
}

/// An address as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    /// The interface index.
    pub index: u32,
    /// The address with its prefix length.
    pub addr: IpNet,
    /// IFA_F_* bits (from IFA_FLAGS when present), e.g. [`IFA_F_TENTATIVE`].
    pub flags: u32,
}

impl Address {
    /// Still doing IPv6 duplicate address detection: not usable yet.
    pub fn is_tentative(&self) -> bool {
        self.flags & IFA_F_TENTATIVE != 0
    }

    /// IPv6 duplicate address detection found a conflict.
    pub fn is_dadfailed(&self) -> bool {
        self.flags & IFA_F_DADFAILED != 0
    }

    /// Decodes an RTM_NEWADDR body, preferring IFA_LOCAL (the local end on
    /// point-to-point links) over IFA_ADDRESS.
    pub(crate) fn parse(payload: &[u8]) -> Option<Address> {
        let h = payload.get(..ADDR_HEADER_LEN)?;
        let fam = match i32::from(h[0]) {
            libc::AF_INET => Family::V4,
            libc::AF_INET6 => Family::V6,
            _ => return None,
        };
        let prefix = h[1];
        let mut flags = u32::from(h[2]);
        let index = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
        let (mut local, mut address) = (None, None);
        for nla in NlasIterator::new(&payload[ADDR_HEADER_LEN..]).flatten() {
            let v = nla.value();
            match nla.kind() {
                IFA_ADDRESS => address = ip(fam, v),
                IFA_LOCAL => local = ip(fam, v),
                IFA_FLAGS => {
                    if let Ok(b) = <[u8; 4]>::try_from(v) {
                        flags = u32::from_ne_bytes(b);
                    }
                }
                _ => {}
            }
        }
        let addr = IpNet::new(local.or(address)?, prefix).ok()?;
        Some(Address { index, addr, flags })
    }
}

fn ip(fam: Family, v: &[u8]) -> Option<IpAddr> {
    match fam {
        Family::V4 => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
        Family::V6 => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
    }
}

/// Builds an RTM_NEWADDR/RTM_DELADDR body the way iproute2 does.
fn addr_msg(index: u32, addr: IpNet, flags: u32) -> AddressMessage {
    let mut m = AddressMessage::default();
    let ip = addr.addr();
    m.header.family = Family::of(&ip).af();
    m.header.prefix_len = addr.prefix_len();
    m.header.index = index;
    m.header.flags = AddressHeaderFlags::from_bits_retain((flags & 0xff) as u8);
    m.header.scope = if ip.is_loopback() {
        AddressScope::Host
    } else {
        AddressScope::Universe
    };
    m.attributes.push(AddressAttribute::Local(ip));
    m.attributes.push(AddressAttribute::Address(ip));
    if let IpNet::V4(v4) = addr
        && v4.prefix_len() < 31
    {
        m.attributes
            .push(AddressAttribute::Broadcast(v4.broadcast()));
    }
    if flags != 0 {
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::from_bits_retain(
                flags,
            )));
    }
    m
}

impl crate::socket::Batch {
    /// Adds an address; one that is already there is fine.
    pub fn ensure_address(&mut self, index: u32, addr: IpNet, flags: AddrFlags) -> &mut Self {
        let m = addr_msg(index, addr, flags.bits());
        self.push(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
            true,
            format!("add address {addr} to link #{index}"),
        )
    }
}

impl Handle {
    /// Adds an address; an existing one fails with `is_exists()`.
    pub fn add_address(&mut self, index: u32, addr: IpNet, flags: AddrFlags) -> Result<()> {
        let m = addr_msg(index, addr, flags.bits());
        self.sock.ack(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("add address {addr} to link #{index}"),
        )
    }

    /// Adds the address or updates it in place (flags, prefix route).
    pub fn replace_address(&mut self, index: u32, addr: IpNet, flags: AddrFlags) -> Result<()> {
        let m = addr_msg(index, addr, flags.bits());
        self.sock.ack(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("replace address {addr} on link #{index}"),
        )
    }

    /// Removes the address from the link.
    pub fn del_address(&mut self, index: u32, addr: IpNet) -> Result<()> {
        let m = addr_msg(index, addr, 0);
        self.sock.ack(RouteNetlinkMessage::DelAddress(m), 0, || {
            format!("delete address {addr} from link #{index}")
        })
    }

    /// IPv4 and IPv6 addresses, of one link or of all.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>> {
        self.sock.collect(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
            true,
            || "list addresses".to_string(),
            |kind, p| {
                if kind != RTM_NEWADDR {
                    return None;
                }
                Address::parse(p).filter(|a| index.is_none_or(|i| i == a.index))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    fn wire(m: &AddressMessage) -> Vec<u8> {
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        buf
    }

    #[test]
    fn address_round_trips() {
        let a: IpNet = "10.244.1.5/24".parse().unwrap();
        let m = addr_msg(4, a, IFA_F_NODAD | IFA_F_NOPREFIXROUTE);
        assert!(m.attributes.contains(&AddressAttribute::Broadcast(
            "10.244.1.255".parse().unwrap()
        )));
        let got = Address::parse(&wire(&m)).unwrap();
        assert_eq!(
            got,
            Address {
                index: 4,
                addr: a,
                flags: IFA_F_NODAD | IFA_F_NOPREFIXROUTE
            }
        );
        assert!(!got.is_tentative());

        let a6: IpNet = "fd00:10:244:1::5/64".parse().unwrap();
        let m = addr_msg(9, a6, 0);
        assert!(!m.attributes.iter().any(|x| matches!(
            x,
            AddressAttribute::Flags(_) | AddressAttribute::Broadcast(_)
        )));
        let got = Address::parse(&wire(&m)).unwrap();
        assert_eq!((got.index, got.addr, got.flags), (9, a6, 0));
    }

    #[test]
    fn tentative_flag_comes_from_ifa_flags() {
        let a6: IpNet = "fd00::1/64".parse().unwrap();
        let mut m = addr_msg(2, a6, 0);
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::from_bits_retain(
                IFA_F_TENTATIVE | IFA_F_PERMANENT,
            )));
        let got = Address::parse(&wire(&m)).unwrap();
        assert!(got.is_tentative());
        assert!(!got.is_dadfailed());
        assert_eq!(Address::parse(&[2, 24, 0]), None);
    }

    #[test]
    fn slash_31_and_32_get_no_broadcast() {
        for s in ["10.0.0.0/31", "10.0.0.1/32"] {
            let m = addr_msg(1, s.parse().unwrap(), 0);
            assert!(
                !m.attributes
                    .iter()
                    .any(|x| matches!(x, AddressAttribute::Broadcast(_)))
            );
        }
    }
}

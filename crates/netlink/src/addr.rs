//! Interface addresses.

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, Parseable};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};

use crate::error::Result;
use crate::route::Family;
use crate::socket::Handle;
use crate::wire::{
    IFA_F_DADFAILED, IFA_F_NODAD, IFA_F_NOPREFIXROUTE, IFA_F_TENTATIVE, RTM_NEWADDR,
};

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

    /// Decodes an RTM_NEWADDR body with netlink-packet-route, preferring
    /// IFA_LOCAL (the local end on point-to-point links) over IFA_ADDRESS.
    pub(crate) fn parse(payload: &[u8]) -> Option<Address> {
        let m = AddressMessage::parse(payload).ok()?;
        Family::from_af(m.header.family)?;
        let mut flags = u32::from(m.header.flags.bits());
        let (mut local, mut address) = (None, None);
        for a in &m.attributes {
            match a {
                AddressAttribute::Address(ip) => address = Some(*ip),
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Flags(f) => flags = f.bits(),
                _ => {}
            }
        }
        let addr = IpNet::new(local.or(address)?, m.header.prefix_len).ok()?;
        Some(Address {
            index: m.header.index,
            addr,
            flags,
        })
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
    use crate::wire::IFA_F_PERMANENT;
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

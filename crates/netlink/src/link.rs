//! Links: lookup, veth/bridge creation and the few setlink knobs a CNI
//! plugin needs.

use std::os::fd::AsRawFd;

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkHeader, LinkInfo, LinkMessage,
    LinkProtoInfoBridge,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::socket::Handle;
use crate::wire::{
    IFLA_ADDRESS, IFLA_BRPORT_MODE, IFLA_IFALIAS, IFLA_IFNAME, IFLA_INFO_KIND, IFLA_LINK,
    IFLA_LINK_NETNSID, IFLA_LINKINFO, IFLA_MASTER, IFLA_MTU, IFNAMSIZ, LINK_HEADER_LEN,
    RTM_NEWLINK, attrs, c_str, nested, u32_of,
};

/// What `ip link` shows about an interface, minus statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// The interface index.
    pub index: u32,
    /// The interface name.
    pub name: String,
    /// The MTU.
    pub mtu: u32,
    /// The hardware address, for an Ethernet-like device.
    pub mac: Option<[u8; 6]>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// IFLA_INFO_KIND, e.g. "veth" or "bridge"; None for physical devices.
    pub kind: Option<String>,
    /// IFLA_MASTER: the bridge (or other master) it is enslaved to.
    pub master: Option<u32>,
    /// Namespace id (as seen from this namespace) of a veth peer living
    /// elsewhere.
    pub link_netnsid: Option<i32>,
    /// IFLA_LINK: for a veth the peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// IFLA_IFALIAS: free text an owner can tag its links with.
    pub alias: Option<String>,
}

impl Link {
    /// Decodes an RTM_NEWLINK body; unknown or malformed attributes are
    /// skipped, so new kernels cannot break us.
    pub(crate) fn parse(payload: &[u8]) -> Option<Link> {
        let h = LinkHeader::parse(payload).ok()?;
        let mut l = Link {
            index: h.index,
            name: String::new(),
            mtu: 0,
            mac: None,
            up: h.flags.contains(LinkFlags::Up),
            kind: None,
            master: None,
            link_netnsid: None,
            peer_index: None,
            alias: None,
        };
        for (kind, v) in attrs(payload, LINK_HEADER_LEN)? {
            match kind {
                IFLA_IFNAME => l.name = c_str(v),
                IFLA_MTU => l.mtu = u32_of(v).unwrap_or(0),
                IFLA_IFALIAS => l.alias = Some(c_str(v)).filter(|a| !a.is_empty()),
                IFLA_ADDRESS => l.mac = <[u8; 6]>::try_from(v).ok(),
                IFLA_MASTER => l.master = u32_of(v).filter(|&m| m != 0),
                IFLA_LINK => l.peer_index = u32_of(v).filter(|&p| p != 0),
                IFLA_LINK_NETNSID => l.link_netnsid = u32_of(v).map(|n| n as i32),
                IFLA_LINKINFO => {
                    l.kind = nested(v)
                        .find(|(k, _)| *k == IFLA_INFO_KIND)
                        .map(|(_, v)| c_str(v));
                }
                _ => {}
            }
        }
        Some(l)
    }
}

/// Rejects names the kernel would refuse, with a clearer message.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() >= IFNAMSIZ
        || name == "."
        || name == ".."
        || name.contains(|c: char| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return Err(Error::Invalid(format!("interface name {name:?}")));
    }
    Ok(())
}

fn link_msg(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

/// A veth pair as it is born: everything the one creating message sets.
#[derive(Debug, Clone, Copy, Default)]
pub struct VethSpec<'a> {
    /// The end created here.
    pub name: &'a str,
    /// The other end's name.
    pub peer: &'a str,
    /// Where the peer is born (here when `None`).
    pub peer_ns: Option<&'a Netns>,
    /// Both ends' MTU (the kernel's default when `None`).
    pub mtu: Option<u32>,
    /// The peer's MAC (a random one when `None`).
    pub peer_mac: Option<[u8; 6]>,
    /// The link group of the end created here (IFLA_GROUP).
    pub group: Option<u32>,
    /// Receive and transmit queues of each end. The kernel's default for a
    /// veth is one of each per possible CPU, and creating the pair makes
    /// sysfs objects for every one of them.
    pub queues: Option<u32>,
}

/// The peer side of a veth, optionally created straight in another netns.
fn veth_peer(name: &str, ns: Option<&Netns>, mtu: Option<u32>) -> LinkMessage {
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(name.to_string()));
    if let Some(mtu) = mtu {
        peer.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(ns) = ns {
        peer.attributes
            .push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
    }
    peer
}

impl crate::socket::Batch {
    /// Sets the link up.
    pub fn set_up(&mut self, index: u32) -> &mut Self {
        let mut m = link_msg(index);
        m.header.change_mask = LinkFlags::Up;
        m.header.flags = LinkFlags::Up;
        self.push(
            RouteNetlinkMessage::SetLink(m),
            0,
            false,
            format!("set link #{index} up"),
        )
    }
}

impl Handle {
    /// Looks a link up by name; Ok(None) if there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        if check_name(name).is_err() {
            return Ok(None);
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(m, || format!("get link {name}"))
    }

    /// Looks a link up by ifindex; Ok(None) if there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        if index == 0 {
            return Ok(None);
        }
        self.get_link(link_msg(index), || format!("get link #{index}"))
    }

    fn get_link(&mut self, m: LinkMessage, ctx: impl Fn() -> String) -> Result<Option<Link>> {
        let r = self
            .sock
            .collect(RouteNetlinkMessage::GetLink(m), 0, true, ctx, |kind, p| {
                (kind == RTM_NEWLINK).then(|| Link::parse(p)).flatten()
            });
        match r {
            Ok(mut v) => Ok(v.pop()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All links of this namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        self.sock.collect(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            true,
            || "list links".to_string(),
            |kind, p| (kind == RTM_NEWLINK).then(|| Link::parse(p)).flatten(),
        )
    }

    /// Creates a veth pair in one message; with `peer_ns` the peer is born in
    /// that namespace, so it never shows up (or collides) here.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_ns: Option<&Netns>,
        mtu: Option<u32>,
    ) -> Result<()> {
        self.create_veth_as(&VethSpec {
            name,
            peer: peer_name,
            peer_ns,
            mtu,
            ..Default::default()
        })
        .map(drop)
    }

    /// Creates the veth pair `spec` describes in one message, returning the
    /// end created here as the kernel echoes it back (NLM_F_ECHO; one
    /// lookup instead on a kernel that does not echo). Its `peer_index` is
    /// the peer's ifindex in `peer_ns`.
    pub fn create_veth_as(&mut self, spec: &VethSpec) -> Result<Option<Link>> {
        let name = spec.name;
        check_name(name)?;
        check_name(spec.peer)?;
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = spec.mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(g) = spec.group {
            m.attributes.push(LinkAttribute::Group(g));
        }
        let mut peer = veth_peer(spec.peer, spec.peer_ns, spec.mtu);
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(q) = spec.queues {
            for end in [&mut m, &mut peer] {
                end.attributes.push(LinkAttribute::NumTxQueues(q));
                end.attributes.push(LinkAttribute::NumRxQueues(q));
            }
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        let echoed = self.sock.collect(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
            false,
            || format!("create veth {name} peer {}", spec.peer),
            |kind, p| (kind == RTM_NEWLINK).then(|| Link::parse(p)).flatten(),
        )?;
        match echoed.into_iter().find(|l| l.name == name) {
            Some(l) => Ok(Some(l)),
            None => self.link_by_name(name),
        }
    }

    /// Creates a bridge; an existing one fails with `is_exists()`.
    pub fn create_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<()> {
        check_name(name)?;
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.sock.ack(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("create bridge {name}"),
        )
    }

    fn set_link(&mut self, m: LinkMessage, ctx: impl Fn() -> String) -> Result<()> {
        self.sock.ack(RouteNetlinkMessage::SetLink(m), 0, ctx)
    }

    fn set_flag(&mut self, index: u32, flag: LinkFlags, on: bool, what: &str) -> Result<()> {
        let mut m = link_msg(index);
        m.header.change_mask = flag;
        if on {
            m.header.flags = flag;
        }
        self.set_link(m, || format!("set link #{index} {what} {on}"))
    }

    /// Sets the link administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.set_flag(index, LinkFlags::Up, true, "up")
    }

    /// Sets the link administratively down.
    pub fn set_down(&mut self, index: u32) -> Result<()> {
        self.set_flag(index, LinkFlags::Up, false, "up")
    }

    /// Turns promiscuous mode on or off.
    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<()> {
        self.set_flag(index, LinkFlags::Promisc, on, "promisc")
    }

    /// Sets the link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut m = link_msg(index);
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(m, || format!("set link #{index} mtu {mtu}"))
    }

    /// Enslaves `index` to bridge `master`; master 0 releases it.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        let mut m = link_msg(index);
        m.attributes.push(LinkAttribute::Controller(master));
        self.set_link(m, || format!("set link #{index} master #{master}"))
    }

    /// Sets the link's alias (`ip link set X alias TEXT`); empty clears it.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<()> {
        let mut m = link_msg(index);
        m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
        self.set_link(m, || format!("set link #{index} alias {alias:?}"))
    }

    /// Renames a link (the kernel requires it to be down).
    pub fn set_name(&mut self, index: u32, name: &str) -> Result<()> {
        check_name(name)?;
        let mut m = link_msg(index);
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.set_link(m, || format!("rename link #{index} to {name}"))
    }

    /// Sets hairpin mode on a bridge port, so traffic from a pod to a
    /// service VIP that lands back on the same pod can be reflected.
    pub fn set_bridge_port_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        let mut m = link_msg(index);
        m.header.interface_family = AddressFamily::Bridge;
        m.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
            LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![u8::from(on)])),
        ]));
        self.set_link(m, || format!("set bridge port #{index} hairpin {on}"))
    }

    /// Moves a link into another namespace (it gets a new ifindex there).
    pub fn set_netns(&mut self, index: u32, ns: &Netns) -> Result<()> {
        let mut m = link_msg(index);
        m.attributes
            .push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
        self.set_link(m, || {
            format!("move link #{index} to netns {}", ns.path().display())
        })
    }

    /// Deletes a link by name in one request (no lookup round trip).
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<()> {
        check_name(name)?;
        let mut m = link_msg(0);
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.sock.ack(RouteNetlinkMessage::DelLink(m), 0, || {
            format!("delete link {name}")
        })
    }

    /// Deletes the link with index `index` (a veth takes its peer with it).
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        self.sock
            .ack(RouteNetlinkMessage::DelLink(link_msg(index)), 0, || {
                format!("delete link #{index}")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    fn wire(m: &LinkMessage) -> Vec<u8> {
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        buf
    }

    #[test]
    fn link_parse_reads_the_interesting_attributes() {
        let mut m = link_msg(12);
        m.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        m.attributes = vec![
            LinkAttribute::IfName("veth1234".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::Controller(3),
            LinkAttribute::Link(4),
            LinkAttribute::LinkNetNsId(1),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
            LinkAttribute::TxQueueLen(1000),
            LinkAttribute::IfAlias("kindnet net c1 eth0".into()),
        ];
        let l = Link::parse(&wire(&m)).unwrap();
        assert_eq!(
            l,
            Link {
                index: 12,
                name: "veth1234".into(),
                mtu: 1450,
                mac: Some([2, 0, 0, 0, 0, 1]),
                up: true,
                kind: Some("veth".into()),
                master: Some(3),
                link_netnsid: Some(1),
                peer_index: Some(4),
                alias: Some("kindnet net c1 eth0".into()),
            }
        );
    }

    #[test]
    fn link_parse_tolerates_odd_attributes() {
        let mut m = link_msg(1);
        m.attributes = vec![
            LinkAttribute::IfName("lo".into()),
            // Loopback-style 0-length and odd MAC lengths are not MACs.
            LinkAttribute::Address(vec![0; 20]),
            LinkAttribute::Mtu(65536),
        ];
        let mut bytes = wire(&m);
        // Unknown attribute and a truncated trailing one.
        bytes.extend_from_slice(&[8, 0, 250, 0, 9, 9, 9, 9, 12, 0]);
        let l = Link::parse(&bytes).unwrap();
        assert_eq!(l.name, "lo");
        assert_eq!(l.mtu, 65536);
        assert_eq!(l.mac, None);
        assert!(!l.up);
        assert_eq!(Link::parse(&bytes[..10]), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("eth0").is_ok());
        assert!(check_name("a23456789012345").is_ok());
        for bad in ["", "a234567890123456", "a/b", "a b", ".", "..", "x:1"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hairpin_request_is_a_nested_bridge_protinfo() {
        let mut m = link_msg(5);
        m.header.interface_family = AddressFamily::Bridge;
        m.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
            LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![1])),
        ]));
        let b = wire(&m);
        assert_eq!(b[0], libc::AF_BRIDGE as u8);
        // IFLA_PROTINFO (12) with NLA_F_NESTED, holding IFLA_BRPORT_MODE=1.
        let nla = &b[LINK_HEADER_LEN..];
        assert_eq!(u16::from_ne_bytes([nla[2], nla[3]]), 12 | 0x8000);
        assert_eq!(&nla[4..9], &[5, 0, 4, 0, 1]);
    }
}

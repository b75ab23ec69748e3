//! Conntrack entries over NETLINK_NETFILTER (ctnetlink), so a plugin needs
//! no `conntrack` tool on the node and sees every failure.
//!
//! Only what port mappings need: delete the entries whose original
//! direction is (protocol, destination port) — e.g. a UDP stream that was
//! flowing to a host port before its mapping existed, stuck on a stale
//! entry that bypasses the new DNAT.

use crate::error::Result;
use crate::nfnl::NfSocket;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};

/// Layer-4 protocols whose entries can be selected by port: the
/// workspace's one [`L4Proto`](crate::L4Proto).
pub use crate::L4Proto as CtProto;

impl CtProto {
    fn matches(self, p: &Protocol) -> bool {
        matches!(
            (self, p),
            (CtProto::Tcp, Protocol::Tcp)
                | (CtProto::Udp, Protocol::Udp)
                | (CtProto::Sctp, Protocol::Sctp)
        )
    }
}

/// A ctnetlink socket in the calling thread's network namespace.
pub struct Conntrack {
    sock: NfSocket,
}

/// The original tuple of an entry whose protocol and destination port are
/// `proto`/`port`, with its family (from its addresses).
fn selected(msg: &NetfilterMessage, proto: CtProto, ports: &[u16]) -> Option<(bool, Vec<Tuple>)> {
    let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = &msg.inner else {
        return None;
    };
    let orig = attrs.iter().find_map(|a| match a {
        ConntrackAttribute::CtaTupleOrig(t) => Some(t),
        _ => None,
    })?;
    let mut v6 = None;
    let (mut proto_ok, mut port_ok) = (false, false);
    for t in orig {
        match t {
            Tuple::Ip(ips) => {
                v6 = ips.iter().find_map(|i| match i {
                    IPTuple::SourceAddress(a) | IPTuple::DestinationAddress(a) => Some(a.is_ipv6()),
                    _ => None,
                });
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(x) => proto_ok = proto.matches(x),
                        ProtoTuple::DestinationPort(d) => port_ok = ports.contains(d),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (proto_ok && port_ok).then(|| (v6.unwrap_or(false), orig.clone()))
}

fn family(v6: bool) -> NetfilterProtoFamily {
    if v6 {
        NetfilterProtoFamily::IPv6
    } else {
        NetfilterProtoFamily::IPv4
    }
}

impl Conntrack {
    /// Opens a ctnetlink socket in the calling thread's network namespace.
    pub fn open() -> Result<Conntrack> {
        Ok(Conntrack {
            sock: NfSocket::open("ctnetlink")?,
        })
    }

    /// Deletes every entry (both families) whose original direction is
    /// `proto` to one of the destination `ports` (one dump for all of
    /// them); returns how many went.
    pub fn delete_by_dport(&mut self, proto: CtProto, ports: &[u16]) -> Result<usize> {
        let dump = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            ConntrackMessage::Get(vec![]),
        );
        let mut doomed = Vec::new();
        self.sock.request(dump, NLM_F_DUMP, "ctnetlink dump", |m| {
            doomed.extend(selected(m, proto, ports))
        })?;
        let mut deleted = 0;
        for (v6, tuple) in doomed {
            let del = NetfilterMessage::new(
                NetfilterHeader::new(family(v6), 0, 0),
                ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(tuple)]),
            );
            match self
                .sock
                .request(del, NLM_F_ACK, "ctnetlink delete", |_| {})
            {
                Ok(()) => deleted += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }
}

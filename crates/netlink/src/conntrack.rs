//! Conntrack entries over NETLINK_NETFILTER (ctnetlink), so a plugin needs
//! no `conntrack` tool on the node and sees every failure.
//!
//! Only what port mappings need: delete the entries whose original
//! direction is (protocol, destination port) — e.g. a UDP stream that was
//! flowing to a host port before its mapping existed, stuck on a stale
//! entry that bypasses the new DNAT.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkDeserializable,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket as NlSocket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::error::{Error, Result};

/// Layer-4 protocols whose entries can be selected by port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtProto {
    Tcp,
    Udp,
    Sctp,
}

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
    sock: NlSocket,
    seq: u32,
    buf: Vec<u8>,
}

/// The original tuple of an entry whose protocol and destination port are
/// `proto`/`port`, with its family (from its addresses).
fn selected(msg: &NetfilterMessage, proto: CtProto, port: u16) -> Option<(bool, Vec<Tuple>)> {
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
                        ProtoTuple::DestinationPort(d) => port_ok = *d == port,
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
    pub fn open() -> Result<Conntrack> {
        let mut sock =
            NlSocket::new(NETLINK_NETFILTER).map_err(|e| Error::os("ctnetlink socket", e))?;
        sock.bind(&SocketAddr::new(0, 0))
            .map_err(|e| Error::os("ctnetlink bind", e))?;
        Ok(Conntrack {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    fn send(&mut self, msg: NetfilterMessage, flags: u16) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut out = vec![0; nl.buffer_len()];
        nl.serialize(&mut out);
        loop {
            match self.sock.send_to(&out, &SocketAddr::new(0, 0), 0) {
                Ok(_) => return Ok(self.seq),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::os("ctnetlink send", e)),
            }
        }
    }

    /// Receives replies to `seq` until DONE or the ACK, feeding each
    /// message to `each`; a negative ACK is an error (ENOENT for a delete
    /// of an entry that already went is the caller's to forgive).
    fn replies(
        &mut self,
        seq: u32,
        what: &str,
        mut each: impl FnMut(&NetfilterMessage),
    ) -> Result<()> {
        loop {
            let n = loop {
                match self.sock.recv(&mut &mut self.buf[..], 0) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::os(format!("ctnetlink {what}"), e)),
                }
            };
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes([
                    self.buf[off],
                    self.buf[off + 1],
                    self.buf[off + 2],
                    self.buf[off + 3],
                ]) as usize;
                if len < 16 || off + len > n {
                    return Err(Error::Decode(format!(
                        "ctnetlink {what}: bad message length {len}"
                    )));
                }
                let m = &self.buf[off..off + len];
                off += (len + 3) & !3;
                let kind = u16::from_ne_bytes([m[4], m[5]]);
                let mseq = u32::from_ne_bytes([m[8], m[9], m[10], m[11]]);
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes([m[16], m[17], m[18], m[19]]);
                        if code == 0 {
                            return Ok(());
                        }
                        return Err(Error::Netlink {
                            code: code.saturating_neg(),
                            context: format!("ctnetlink {what}"),
                        });
                    }
                    _ => {
                        let mut h = NetlinkHeader::default();
                        h.message_type = kind;
                        if let Ok(msg) = NetfilterMessage::deserialize(&h, &m[16..]) {
                            each(&msg);
                        }
                    }
                }
            }
        }
    }

    /// Deletes every entry (both families) whose original direction is
    /// `proto` to destination port `port`; returns how many went.
    pub fn delete_by_dport(&mut self, proto: CtProto, port: u16) -> Result<usize> {
        let dump = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            ConntrackMessage::Get(vec![]),
        );
        let seq = self.send(dump, NLM_F_DUMP)?;
        let mut doomed = Vec::new();
        self.replies(seq, "dump", |m| doomed.extend(selected(m, proto, port)))?;
        let mut deleted = 0;
        for (v6, tuple) in doomed {
            let del = NetfilterMessage::new(
                NetfilterHeader::new(family(v6), 0, 0),
                ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(tuple)]),
            );
            let seq = self.send(del, NLM_F_ACK)?;
            match self.replies(seq, "delete", |_| {}) {
                Ok(()) => deleted += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }
}

//! A NETLINK_NETFILTER socket: send one nfnetlink request, walk its
//! replies. Shared by ctnetlink (conntrack) and the nf_tables queries.

use std::io;

use netlink_packet_core::{
    NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_netfilter::NetfilterMessage;
use netlink_sys::{Socket as NlSocket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::error::{Error, Result};

/// A bound NETLINK_NETFILTER socket in the calling thread's namespace.
pub(crate) struct NfSocket {
    sock: NlSocket,
    seq: u32,
    buf: Vec<u8>,
}

impl NfSocket {
    pub(crate) fn open(what: &str) -> Result<NfSocket> {
        let mut sock =
            NlSocket::new(NETLINK_NETFILTER).map_err(|e| Error::os(format!("{what} socket"), e))?;
        sock.bind(&SocketAddr::new(0, 0))
            .map_err(|e| Error::os(format!("{what} bind"), e))?;
        Ok(NfSocket {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends `msg` and feeds every reply message to `each` until DONE or
    /// the ACK; a negative ACK is the error (its errno kept, so callers
    /// can forgive ENOENT).
    pub(crate) fn request(
        &mut self,
        msg: NetfilterMessage,
        flags: u16,
        what: &str,
        mut each: impl FnMut(&NetfilterMessage),
    ) -> Result<()> {
        self.request_raw(msg, flags, what, |kind, body| {
            let mut h = NetlinkHeader::default();
            h.message_type = kind;
            if let Ok(msg) = NetfilterMessage::deserialize(&h, body) {
                each(&msg);
            }
        })
    }

    /// [`NfSocket::request`], handing each reply over undecoded: its
    /// message type and what follows the netlink header (the nfgenmsg,
    /// then the attributes), for replies whose every part need not be
    /// understood.
    pub(crate) fn request_raw(
        &mut self,
        msg: NetfilterMessage,
        flags: u16,
        what: &str,
        mut each: impl FnMut(u16, &[u8]),
    ) -> Result<()> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut out = vec![0; nl.buffer_len()];
        nl.serialize(&mut out);
        loop {
            match self.sock.send_to(&out, &SocketAddr::new(0, 0), 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::os(format!("{what}: send"), e)),
            }
        }
        loop {
            let n = loop {
                match self.sock.recv(&mut &mut self.buf[..], 0) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::os(what.to_string(), e)),
                }
            };
            let mut off = 0;
            while off + 16 <= n {
                let b = &self.buf;
                let len = u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]) as usize;
                if len < 16 || off + len > n {
                    return Err(Error::Decode(format!("{what}: bad message length {len}")));
                }
                let m = &b[off..off + len];
                off += (len + 3) & !3;
                let kind = u16::from_ne_bytes([m[4], m[5]]);
                let mseq = u32::from_ne_bytes([m[8], m[9], m[10], m[11]]);
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = m
                            .get(16..20)
                            .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                            .unwrap_or(-libc::EPROTO);
                        if code == 0 {
                            return Ok(());
                        }
                        return Err(Error::Netlink {
                            code: code.saturating_neg(),
                            context: what.to_string(),
                        });
                    }
                    _ => each(kind, &m[16..]),
                }
            }
        }
    }
}

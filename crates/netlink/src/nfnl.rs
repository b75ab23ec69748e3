//! NETLINK_NETFILTER over the crate's one socket ([`crate::socket`]):
//! requests and dumps for ctnetlink and nf_tables, and nf_tables
//! transactions (a batch between `NFNL_MSG_BATCH_BEGIN` and
//! `NFNL_MSG_BATCH_END`, which the kernel commits or aborts as a whole).

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLMSG_ERROR, NetlinkDeserializable, NetlinkHeader};
use netlink_packet_netfilter::NetfilterMessage;

use crate::error::{Error, Result};
use crate::socket::{
    Protocol, Socket, ext_ack_msg, leading_i32, messages, netlink_error, put_header,
};

/// `NFNL_MSG_BATCH_BEGIN` (linux/netfilter/nfnetlink.h).
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`.
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
/// `NFNL_SUBSYS_NFTABLES`.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// A bound NETLINK_NETFILTER socket in the calling thread's namespace.
pub(crate) struct NfSocket {
    sock: Socket,
}

impl NfSocket {
    pub(crate) fn open(what: &str) -> Result<NfSocket> {
        let sock = Socket::open(Protocol::Netfilter, &[]).map_err(|e| match e {
            Error::Os { context, source } => Error::Os {
                context: format!("{what}: {context}"),
                source,
            },
            e => e,
        })?;
        Ok(NfSocket { sock })
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
        self.sock
            .collect_msg(
                msg,
                flags & !NLM_F_ACK,
                false,
                || what.to_string(),
                |kind, payload| {
                    let mut h = NetlinkHeader::default();
                    h.message_type = kind;
                    if let Ok(msg) = NetfilterMessage::deserialize(&h, payload) {
                        each(&msg);
                    }
                    None::<()>
                },
            )
            .map(drop)
    }
}

/// One message of an nf_tables transaction: its type
/// (`NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*`), its flags besides
/// `NLM_F_REQUEST`, its payload (nfgenmsg and attributes), and what it
/// does, for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfMsg {
    /// The message type.
    pub kind: u16,
    /// `NLM_F_CREATE`, `NLM_F_EXCL`, `NLM_F_APPEND`…
    pub flags: u16,
    /// nfgenmsg and attributes.
    pub payload: Vec<u8>,
}

/// A NETLINK_NETFILTER socket for nf_tables: transactions and dumps, with
/// the crate socket's truncation growth, `NLM_F_DUMP_INTR` retry and the
/// kernel's extended-ack text in errors.
pub struct NfTablesSocket {
    sock: Socket,
    batch: Vec<u8>,
}

impl std::fmt::Debug for NfTablesSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NfTablesSocket").finish_non_exhaustive()
    }
}

impl NfTablesSocket {
    /// Opens one in the calling thread's network namespace.
    pub fn open() -> Result<NfTablesSocket> {
        Ok(NfTablesSocket {
            sock: NfSocket::open("nf_tables")?.sock,
            batch: Vec::new(),
        })
    }

    /// Sends a `GET` request (`kind`, `flags` such as `NLM_F_DUMP`,
    /// `payload`) and feeds each reply message (type, payload) to `each`.
    /// A dump is retried (from scratch: `each` is told with `restart`)
    /// when the kernel flags it interrupted or a reply did not fit.
    pub fn get(
        &mut self,
        kind: u16,
        flags: u16,
        payload: &[u8],
        context: impl Fn() -> String,
        mut each: impl FnMut(u16, &[u8]),
    ) -> Result<()> {
        self.sock
            .collect_raw(kind, flags, payload, context, |k, p| {
                each(k, p);
                None::<()>
            })
            .map(drop)
    }

    /// Applies `msgs` as one transaction: all or nothing. The kernel
    /// handles the whole batch inside `send`, so its answers are all queued
    /// when `send` returns; only failures are answered (no `NLM_F_ACK`), so
    /// a batch of 100,000 elements does not flood the socket with ACKs.
    /// The first failure in batch order is returned with what that message
    /// did (`what(i)`) and the kernel's extended-ack text.
    pub fn transaction(&mut self, msgs: &[NfMsg], what: impl Fn(usize) -> String) -> Result<()> {
        if msgs.is_empty() {
            return Ok(());
        }
        let nfgen = [
            0u8,
            0,
            (NFNL_SUBSYS_NFTABLES >> 8) as u8,
            NFNL_SUBSYS_NFTABLES as u8,
        ];
        let flags = netlink_packet_core::NLM_F_REQUEST;
        self.batch.clear();
        let first = self.sock.next_seq();
        put_header(
            &mut self.batch,
            NFNL_MSG_BATCH_BEGIN,
            flags,
            first,
            nfgen.len(),
        );
        self.batch.extend_from_slice(&nfgen);
        let mut seqs = Vec::with_capacity(msgs.len());
        for m in msgs {
            let seq = self.sock.next_seq();
            seqs.push(seq);
            put_header(
                &mut self.batch,
                m.kind,
                flags | m.flags,
                seq,
                m.payload.len(),
            );
            self.batch.extend_from_slice(&m.payload);
            while !self.batch.len().is_multiple_of(4) {
                self.batch.push(0);
            }
        }
        let end = self.sock.next_seq();
        put_header(&mut self.batch, NFNL_MSG_BATCH_END, flags, end, nfgen.len());
        self.batch.extend_from_slice(&nfgen);
        let batch = std::mem::take(&mut self.batch);
        // The default send buffer takes most batches; a bigger one is
        // refused whole (EMSGSIZE) and sent again once the buffer is raised.
        let mut sent = self.sock.send_bytes(&batch);
        if sent
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::EMSGSIZE))
        {
            self.sock.reserve_send(batch.len());
            sent = self.sock.send_bytes(&batch);
        }
        self.batch = batch;
        sent.map_err(|e| Error::os(what(0), e))?;
        // Everything the kernel has to say is queued now.
        let mut first_err: Option<(usize, Error)> = None;
        loop {
            let n = match self.sock.recv(rustix::net::RecvFlags::DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Error::os(format!("{}: reading the answers", what(0)), e)),
            };
            if n > self.sock.recv_buf.len() {
                self.sock.grow(n);
                return Err(Error::Netlink {
                    code: libc::EMSGSIZE,
                    context: format!("{}: an answer did not fit the receive buffer", what(0)),
                });
            }
            for (hdr, payload) in messages(&self.sock.recv_buf[..n]) {
                if hdr.kind != NLMSG_ERROR {
                    continue;
                }
                let code = leading_i32(payload);
                if code == 0 {
                    continue;
                }
                // A failed commit is answered on the batch's first message.
                let i = if hdr.seq == first || hdr.seq == end {
                    Some(0)
                } else {
                    seqs.iter().position(|s| *s == hdr.seq)
                };
                let Some(i) = i else {
                    continue; // a stale answer to an earlier request
                };
                if first_err.as_ref().is_none_or(|(j, _)| i < *j) {
                    let e = netlink_error(code, what(i), ext_ack_msg(hdr.flags, payload));
                    first_err = Some((i, e));
                }
            }
        }
        match first_err {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

//! Request/response plumbing over one blocking netlink socket, generic
//! over the protocol (NETLINK_ROUTE for links, addresses and routes;
//! NETLINK_NETFILTER for conntrack and nf_tables).
//!
//! Replies are walked in place in one reusable receive buffer, so a dump of
//! 10,000 routes costs a few dozen `recv` calls and no per-message buffers.
//! Every exchange has the same features whatever the protocol: a datagram
//! that did not fit grows the buffer and the dump is retried, a dump the
//! kernel flags `NLM_F_DUMP_INTR` is retried, and a refused request carries
//! the kernel's extended-ack text.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{
    Socket as NlSocket, SocketAddr, protocols::NETLINK_NETFILTER, protocols::NETLINK_ROUTE,
};

use rustix::io::Errno;
use rustix::net::RecvFlags;

use crate::error::{Error, Result};
use crate::wire::{NLM_F_ACK_TLVS, NLM_F_CAPPED, NLMSGERR_ATTR_MSG, c_str, nested};

/// Big enough for any dump datagram the kernel builds by default (it caps
/// them at 32 KiB); larger ones grow the buffer and retry.
const RECV_BUF: usize = 64 * 1024;
const NLMSG_HDRLEN: usize = 16;
/// How often a dump is retried when the kernel flags it inconsistent
/// (NLM_F_DUMP_INTR) or a datagram did not fit the buffer.
const DUMP_ATTEMPTS: usize = 5;

/// The fixed part of one netlink message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MsgHeader {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
}

/// Appends a netlink header for a message of `payload_len` bytes.
pub(crate) fn put_header(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, payload_len: usize) {
    let len = u32::try_from(NLMSG_HDRLEN + payload_len).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
}

/// Splits a datagram into (header, payload) pairs. Stops at the first
/// malformed length instead of panicking.
pub(crate) fn messages(mut buf: &[u8]) -> impl Iterator<Item = (MsgHeader, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            buf = &[];
            return None;
        }
        let hdr = MsgHeader {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
        };
        let payload = &buf[NLMSG_HDRLEN..len];
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or(&[]);
        Some((hdr, payload))
    })
}

/// Reads the error code (negative errno or 0) at the start of an
/// NLMSG_ERROR / NLMSG_DONE payload.
pub(crate) fn leading_i32(payload: &[u8]) -> i32 {
    match payload.get(..4) {
        Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

/// The kernel's extended-ack message of an NLMSG_ERROR payload, if any.
pub(crate) fn ext_ack_msg(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // nlmsgerr = error code + the offending request's header (+ its payload
    // unless the kernel capped it).
    let orig = payload.get(4..4 + NLMSG_HDRLEN)?;
    let skip = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let l = u32::from_ne_bytes([orig[0], orig[1], orig[2], orig[3]]) as usize;
        (l + 3) & !3
    };
    let tlvs = payload.get(4 + skip..)?;
    nested(tlvs)
        .find(|(k, _)| *k == NLMSGERR_ATTR_MSG)
        .map(|(_, v)| c_str(v))
}

pub(crate) fn netlink_error(code: i32, context: String, msg: Option<String>) -> Error {
    let context = match msg {
        Some(m) if !m.is_empty() => format!("{context} ({m})"),
        _ => context,
    };
    Error::Netlink {
        code: code.saturating_neg(),
        context,
    }
}

/// One request of a [`Socket::batch`].
pub(crate) struct BatchReq {
    pub msg: RouteNetlinkMessage,
    pub flags: u16,
    /// EEXIST is success (an address or route that is already there).
    pub tolerate_exists: bool,
    pub context: String,
}

/// The netlink protocols kindnet speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// NETLINK_ROUTE: links, addresses, routes, neighbours.
    Route,
    /// NETLINK_NETFILTER: conntrack and nf_tables.
    Netfilter,
}

impl Protocol {
    fn number(self) -> isize {
        match self {
            Protocol::Route => NETLINK_ROUTE,
            Protocol::Netfilter => NETLINK_NETFILTER,
        }
    }
}

/// A bound netlink socket with its buffers and sequence counter.
pub(crate) struct Socket {
    sock: NlSocket,
    seq: u32,
    /// The send buffer size set by [`Socket::reserve_send`].
    send_limit: usize,
    send_buf: Vec<u8>,
    pub(crate) recv_buf: Vec<u8>,
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace, joined to
    /// the given multicast groups (none for request sockets).
    pub(crate) fn new(groups: &[u32]) -> Result<Socket> {
        Socket::open(Protocol::Route, groups)
    }

    /// Opens a socket of `proto` in the calling thread's network namespace,
    /// joined to `groups`.
    pub(crate) fn open(proto: Protocol, groups: &[u32]) -> Result<Socket> {
        let mut sock = NlSocket::new(proto.number()).map_err(|e| Error::os("netlink socket", e))?;
        sock.bind(&SocketAddr::new(0, 0))
            .map_err(|e| Error::os("netlink bind", e))?;
        for g in groups {
            sock.add_membership(*g)
                .map_err(|e| Error::os(format!("netlink join group {g}"), e))?;
        }
        // Best effort: kernel error strings and short acks. Old kernels
        // lack these options, which only costs us nicer messages.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(Socket {
            sock,
            seq: 0,
            send_limit: 0,
            send_buf: Vec::with_capacity(256),
            recv_buf: Vec::with_capacity(RECV_BUF),
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Receives one datagram into `recv_buf`, which then holds what fit.
    /// Returns the datagram's real length, which exceeds `recv_buf.len()`
    /// when it was truncated. The datagram goes into the buffer's spare
    /// capacity, so only the pages the kernel writes are ever touched: a
    /// socket that sees nothing but acks faults in one page, not the 16 of
    /// a zeroed 64 KiB buffer (a third of a plugin's page faults).
    pub(crate) fn recv(&mut self, flags: RecvFlags) -> io::Result<usize> {
        loop {
            self.recv_buf.clear();
            let buf = rustix::buffer::spare_capacity(&mut self.recv_buf);
            match rustix::net::recv(&self.sock, buf, flags | RecvFlags::TRUNC) {
                Ok((_, real_len)) => return Ok(real_len),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Grows the receive buffer after a truncated datagram of `needed` bytes.
    pub(crate) fn grow(&mut self, needed: usize) {
        let size = needed
            .max(self.recv_buf.capacity() * 2)
            .next_multiple_of(4096);
        self.recv_buf.clear();
        self.recv_buf.reserve_exact(size);
    }

    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    fn serialize<M>(&mut self, msg: M, flags: u16)
    where
        M: netlink_packet_core::NetlinkSerializable + std::fmt::Debug,
    {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        self.send_buf.clear();
        self.send_buf.resize(nl.buffer_len(), 0);
        nl.serialize(&mut self.send_buf);
    }

    /// Frames a request by hand: header (`kind`, `NLM_F_REQUEST |
    /// NLM_F_ACK | flags`) and `payload` (which starts with the family
    /// header, e.g. nfgenmsg).
    pub(crate) fn frame(&mut self, kind: u16, flags: u16, payload: &[u8]) {
        self.send_buf.clear();
        put_header(
            &mut self.send_buf,
            kind,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            0,
            payload.len(),
        );
        self.send_buf.extend_from_slice(payload);
        while !self.send_buf.len().is_multiple_of(4) {
            self.send_buf.push(0);
        }
    }

    /// Sends `buf` (any number of whole messages) in one datagram.
    pub(crate) fn send_bytes(&mut self, buf: &[u8]) -> io::Result<()> {
        let kernel = SocketAddr::new(0, 0);
        loop {
            match self.sock.send_to(buf, &kernel, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Raises the send buffer so a batch of `len` bytes fits one datagram
    /// (SO_SNDBUFFORCE needs CAP_NET_ADMIN, which every nf_tables change
    /// needs anyway; without it the plain limit applies).
    pub(crate) fn reserve_send(&mut self, len: usize) {
        let want = len.saturating_add(4096);
        if want <= self.send_limit {
            return;
        }
        let size = want.min(libc::c_int::MAX as usize);
        if rustix::net::sockopt::set_socket_send_buffer_size_force(&self.sock, size).is_ok() {
            self.send_limit = want;
        }
    }

    /// Stamps a fresh sequence number into the serialized request and sends it.
    fn send(&mut self) -> io::Result<u32> {
        let seq = self.next_seq();
        if let Some(b) = self.send_buf.get_mut(8..12) {
            b.copy_from_slice(&seq.to_ne_bytes());
        }
        let kernel = SocketAddr::new(0, 0);
        loop {
            match self.sock.send_to(&self.send_buf, &kernel, 0) {
                Ok(_) => return Ok(seq),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `msg` (always with NLM_F_ACK) and feeds every reply message to
    /// `parse`, collecting what it returns, until the final ACK or DONE.
    /// Dumps and other side-effect free requests (`retry`) are repeated when
    /// the kernel reports an interrupted dump or a reply did not fit.
    pub(crate) fn collect<T>(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        retry: bool,
        context: impl Fn() -> String,
        parse: impl FnMut(u16, &[u8]) -> Option<T>,
    ) -> Result<Vec<T>> {
        self.serialize(msg, flags);
        self.exchange(flags, retry, context, parse)
    }

    /// [`Socket::collect`] for a message of another protocol, serialized
    /// by its netlink-packet crate.
    pub(crate) fn collect_msg<M, T>(
        &mut self,
        msg: M,
        flags: u16,
        retry: bool,
        context: impl Fn() -> String,
        parse: impl FnMut(u16, &[u8]) -> Option<T>,
    ) -> Result<Vec<T>>
    where
        M: netlink_packet_core::NetlinkSerializable + std::fmt::Debug,
    {
        self.serialize(msg, flags);
        self.exchange(flags, retry, context, parse)
    }

    /// [`Socket::collect`] for a request framed by hand ([`Socket::frame`]).
    pub(crate) fn collect_raw<T>(
        &mut self,
        kind: u16,
        flags: u16,
        payload: &[u8],
        context: impl Fn() -> String,
        parse: impl FnMut(u16, &[u8]) -> Option<T>,
    ) -> Result<Vec<T>> {
        self.frame(kind, flags, payload);
        self.exchange(flags, false, context, parse)
    }

    /// Sends the request in `send_buf` and collects its replies.
    fn exchange<T>(
        &mut self,
        flags: u16,
        retry: bool,
        context: impl Fn() -> String,
        mut parse: impl FnMut(u16, &[u8]) -> Option<T>,
    ) -> Result<Vec<T>> {
        let retry = retry || flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        for attempt in 1..=DUMP_ATTEMPTS {
            out.clear();
            let seq = self.send().map_err(|e| Error::os(context(), e))?;
            let mut truncated = false;
            let mut interrupted = false;
            'recv: loop {
                let n = self
                    .recv(RecvFlags::empty())
                    .map_err(|e| Error::os(context(), e))?;
                if n > self.recv_buf.len() {
                    // The kernel dropped the part that did not fit; finish
                    // this exchange and try again with a bigger buffer.
                    truncated = true;
                    self.grow(n);
                    continue;
                }
                for (hdr, payload) in messages(&self.recv_buf[..n]) {
                    if hdr.seq != seq {
                        continue; // a stale reply to an earlier request
                    }
                    match hdr.kind {
                        NLMSG_NOOP => {}
                        NLMSG_ERROR => {
                            let code = leading_i32(payload);
                            if code == 0 {
                                break 'recv;
                            }
                            let m = ext_ack_msg(hdr.flags, payload);
                            return Err(netlink_error(code, context(), m));
                        }
                        NLMSG_DONE => {
                            let code = leading_i32(payload);
                            if code < 0 {
                                return Err(netlink_error(code, context(), None));
                            }
                            break 'recv;
                        }
                        NLMSG_OVERRUN => {
                            return Err(Error::os(
                                context(),
                                io::Error::from_raw_os_error(libc::ENOBUFS),
                            ));
                        }
                        kind => {
                            if hdr.flags & NLM_F_DUMP_INTR != 0 {
                                interrupted = true;
                            }
                            if !truncated {
                                out.extend(parse(kind, payload));
                            }
                        }
                    }
                }
            }
            if !(truncated || interrupted) {
                return Ok(out);
            }
            if !retry || attempt == DUMP_ATTEMPTS {
                let why = if truncated {
                    "reply did not fit the receive buffer"
                } else {
                    "dump interrupted by concurrent changes"
                };
                return Err(Error::Netlink {
                    code: if truncated {
                        libc::EMSGSIZE
                    } else {
                        libc::EINTR
                    },
                    context: format!("{}: {why}", context()),
                });
            }
        }
        Ok(out)
    }

    /// Sends several modifications in one datagram and waits until the
    /// kernel has answered them all; it handles them in order, each on its
    /// own. Returns the first failure (in request order), skipping EEXIST
    /// where tolerated. Only the last request asks for an ACK: the kernel
    /// answers a failed request whether asked or not, so once the last one
    /// is answered every failure before it has been read (one receive for
    /// the batch instead of one per request).
    pub(crate) fn batch(&mut self, reqs: Vec<BatchReq>) -> Result<()> {
        if reqs.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(reqs.len() * 96);
        let mut seqs = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            self.serialize(r.msg.clone(), r.flags);
            let seq = self.next_seq();
            if let Some(b) = self.send_buf.get_mut(8..12) {
                b.copy_from_slice(&seq.to_ne_bytes());
            }
            if i + 1 < reqs.len()
                && let Some(b) = self.send_buf.get_mut(6..8)
            {
                let flags = u16::from_ne_bytes([b[0], b[1]]) & !NLM_F_ACK;
                b.copy_from_slice(&flags.to_ne_bytes());
            }
            buf.extend_from_slice(&self.send_buf);
            seqs.push(seq);
        }
        let kernel = SocketAddr::new(0, 0);
        let ctx = |i: usize| reqs.get(i).map(|r| r.context.clone()).unwrap_or_default();
        loop {
            match self.sock.send_to(&buf, &kernel, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::os(ctx(0), e)),
            }
        }
        let mut results: Vec<Option<Result<()>>> = (0..reqs.len()).map(|_| None).collect();
        let last = reqs.len() - 1;
        while results[last].is_none() {
            let n = self
                .recv(RecvFlags::empty())
                .map_err(|e| Error::os(ctx(0), e))?;
            let n = n.min(self.recv_buf.len());
            for (hdr, payload) in messages(&self.recv_buf[..n]) {
                if hdr.kind != NLMSG_ERROR {
                    continue;
                }
                let Some(i) = seqs.iter().position(|s| *s == hdr.seq) else {
                    continue; // a stale reply to an earlier request
                };
                let Some(slot) = results.get_mut(i).filter(|s| s.is_none()) else {
                    continue;
                };
                let code = leading_i32(payload);
                let tolerated = code == -libc::EEXIST && reqs[i].tolerate_exists;
                *slot = Some(if code == 0 || tolerated {
                    Ok(())
                } else {
                    Err(netlink_error(code, ctx(i), ext_ack_msg(hdr.flags, payload)))
                });
            }
        }
        results
            .into_iter()
            .flatten()
            .collect::<Result<Vec<()>>>()
            .map(drop)
    }

    /// Sends a modification and waits for its ACK.
    pub(crate) fn ack(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        context: impl Fn() -> String,
    ) -> Result<()> {
        self.collect(msg, flags, false, context, |_, _| None::<()>)
            .map(drop)
    }
}

/// A NETLINK_ROUTE socket bound in the network namespace of the thread that
/// created it. The socket keeps talking to that namespace wherever it is
/// used from afterwards, so a `Handle` for a container namespace can be used
/// from any thread.
pub struct Handle {
    pub(crate) sock: Socket,
}

/// Changes to send together: one datagram, one round trip, each change
/// acknowledged on its own (see [`Handle::apply`]).
#[derive(Default)]
pub struct Batch {
    pub(crate) reqs: Vec<BatchReq>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// The number of changes in the batch.
    pub fn len(&self) -> usize {
        self.reqs.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub(crate) fn push(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        tolerate_exists: bool,
        context: String,
    ) -> &mut Batch {
        self.reqs.push(BatchReq {
            msg,
            flags,
            tolerate_exists,
            context,
        });
        self
    }
}

impl Handle {
    /// Sends `batch` in one datagram; the first failure in request order is
    /// returned once every change has been answered.
    pub fn apply(&mut self, batch: Batch) -> Result<()> {
        self.sock.batch(batch.reqs)
    }

    /// Opens a handle in the calling thread's network namespace.
    pub fn new() -> Result<Handle> {
        Ok(Handle {
            sock: Socket::new(&[])?,
        })
    }

    /// Opens a handle inside `ns` (on a short-lived thread that entered it);
    /// the returned handle can be used from anywhere.
    pub fn in_netns(ns: &crate::Netns) -> Result<Handle> {
        ns.run(Handle::new)?
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("fd", &self.sock.fd())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + payload.len()) as u32;
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn splits_datagrams_and_stops_on_garbage() {
        let mut buf = msg(24, 2, 7, &[1, 2, 3]);
        buf.extend(msg(NLMSG_DONE, 2, 7, &0i32.to_ne_bytes()));
        let got: Vec<_> = messages(&buf)
            .map(|(h, p)| (h.kind, h.seq, p.len()))
            .collect();
        assert_eq!(got, vec![(24, 7, 3), (NLMSG_DONE, 7, 4)]);

        // A length field pointing past the end yields nothing, no panic.
        let mut bad = msg(24, 0, 1, &[0; 8]);
        bad[0] = 200;
        assert_eq!(messages(&bad).count(), 0);
        // A length below the header size too.
        let mut bad = msg(24, 0, 1, &[]);
        bad[0] = 3;
        assert_eq!(messages(&bad).count(), 0);
        assert_eq!(messages(&[1, 2, 3]).count(), 0);
    }

    #[test]
    fn extended_ack_message_is_extracted() {
        // error code, capped original header, then NLMSGERR_ATTR_MSG.
        let mut p = (-libc::EINVAL).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0; NLMSG_HDRLEN]);
        let text = b"Nexthop has invalid gateway\0";
        let nla_len = (4 + text.len()) as u16;
        p.extend_from_slice(&nla_len.to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        let m = ext_ack_msg(NLM_F_CAPPED | NLM_F_ACK_TLVS, &p);
        assert_eq!(m.as_deref(), Some("Nexthop has invalid gateway"));
        assert_eq!(ext_ack_msg(NLM_F_CAPPED, &p), None);
        assert_eq!(ext_ack_msg(NLM_F_ACK_TLVS, &p[..6]), None);

        let e = netlink_error(-libc::EINVAL, "add route x".into(), m);
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert!(e.to_string().contains("Nexthop has invalid gateway"), "{e}");
    }
}

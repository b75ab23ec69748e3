//! Route change notifications, for a daemon that repairs drift instead of
//! polling full dumps.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::RecvFlags;

use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::route::Route;
use crate::socket::{Socket, messages};
use crate::wire::{RTM_DELROUTE, RTM_NEWROUTE, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE};
/// Room for bursts (e.g. a link going down flushes thousands of routes);
/// needs CAP_NET_ADMIN for more than rmem_max, otherwise best effort.
const EVENT_RCVBUF: usize = 8 << 20;

/// One route change the kernel announced.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouteEvent {
    /// A route was added or replaced.
    Added(Route),
    /// A route was deleted.
    Deleted(Route),
}

/// A socket subscribed to IPv4 and IPv6 route changes of one namespace.
/// Only routes a [`Route`] can represent are reported (see [`Route`]).
pub struct RouteEvents {
    sock: Socket,
}

/// SO_RCVBUFFORCE (beyond rmem_max, needs CAP_NET_ADMIN), else
/// SO_RCVBUF; best effort.
fn set_rcvbuf(fd: impl AsFd, size: usize) {
    use rustix::net::sockopt::{set_socket_recv_buffer_size, set_socket_recv_buffer_size_force};
    if set_socket_recv_buffer_size_force(&fd, size).is_err() {
        let _ = set_socket_recv_buffer_size(&fd, size);
    }
}

impl RouteEvents {
    /// Subscribes in the calling thread's network namespace.
    pub fn subscribe() -> Result<RouteEvents> {
        let sock = Socket::new(&[RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE])?;
        set_rcvbuf(sock.as_fd(), EVENT_RCVBUF);
        Ok(RouteEvents { sock })
    }

    /// Subscribes inside `ns`; the result can be used from any thread.
    pub fn in_netns(ns: &Netns) -> Result<RouteEvents> {
        ns.run(RouteEvents::subscribe)?
    }

    /// Waits up to `timeout` (forever with None) for route changes and
    /// returns every event queued by then; Ok(empty) means the timeout
    /// passed. An error with `is_overrun()` means the kernel dropped events:
    /// the caller must resynchronise from [`crate::Handle::routes`].
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Vec<RouteEvent>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if !self.wait(deadline)? {
                return Ok(Vec::new());
            }
            let events = self.drain()?;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    /// poll(2) until readable (true) or the deadline passes (false).
    fn wait(&self, deadline: Option<Instant>) -> Result<bool> {
        loop {
            // ppoll(2) takes nanoseconds: no rounding that could wake us
            // before the deadline. A deadline beyond Timespec waits forever.
            let left = deadline
                .and_then(|d| Timespec::try_from(d.saturating_duration_since(Instant::now())).ok());
            let mut pfd = [PollFd::new(&self.sock, PollFlags::IN)];
            let n = match poll(&mut pfd, left.as_ref()) {
                Ok(n) => n,
                Err(e) if e == Errno::INTR => continue,
                Err(e) => return Err(Error::os("poll route events", e.into())),
            };
            if n > 0 {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// Reads every queued datagram without blocking.
    fn drain(&mut self) -> Result<Vec<RouteEvent>> {
        let mut out = Vec::new();
        loop {
            let n = match self.sock.recv(RecvFlags::DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) => return Err(Error::os("receive route events", e)),
            };
            if n > self.sock.recv_buf.len() {
                // Part of a notification was cut off: as good as lost.
                self.sock.grow(n);
                return Err(Error::os(
                    "receive route events",
                    io::Error::from_raw_os_error(libc::ENOBUFS),
                ));
            }
            for (hdr, payload) in messages(&self.sock.recv_buf[..n]) {
                let ev = match hdr.kind {
                    RTM_NEWROUTE => Route::parse(payload).map(RouteEvent::Added),
                    RTM_DELROUTE => Route::parse(payload).map(RouteEvent::Deleted),
                    _ => None,
                };
                out.extend(ev);
            }
        }
    }
}

impl std::fmt::Debug for RouteEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteEvents")
            .field("fd", &self.sock.fd())
            .finish()
    }
}

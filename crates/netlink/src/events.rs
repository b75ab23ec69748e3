//! Route change notifications, for a daemon that repairs drift instead of
//! polling full dumps.

// Raw syscalls: poll(2) on the netlink socket.
#![allow(unsafe_code)]

use std::io;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::route::Route;
use crate::socket::{Socket, messages};
use crate::wire::{RTM_DELROUTE, RTM_NEWROUTE, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE};
/// Room for bursts (e.g. a link going down flushes thousands of routes);
/// needs CAP_NET_ADMIN for more than rmem_max, otherwise best effort.
const EVENT_RCVBUF: libc::c_int = 8 << 20;

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

fn set_rcvbuf(fd: libc::c_int, size: libc::c_int) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with a pointer to a live c_int of matching size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

impl RouteEvents {
    /// Subscribes in the calling thread's network namespace.
    pub fn subscribe() -> Result<RouteEvents> {
        let sock = Socket::new(&[RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE])?;
        set_rcvbuf(sock.fd(), EVENT_RCVBUF);
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
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up so we never wake just before the deadline.
                    left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.sock.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n > 0 {
                return Ok(true);
            }
            if n == 0 {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Error::os("poll route events", e));
            }
        }
    }

    /// Reads every queued datagram without blocking.
    fn drain(&mut self) -> Result<Vec<RouteEvent>> {
        let mut out = Vec::new();
        loop {
            let n = match self.sock.recv(libc::MSG_DONTWAIT) {
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

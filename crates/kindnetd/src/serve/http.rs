//! /metrics, /healthz, /readyz and /config (the effective configuration,
//! [`crate::serve::effective`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::serve::status::Status;

#[derive(Clone)]
struct AppState {
    status: Arc<Status>,
    /// Liveness fails when the reconciler has not beaten for this long.
    max_silence: Duration,
    /// The body of /config, built once at start.
    config: Arc<str>,
}

/// The endpoints; `config` is the JSON served read-only at /config.
pub fn router(status: Arc<Status>, max_silence: Duration, config: String) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(crate::serve::effective::CONFIG_PATH, get(config_json))
        .with_state(AppState {
            status,
            max_silence,
            config: config.into(),
        })
}

async fn config_json(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.config.to_string(),
    )
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.status.metrics.encode(),
    )
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    if s.status.alive(s.max_silence) {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reconciler has not run for more than {:?}\n", s.max_silence),
        )
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let r = s.status.readiness();
    let code = if r.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, r.report())
}

/// At most this many connections are served at once; when all are taken,
/// a new one closes the longest-idle (see [`Slots`]), so a flood of idle
/// connections can neither use up descriptors nor starve the probes.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection that sends nothing for this long is closed.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);
/// No connection lives longer than this (request head, body, response, and
/// keep-alive together): a slow client cannot hold a slot.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// Limits of the HTTP endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub first_byte_timeout: Duration,
    pub lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            first_byte_timeout: FIRST_BYTE_TIMEOUT,
            lifetime: CONNECTION_LIFETIME,
        }
    }
}

/// The listen backlog: connections the kernel completes before kindnetd
/// accepts them. When it is full new connections (a probe) are dropped
/// and retried by the client a second later, so it is larger than a flood
/// of the size kindnetd is tested against (the kernel caps it at
/// `net.core.somaxconn`, 4096 by default).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listener. `[::]:P` falls back to `0.0.0.0:P` on hosts
/// without IPv6.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    match listen(addr) {
        Ok(l) => Ok(l),
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            listen(v4).map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(LISTEN_BACKLOG)
}

/// The live connections, each with when it last sent or received a byte
/// and whether it ever sent one.
#[derive(Default)]
pub struct Slots {
    next: u64,
    live: HashMap<u64, SlotState>,
}

struct SlotState {
    accepted: u64,
    activity: Arc<Activity>,
    evict: Arc<Notify>,
    /// A duplicate of the connection's socket, to peek at (None if the
    /// duplicate could not be made).
    fd: Option<OwnedFd>,
}

/// Whether bytes wait to be read on `fd` (a request not read yet: the
/// connection is not idle).
fn pending(fd: &OwnedFd) -> bool {
    use rustix::net::{RecvFlags, recv};
    let mut b = [0u8; 1];
    // MSG_PEEK leaves the byte queued.
    matches!(recv(fd, &mut b, RecvFlags::PEEK | RecvFlags::DONTWAIT), Ok((_, n)) if n > 0)
}

/// A connection's activity, written by its own I/O.
#[derive(Default)]
struct Activity {
    /// Milliseconds since the listener started, at the last byte.
    last: AtomicU64,
    got_bytes: AtomicBool,
}

/// A candidate for eviction: (id, ever sent a byte, last activity,
/// accept order).
pub type Candidate = (u64, bool, u64, u64);

/// Which connection to close for a new one when all slots are taken: one
/// that never sent a byte before one that did (a probe that has sent its
/// request is served), then the longest idle, then the oldest.
pub fn pick_eviction(c: impl IntoIterator<Item = Candidate>) -> Option<u64> {
    c.into_iter()
        .min_by_key(|(_, got, last, accepted)| (*got, *last, *accepted))
        .map(|(id, ..)| id)
}

/// A listener that serves at most `max_connections` at once (a new one
/// closes the longest-idle) and hands out connections with deadlines.
pub struct Limited {
    inner: tokio::net::TcpListener,
    slots: Arc<Mutex<Slots>>,
    limits: Limits,
    status: Arc<Status>,
    started: tokio::time::Instant,
}

impl Limited {
    pub fn new(inner: tokio::net::TcpListener, limits: Limits, status: Arc<Status>) -> Limited {
        Limited {
            inner,
            slots: Arc::new(Mutex::new(Slots::default())),
            limits,
            status,
            started: tokio::time::Instant::now(),
        }
    }

    /// Takes a slot for a new connection, closing the longest-idle one
    /// when all are taken.
    fn admit(&self, fd: Option<OwnedFd>) -> (u64, Arc<Activity>, Arc<Notify>) {
        let mut slots = match self.slots.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        while slots.live.len() >= self.limits.max_connections.max(1) {
            let victim = pick_eviction(slots.live.iter().map(|(id, s)| {
                (
                    *id,
                    s.activity.got_bytes.load(Ordering::Relaxed),
                    s.activity.last.load(Ordering::Relaxed),
                    s.accepted,
                )
            }));
            // one whose request waits unread is served: it sent bytes
            if let Some(v) = victim.and_then(|id| slots.live.get(&id))
                && !v.activity.got_bytes.load(Ordering::Relaxed)
                && v.fd.as_ref().is_some_and(pending)
            {
                v.activity.got_bytes.store(true, Ordering::Relaxed);
                continue;
            }
            let Some(s) = victim.and_then(|id| slots.live.remove(&id)) else {
                break;
            };
            // its task wakes, fails its next read or write, and drops it
            s.evict.notify_one();
            self.status.metrics.http_connections_evicted.inc();
        }
        slots.next += 1;
        let id = slots.next;
        let activity = Arc::new(Activity::default());
        activity.last.store(self.millis(), Ordering::Relaxed);
        let evict = Arc::new(Notify::new());
        slots.live.insert(
            id,
            SlotState {
                accepted: id,
                activity: activity.clone(),
                evict: evict.clone(),
                fd,
            },
        );
        (id, activity, evict)
    }

    fn millis(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

impl axum::serve::Listener for Limited {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let (id, activity, evict) =
                        self.admit(stream.as_fd().try_clone_to_owned().ok());
                    let slot = Slot {
                        id,
                        slots: self.slots.clone(),
                    };
                    return (
                        Guarded::new(stream, slot, activity, evict, self.started, self.limits),
                        addr,
                    );
                }
                Err(e) => {
                    // EMFILE and the like: wait a little, never spin.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection's slot, given back when it is dropped.
struct Slot {
    id: u64,
    slots: Arc<Mutex<Slots>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = match self.slots.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        slots.live.remove(&self.id);
    }
}

/// A connection with two deadlines: the first byte must arrive within
/// `first_byte_timeout`, and the whole connection ends after `lifetime`;
/// it also ends when a newer connection takes its slot. Holds its slot
/// until dropped.
pub struct Guarded {
    // first: the slot is given back before the socket closes
    _slot: Slot,
    stream: tokio::net::TcpStream,
    activity: Arc<Activity>,
    evicted: Pin<Box<tokio::sync::futures::OwnedNotified>>,
    started: tokio::time::Instant,
    deadline: Pin<Box<tokio::time::Sleep>>,
    end_of_life: tokio::time::Instant,
    got_bytes: bool,
}

impl Guarded {
    fn new(
        stream: tokio::net::TcpStream,
        slot: Slot,
        activity: Arc<Activity>,
        evict: Arc<Notify>,
        started: tokio::time::Instant,
        l: Limits,
    ) -> Guarded {
        let now = tokio::time::Instant::now();
        let end_of_life = now + l.lifetime;
        Guarded {
            stream,
            _slot: slot,
            activity,
            evicted: Box::pin(evict.notified_owned()),
            started,
            deadline: Box::pin(tokio::time::sleep_until(
                (now + l.first_byte_timeout).min(end_of_life),
            )),
            end_of_life,
            got_bytes: false,
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready() || self.evicted.as_mut().poll(cx).is_ready()
    }

    fn active(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.activity.last.store(ms, Ordering::Relaxed);
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP connection deadline")
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.active();
            if !self.got_bytes {
                self.got_bytes = true;
                self.activity.got_bytes.store(true, Ordering::Relaxed);
                let end = self.end_of_life;
                self.deadline.as_mut().reset(end);
            }
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        let r = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` within `limits`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    status: Arc<Status>,
) -> std::io::Result<()> {
    axum::serve(Limited::new(listener, limits, status), app).await
}

/// Raises the soft limit of open descriptors to the hard limit (a 1024
/// soft limit is common); returns (old soft, new soft).
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    // None is RLIM_INFINITY.
    let old = lim.current.unwrap_or(u64::MAX);
    let Some(new) = raised_soft_limit(old, lim.maximum.unwrap_or(u64::MAX)) else {
        return Ok((old, old));
    };
    lim.current = Some(new);
    setrlimit(Resource::Nofile, lim)?;
    Ok((old, new))
}

/// The soft limit to set, if it should change: the hard limit (bounded,
/// since an "unlimited" hard limit would make descriptor tables huge).
pub fn raised_soft_limit(soft: u64, hard: u64) -> Option<u64> {
    const CEILING: u64 = 1 << 20;
    let target = hard.min(CEILING);
    (target > soft).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_goes_to_the_hard_limit() {
        for (soft, hard, want) in [
            (1024, 4096, Some(4096)),
            (1024, 1024, None),
            (4096, 1024, None),
            (1024, u64::MAX, Some(1 << 20)),
            (1 << 20, u64::MAX, None),
            (0, 1, Some(1)),
        ] {
            assert_eq!(raised_soft_limit(soft, hard), want, "{soft} {hard}");
        }
    }

    #[test]
    fn idle_and_excess_connections_are_closed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let status = Arc::new(Status::new());
            status.beat();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let limits = Limits {
                max_connections: 4,
                first_byte_timeout: Duration::from_millis(300),
                lifetime: Duration::from_secs(2),
            };
            let app = router(status.clone(), Duration::from_secs(60), "{}".into());
            tokio::spawn(serve(listener, app, limits, status.clone()));
            // Idle clients (no byte sent), more than the cap.
            let mut idle = Vec::new();
            for _ in 0..20 {
                idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let evicted = status.metrics.encode();
            assert!(
                evicted.contains("kindnet_http_connections_evicted_total 16"),
                "{evicted}"
            );
            // After the first-byte timeout every idle one is closed, and a
            // real request is answered.
            tokio::time::sleep(Duration::from_millis(400)).await;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for mut c in idle {
                let mut b = [0u8; 1];
                let n = tokio::time::timeout(Duration::from_secs(1), c.read(&mut b))
                    .await
                    .expect("idle connection still open");
                assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
            }
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).await.unwrap();
            assert!(s.starts_with("HTTP/1.1 200"), "{s}");
        });
    }

    #[test]
    fn the_longest_idle_silent_connection_is_evicted_first() {
        // (id, got bytes, last activity, accept order)
        let c = [
            (1, true, 5, 1),
            (2, false, 9, 2),
            (3, false, 7, 3),
            (4, true, 1, 4),
        ];
        assert_eq!(pick_eviction(c), Some(3), "silent ones first, longest idle");
        assert_eq!(pick_eviction(c.into_iter().filter(|c| c.1)), Some(4));
        assert_eq!(pick_eviction([(7, false, 3, 9), (8, false, 3, 8)]), Some(8));
        assert_eq!(pick_eviction([]), None);
    }

    /// 1,500 idle connections held open (and re-opened as soon as they
    /// are closed): /healthz is still answered within 1 s, 99 of 100 times.
    /// The server, the flood and the probes each run on their own threads.
    #[test]
    fn probes_are_answered_while_idle_connections_flood_the_cap() {
        use std::io::{Read, Write};
        let _ = raise_nofile_limit();
        let status = Arc::new(Status::new());
        status.beat();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let st = status.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = router(st.clone(), Duration::from_secs(60), "{}".into());
                let _ = serve(listener, app, Limits::default(), st).await;
            });
        });
        let addr = addr_rx.recv().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flood_stop = stop.clone();
        let flood = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use tokio::io::AsyncReadExt;
                let mut tasks = Vec::new();
                for _ in 0..1500 {
                    let stop = flood_stop.clone();
                    tasks.push(tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            };
                            // held, silent, until the server closes it
                            let mut b = [0u8; 1];
                            let _ =
                                tokio::time::timeout(Duration::from_secs(1), c.read(&mut b)).await;
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        // the flood is on: the cap is full and connections churn
        kindnet_testbed::wait_for(Duration::from_secs(10), || {
            (status.metrics.http_connections_evicted.get() > 3000).then_some(())
        })
        .expect("the flood fills the cap");
        let probe = || -> Option<()> {
            let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut s = String::new();
            c.read_to_string(&mut s).ok()?;
            s.starts_with("HTTP/1.1 200").then_some(())
        };
        let mut answered = 0;
        for _ in 0..100 {
            let t = std::time::Instant::now();
            if probe().is_some() && t.elapsed() <= Duration::from_secs(1) {
                answered += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let _ = flood.join();
        let evicted = status.metrics.http_connections_evicted.get();
        println!(
            "{{\"bench\":\"healthz_under_idle_flood\",\"idle\":1500,\"answered_within_1s\":{answered},\"of\":100,\"evicted\":{evicted}}}"
        );
        assert!(answered >= 99, "{answered} of 100 answered within 1 s");
    }
}

//! /metrics, /healthz, /readyz and /config (the effective configuration,
//! [`crate::effective`]).

// Raw syscalls: getrlimit/setrlimit for the open-file limit.
#![allow(unsafe_code)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::status::Status;

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
        .route(crate::effective::CONFIG_PATH, get(config_json))
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

/// At most this many connections are served at once; more are closed as
/// soon as they are accepted, so a flood cannot use up descriptors.
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

/// Binds the listener. `[::]:P` falls back to `0.0.0.0:P` on hosts
/// without IPv6.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            tokio::net::TcpListener::bind(v4).await.map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

/// A listener that serves at most `max_connections` at once (the excess is
/// closed at once) and hands out connections with deadlines.
pub struct Limited {
    inner: tokio::net::TcpListener,
    permits: Arc<Semaphore>,
    limits: Limits,
    status: Arc<Status>,
}

impl Limited {
    pub fn new(inner: tokio::net::TcpListener, limits: Limits, status: Arc<Status>) -> Limited {
        Limited {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            status,
        }
    }
}

impl axum::serve::Listener for Limited {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => return (Guarded::new(stream, permit, self.limits), addr),
                    Err(_) => {
                        // Closed at once: the flood costs one descriptor for
                        // a moment, never more than the cap.
                        self.status.metrics.http_connections_refused.inc();
                        drop(stream);
                    }
                },
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

/// A connection with two deadlines: the first byte must arrive within
/// `first_byte_timeout`, and the whole connection ends after `lifetime`.
/// Holds its slot (semaphore permit) until dropped.
pub struct Guarded {
    stream: tokio::net::TcpStream,
    _permit: OwnedSemaphorePermit,
    deadline: Pin<Box<tokio::time::Sleep>>,
    end_of_life: tokio::time::Instant,
    got_bytes: bool,
}

impl Guarded {
    fn new(stream: tokio::net::TcpStream, permit: OwnedSemaphorePermit, l: Limits) -> Guarded {
        let now = tokio::time::Instant::now();
        let end_of_life = now + l.lifetime;
        Guarded {
            stream,
            _permit: permit,
            deadline: Box::pin(tokio::time::sleep_until(
                (now + l.first_byte_timeout).min(end_of_life),
            )),
            end_of_life,
            got_bytes: false,
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
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
        if !self.got_bytes && matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.got_bytes = true;
            let end = self.end_of_life;
            self.deadline.as_mut().reset(end);
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
        Pin::new(&mut self.stream).poll_write(cx, data)
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
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let old = lim.rlim_cur;
    let Some(new) = raised_soft_limit(lim.rlim_cur, lim.rlim_max) else {
        return Ok((old, old));
    };
    lim.rlim_cur = new;
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
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
            let refused = status.metrics.encode();
            assert!(
                refused.contains("kindnet_http_connections_refused_total 16"),
                "{refused}"
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
}

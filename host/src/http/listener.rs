//! Serving a router on a TCP listener: plain HTTP (loopback only) or TLS, HTTP/1.1 and HTTP/2
//! on every connection, graceful shutdown that drains what is in flight.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::http::tls::{Refusals, ReloadingTls};
use crate::observe::metrics::Metrics;
use crate::policy::values::ClientIdentity;

/// A TLS handshake that takes longer than this is dropped: nothing legitimate is that slow on
/// a cluster network, and a stalled handshake holds a socket.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/1 request headers must arrive within this (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection on which no byte moved either way for this long is closed: longer than the
/// longest review (10 s) and than the 90 s after which kube-apiserver's HTTP client closes an
/// idle connection itself, so tollgate never closes one that client is about to reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// HTTP/2 keepalive: a ping this often, and the connection closed if it is not answered in
/// time (a vanished kube-apiserver must not hold a connection forever).
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Streams one HTTP/2 connection may have open at once. kube-apiserver multiplexes its reviews
/// over one connection; 250 (Go's default) is far above what a review's latency needs and keeps
/// one connection from holding thousands of pending bodies.
const H2_MAX_STREAMS: u32 = 250;

/// Request headers, HTTP/1 and HTTP/2 alike: a TokenReview request has a handful.
const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// Connections held at once (`--max-connections`); beyond it tollgate stops accepting until
/// one closes, and the kernel's backlog holds the rest.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// How long a shutdown waits for requests in flight (kubelet's default grace period is 30 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection accepted just before a shutdown may not have sent its request yet (kube-apiserver
/// sends it within milliseconds of connecting): it gets this long to, and is then served like
/// the others, instead of being closed unanswered.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

/// Why a listener stops accepting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The process shuts down: what the kernel already queued is served too.
    Shutdown,
    /// A successor accepts on the same socket now (`--handover`): what is queued is its.
    HandedOver,
}

/// Serves `app` on `listener` until `stop` resolves, then drains open connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<ReloadingTls>>,
    metrics: Arc<Metrics>,
    max_connections: usize,
    stop: impl std::future::Future<Output = Stop>,
) -> Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES as usize + 64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let max_connections = max_connections.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let (stopped, stopping) = tokio::sync::watch::channel(false);
    let connections = Connections {
        builder: Arc::new(builder),
        app,
        tls,
        refusals: Arc::new(Refusals::new(metrics.tls_handshake_failures.clone())),
        stopping,
    };
    tokio::pin!(stop);
    let why = loop {
        // At the cap, wait for a connection to close before accepting another.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break Stop::Shutdown,
            },
            why = &mut stop => break why,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            why = &mut stop => break why,
        };
        connections.serve(tcp, peer, slot);
    };
    match why {
        // Connections the kernel completed but nobody accepted yet would be reset when the
        // listener closes: serve them too, narrowing the window to the close itself.
        Stop::Shutdown => {
            for (tcp, peer) in backlog(listener) {
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => connections.serve(tcp, peer, slot),
                    Err(_) => break,
                }
            }
        }
        // The successor accepts from the same socket: this copy just closes.
        Stop::HandedOver => drop(listener),
    }
    tracing::info!("draining connections in flight");
    let _ = stopped.send(true);
    // Every connection holds a slot until it ends: all slots back means all drained.
    if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(max_connections as u32)).await.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}: closing them");
    }
    Ok(())
}

/// Accepts, without waiting, what is already in `listener`'s queue, then closes it.
fn backlog(listener: TcpListener) -> Vec<(tokio::net::TcpStream, SocketAddr)> {
    let mut queued = Vec::new();
    let Ok(listener) = listener.into_std() else { return queued };
    if listener.set_nonblocking(true).is_err() {
        return queued;
    }
    while let Ok((tcp, peer)) = listener.accept() {
        if let Ok(tcp) = tcp.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(tcp)) {
            queued.push((tcp, peer));
        }
    }
    queued
}

/// What every connection of one listener shares.
struct Connections {
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    tls: Option<Arc<ReloadingTls>>,
    refusals: Arc<Refusals>,
    /// Turns true when the listener shuts down.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Connections {
    /// Serves one accepted connection on its own task, which holds `slot` until it ends.
    fn serve(&self, tcp: tokio::net::TcpStream, peer: SocketAddr, slot: tokio::sync::OwnedSemaphorePermit) {
        let _ = tcp.set_nodelay(true);
        let (app, builder, tls) = (self.app.clone(), self.builder.clone(), self.tls.clone());
        let (refusals, stopping) = (self.refusals.clone(), self.stopping.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let tcp = Watched::new(tcp);
            let idle = tcp.idle();
            let served = tcp.served.clone();
            match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service(app, None, served.clone()));
                    drive(conn, peer, idle, served, stopping).await;
                }
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return refusals.note(peer, crate::http::tls::refusal_reason(&e), &e),
                        Err(_) => return refusals.note(peer, "timeout", &"no handshake within the time allowed"),
                    };
                    let client = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|cert| ClientIdentity::from_der(cert));
                    let conn = builder.serve_connection(TokioIo::new(stream), service(app, client, served.clone()));
                    drive(conn, peer, idle, served, stopping).await;
                }
            }
        });
    }
}

/// Runs a connection until it ends, goes idle, or the listener stops; then lets it finish what
/// it is answering (HTTP/1.1: the response in progress, then close; HTTP/2: GOAWAY, then the
/// streams already open). A connection that has not sent its first request when the listener
/// stops gets [`FIRST_REQUEST_GRACE`] to send it.
async fn drive(
    conn: impl GracefulConnection,
    peer: SocketAddr,
    idle: impl std::future::Future<Output = ()>,
    served: Arc<std::sync::atomic::AtomicBool>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    tokio::pin!(conn, idle);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = &mut idle => return tracing::debug!(%peer, "idle connection closed"),
        _ = stopping.wait_for(|s| *s) => {}
    }
    let grace = tokio::time::Instant::now() + FIRST_REQUEST_GRACE;
    while !served.load(std::sync::atomic::Ordering::Relaxed) && tokio::time::Instant::now() < grace {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn => {}
        () = &mut idle => tracing::debug!(%peer, "idle connection closed while draining"),
    }
}

/// The router as a hyper service, with the connection's verified client identity (if any) in
/// every request's extensions; `served` is set by the connection's first request.
fn service(
    app: Router,
    client: Option<ClientIdentity>,
    served: Arc<std::sync::atomic::AtomicBool>,
) -> hyper_util::service::TowerToHyperService<
    impl tower::Service<hyper::Request<Incoming>, Response = axum::response::Response, Error = Infallible, Future: Send>
    + Clone,
> {
    let svc = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
        served.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(c) = &client {
            req.extensions_mut().insert(c.clone());
        }
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    hyper_util::service::TowerToHyperService::new(svc)
}

/// A connection's socket that remembers when a byte last moved either way and whether a
/// request arrived: a peer that sends no complete request within [`HEADER_TIMEOUT`] of
/// connecting (silent, or stalled in the HTTP/2 preface, where no header timeout applies) is
/// cut then, and any connection idle for [`IDLE_TIMEOUT`] after.
struct Watched<T> {
    io: T,
    last: Arc<std::sync::atomic::AtomicU64>,
    served: Arc<std::sync::atomic::AtomicBool>,
    born: tokio::time::Instant,
}

impl<T> Watched<T> {
    fn new(io: T) -> Self {
        Self { io, last: Arc::default(), served: Arc::default(), born: tokio::time::Instant::now() }
    }

    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves when the connection should be cut: no request by [`HEADER_TIMEOUT`], or
    /// nothing moved for [`IDLE_TIMEOUT`].
    fn idle(&self) -> impl std::future::Future<Output = ()> + use<T> {
        let (last, served, born) = (self.last.clone(), self.served.clone(), self.born);
        async move {
            loop {
                let idle_at =
                    born + Duration::from_millis(last.load(std::sync::atomic::Ordering::Relaxed)) + IDLE_TIMEOUT;
                let at = if served.load(std::sync::atomic::Ordering::Relaxed) {
                    idle_at
                } else {
                    idle_at.min(born + HEADER_TIMEOUT)
                };
                if tokio::time::Instant::now() >= at {
                    return;
                }
                tokio::time::sleep_until(at).await;
            }
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Raises this process's open-file limit to its hard limit: every connection is a descriptor,
/// and the default soft limit (often 1024) would refuse connections long before
/// `--max-connections`. Returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls on this process, with a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Completed connections the kernel queues until accepted: tokio's default, which a listener
/// bound with `TcpListener::bind` had before (the kernel caps it at `somaxconn`).
const BACKLOG: u32 = 1024;

/// Binds `addr`, naming it in the error. Never with `SO_REUSEPORT`: no other process, of any
/// user, can then bind it while tollgate listens (an upgrade hands the socket itself over:
/// [`crate::http::handover`]).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let bound = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    bound().with_context(|| format!("binding {addr}"))
}

/// A listener handed over by a predecessor, for the runtime.
pub fn adopt(listener: std::net::TcpListener) -> Result<TcpListener> {
    listener.set_nonblocking(true).context("making the socket handed over non-blocking")?;
    TcpListener::from_std(listener).context("registering the socket handed over")
}

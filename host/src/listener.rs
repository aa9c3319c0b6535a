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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::metrics::Metrics;
use crate::tls::{ClientIdentity, ReloadingTls};

/// A TLS handshake that takes longer than this is dropped: nothing legitimate is that slow on
/// a cluster network, and a stalled handshake holds a socket.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/1 request headers must arrive within this (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a shutdown waits for requests in flight (kubelet's default grace period is 30 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `app` on `listener` until `shutdown` resolves, then drains open connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<ReloadingTls>>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    // kube-apiserver multiplexes reviews over one HTTP/2 connection.
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(1000);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let watcher = graceful.watcher();
        let (app, builder, tls, metrics) = (app.clone(), builder.clone(), tls.clone(), metrics.clone());
        tokio::spawn(async move {
            match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service(app, None));
                    let _ = watcher.watch(conn).await;
                }
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            metrics.tls_handshake_failures.inc();
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics.tls_handshake_failures.inc();
                            return;
                        }
                    };
                    let client = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|cert| ClientIdentity::from_der(cert));
                    let conn = builder.serve_connection(TokioIo::new(stream), service(app, client));
                    let _ = watcher.watch(conn).await;
                }
            }
        });
    }
    drop(listener);
    tracing::info!("draining connections in flight");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}: closing them");
    }
    Ok(())
}

/// The router as a hyper service, with the connection's verified client identity (if any) in
/// every request's extensions.
fn service(
    app: Router,
    client: Option<ClientIdentity>,
) -> hyper_util::service::TowerToHyperService<
    impl tower::Service<hyper::Request<Incoming>, Response = axum::response::Response, Error = Infallible, Future: Send>
    + Clone,
> {
    let svc = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
        if let Some(c) = &client {
            req.extensions_mut().insert(c.clone());
        }
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    hyper_util::service::TowerToHyperService::new(svc)
}

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))
}

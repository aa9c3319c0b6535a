//! `tollgate serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::{PluginArgs, plugin_dir};
use crate::audit::{AuditLog, Fingerprinter};
use crate::evaluator::Evaluator;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::reload::Reloader;
use crate::server::{AppState, HttpSettings, app};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The plugin directory: its root is the default tenant.
    #[arg(long)]
    pub plugins: PathBuf,
    /// The operator's tenants file (guardrails), kept outside the plugin directory.
    #[arg(long)]
    pub tenants: Option<PathBuf>,
    /// Address to listen on. Without TLS only a loopback address is accepted.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Deadline of a whole review; past it the answer is 503. At most 10 s, far below
    /// kube-apiserver's 30 s.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub review_timeout_ms: u64,
    /// Reviews evaluated at once; more wait (within their deadline) and then get 503.
    #[arg(long, default_value_t = 64)]
    pub max_concurrent_reviews: usize,
    /// Bodies larger than this are refused with 413.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Put the deny reason in status.error (kube-apiserver then does not cache denials).
    #[arg(long)]
    pub deny_reason_in_status: bool,
    /// Where audit lines go: `-` (standard output), a file, or `off`.
    #[arg(long, default_value = "-")]
    pub audit_log: String,
    /// Key for audit `token_id` fingerprints, shared by replicas (random per process otherwise).
    #[arg(long)]
    pub fingerprint_key_file: Option<PathBuf>,
    /// Compiled plugins are kept here (outside the plugin directory, mode 0700), so a restart
    /// compiles nothing that did not change.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Bound on the compile cache; least recently used entries go first.
    #[arg(long, default_value_t = 1024)]
    pub cache_max_mib: u64,
    /// Full rescan of the plugin directory every this many seconds, a safety net for lost
    /// file events.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub rescan_interval_secs: u64,
    #[command(flatten)]
    pub plugin: PluginArgs,
}

pub fn run(args: ServeArgs) -> Result<i32> {
    if !args.listen.ip().is_loopback() {
        bail!("refusing to serve plain HTTP on {}: without TLS tollgate listens on loopback only", args.listen);
    }
    anyhow::ensure!(args.max_concurrent_reviews > 0, "--max-concurrent-reviews must be positive");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve(args))?;
    Ok(0)
}

async fn serve(args: ServeArgs) -> Result<()> {
    let dir = plugin_dir(&args.plugins)?;
    let cache = args.cache_dir.as_deref().map(|d| (d, args.cache_max_mib << 20));
    let loader = Arc::new(args.plugin.loader(cache)?);
    if !loader.sandbox().pooling() {
        tracing::warn!("running without the pooling allocator: instantiation is slower");
    }
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::default());

    // The first load happens before the listener opens: nothing is answered from a half-loaded
    // directory. Later loads happen on the reload thread, off the request path.
    let mut reloader = Reloader::new(loader.clone(), registry.clone(), metrics.clone(), dir, args.tenants.clone())?;
    let started = std::time::Instant::now();
    tokio::task::block_in_place(|| reloader.scan_all());
    tracing::info!(took_ms = started.elapsed().as_millis() as u64, "first load done");
    registry.set_ready();
    reloader.watch(Duration::from_secs(args.rescan_interval_secs))?;

    let fingerprints = match &args.fingerprint_key_file {
        Some(path) => Fingerprinter::from_file(path)?,
        None => Fingerprinter::random(),
    };
    let audit = AuditLog::open(&args.audit_log, fingerprints)?;
    let evaluator = Evaluator::new(
        loader.sandbox().clone(),
        args.max_concurrent_reviews,
        Duration::from_millis(args.review_timeout_ms),
        metrics.clone(),
    );
    let state = Arc::new(AppState {
        registry,
        evaluator,
        metrics,
        audit,
        http: HttpSettings { max_body_bytes: args.max_body_bytes, deny_reason_in_status: args.deny_reason_in_status },
    });

    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::warn!("no TLS certificate given: serving plain HTTP on loopback only");
    tracing::info!("listening on http://{addr}");
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown_signal()).await.context("serving HTTP")?;
    tracing::info!("shut down");
    Ok(())
}

/// SIGTERM (kubelet) or Ctrl-C: stop accepting, finish the reviews in flight.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down: draining reviews in flight");
}

//! `tollgate serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::{PluginArgs, plugin_dir};
use crate::http::handover::{Handover, Hello, Offer, Predecessor, Role};
use crate::http::listener::{self, Stop};
use crate::http::server::{AppState, HttpSettings, app, probe_app};
use crate::http::tls::{ReloadingTls, TlsFiles};
use crate::observe::audit::{AuditLog, Fingerprinter};
use crate::observe::metrics::Metrics;
use crate::policy::decision_cache::{CacheSettings, DecisionCache, parse_duration};
use crate::policy::evaluator::{Evaluator, TenantLimits};
use crate::tenants::registry::Registry;
use crate::tenants::reload::Reloader;
use crate::tenants::remote::Remote;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The plugin directory: its root is the default tenant, each sub-folder a named tenant.
    #[arg(long)]
    pub plugins: PathBuf,
    /// The operator's tenants file (guardrails), kept outside the plugin directory.
    #[arg(long)]
    pub tenants: Option<PathBuf>,
    /// Address to listen on. Without TLS only a loopback address is accepted.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Upgrades without a refused connection (README "Upgrades"): a directory only tollgate's
    /// user can enter (mode 0700), through which the tollgate serving now hands its listening
    /// sockets to the next one started with the same directory.
    #[arg(long)]
    pub handover: Option<PathBuf>,
    /// Removed: any process of the same user could join the port's group and take its
    /// connections. Use --handover.
    #[arg(long, hide = true)]
    pub reuse_port: bool,
    /// Server certificate chain (PEM); re-read when it changes on disk.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Only clients presenting a certificate signed by this CA (PEM) get an answer (mTLS).
    #[arg(long, requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// A second, plain-HTTP listener for healthz, readyz, metrics and status: kubelet probes
    /// present no client certificate.
    #[arg(long)]
    pub probe_listen: Option<SocketAddr>,
    /// Deadline of a whole review; past it the answer is 503. At most 10 s, far below
    /// kube-apiserver's 30 s.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub review_timeout_ms: u64,
    /// Reviews evaluated at once, server-wide (default: 4 per CPU; guests are CPU-bound).
    #[arg(long)]
    pub max_concurrent_reviews: Option<usize>,
    /// Reviews of one tenant evaluated at once (default: half the server-wide bound), so one
    /// tenant cannot starve the others.
    #[arg(long)]
    pub max_concurrent_reviews_per_tenant: Option<usize>,
    /// Reviews of one tenant that may wait for a slot; beyond that they get 503 at once.
    #[arg(long, default_value_t = 64)]
    pub max_queued_reviews_per_tenant: usize,
    /// `/readyz` answers 503 while any tenant's newest files are refused (even if an older
    /// generation is live), so a rollout with a bad plugin stalls instead of spreading.
    #[arg(long)]
    pub require_all_tenants: bool,
    /// Connections held at once on the main listener; beyond it tollgate accepts no more until
    /// one closes (slow or idle peers are cut by read and idle timeouts).
    #[arg(long, default_value_t = listener::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
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
    /// Keep clean decisions (authenticated, or a clean denial) this long, e.g. `30s` (default
    /// 0: off — kube-apiserver caches for its own TTL already). Keyed by an HMAC, flushed by a
    /// reload, never past a grant's expiry; identical reviews in flight run once.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub cache_ttl: Duration,
    /// How long to keep clean denials (default: --cache-ttl).
    #[arg(long, value_parser = parse_duration)]
    pub cache_negative_ttl: Option<Duration>,
    /// Bound on the decision cache.
    #[arg(long, default_value_t = 10_000)]
    pub cache_max_entries: usize,
    /// Full rescan of the plugin directory every this many seconds, a safety net for lost
    /// file events.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub rescan_interval_secs: u64,
    #[command(flatten)]
    pub plugin: PluginArgs,
}

pub fn run(args: ServeArgs) -> Result<i32> {
    if args.reuse_port {
        bail!(
            "--reuse-port was removed: any process of tollgate's user could join the port and take its connections; upgrade with --handover DIR (README \"Upgrades\")"
        );
    }
    if args.tls_cert.is_none() && !args.listen.ip().is_loopback() {
        bail!("refusing to serve plain HTTP on {}: without --tls-cert tollgate listens on loopback only", args.listen);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve(args))?;
    Ok(0)
}

/// kubelet and Prometheus make a few probe connections; a flood there must not cost descriptors
/// the main listener needs.
const PROBE_CONNECTIONS: usize = 64;

async fn serve(args: ServeArgs) -> Result<()> {
    let fds = listener::raise_fd_limit();
    if fds < (args.max_connections + PROBE_CONNECTIONS) as u64 + 256 {
        tracing::warn!(
            open_files = fds,
            max_connections = args.max_connections,
            "the open-file limit is below --max-connections: raise it (ulimit -n) or lower the flag"
        );
    }
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let concurrency = args.max_concurrent_reviews.unwrap_or(4 * cpus);
    let per_tenant = args.max_concurrent_reviews_per_tenant.unwrap_or((concurrency / 2).max(1));
    anyhow::ensure!(concurrency > 0 && per_tenant > 0, "concurrency bounds must be positive");
    let limits = TenantLimits { concurrency: per_tenant.min(concurrency), queue: args.max_queued_reviews_per_tenant };

    let dir = plugin_dir(&args.plugins)?;
    // Tenants may be able to write the plugin directory: the operator's files stay out of it.
    for (flag, path) in [("--tenants", &args.tenants), ("--cache-dir", &args.plugin.cache_dir)] {
        if let Some(path) = path
            && inside(&dir, path)?
        {
            bail!(
                "{flag} {} is inside the plugin directory {}: keep it outside, where no tenant can write",
                path.display(),
                dir.display()
            );
        }
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ReloadingTls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.client_ca.clone(),
        })?),
        _ => None,
    };
    let fingerprints = match &args.fingerprint_key_file {
        Some(path) => Fingerprinter::from_file(path)?,
        None => Fingerprinter::random(),
    };
    let metrics = Arc::new(Metrics::new());
    let audit = AuditLog::open(&args.audit_log, fingerprints, metrics.audit_dropped.clone())?;
    let mut loader = args.plugin.loader()?;
    // No manifest may read the server's own key material through secret_files or ca_file.
    loader.protect(
        [args.tls_key.clone(), args.tls_cert.clone(), args.fingerprint_key_file.clone()]
            .into_iter()
            .flatten()
            .chain(args.plugin.cache_dir.as_ref().map(|d| d.join("key"))),
    );
    let loader = Arc::new(loader);
    if !loader.sandbox().pooling() {
        tracing::warn!("running without the pooling allocator: instantiation is slower");
    }
    let registry = Arc::new(Registry::default());
    let evaluator = Evaluator::new(
        loader.sandbox().clone(),
        concurrency,
        Duration::from_millis(args.review_timeout_ms),
        metrics.clone(),
    );
    let decisions = (!args.cache_ttl.is_zero()).then(|| {
        DecisionCache::new(CacheSettings {
            positive_ttl: args.cache_ttl,
            negative_ttl: args.cache_negative_ttl.unwrap_or(args.cache_ttl),
            max_entries: args.cache_max_entries.max(1),
        })
    });
    let state = Arc::new(AppState {
        registry: registry.clone(),
        evaluator,
        decisions,
        metrics: metrics.clone(),
        audit,
        http: HttpSettings {
            max_body_bytes: args.max_body_bytes,
            deny_reason_in_status: args.deny_reason_in_status,
            require_all_tenants: args.require_all_tenants,
        },
    });
    // Stop::Shutdown once SIGTERM comes (from the main listener on: before, SIGTERM ends the
    // process at once); each listener also stops when it is handed over.
    let (stop, stopped) = tokio::sync::watch::channel(None::<Stop>);
    let handover = args.handover.as_deref().map(Handover::open).transpose()?;
    let mut me = Hello::this_process(args.listen, args.probe_listen);
    let mut predecessor = match &handover {
        Some(h) => tokio::task::block_in_place(|| h.predecessor(&me))?,
        None => None,
    };
    let mut offers = Vec::new();

    // Probes first: kubelet sees the process alive (and not ready) during the first load.
    let mut probe_task = None;
    let mut probe_addr = None;
    if let Some(addr) = args.probe_listen {
        let (listener, taken) = open_listener(Role::Probe, addr, &mut predecessor).await?;
        let bound = listener.local_addr().context("reading the probe listener's address")?;
        tracing::info!("probe listener on http://{bound} (healthz, readyz, metrics, status)");
        probe_addr = Some(bound);
        let (offer, handed_over) = offer(Role::Probe, &listener, handover.is_some())?;
        offers.extend(offer);
        let app = probe_app().with_state(state.clone());
        probe_task = Some(tokio::spawn(listener::serve(
            listener,
            app,
            None,
            metrics.clone(),
            PROBE_CONNECTIONS,
            until(stopped.clone(), handed_over),
        )));
        if let (true, Some(p)) = (taken, predecessor.as_mut()) {
            tokio::task::block_in_place(|| p.serving(Role::Probe))?;
            crate::http::handover::took(p, Role::Probe, &me, &metrics);
        }
    }

    // The first load happens before the main listener opens: nothing is answered from a
    // half-loaded directory. Later loads happen on the reload thread, off the request path.
    let remote = Arc::new(Remote::new(args.plugin.cache_dir.as_deref(), args.plugin.max_plugin_bytes)?);
    let mut reloader =
        Reloader::new(loader.clone(), registry.clone(), metrics.clone(), dir, args.tenants.clone(), limits, remote)?;
    let started = std::time::Instant::now();
    tokio::task::block_in_place(|| reloader.load_all());
    tracing::info!(took_ms = started.elapsed().as_millis() as u64, "first load done");
    // Reviews are answered from now on: later compiles must leave them CPU.
    loader.sandbox().compile_in_background();
    reloader.watch(Duration::from_secs(args.rescan_interval_secs))?;

    let (listener, taken) = open_listener(Role::Main, args.listen, &mut predecessor).await?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let (offer, main_handed) = offer(Role::Main, &listener, handover.is_some())?;
    offers.extend(offer);
    match &tls {
        Some(tls) => {
            tls.watch();
            let mtls = if args.client_ca.is_some() { ", client certificates required" } else { "" };
            tracing::info!("listening on https://{addr} (HTTP/2 and HTTP/1.1{mtls})");
        }
        None => {
            tracing::warn!("no TLS certificate given: serving plain HTTP on loopback only");
            tracing::info!("listening on http://{addr}");
        }
    }
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(Some(Stop::Shutdown));
    });
    let main_task = tokio::spawn(listener::serve(
        listener,
        app(state.clone()),
        tls,
        metrics.clone(),
        args.max_connections,
        until(stopped.clone(), main_handed),
    ));
    if let Some(mut p) = predecessor.take()
        && taken
    {
        tokio::task::block_in_place(|| p.serving(Role::Main))?;
        crate::http::handover::took(&p, Role::Main, &me, &metrics);
    }
    // Ready once this process is the one that accepts (the old one, if any, no longer does):
    // an operator or kubelet that waits for /readyz before stopping the old one loses nothing.
    registry.set_ready();
    // The next tollgate takes the listeners from this one (the directory's socket is this
    // process's from now on), asking for them by the addresses they are bound to.
    if let Some(h) = &handover {
        me.main = addr;
        me.probe = probe_addr;
        h.offer(me, offers, metrics.clone())?;
    }
    main_task.await.context("the main listener's task")??;
    if let Some(task) = probe_task {
        let _ = task.await;
    }
    if stopped.borrow().is_none() {
        // Handed over: the successor serves. Exiting now would have kubelet restart this
        // container, and the restart take the port back; SIGTERM ends it.
        tracing::info!("every listener handed over and drained: waiting for SIGTERM");
        let mut rx = stopped.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }
    // The reviews are drained: their audit lines are written before the process ends.
    tokio::task::block_in_place(|| state.audit.close());
    tracing::info!("shut down");
    Ok(())
}

/// The listener for `role` at `addr`: the predecessor's if it has one there (then `true`: tell
/// it once it is served), otherwise bound here.
async fn open_listener(
    role: Role,
    addr: SocketAddr,
    predecessor: &mut Option<Predecessor>,
) -> Result<(tokio::net::TcpListener, bool)> {
    if let Some(p) = predecessor.as_mut()
        && let Some(taken) = tokio::task::block_in_place(|| p.take(role, addr))?
    {
        return Ok((listener::adopt(taken)?, true));
    }
    let bound = listener::bind(addr).await;
    if bound.is_err() && predecessor.is_none() {
        return bound
            .context(
                "another process holds the address (another tollgate? upgrades take its listeners with --handover DIR)",
            )
            .map(|l| (l, false));
    }
    Ok((bound?, false))
}

/// With `--handover`: what this process offers its successor for `role` (a duplicate of the
/// listening socket), and what resolves once it is handed over.
fn offer(
    role: Role,
    listener: &tokio::net::TcpListener,
    enabled: bool,
) -> Result<(Option<Offer>, Option<tokio::sync::oneshot::Receiver<()>>)> {
    if !enabled {
        return Ok((None, None));
    }
    use std::os::fd::AsFd as _;
    let fd = listener.as_fd().try_clone_to_owned().context("duplicating the listening socket")?;
    let (handed, handed_over) = tokio::sync::oneshot::channel();
    Ok((Some(Offer { role, fd, handed }), Some(handed_over)))
}

/// Resolves when the process shuts down, or when this listener is handed over.
async fn until(
    mut stopped: tokio::sync::watch::Receiver<Option<Stop>>,
    handed_over: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Stop {
    let shutdown = async {
        let _ = stopped.wait_for(Option::is_some).await;
        Stop::Shutdown
    };
    match handed_over {
        Some(handed) => tokio::select! {
            why = shutdown => why,
            Ok(()) = handed => Stop::HandedOver,
        },
        None => shutdown.await,
    }
}

/// Whether `path` (which may not exist yet) lies inside the directory `dir`, symlinks resolved.
fn inside(dir: &std::path::Path, path: &std::path::Path) -> Result<bool> {
    let dir = std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let mut path = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    // The nearest part that exists, resolved; what is below it cannot hold a symlink yet.
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(&path).is_err() {
        match (path.file_name().map(ToOwned::to_owned), path.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                path = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut resolved = std::fs::canonicalize(&path).unwrap_or(path);
    resolved.extend(rest.iter().rev());
    Ok(resolved.starts_with(&dir))
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

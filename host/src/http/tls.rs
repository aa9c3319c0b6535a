//! TLS for the main listener: rustls with ALPN `h2` and `http/1.1`, optional client
//! certificates (`--client-ca`), and certificate files re-read when they change on disk (as
//! cert-manager rotates them): new connections get the new material, open ones finish.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};
use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::observe::metrics::ReasonLabel;

/// How often the certificate files are checked for a change. cert-manager renews days ahead of
/// expiry; a few seconds of delay costs nothing.
const CHECK_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, only clients presenting a certificate signed by this CA get an answer.
    pub client_ca: Option<PathBuf>,
}

/// The current TLS configuration, replaced whole when the files change.
pub struct ReloadingTls {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
}

impl ReloadingTls {
    /// Loads the files; at start a bad file is an error (there is nothing to keep serving).
    pub fn load(files: TlsFiles) -> Result<Arc<Self>> {
        let config = server_config(&files)?;
        Ok(Arc::new(Self { files, current: ArcSwap::from_pointee(config) }))
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Re-reads the files when they change; a broken new version is logged and the previous
    /// configuration stays.
    pub fn watch(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut seen = this.stamp();
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let now = this.stamp();
                if now == seen {
                    continue;
                }
                match server_config(&this.files) {
                    Ok(config) => {
                        this.current.store(Arc::new(config));
                        seen = now;
                        tracing::info!("TLS certificate reloaded: new connections use it");
                    }
                    // Half-written files look like this too; the next change tries again.
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "TLS files changed but cannot be loaded; keeping the previous ones")
                    }
                }
            }
        });
    }

    /// Modification times (following symlinks, as a Secret volume's `..data` swap needs).
    fn stamp(&self) -> Vec<Option<SystemTime>> {
        let files = [Some(&self.files.cert), Some(&self.files.key), self.files.client_ca.as_ref()];
        files.into_iter().flatten().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
    }
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading {}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", files.cert.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", files.cert.display());
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).with_context(|| format!("reading the key {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).with_context(|| format!("adding a CA of {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("building the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).context("the certificate does not match its key")?;
    // kube-apiserver speaks HTTP/2 when offered.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

/// Why a handshake was refused: one of a few fixed words, the `reason` label of
/// `tollgate_tls_handshake_failures_total` (so a flood of bad handshakes cannot mint series).
pub fn refusal_reason(err: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => "no-client-certificate",
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)) => {
            "untrusted-certificate"
        }
        // Expired, not yet valid, an X.509 v1 certificate, a bad encoding...
        Some(Error::InvalidCertificate(_)) => "invalid-certificate",
        // No protocol version or cipher suite in common.
        Some(Error::PeerIncompatible(_)) => "incompatible",
        // Mostly the client refusing tollgate's certificate: a wrong CA bundle on its side.
        Some(Error::AlertReceived(_)) => "alert-from-client",
        Some(_) => "protocol",
        None if matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ) =>
        {
            "closed"
        }
        // Most often a plain HTTP request on the TLS port.
        None if err.kind() == std::io::ErrorKind::InvalidData => "protocol",
        None => "io",
    }
}

/// How often each kind of refused handshake is logged: the first at once, then at most one
/// line per reason per period, with the count of those not logged. Enough for an operator to
/// see that kube-apiserver's client certificate is refused, and why, without a scanner or a
/// misconfigured client flooding the log.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Refused handshakes: each counted by reason, and logged at most once per reason per
/// [`REFUSAL_LOG_PERIOD`].
pub struct Refusals {
    counted: Family<ReasonLabel, Counter>,
    /// Per reason: when it was last logged, and how many were not logged since.
    seen: std::sync::Mutex<std::collections::HashMap<&'static str, (std::time::Instant, u64)>>,
}

impl Refusals {
    /// Counting into `tollgate_tls_handshake_failures_total`.
    pub fn new(counted: Family<ReasonLabel, Counter>) -> Self {
        Self { counted, seen: Default::default() }
    }

    /// Counts this refusal, and logs it unless its reason was logged less than a period ago.
    /// The error text is rustls's (a certificate error's kind, an alert's name), never anything
    /// the peer sent.
    pub fn note(&self, peer: std::net::SocketAddr, reason: &'static str, error: &dyn std::fmt::Display) {
        self.counted.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
        let now = std::time::Instant::now();
        let suppressed = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            match seen.get_mut(reason) {
                Some((last, skipped)) if now.duration_since(*last) < REFUSAL_LOG_PERIOD => {
                    *skipped += 1;
                    return;
                }
                Some((last, skipped)) => {
                    *last = now;
                    std::mem::take(skipped)
                }
                None => {
                    seen.insert(reason, (now, 0));
                    0
                }
            }
        };
        tracing::warn!(%peer, reason, %error, suppressed, "TLS handshake refused");
    }
}

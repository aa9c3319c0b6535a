//! One JSON audit line per review (SPEC §9). `token_id` is a keyed fingerprint: HMAC-SHA256 of
//! the token under a key shared by replicas (so their lines correlate) — never the token, and
//! never a plain hash, which anyone holding a candidate token could match offline.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// Keyed token fingerprints.
pub struct Fingerprinter {
    key: Vec<u8>,
}

impl Fingerprinter {
    /// A random key for this process: lines correlate within it only.
    pub fn random() -> Self {
        Self { key: rand::random::<[u8; 32]>().to_vec() }
    }

    /// The key in `path` (at least 32 bytes, shared by all replicas).
    pub fn from_file(path: &Path) -> Result<Self> {
        let key = std::fs::read(path).with_context(|| format!("reading fingerprint key {}", path.display()))?;
        if key.len() < 32 {
            bail!("fingerprint key {} holds {} bytes; it needs at least 32", path.display(), key.len());
        }
        Ok(Self { key })
    }

    /// First 16 hex characters of HMAC-SHA256(key, token). The caller passes the token's
    /// canonical form (`ReviewInput::identity`), so a token and its ECDSA twin have one id.
    pub fn token_id(&self, token: &str) -> String {
        // HMAC takes keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(token.as_bytes());
        let mut id = hex::encode(mac.finalize().into_bytes());
        id.truncate(16);
        id
    }
}

#[derive(Serialize)]
pub struct AuditLine<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub tenant: &'a str,
    pub generation: u64,
    pub api_version: &'a str,
    pub token_id: String,
    pub audiences: &'a [String],
    pub caller: Option<&'a str>,
    pub authenticated: bool,
    pub username: Option<&'a str>,
    pub groups: Option<&'a [String]>,
    pub plugin: Option<&'a str>,
    pub digest: Option<&'a str>,
    /// The outcome class (authenticated, denied, refused, plugin-failed, unavailable, ...).
    pub result: &'static str,
    /// A plugin failure's class, or the host rule that refused a grant.
    pub error_class: Option<&'a str>,
    /// Deny, unavailable or failure reason, scrubbed of the token.
    pub reason: Option<&'a str>,
    /// The decision cache's part, when it is on: hit, miss or coalesced.
    pub cache: Option<&'static str>,
    pub duration_ms: f64,
}

/// Where audit lines go: standard output (default), a file, or nowhere. Lines are written by a
/// thread of their own through a bounded queue, never on the request path: a slow sink (a full
/// pipe, a stalled disk) costs dropped lines, counted in `tollgate_audit_lines_dropped_total`,
/// never a review's latency.
pub struct AuditLog {
    queue: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    dropped: prometheus_client::metrics::counter::Counter,
    pub fingerprints: Fingerprinter,
}

/// Lines waiting for the sink: a burst of this many reviews (about half a MiB) waits rather
/// than drops.
const QUEUE_LINES: usize = 1024;

impl AuditLog {
    /// `target`: "-" for standard output, "off", or a file appended to; `dropped` counts lines
    /// the queue could not take.
    pub fn open(
        target: &str,
        fingerprints: Fingerprinter,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> Result<Self> {
        let sink: Option<Box<dyn Write + Send>> = match target {
            "off" => None,
            "-" => Some(Box::new(std::io::LineWriter::new(std::io::stdout()))),
            path => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening audit log {path}"))?;
                Some(Box::new(std::io::LineWriter::new(file)))
            }
        };
        let (queue, writer) = match sink {
            None => (None, None),
            Some(mut sink) => {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE_LINES);
                let writer = std::thread::Builder::new()
                    .name("tollgate-audit".into())
                    .spawn(move || {
                        // An empty line is the end (see `close`).
                        while let Ok(line) = rx.recv() {
                            if line.is_empty() {
                                break;
                            }
                            if let Err(e) = sink.write_all(&line) {
                                tracing::error!(error = %e, "cannot write the audit log");
                            }
                        }
                        let _ = sink.flush();
                    })
                    .context("starting the audit log writer")?;
                (Some(tx), Some(writer))
            }
        };
        Ok(Self { queue, writer: Mutex::new(writer), dropped, fingerprints })
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    pub fn write(&self, line: &AuditLine) {
        let Some(queue) = &self.queue else { return };
        let Ok(mut json) = serde_json::to_vec(line) else {
            return;
        };
        json.push(b'\n');
        if queue.try_send(json).is_err() {
            self.dropped.inc();
        }
    }

    /// Writes what is queued and stops the writer (at shutdown).
    pub fn close(&self) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(Vec::new());
        }
        if let Some(writer) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

/// RFC 3339 UTC with microseconds, without a date library.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (Howard Hinnant), valid for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_876_245) + Duration::from_micros(5);
        assert_eq!(rfc3339(t), "2026-11-28T14:30:45.000005Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn token_ids_are_keyed() {
        let a = Fingerprinter { key: vec![1; 32] };
        let b = Fingerprinter { key: vec![2; 32] };
        assert_eq!(a.token_id("tok").len(), 16);
        assert_eq!(a.token_id("tok"), a.token_id("tok"));
        assert_ne!(a.token_id("tok"), b.token_id("tok"));
        // Not a plain SHA-256 prefix.
        use sha2::Digest;
        assert_ne!(a.token_id("tok"), hex::encode(Sha256::digest(b"tok"))[..16]);
    }
}

//! The decision cache (`--cache-ttl`, off by default): kube-apiserver already caches answers for
//! its own TTL, so this earns its keep with several apiservers or heavy plugins.
//!
//! Keyed by an HMAC — under a per-process random key — of tenant, epoch (unique for the life of
//! the process, new with every generation and every change of the operator's rules), verified
//! mTLS caller, token and audiences: everything a plugin sees and everything its answer was
//! checked against. The token is never stored, and a reload misses everything the old chain
//! decided. The token counts by its canonical form: an ES256/ES384 token and its twin
//! `(r, n - s)`, which verify alike, are one entry (`ReviewInput::identity`). Only clean
//! decisions are kept (authenticated, or a clean denial); failures, unavailability, deadlines
//! and overload never are. A grant is never kept past its `expires-at`. Identical reviews
//! arriving together run the chain once (single flight).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;

use crate::policy::chain::{Outcome, Verdict};

pub type Key = [u8; 32];

#[derive(Clone, Copy, Debug)]
pub struct CacheSettings {
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    pub max_entries: usize,
}

/// How a review was answered, for the audit line and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
    /// Waited for an identical review already running.
    Coalesced,
}

impl Lookup {
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Coalesced => "coalesced",
        }
    }
}

struct Entry {
    verdict: Verdict,
    expires: Instant,
    inserted: Instant,
}

pub struct DecisionCache {
    key: [u8; 32],
    settings: CacheSettings,
    entries: Mutex<HashMap<Key, Entry>>,
    in_flight: Mutex<HashMap<Key, watch::Receiver<Option<Verdict>>>>,
}

impl DecisionCache {
    pub fn new(settings: CacheSettings) -> Self {
        Self { key: rand::random(), settings, entries: Mutex::default(), in_flight: Mutex::default() }
    }

    /// The cache key of one review: an HMAC, so neither the token nor a plain hash of it (which
    /// could be matched offline) is ever held. `token` is its canonical form
    /// ([`ReviewInput::identity`](crate::policy::chain::ReviewInput::identity)): a token and its
    /// ECDSA twin are one entry, and identical reviews in flight whichever form they carry.
    pub fn key(&self, tenant: &str, epoch: u64, caller: Option<&str>, token: &str, audiences: &[String]) -> Key {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("any key length"));
        let mut field = |bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_le_bytes());
            mac.update(bytes);
        };
        field(tenant.as_bytes());
        field(&epoch.to_le_bytes());
        match caller {
            Some(c) => field(&[b"1", c.as_bytes()].concat()),
            None => field(b"0"),
        }
        field(token.as_bytes());
        for a in audiences {
            field(a.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached verdict for `key`, or the verdict of `run` — shared with identical reviews
    /// that arrive while it runs.
    pub async fn get_or_run(&self, key: Key, run: impl Future<Output = Verdict>) -> (Verdict, Lookup) {
        if let Some(verdict) = self.get(&key) {
            return (verdict, Lookup::Hit);
        }
        let leader = {
            let mut in_flight = lock(&self.in_flight);
            match in_flight.get(&key) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    in_flight.insert(key, rx);
                    Ok(tx)
                }
            }
        };
        match leader {
            Ok(tx) => {
                // Whatever happens to this future (even cancellation), the in-flight entry goes.
                let _done = InFlightGuard { cache: self, key };
                let verdict = run.await;
                self.put(key, &verdict);
                // Followers ran no plugin: they get the decision without its steps.
                let _ = tx.send(Some(Verdict { steps: Vec::new(), ..verdict.clone() }));
                (verdict, Lookup::Miss)
            }
            Err(mut rx) => {
                // The leader's answer, or — if it was cancelled — our own evaluation.
                if let Ok(shared) = rx.wait_for(Option::is_some).await
                    && let Some(verdict) = shared.clone()
                {
                    return (verdict, Lookup::Coalesced);
                }
                (run.await, Lookup::Miss)
            }
        }
    }

    fn get(&self, key: &Key) -> Option<Verdict> {
        let mut entries = lock(&self.entries);
        match entries.get(key) {
            Some(e) if e.expires > Instant::now() => Some(e.verdict.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&self, key: Key, verdict: &Verdict) {
        let Some(ttl) = self.ttl(&verdict.outcome) else { return };
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        if entries.len() >= self.settings.max_entries {
            entries.retain(|_, e| e.expires > now);
        }
        if entries.len() >= self.settings.max_entries {
            // Still full of live entries: drop the oldest tenth (amortized O(1) per insert).
            let mut ages: Vec<(Instant, Key)> = entries.iter().map(|(k, e)| (e.inserted, *k)).collect();
            ages.sort_unstable();
            for (_, k) in ages.iter().take((self.settings.max_entries / 10).max(1)) {
                entries.remove(k);
            }
        }
        let verdict = Verdict { steps: Vec::new(), ..verdict.clone() };
        entries.insert(key, Entry { verdict, expires: now + ttl, inserted: now });
    }

    /// How long an outcome may be kept: clean decisions only, never past the grant's expiry.
    fn ttl(&self, outcome: &Outcome) -> Option<Duration> {
        let ttl = match outcome {
            Outcome::Authenticated { expires_at, .. } => {
                let ttl = self.settings.positive_ttl;
                match expires_at {
                    Some(at) => {
                        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                        ttl.min(Duration::from_secs(at.saturating_sub(now)))
                    }
                    None => ttl,
                }
            }
            Outcome::Denied { .. } => self.settings.negative_ttl,
            _ => return None,
        };
        (!ttl.is_zero()).then_some(ttl)
    }
}

struct InFlightGuard<'a> {
    cache: &'a DecisionCache,
    key: Key,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        lock(&self.cache.in_flight).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Parses a duration as operators write it: `30`, `30s`, `500ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 30s, 500ms or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: the unit must be ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::sandbox::UserInfo;

    fn settings(max: usize) -> CacheSettings {
        CacheSettings { positive_ttl: Duration::from_secs(60), negative_ttl: Duration::from_secs(60), max_entries: max }
    }

    fn verdict(outcome: Outcome) -> Verdict {
        Verdict { outcome, decided_by: Some(("p".into(), "sha256:x".into())), steps: Vec::new() }
    }

    fn allowed(expires_at: Option<u64>) -> Verdict {
        let user = UserInfo { username: "alice".into(), uid: String::new(), groups: vec![], extra: vec![] };
        verdict(Outcome::Authenticated { user, audiences: None, expires_at })
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn keys_separate_tenants_generations_tokens_and_audiences_and_hold_no_token() {
        let c = DecisionCache::new(settings(10));
        let k = c.key("acme", 1, None, "tok", &["a".into()]);
        assert_ne!(k, c.key("acme", 1, Some("CN=a"), "tok", &["a".into()]), "the verified caller");
        assert_ne!(c.key("acme", 1, Some("CN=a"), "tok", &[]), c.key("acme", 1, Some("CN=b"), "tok", &[]));
        assert_eq!(k, c.key("acme", 1, None, "tok", &["a".into()]));
        assert_ne!(k, c.key("acme", 2, None, "tok", &["a".into()]), "a reload misses");
        assert_ne!(k, c.key("", 1, None, "tok", &["a".into()]));
        assert_ne!(k, c.key("acme", 1, None, "tok2", &["a".into()]));
        assert_ne!(k, c.key("acme", 1, None, "tok", &["b".into()]));
        assert_ne!(
            c.key("acme", 1, None, "tok", &["ab".into()]),
            c.key("acme", 1, None, "tok", &["a".into(), "b".into()])
        );
        assert_ne!(k, DecisionCache::new(settings(10)).key("acme", 1, None, "tok", &["a".into()]), "a per-process key");
    }

    #[test]
    fn caches_clean_decisions_only() {
        let c = DecisionCache::new(settings(10));
        runtime().block_on(async {
            let failed = || verdict(Outcome::Failed { plugin: "p".into(), class: "trap", message: String::new() });
            for (i, (v, cached)) in [
                (allowed(None), true),
                (verdict(Outcome::Denied { reason: "no".into(), rule: None }), true),
                (failed(), false),
                (verdict(Outcome::Unavailable { reason: "down".into() }), false),
                (verdict(Outcome::Deadline), false),
                (verdict(Outcome::Overloaded), false),
                (allowed(Some(1)), false),
            ]
            .into_iter()
            .enumerate()
            {
                let key = c.key("", 1, None, &format!("token-{i}"), &[]);
                c.get_or_run(key, async { v }).await;
                let (_, lookup) = c.get_or_run(key, async { failed() }).await;
                assert_eq!(lookup == Lookup::Hit, cached, "case {i}");
            }
        });
    }

    #[test]
    fn identical_reviews_in_flight_run_once() {
        let c = DecisionCache::new(settings(10));
        let runs = std::sync::atomic::AtomicUsize::new(0);
        runtime().block_on(async {
            let key = c.key("", 1, None, "tok", &[]);
            let run = || async {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                allowed(None)
            };
            let (a, b, d) = tokio::join!(c.get_or_run(key, run()), c.get_or_run(key, run()), c.get_or_run(key, run()));
            let mut lookups = [a.1, b.1, d.1];
            lookups.sort_by_key(|l| l.as_str());
            assert_eq!(lookups, [Lookup::Coalesced, Lookup::Coalesced, Lookup::Miss]);
        });
        assert_eq!(runs.into_inner(), 1);
    }

    #[test]
    fn bounded() {
        let c = DecisionCache::new(settings(20));
        runtime().block_on(async {
            for i in 0..100 {
                c.get_or_run(c.key("", 1, None, &format!("t{i}"), &[]), async { allowed(None) }).await;
            }
        });
        assert!(c.len() <= 20, "{}", c.len());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("2h").is_err() && parse_duration("x").is_err());
    }
}

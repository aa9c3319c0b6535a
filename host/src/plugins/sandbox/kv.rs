//! `tollgate:policy/kv` (0.1.1): a small cache of one plugin's own.
//!
//! A plugin gets a fresh instance per review, so whatever it fetched from its issuer (a JWKS,
//! an introspection result) would be fetched again for every review. The host keeps it here
//! instead: one store per plugin, tenant and generation (so isolated per tenant and plugin, and
//! emptied by a reload), bounded in entries and bytes. Expiry uses the host's monotonic clock,
//! never the guest's wall clock (which a test vector may set). Values never reach a log.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest key a plugin may use.
pub const MAX_KEY_BYTES: usize = 512;
/// A time-to-live is capped at a day: a cache, not a store.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Bounds of one plugin's store. The defaults hold a few JWKS documents and a thousand
/// introspection results; a manifest may change them within the server's maxima.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLimits {
    pub max_entries: usize,
    /// Keys and values together.
    pub max_bytes: usize,
}

impl KvLimits {
    pub const DEFAULT: KvLimits = KvLimits { max_entries: 1024, max_bytes: 1 << 20 };
    /// The most a manifest may ask for.
    pub const MAX: KvLimits = KvLimits { max_entries: 65_536, max_bytes: 16 << 20 };
}

struct Entry {
    value: Vec<u8>,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// The same entries by expiry: the soonest to expire (the expired first) is evicted in
    /// O(log n), however full the store.
    by_expiry: BTreeSet<(Instant, String)>,
    bytes: usize,
}

/// One plugin's store.
pub struct KvStore {
    inner: Mutex<Inner>,
    limits: KvLimits,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values.
        f.debug_struct("KvStore").field("limits", &self.limits).field("entries", &self.len()).finish()
    }
}

impl KvStore {
    pub fn new(limits: KvLimits) -> Self {
        Self { inner: Mutex::default(), limits }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.get_at(key, Instant::now())
    }

    fn get_at(&self, key: &str, now: Instant) -> Option<Vec<u8>> {
        let mut inner = self.lock();
        match inner.map.get(key) {
            Some(e) if e.expires > now => Some(e.value.clone()),
            Some(_) => {
                inner.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn set(&self, key: &str, value: Vec<u8>, ttl_seconds: u32) -> Result<(), String> {
        self.set_at(key, value, ttl_seconds, Instant::now())
    }

    fn set_at(&self, key: &str, value: Vec<u8>, ttl_seconds: u32, now: Instant) -> Result<(), String> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(format!("a key must be 1 to {MAX_KEY_BYTES} bytes"));
        }
        if ttl_seconds == 0 {
            return Err("ttl-seconds must be at least 1".into());
        }
        let size = key.len() + value.len();
        if size > self.limits.max_bytes {
            return Err(format!("{size} bytes exceed this plugin's cache of {} bytes", self.limits.max_bytes));
        }
        let ttl = Duration::from_secs(u64::from(ttl_seconds)).min(MAX_TTL);
        let mut inner = self.lock();
        inner.remove(key);
        // Full: the entries that expire soonest (expired ones first) make room.
        while inner.map.len() >= self.limits.max_entries || inner.bytes + size > self.limits.max_bytes {
            let Some((_, victim)) = inner.by_expiry.first().cloned() else {
                break;
            };
            inner.remove(&victim);
        }
        let expires = now + ttl;
        inner.bytes += size;
        inner.by_expiry.insert((expires, key.to_owned()));
        inner.map.insert(key.to_owned(), Entry { value, expires });
        Ok(())
    }

    pub fn delete(&self, key: &str) {
        self.lock().remove(key);
    }
}

impl Inner {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.map.remove(key) {
            self.bytes -= key.len() + e.value.len();
            self.by_expiry.remove(&(e.expires, key.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_expire_with_their_ttl() {
        let kv = KvStore::new(KvLimits::DEFAULT);
        let t0 = Instant::now();
        kv.set_at("jwks", b"{}".to_vec(), 10, t0).unwrap();
        assert_eq!(kv.get_at("jwks", t0 + Duration::from_secs(9)).as_deref(), Some(&b"{}"[..]));
        assert_eq!(kv.get_at("jwks", t0 + Duration::from_secs(10)), None);
        assert!(kv.is_empty());
        assert!(kv.set_at("k", vec![], 0, t0).is_err());
        assert!(kv.set_at("", vec![], 1, t0).is_err());
        assert!(kv.set_at(&"k".repeat(MAX_KEY_BYTES + 1), vec![], 1, t0).is_err());
    }

    #[test]
    fn bounded_in_entries_and_bytes_evicting_the_soonest_to_expire() {
        let kv = KvStore::new(KvLimits { max_entries: 3, max_bytes: 100 });
        let t0 = Instant::now();
        kv.set_at("a", vec![0; 10], 30, t0).unwrap();
        kv.set_at("b", vec![0; 10], 10, t0).unwrap();
        kv.set_at("c", vec![0; 10], 20, t0).unwrap();
        kv.set_at("d", vec![0; 10], 40, t0).unwrap();
        assert_eq!(kv.len(), 3);
        assert_eq!(kv.get_at("b", t0), None, "the soonest to expire went first");
        // Bytes: a 90-byte value pushes out everything else.
        kv.set_at("e", vec![0; 89], 50, t0).unwrap();
        assert_eq!(kv.len(), 1);
        assert!(kv.set_at("f", vec![0; 100], 50, t0).is_err(), "larger than the whole store");
        // Replacing a key accounts its old size.
        kv.set_at("e", vec![0; 5], 50, t0).unwrap();
        kv.set_at("e", vec![0; 5], 50, t0).unwrap();
        assert_eq!(kv.lock().bytes, 6);
        kv.delete("e");
        assert_eq!(kv.lock().bytes, 0);
        assert!(kv.lock().by_expiry.is_empty());
    }

    #[test]
    fn a_full_store_evicts_the_expired_before_the_live() {
        let kv = KvStore::new(KvLimits { max_entries: 1000, max_bytes: 1 << 20 });
        let t0 = Instant::now();
        for i in 0..1000 {
            kv.set_at(&format!("k{i}"), vec![1], if i == 500 { 1 } else { 60 }, t0).unwrap();
        }
        kv.set_at("new", vec![1], 60, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(kv.get_at("k500", t0), None, "the expired one went");
        assert!(kv.get_at("k499", t0 + Duration::from_secs(2)).is_some());
        let inner = kv.lock();
        assert_eq!((inner.map.len(), inner.by_expiry.len()), (1000, 1000), "the index follows the map");
    }
}

//! `tollgate:policy/crypto` (0.1.2): signatures, digests and MACs at native speed for guests in
//! any language. The work is `tollgate_crypto`'s (ring); this module owns what is per plugin:
//! the parsed key sets, so a plugin that passes the same JWKS text to every call parses it once.

use std::sync::{Arc, Mutex};

use tollgate_crypto::{JwsError, KeySet, MAX_HASH_INPUT};

use super::HostState;
use super::bindings::tollgate::policy::crypto as wit;

/// Key sets one plugin keeps parsed: an issuer publishes one JWKS and, across a rotation, a
/// second; a plugin trusting a few issuers has a few. Eight covers that, and bounds what a
/// plugin passing ever-new documents can make the host hold (8 × the 256 KiB document limit).
const KEY_SETS: usize = 8;

/// One plugin's parsed key sets (per tenant, plugin and generation, like its kv store), most
/// recently used last.
#[derive(Default)]
pub struct KeyCache {
    sets: Mutex<Vec<([u8; 32], Arc<KeySet>)>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("sets", &self.len()).finish()
    }
}

impl KeyCache {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The parsed keys of `jwks`, from the cache when the same text was parsed before. A text
    /// that does not parse is not kept (its error comes back each time).
    pub fn key_set(&self, jwks: &str) -> Result<Arc<KeySet>, JwsError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, jwks.as_bytes());
        let mut id = [0u8; 32];
        id.copy_from_slice(digest.as_ref());
        {
            let mut sets = self.lock();
            if let Some(at) = sets.iter().position(|(d, _)| *d == id) {
                let hit = sets.remove(at);
                let keys = hit.1.clone();
                sets.push(hit);
                return Ok(keys);
            }
        }
        // Parsed outside the lock: another review of this plugin need not wait for it.
        let keys = Arc::new(KeySet::parse(jwks)?);
        let mut sets = self.lock();
        if !sets.iter().any(|(d, _)| *d == id) {
            if sets.len() >= KEY_SETS {
                sets.remove(0);
            }
            sets.push((id, keys.clone()));
        }
        Ok(keys)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<([u8; 32], Arc<KeySet>)>> {
        // A panic while holding the lock leaves a list that is still consistent.
        self.sets.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn too_much(call: &str, bytes: usize) -> wasmtime::Error {
    wasmtime::format_err!(
        "it passed {bytes} bytes to crypto.{call}; the limit is {} KiB per call (hash larger inputs in parts \
         in the guest, or not at all)",
        MAX_HASH_INPUT >> 10
    )
}

impl wit::Host for HostState {
    fn verify_jws(
        &mut self,
        compact: String,
        jwks: String,
        allowed_algs: Vec<String>,
    ) -> wasmtime::Result<Result<wit::VerifiedJws, wit::JwsError>> {
        // The parsers take hostile input, with overflow checks on: should one ever panic, the
        // call fails closed (a trap) instead of unwinding through the server.
        let keys = &self.env.keys;
        let verified = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let keys = keys.key_set(&jwks)?;
            tollgate_crypto::verify_jws(&compact, &keys, &allowed_algs)
        }))
        .map_err(|_| wasmtime::format_err!("the host's JWS verifier failed on this input (a bug: please report it)"))?;
        Ok(verified
            .map(|v| wit::VerifiedJws { alg: v.alg, key_id: v.key_id, header: v.header, payload: v.payload })
            .map_err(into_wit))
    }

    fn sha256(&mut self, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        tollgate_crypto::sha256(&data).map(|d| d.to_vec()).ok_or_else(|| too_much("sha256", data.len()))
    }

    fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        tollgate_crypto::hmac_sha256(&key, &data)
            .map(|d| d.to_vec())
            .ok_or_else(|| too_much("hmac-sha256", data.len().max(key.len())))
    }

    fn constant_time_eq(&mut self, a: Vec<u8>, b: Vec<u8>) -> bool {
        tollgate_crypto::constant_time_eq(&a, &b)
    }
}

fn into_wit(e: JwsError) -> wit::JwsError {
    match e {
        JwsError::Malformed(m) => wit::JwsError::Malformed(m),
        JwsError::Algorithm(m) => wit::JwsError::Algorithm(m),
        JwsError::NoKey(m) => wit::JwsError::NoKey(m),
        JwsError::BadSignature => wit::JwsError::BadSignature,
        JwsError::Jwks(m) => wit::JwsError::Jwks(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sets_are_parsed_once_and_bounded() {
        let cache = KeyCache::new();
        let doc = |i: usize| format!(r#"{{"keys": [], "n": {i}}}"#);
        let first = cache.key_set(&doc(0)).unwrap();
        assert!(Arc::ptr_eq(&first, &cache.key_set(&doc(0)).unwrap()), "parsed once");
        for i in 1..20 {
            cache.key_set(&doc(i)).unwrap();
        }
        assert_eq!(cache.len(), KEY_SETS);
        assert!(!Arc::ptr_eq(&first, &cache.key_set(&doc(0)).unwrap()), "the oldest was evicted");
        assert!(cache.key_set("not json").is_err());
        assert_eq!(cache.len(), KEY_SETS, "errors are not kept");
    }
}

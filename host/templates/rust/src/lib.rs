//! {{name}}: a tollgate policy. Bearer tokens are known by their SHA-256 digests, listed in the
//! manifest's `[config] tokens`, one per line: `<sha256 hex of the token> <username> [group...]`.
//! A listed token is its user; any other token is left to the next plugin (abstain).

// The contract (wit/policy.wit): imports `host`, `kv` and `crypto`, exports `authenticator`.
wit_bindgen::generate!({ path: "wit", world: "policy" });

use exports::tollgate::policy::authenticator::Guest;
use tollgate::policy::crypto::{constant_time_eq, sha256};
use tollgate::policy::host::config;
use tollgate::policy::types::{Decision, Grant, Review, UserInfo};

/// The host hashes at most 1 MiB in one call, and traps beyond it.
const MAX_HASH_INPUT: usize = 1 << 20;

struct Policy;

impl Guest for Policy {
    fn authenticate(review: Review) -> Decision {
        if review.token.is_empty() || review.token.len() > MAX_HASH_INPUT {
            return Decision::Abstain;
        }
        // The host hashes and compares: native speed, and in constant time.
        let digest = hex(&sha256(review.token.as_bytes()));
        let tokens = config("tokens").unwrap_or_default();
        let mut found = None;
        // Every line is compared, found or not: the time taken does not tell which line matched.
        for line in tokens.lines() {
            let mut fields = line.split_whitespace();
            let Some(hash) = fields.next().filter(|h| !h.starts_with('#')) else {
                continue; // blank, or a comment
            };
            let Some(username) = fields.next().filter(|_| is_sha256_hex(hash)) else {
                continue; // malformed: skipped
            };
            let listed = hash.to_ascii_lowercase();
            if constant_time_eq(listed.as_bytes(), digest.as_bytes()) && found.is_none() {
                found = Some((username.to_string(), fields.map(String::from).collect()));
            }
        }
        let Some((username, groups)) = found else {
            return Decision::Abstain;
        };
        let user = UserInfo { username, uid: String::new(), groups, extra: vec![] };
        // Valid for the audiences the review names (the host intersects them with those anyway).
        Decision::Allow(Grant { user, audiences: review.audiences, expires_at: None })
    }
}

export!(Policy);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

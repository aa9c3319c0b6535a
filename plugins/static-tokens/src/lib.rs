//! kube-apiserver's static token file, done right: the manifest holds SHA-256 digests of the
//! tokens, never the tokens, and a digest is compared in constant time.
//!
//! Config (see `static-tokens.toml`):
//! - `tokens`: one user per line, fields separated by spaces or tabs, `#` starts a comment:
//!   `SHA256-HEX USERNAME [UID [GROUPS [EXTRA]]]` where `GROUPS` is `g1,g2`, `EXTRA` is
//!   `key=value,key=value` (a repeated key adds a value), and `-` stands for an empty field.
//! - `audiences` (optional): comma-separated audiences every grant states.
//!
//! A token whose digest is not listed gets `abstain` (another authenticator may know it). A
//! malformed line traps, so the plugin fails its vectors at load instead of guessing.

use sha2::{Digest, Sha256};
use tollgate_sdk::{Decision, Grant, Policy, Review, config};

pub struct StaticTokens;

impl Policy for StaticTokens {
    fn authenticate(review: Review) -> Decision {
        let table = config("tokens").unwrap_or_default();
        let digest: [u8; 32] = Sha256::digest(review.token.as_bytes()).into();
        let mut found: Option<Grant> = None;
        // Every line is parsed and compared, found or not: the time taken does not depend on
        // which line (if any) matches.
        for (n, line) in table.lines().enumerate() {
            let Some(entry) = parse_line(line).unwrap_or_else(|e| panic!("tokens line {}: {e}", n + 1)) else {
                continue;
            };
            if constant_time_eq(&entry.digest, &digest) && found.is_none() {
                found = Some(entry.grant);
            }
        }
        match found {
            Some(grant) => {
                let audiences = config("audiences").unwrap_or_default();
                Decision::Allow(grant.audiences(split_list(&audiences)))
            }
            None => Decision::Abstain,
        }
    }
}

tollgate_sdk::export_policy!(StaticTokens);

struct Entry {
    digest: [u8; 32],
    grant: Grant,
}

/// One `tokens` line; `Ok(None)` for blank and comment lines.
fn parse_line(line: &str) -> Result<Option<Entry>, String> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    let fields: Vec<&str> = line.split_whitespace().collect();
    if !(2..=5).contains(&fields.len()) {
        return Err(format!("expected 2 to 5 fields, found {}", fields.len()));
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(fields[0].to_ascii_lowercase(), &mut digest)
        .map_err(|_| "the first field must be 64 hex characters (a SHA-256 digest)".to_string())?;
    let field = |i: usize| fields.get(i).copied().filter(|f| *f != "-").unwrap_or("");
    let mut grant = Grant::user(fields[1]).uid(field(2)).groups(split_list(field(3)));
    for pair in split_list(field(4)) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("extra entry {pair:?} is not key=value"))?;
        match grant.user.extra.iter_mut().find(|(key, _)| key == k) {
            Some((_, values)) => values.push(v.to_string()),
            None => grant = grant.extra(k, [v]),
        }
    }
    Ok(Some(Entry { digest, grant }))
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use tollgate_sdk::testing::{review, set_config};

    fn sha(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    #[test]
    fn finds_users_by_digest() {
        set_config([
            (
                "tokens",
                format!(
                    "# comment\n{} alice 1001 dev,ops team=blue,team=green\n{} bob\n",
                    sha("t-alice"),
                    sha("t-bob")
                ),
            ),
            ("audiences", "https://kubernetes.default.svc".into()),
        ]);
        let Decision::Allow(g) = StaticTokens::authenticate(review("t-alice")) else { panic!("alice not allowed") };
        assert_eq!(g.user.username, "alice");
        assert_eq!(g.user.uid, "1001");
        assert_eq!(g.user.groups, vec!["dev", "ops"]);
        assert_eq!(g.user.extra, vec![("team".to_string(), vec!["blue".to_string(), "green".to_string()])]);
        assert_eq!(g.audiences, vec!["https://kubernetes.default.svc"]);
        let Decision::Allow(g) = StaticTokens::authenticate(review("t-bob")) else { panic!("bob not allowed") };
        assert!(g.user.groups.is_empty() && g.user.uid.is_empty());
        assert!(matches!(StaticTokens::authenticate(review("t-carol")), Decision::Abstain));
    }

    #[test]
    #[should_panic(expected = "tokens line 1")]
    fn malformed_lines_trap() {
        set_config([("tokens", "not-a-digest alice")]);
        StaticTokens::authenticate(review("x"));
    }
}

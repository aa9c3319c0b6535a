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

use tollgate_sdk::crypto::sha256;
use tollgate_sdk::{Decision, Grant, Policy, Review, config};

pub struct StaticTokens;

impl Policy for StaticTokens {
    fn authenticate(review: Review) -> Decision {
        let table = config("tokens").unwrap_or_default();
        // Hashed by the host (native code), not in the sandbox.
        let digest = sha256(review.token.as_bytes());
        let mut found: Option<Line> = None;
        // Every line is checked and its digest compared, found or not, without allocating: the
        // time taken does not depend on which line (if any) matches, and a malformed line
        // anywhere traps. Only the matching line is then turned into a grant.
        for (n, line) in table.lines().enumerate() {
            let Some(entry) = Line::parse(line).unwrap_or_else(|e| panic!("tokens line {}: {e}", n + 1)) else {
                continue;
            };
            if constant_time_eq(&entry.digest, &digest) && found.is_none() {
                found = Some(entry);
            }
        }
        let Some(entry) = found else { return Decision::Abstain };
        let grant = entry.grant();
        let audiences = config("audiences").unwrap_or_default();
        Decision::Allow(grant.audiences(split_list(&audiences)))
    }
}

tollgate_sdk::export_policy!(StaticTokens);

/// One `tokens` line, checked and borrowed from the table (nothing allocated).
struct Line<'a> {
    digest: [u8; 32],
    fields: [&'a str; 5],
}

impl<'a> Line<'a> {
    /// `Ok(None)` for blank and comment lines.
    fn parse(line: &'a str) -> Result<Option<Line<'a>>, String> {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            return Ok(None);
        }
        let mut fields = [""; 5];
        let mut count = 0;
        for field in line.split_whitespace() {
            if count < fields.len() {
                fields[count] = field;
            }
            count += 1;
        }
        if !(2..=5).contains(&count) {
            return Err(format!("expected 2 to 5 fields, found {count}"));
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(fields[0], &mut digest)
            .map_err(|_| "the first field must be 64 hex characters (a SHA-256 digest)".to_string())?;
        if let Some(pair) = split_list(field(&fields, 4)).find(|pair| !pair.contains('=')) {
            return Err(format!("extra entry {pair:?} is not key=value"));
        }
        Ok(Some(Line { digest, fields }))
    }

    fn grant(&self) -> Grant {
        let f = |i| field(&self.fields, i);
        // The username is taken as written: a `-` there is a name.
        let mut grant = Grant::user(self.fields[1]).uid(f(2)).groups(split_list(f(3)));
        for (k, v) in split_list(f(4)).filter_map(|pair| pair.split_once('=')) {
            match grant.user.extra.iter_mut().find(|(key, _)| key == k) {
                Some((_, values)) => values.push(v.to_string()),
                None => grant = grant.extra(k, [v]),
            }
        }
        grant
    }
}

/// Field `i`, with `-` (and a missing field) as the empty string.
fn field<'a>(fields: &[&'a str; 5], i: usize) -> &'a str {
    Some(fields[i]).filter(|f| *f != "-").unwrap_or("")
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

/// Inline rather than the host's `crypto.constant-time-eq`: one host call per line would cost
/// more than the 32 byte comparisons.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use tollgate_sdk::testing::{review, set_config};

    fn sha(token: &str) -> String {
        hex::encode(sha256(token.as_bytes()))
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

    #[test]
    #[should_panic(expected = "tokens line 2: extra entry \"team\" is not key=value")]
    fn a_malformed_line_traps_even_when_another_line_matches() {
        set_config([("tokens", format!("{} alice\n{} bob - - team", sha("t-alice"), sha("t-bob")))]);
        StaticTokens::authenticate(review("t-alice"));
    }

    #[test]
    fn digests_in_upper_case_and_too_many_fields() {
        set_config([("tokens", format!("{} alice", sha("t-alice").to_ascii_uppercase()))]);
        assert!(matches!(StaticTokens::authenticate(review("t-alice")), Decision::Allow(_)));
        set_config([("tokens", format!("{} alice 1 g e=1 six", sha("t-alice")))]);
        let err = std::panic::catch_unwind(|| StaticTokens::authenticate(review("t-alice"))).unwrap_err();
        assert_eq!(
            err.downcast_ref::<String>().map(String::as_str),
            Some("tokens line 1: expected 2 to 5 fields, found 6")
        );
    }
}

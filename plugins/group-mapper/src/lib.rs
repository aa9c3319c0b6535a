//! A mapper: rewrites the grant's groups (and optionally prefixes its username), e.g. IdP groups
//! to cluster groups. It never sees the token.
//!
//! Config (see `group-mapper.toml`):
//! - `rules`: one rule per line, `FROM TO`, `#` starts a comment. `FROM` is a group name, or a
//!   prefix ending in `*`; a `*` in `TO` is replaced by what `FROM`'s `*` matched; `TO` = `-`
//!   drops the group. The first matching rule wins.
//! - `unmapped`: `keep` (default) or `drop` — what happens to groups no rule matches.
//! - `prefix`: prepended to kept unmapped groups (like kube-apiserver's `--oidc-groups-prefix`).
//! - `add`: comma-separated groups added to every grant.
//! - `username_prefix`: prepended to the username (like `--oidc-username-prefix`).
//!
//! The result keeps the order of first appearance, without duplicates. A malformed rule traps,
//! so the plugin fails its vectors at load.

use tollgate_sdk::{Decision, Policy, Review, config};

pub struct GroupMapper;

impl Policy for GroupMapper {
    fn authenticate(review: Review) -> Decision {
        let Some(current) = review.current else {
            // Only a mapper has a current grant; as an authenticator it has no opinion.
            return Decision::Abstain;
        };
        // Rules borrow from the table: one allocation for the list, none per rule.
        let table = config("rules").unwrap_or_default();
        let rules: Vec<Rule> = table
            .lines()
            .enumerate()
            .filter_map(|(n, line)| Rule::parse(line).unwrap_or_else(|e| panic!("rules line {}: {e}", n + 1)))
            .collect();
        let drop_unmapped = match config("unmapped").as_deref() {
            None | Some("keep") => false,
            Some("drop") => true,
            Some(other) => panic!("unmapped must be keep or drop, not {other:?}"),
        };
        // Only kept unmapped groups take the prefix: with `unmapped = drop` it is never read.
        let prefix = if drop_unmapped { String::new() } else { config("prefix").unwrap_or_default() };

        let mut grant = current.grant;
        let mut groups: Vec<String> = Vec::with_capacity(grant.user.groups.len() + 1);
        let mut push = |g: String| {
            if !groups.contains(&g) {
                groups.push(g);
            }
        };
        for group in std::mem::take(&mut grant.user.groups) {
            match rules.iter().find_map(|r| r.apply(&group)) {
                Some(Some(mapped)) => push(mapped),
                Some(None) => {}
                None if drop_unmapped => {}
                None if prefix.is_empty() => push(group),
                None => push(format!("{prefix}{group}")),
            }
        }
        for extra in config("add").unwrap_or_default().split(',').map(str::trim).filter(|g| !g.is_empty()) {
            push(extra.to_string());
        }
        grant.user.groups = groups;
        if let Some(p) = config("username_prefix") {
            grant.user.username = format!("{p}{}", grant.user.username);
        }
        // Audiences and expiry stay as they are (a mapper may only narrow them anyway).
        grant.audiences.clear();
        grant.expires_at = None;
        Decision::Allow(grant)
    }
}

tollgate_sdk::export_policy!(GroupMapper);

struct Rule<'a> {
    from: &'a str,
    wildcard: bool,
    /// `None` drops the group.
    to: Option<&'a str>,
}

impl<'a> Rule<'a> {
    fn parse(line: &'a str) -> Result<Option<Rule<'a>>, String> {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            return Ok(None);
        }
        let mut fields = line.split_whitespace();
        let (Some(from), Some(to), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format!("expected `FROM TO`, found {} fields", line.split_whitespace().count()));
        };
        let (from, wildcard) = match from.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (from, false),
        };
        if from.contains('*') {
            return Err("`*` may only end FROM".into());
        }
        Ok(Some(Rule { from, wildcard, to: (to != "-").then_some(to) }))
    }

    /// `None` if the rule does not match; `Some(None)` to drop; `Some(Some(g))` to map.
    fn apply(&self, group: &str) -> Option<Option<String>> {
        let rest = if self.wildcard {
            group.strip_prefix(self.from)?
        } else if group == self.from {
            ""
        } else {
            return None;
        };
        Some(self.to.map(|to| to.replacen('*', rest, 1)))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use tollgate_sdk::Grant;
    use tollgate_sdk::testing::{mapper_review, set_config};

    fn map(groups: &[&str]) -> Vec<String> {
        match GroupMapper::authenticate(mapper_review(Grant::user("alice").groups(groups.iter().copied()))) {
            Decision::Allow(g) => g.user.groups,
            _ => panic!("mapper did not allow"),
        }
    }

    #[test]
    fn maps_exact_and_prefix_rules_in_order() {
        set_config([
            ("rules", "idp:admins cluster-admins\nidp:dev-* dev:*\nidp:secret -\n"),
            ("prefix", "oidc:"),
            ("add", "tollgate:authenticated"),
        ]);
        assert_eq!(
            map(&["idp:admins", "idp:dev-web", "idp:secret", "other", "idp:admins"]),
            vec!["cluster-admins", "dev:web", "oidc:other", "tollgate:authenticated"]
        );
    }

    #[test]
    fn drops_unmapped_when_asked_and_prefixes_usernames() {
        set_config([("rules", "a b"), ("unmapped", "drop"), ("username_prefix", "acme:")]);
        let Decision::Allow(g) = GroupMapper::authenticate(mapper_review(Grant::user("alice").groups(["a", "c"])))
        else {
            panic!()
        };
        assert_eq!(g.user.groups, vec!["b"]);
        assert_eq!(g.user.username, "acme:alice");
    }

    #[test]
    fn malformed_rules_trap_with_their_line() {
        for (rules, message) in [
            ("a b\nx y z", "rules line 2: expected `FROM TO`, found 3 fields"),
            ("lonely", "rules line 1: expected `FROM TO`, found 1 fields"),
            ("a*b c", "rules line 1: `*` may only end FROM"),
        ] {
            set_config([("rules", rules)]);
            let err = std::panic::catch_unwind(|| map(&["a"])).unwrap_err();
            assert_eq!(err.downcast_ref::<String>().map(String::as_str), Some(message), "{rules:?}");
        }
    }

    #[test]
    fn abstains_without_a_current_grant() {
        set_config([("rules", "")]);
        assert!(matches!(GroupMapper::authenticate(tollgate_sdk::testing::review("t")), Decision::Abstain));
    }
}

//! Property tests of what parses or judges untrusted input: the TokenReview parser (every
//! request), the manifest and tenants-file parsers (tenant folders, the operator's file), the
//! guardrail checks and the scrubber (every grant and every string a plugin hands the host).
//! Each runs a few thousand generated cases in `make test`; `make fuzz` drives the same entry
//! points with a coverage-guided fuzzer.

use std::path::Path;

use proptest::prelude::*;
use tollgate::http::review::TokenReview;
use tollgate::observe::scrub::{MIN_SCRUB_LEN, Scrubber};
use tollgate::plugins::manifest::Manifest;
use tollgate::plugins::sandbox::{Grant, UserInfo};
use tollgate::policy::guardrails::{GuardrailSpec, Guardrails, glob_match, identity_checks};
use tollgate::policy::values::GrantLimits;
use tollgate::tenants::scan::TenantsFile;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 2_000, ..ProptestConfig::default() }
}

/// Strings as a hostile plugin or client would send them: any Unicode, control characters and
/// the names the checks care about.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z:*]{0,12}",
        Just("system:masters".to_string()),
        Just("system:anonymous".to_string()),
        Just("tollgate:acme:dev".to_string()),
        Just("authentication.kubernetes.io/pod-name".to_string()),
        "[\\x00-\\x1f]{1,4}",
    ]
}

fn grant() -> impl Strategy<Value = Grant> {
    (
        hostile_string(),
        hostile_string(),
        prop::collection::vec(hostile_string(), 0..6),
        prop::collection::vec((hostile_string(), prop::collection::vec(hostile_string(), 0..3)), 0..3),
        prop::collection::vec(hostile_string(), 0..3),
    )
        .prop_map(|(username, uid, groups, extra, audiences)| Grant {
            user: UserInfo { username, uid, groups, extra },
            audiences,
            expires_at: None,
        })
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes: a parsed review or a clear error, never a panic.
    #[test]
    fn token_review_parser_takes_any_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = TokenReview::parse(&body);
    }

    /// The token reaches plugins byte for byte, whatever it holds.
    #[test]
    fn the_token_round_trips(token in any::<String>(), audiences in prop::collection::vec(any::<String>(), 0..3),
                             v1 in any::<bool>()) {
        let api = if v1 { "authentication.k8s.io/v1" } else { "authentication.k8s.io/v1beta1" };
        let body = serde_json::json!({"apiVersion": api, "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences}, "status": {"user": {}}});
        let parsed = TokenReview::parse(body.to_string().as_bytes()).expect("a valid review parses");
        prop_assert_eq!(&parsed.token, &token);
        prop_assert_eq!(&parsed.audiences, &audiences);
    }

    /// A parsed review's `Debug` never shows its token.
    #[test]
    fn a_review_never_prints_its_token(token in "[A-Za-z0-9._-]{16,64}") {
        let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
        let parsed = TokenReview::parse(body.to_string().as_bytes()).expect("a valid review parses");
        let shown = format!("{parsed:?}");
        prop_assert!(!shown.contains(&token));
    }

    /// Any text as a manifest: parsed or refused with a message, never a panic.
    #[test]
    fn manifest_parser_takes_any_text(text in any::<String>()) {
        let _ = Manifest::parse(&text);
    }

    /// TOML-shaped manifests, with the keys the parser knows in any order and type.
    #[test]
    fn manifest_parser_takes_any_toml(lines in prop::collection::vec(
        ("(role|timeout_ms|memory_mib|token|expect|allowed_outbound_hosts|secret_files|\\[config\\]|\\[\\[test\\]\\]|\\[limits\\]|\\[match\\]|token_prefix)",
         "( = \"[a-z:/.]{0,8}\"| = [0-9]{1,20}| = \\[\\]| = \\{\\}|)"), 0..12)) {
        let text: String = lines.iter().map(|(k, v)| format!("{k}{v}\n")).collect();
        let _ = Manifest::parse(&text);
    }

    /// Any text as the tenants file: parsed or refused, never a panic.
    #[test]
    fn tenants_file_parser_takes_any_text(text in any::<String>()) {
        let _ = TenantsFile::parse(&text, Path::new("tenants.toml"));
    }

    #[test]
    fn tenants_file_parser_takes_any_toml(tenant in "[a-zA-Z0-9_.-]{0,70}", key in "(username_prefix|allowed_groups|allow_system|clients|secret_dirs|outbound_hosts|max_plugins|max_total_mib|max_vectors|other)",
                                         value in "(\"[a-z:/]{0,8}\"|\\[\"[a-z:/.*]{0,10}\"\\]|[0-9]{1,25}|-1|true)") {
        let text = format!("[tenant.{tenant}]\n{key} = {value}\n");
        let _ = TenantsFile::parse(&text, Path::new("tenants.toml"));
    }

    /// What the guardrails admit holds what they promise: no unlisted system: name, the prefix,
    /// the group patterns.
    #[test]
    fn guardrails_admit_only_what_they_promise(g in grant(), tenant in "[a-z]{1,8}", listed in any::<bool>()) {
        let spec = GuardrailSpec {
            allow_system: if listed { vec!["system:masters".into()] } else { vec![] },
            ..GuardrailSpec::default()
        };
        let rules = Guardrails::from_spec(&tenant, &spec);
        if rules.check(&g).is_ok() {
            let u = &g.user;
            for name in std::iter::once(&u.username).chain(&u.groups) {
                prop_assert!(!name.starts_with("system:") || (listed && name == "system:masters"));
            }
            let prefix = format!("tollgate:{tenant}:");
            prop_assert!(u.username.starts_with(&prefix) || (listed && u.username == "system:masters"));
            for group in &u.groups {
                prop_assert!(group.starts_with(&prefix) || (listed && group == "system:masters"));
            }
        }
    }

    /// Identity checks and size limits never panic, and what passes carries no reserved name,
    /// no control character and not the token.
    #[test]
    fn identity_checks_hold(g in grant(), token in "[a-z0-9-]{0,16}") {
        let _ = GrantLimits::DEFAULT.check(&g);
        let scrubber = Scrubber::new(&token);
        if identity_checks(&g, &scrubber).is_ok() {
            let u = &g.user;
            prop_assert!(!u.username.is_empty());
            prop_assert!(!["system:anonymous", "system:unauthenticated"].contains(&u.username.as_str()));
            prop_assert!(!u.groups.iter().any(|g| g == "system:anonymous" || g == "system:unauthenticated"));
            prop_assert!(!u.extra.iter().any(|(k, _)| k.to_ascii_lowercase().starts_with("authentication.kubernetes.io/")));
            if token.len() >= MIN_SCRUB_LEN {
                prop_assert!(!u.username.contains(&token) && !u.groups.iter().any(|g| g.contains(&token)));
            }
        }
    }

    /// `*` matches anything; a pattern without `*` matches only itself.
    #[test]
    fn globs(text in any::<String>(), pattern in "[a-z:]{0,6}") {
        prop_assert!(glob_match("*", &text));
        prop_assert_eq!(glob_match(&pattern, &text), pattern == text);
        let (open, longer) = (format!("{pattern}*"), format!("{pattern}{text}"));
        prop_assert!(glob_match(&open, &longer));
    }

    /// Nor any part of the token of 8 bytes or more, wherever and however often the plugin puts
    /// one, cut by the cap or not. (Tokens of the bearer-token alphabet: the host's own markers
    /// and escapes hold characters outside it.)
    #[test]
    fn no_part_of_the_token_comes_out(token in "[A-Za-z0-9._-]{8,48}",
                                      cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..5),
                                      separator in any::<String>(), max in 0usize..300) {
        let parts: Vec<&str> = cuts
            .iter()
            .map(|(a, b)| {
                let (a, b) = (a.index(token.len() + 1), b.index(token.len() + 1));
                &token[a.min(b)..a.max(b)]
            })
            .collect();
        let clean = Scrubber::new(&token).clean(&parts.join(&separator), max);
        for part in token.as_bytes().windows(MIN_SCRUB_LEN) {
            prop_assert!(!clean.as_bytes().windows(MIN_SCRUB_LEN).any(|w| w == part), "{clean:?}");
        }
    }

    /// Whatever a plugin says: the token (8 bytes or more) and its secrets never come out, nor
    /// a control character, and the length is capped. (Tokens are drawn without `[`, `\` and
    /// `…`, the characters the host's own markers and escapes are made of: a bearer token is
    /// base64, hex or a JWT.)
    #[test]
    fn the_scrubber_never_lets_the_token_out(token in r"[^\\\[…]{0,24}", secret in any::<String>(),
                                             parts in prop::collection::vec(any::<String>(), 0..6), max in 0usize..200) {
        let secrets = [secret.clone()];
        let scrubber = Scrubber::new(&token).with_secrets(&secrets);
        let text: String = parts.iter().flat_map(|p| [p.as_str(), token.as_str(), secret.as_str()]).collect();
        let clean = scrubber.clean(&text, max);
        if token.len() >= MIN_SCRUB_LEN && !token.chars().any(char::is_control) && !secret.contains(&token) {
            prop_assert!(!clean.contains(&token), "{clean:?}");
        }
        prop_assert!(!clean.chars().any(char::is_control), "{clean:?}");
        prop_assert!(clean.len() <= max + "…[18446744073709551615 bytes cut]".len());
    }
}

//! Asks the issuer about each token (OAuth 2.0 Token Introspection, RFC 7662), as Guard asks
//! GitHub or k8s-keystone-auth asks Keystone — and remembers the answer for a while.
//!
//! Config (see `introspection.toml`):
//! - `introspection_endpoint` (required): the issuer's introspection URL (the manifest must
//!   grant its host in `allowed_outbound_hosts`).
//! - `client_id` (required) and `client_secret` — the secret from `secret_files` (a mounted
//!   Secret), never written in the manifest; sent as HTTP Basic authentication.
//! - `username_claim` (default `sub`), `username_prefix`, `groups_claim` (default `groups`),
//!   `groups_prefix`.
//! - `cache_seconds` (default 60): an active answer is reused for this long (never past the
//!   token's `exp`); an inactive one for `negative_cache_seconds` (default 10). The cache key is
//!   a SHA-256 of the token, in the plugin's own kv.
//! - `inactive` (default `deny`): what an inactive token gets; `abstain` leaves it to the next
//!   authenticator (route tokens with `[match] token_prefix` instead where you can).
//!
//! The issuer down, slow (past the plugin's deadline), answering 5xx or refusing tollgate's
//! client credentials: `unavailable` — 503, which kube-apiserver neither caches nor retries.

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tollgate_sdk::{Decision, Grant, Policy, Review, config, http, kv, warn};

pub struct Introspection;

fn setting(key: &str) -> Option<String> {
    config(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn seconds(key: &str, default: u64) -> u64 {
    setting(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Policy for Introspection {
    fn authenticate(review: Review) -> Decision {
        let (Some(endpoint), Some(client_id)) = (setting("introspection_endpoint"), setting("client_id")) else {
            return Decision::unavailable("introspection is misconfigured: introspection_endpoint and client_id");
        };
        if review.token.is_empty() {
            return Decision::Abstain;
        }
        let key = format!("t:{}", hex::encode(Sha256::digest(review.token.as_bytes())));
        let answer = match kv::get(&key).and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
            Some(cached) => cached,
            None => match introspect(&endpoint, &client_id, &review.token) {
                Ok(answer) => {
                    remember(&key, &answer);
                    answer
                }
                Err(why) => return Decision::unavailable(why),
            },
        };
        decide(&answer)
    }
}

/// POSTs the token to the endpoint with the client's credentials.
fn introspect(endpoint: &str, client_id: &str, token: &str) -> Result<Value, String> {
    let secret = config("client_secret").unwrap_or_default();
    // RFC 6749 §2.3.1: both parts form-encoded before Basic encoding.
    let credentials = format!("{}:{}", http::form_encode(client_id), http::form_encode(&secret));
    let authorization = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials));
    let form = format!("token={}&token_type_hint=access_token", http::form_encode(token));
    let r = http::post_form(endpoint, &[("authorization", &authorization), ("accept", "application/json")], &form)
        .map_err(|e| format!("the issuer is unreachable: {e}"))?;
    match r.status {
        200 => serde_json::from_slice(&r.body).map_err(|e| format!("the introspection answer is not JSON: {e}")),
        401 | 403 => Err(format!("the issuer refused tollgate's client credentials ({})", r.status)),
        s => Err(format!("the issuer answered {s}")),
    }
}

fn remember(key: &str, answer: &Value) {
    let active = answer.get("active") == Some(&Value::Bool(true));
    let mut ttl = if active { seconds("cache_seconds", 60) } else { seconds("negative_cache_seconds", 10) };
    if let Some(exp) = answer.get("exp").and_then(Value::as_u64) {
        ttl = ttl.min(exp.saturating_sub(now()));
    }
    if ttl > 0
        && let Err(e) = kv::set(key, answer.to_string().as_bytes(), ttl.min(u64::from(u32::MAX)) as u32)
    {
        warn(&format!("cannot cache an introspection answer: {e}"));
    }
}

fn decide(answer: &Value) -> Decision {
    if answer.get("active") != Some(&Value::Bool(true)) {
        return match setting("inactive").as_deref() {
            Some("abstain") => Decision::Abstain,
            _ => Decision::deny("the issuer says the token is not active"),
        };
    }
    let exp = answer.get("exp").and_then(Value::as_u64);
    if exp.is_some_and(|e| e <= now()) {
        return Decision::deny("the token expired");
    }
    let username_claim = setting("username_claim").unwrap_or_else(|| "sub".into());
    let Some(username) = answer.get(&username_claim).and_then(Value::as_str).filter(|u| !u.is_empty()) else {
        return Decision::deny(format!("the introspection answer has no {username_claim}"));
    };
    let prefix = setting("username_prefix").unwrap_or_default();
    let mut grant = Grant::user(format!("{prefix}{username}"));
    if let Some(sub) = answer.get("sub").and_then(Value::as_str) {
        grant = grant.uid(sub);
    }
    let groups_claim = setting("groups_claim").unwrap_or_else(|| "groups".into());
    let groups_prefix = setting("groups_prefix").unwrap_or_default();
    let groups: Vec<String> = match answer.get(&groups_claim) {
        Some(Value::Array(items)) => {
            items.iter().filter_map(Value::as_str).map(|g| format!("{groups_prefix}{g}")).collect()
        }
        Some(Value::String(g)) => g.split_whitespace().map(|g| format!("{groups_prefix}{g}")).collect(),
        _ => Vec::new(),
    };
    grant = grant.groups(groups);
    if let Some(e) = exp {
        grant = grant.expires_at(e);
    }
    Decision::Allow(grant)
}

tollgate_sdk::export_policy!(Introspection);

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_sdk::testing;

    fn set(extra: &[(&str, &str)]) {
        let mut pairs = vec![
            ("introspection_endpoint", "https://idp.test/token/introspection"),
            ("client_id", "tollgate"),
            ("client_secret", "s3cret"),
            ("username_prefix", "idp:"),
            ("groups_prefix", "idp:"),
        ];
        pairs.extend_from_slice(extra);
        testing::set_config(pairs);
        testing::clear_kv();
    }

    #[test]
    fn active_tokens_map_to_users_and_are_cached() {
        set(&[]);
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let seen = calls.clone();
        testing::set_http(move |method, url| {
            assert_eq!((method, url), ("POST", "https://idp.test/token/introspection"));
            seen.set(seen.get() + 1);
            Ok(http::Response {
                status: 200,
                headers: vec![],
                body: format!(r#"{{"active":true,"sub":"alice","groups":["dev","ops"],"exp":{}}}"#, now() + 600).into(),
            })
        });
        for _ in 0..3 {
            match Introspection::authenticate(testing::review("opaque-token-1234")) {
                Decision::Allow(g) => {
                    assert_eq!(g.user.username, "idp:alice");
                    assert_eq!(g.user.groups, vec!["idp:dev", "idp:ops"]);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(calls.get(), 1, "answered from the cache after the first call");
    }

    #[test]
    fn inactive_down_and_refused() {
        set(&[]);
        testing::set_http(|_, _| {
            Ok(http::Response { status: 200, headers: vec![], body: br#"{"active":false}"#.to_vec() })
        });
        assert!(matches!(Introspection::authenticate(testing::review("t-1")), Decision::Deny(_)));
        set(&[("inactive", "abstain")]);
        assert!(matches!(Introspection::authenticate(testing::review("t-1")), Decision::Abstain));
        set(&[]);
        testing::set_http(|_, _| Err("ConnectionRefused".into()));
        assert!(matches!(Introspection::authenticate(testing::review("t-2")), Decision::Unavailable(_)));
        testing::set_http(|_, _| Ok(http::Response { status: 401, headers: vec![], body: vec![] }));
        assert!(matches!(Introspection::authenticate(testing::review("t-3")), Decision::Unavailable(_)));
        testing::set_http(|_, _| Ok(http::Response { status: 503, headers: vec![], body: vec![] }));
        assert!(matches!(Introspection::authenticate(testing::review("t-4")), Decision::Unavailable(_)));
    }
}

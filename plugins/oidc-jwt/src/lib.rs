//! Verifies JWTs from one OpenID issuer, like kube-apiserver's `--oidc-*` flags, in a sandbox.
//!
//! Config (see `oidc-jwt.toml`):
//! - `issuer` (required): the `iss` the tokens carry; tokens of other issuers get `abstain`.
//! - `audiences` (required): comma-separated; the token's `aud` must name one (`--oidc-client-id`).
//! - `username_claim` (default `sub`), `username_prefix` (default: `<issuer>#`, or none for
//!   `email`; `-` for none), `groups_claim` (default: none), `groups_prefix` (default none),
//!   `uid_claim` (default none).
//! - `clock_skew_seconds` (default 60), `algorithms` (default `RS256,ES256`; the host verifies
//!   RS256/384/512, PS256/384/512, ES256/384 and EdDSA).
//! - Keys: `jwks` (a JWKS document, inline: no fetching at all), or `jwks_uri`, or discovery at
//!   `<issuer>/.well-known/openid-configuration` (the default). The fetched JWKS is kept in the
//!   plugin's cache (`tollgate:policy/kv`) for `jwks_cache_seconds` (default 300): one fetch
//!   serves every review until then. A token whose `kid` the cached set lacks (a key rotation)
//!   fetches once more, at most every `jwks_refetch_seconds` (default 10) so that tokens with
//!   made-up key ids cannot make the plugin hammer its issuer.
//!
//! The signature is checked by the host (`tollgate:policy/crypto`, ring at native speed, the
//! parsed keys kept per JWKS text); the claims are checked here (`jwt-verify`). `exp`
//! (required), `nbf` and `iat` are whole seconds below 2^53: a later one is denied, never read as
//! "never"; a number beyond a double makes the token no JSON, so no JWT (`abstain`). The Python
//! and JavaScript ports read them exactly so (the shared vectors carry each case).
//!
//! The manifest must grant the issuer's host (`allowed_outbound_hosts`). Answers: `abstain` for
//! tokens that are not JWTs or not this issuer's; `deny` for a bad signature, unknown key, wrong
//! audience, expiry...; `unavailable` when the keys cannot be had (the issuer is down and
//! nothing is cached): 503, so kube-apiserver neither caches nor retries it.

use jwt_verify::{Jwt, Rules, check_claims, string_list};
use serde_json::Value;
use tollgate_sdk::crypto::{self, JwsError};
use tollgate_sdk::{Decision, Grant, Policy, Review, config, http, info, kv, warn};

pub struct OidcJwt;

/// kv keys.
const JWKS: &str = "jwks";
const JWKS_URI: &str = "jwks-uri";
const REFETCHED: &str = "jwks-refetched";

struct Settings {
    issuer: String,
    audiences: Vec<String>,
    username_claim: String,
    username_prefix: String,
    groups_claim: Option<String>,
    groups_prefix: String,
    uid_claim: Option<String>,
    skew: u64,
    algorithms: Vec<String>,
    jwks: Option<String>,
    jwks_uri: Option<String>,
    jwks_cache: u32,
    refetch_every: u32,
}

fn setting(key: &str) -> Option<String> {
    config(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn number<T: std::str::FromStr>(key: &str, default: T) -> Result<T, String> {
    match setting(key) {
        Some(v) => v.parse().map_err(|_| format!("{key} must be a number")),
        None => Ok(default),
    }
}

impl Settings {
    fn load() -> Result<Self, String> {
        let issuer = setting("issuer").ok_or("no issuer configured")?;
        let audiences = list(&setting("audiences").ok_or("no audiences configured")?);
        let username_claim = setting("username_claim").unwrap_or_else(|| "sub".into());
        let username_prefix = match setting("username_prefix").as_deref() {
            Some("-") => String::new(),
            Some(p) => p.to_owned(),
            None if username_claim == "email" => String::new(),
            None => format!("{issuer}#"),
        };
        let algorithms = setting("algorithms").map_or_else(|| vec!["RS256".into(), "ES256".into()], |a| list(&a));
        if let Some(a) = algorithms.iter().find(|a| !jwt_verify::ALGORITHMS.contains(&a.as_str())) {
            return Err(format!("algorithm {a} is not supported ({})", jwt_verify::ALGORITHMS.join(", ")));
        }
        Ok(Self {
            audiences,
            username_claim,
            username_prefix,
            groups_claim: setting("groups_claim"),
            groups_prefix: setting("groups_prefix").unwrap_or_default(),
            uid_claim: setting("uid_claim"),
            skew: number("clock_skew_seconds", 60)?,
            algorithms,
            jwks: setting("jwks"),
            jwks_uri: setting("jwks_uri"),
            jwks_cache: number("jwks_cache_seconds", 300u32)?.max(1),
            refetch_every: number("jwks_refetch_seconds", 10u32)?.max(1),
            issuer,
        })
    }
}

/// Runs `f` with the settings. The manifest's `[config]` is fixed for an instance's life (a
/// reload makes new instances): a warm instance reads it once. (Natively, tests change it
/// between calls: read each time.)
fn with_settings<R>(f: impl FnOnce(&Settings) -> R) -> Result<R, String> {
    #[cfg(target_arch = "wasm32")]
    {
        static SETTINGS: std::sync::OnceLock<Result<Settings, String>> = std::sync::OnceLock::new();
        SETTINGS.get_or_init(Settings::load).as_ref().map(f).map_err(Clone::clone)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        Settings::load().map(|s| f(&s))
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Policy for OidcJwt {
    fn authenticate(review: Review) -> Decision {
        with_settings(|settings| {
            let Some(jwt) = Jwt::parse(&review.token) else {
                return Decision::Abstain;
            };
            if jwt.issuer() != Some(settings.issuer.as_str()) {
                return Decision::Abstain;
            }
            match verify(settings, &review.token, jwt) {
                Ok(grant) => Decision::Allow(grant),
                Err(d) => d,
            }
        })
        .unwrap_or_else(|e| Decision::unavailable(format!("oidc-jwt is misconfigured: {e}")))
    }
}

#[allow(clippy::result_large_err, reason = "the error is the review's answer, made once per review")]
fn verify(s: &Settings, token: &str, jwt: Jwt) -> Result<Grant, Decision> {
    let algorithms: Vec<&str> = s.algorithms.iter().map(String::as_str).collect();
    let (jwks, fetched) = jwks(s)?;
    let verified = match crypto::verify_jws(token, &jwks, &algorithms) {
        // A key the JWKS lacks: the issuer may have rotated. Ask again, but not often.
        Err(JwsError::NoKey(_)) if !fetched && s.jwks.is_none() && kv::get(REFETCHED).is_none() => {
            let _ = kv::set(REFETCHED, b"1", s.refetch_every);
            match fetch(s) {
                Some(fresh) => crypto::verify_jws(token, &fresh, &algorithms),
                None => crypto::verify_jws(token, &jwks, &algorithms),
            }
        }
        other => other,
    }
    .map_err(|e| match e {
        JwsError::Jwks(m) => Decision::unavailable(format!("the signing keys of {} are unusable: {m}", s.issuer)),
        JwsError::Algorithm(m) => Decision::deny(format!("algorithm not accepted: {m}")),
        other => Decision::deny(other.to_string()),
    })?;
    let claims = jwt.into_claims(&verified.payload).map_err(Decision::deny)?;
    let rules = Rules { issuer: &s.issuer, audiences: &s.audiences, skew: s.skew, now: now() };
    let exp = check_claims(&claims, &rules).map_err(Decision::deny)?;
    let claim = |name: &str| claims.get(name).and_then(Value::as_str).filter(|v| !v.is_empty());
    let username = claim(&s.username_claim)
        .ok_or_else(|| Decision::deny(format!("no {} claim to name the user", s.username_claim)))?;
    if s.username_claim == "email" && claims.get("email_verified") == Some(&Value::Bool(false)) {
        return Err(Decision::deny("the email is not verified"));
    }
    let mut grant = Grant::user(format!("{}{username}", s.username_prefix)).expires_at(exp);
    if let Some(c) = &s.uid_claim {
        grant = grant.uid(claim(c).unwrap_or_default());
    }
    if let Some(c) = &s.groups_claim {
        let groups = string_list(&claims, c).map_err(Decision::deny)?;
        grant = grant.groups(groups.into_iter().map(|g| format!("{}{g}", s.groups_prefix)));
    }
    Ok(grant)
}

/// The JWKS text to verify with: inline, cached, or fetched (and cached); and whether it was
/// fetched just now (so a missing key does not fetch it twice).
#[allow(clippy::result_large_err, reason = "the error is the review's answer, made once per review")]
fn jwks(s: &Settings) -> Result<(String, bool), Decision> {
    if let Some(inline) = &s.jwks {
        return Ok((inline.clone(), false));
    }
    if let Some(cached) = kv::get(JWKS).and_then(|b| String::from_utf8(b).ok()) {
        return Ok((cached, false));
    }
    let fetched =
        fetch(s).ok_or_else(|| Decision::unavailable(format!("cannot get the signing keys of {}", s.issuer)))?;
    Ok((fetched, true))
}

/// Fetches the JWKS (through discovery unless `jwks_uri` is set) and caches it.
fn fetch(s: &Settings) -> Option<String> {
    let result = jwks_uri(s).and_then(|uri| {
        let r = http::get(&uri, &[("accept", "application/json")])?;
        if r.status != 200 {
            return Err(format!("{uri} answered {}", r.status));
        }
        let text = String::from_utf8(r.body).map_err(|_| format!("{uri} answered with a JWKS that is not UTF-8"))?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| format!("the JWKS at {uri} is not JSON: {e}"))?;
        let keys = doc.get("keys").and_then(Value::as_array).ok_or_else(|| format!("the JWKS at {uri} has no keys"))?;
        info(&format!("fetched {} signing keys from {uri}", keys.len()));
        if let Err(e) = kv::set(JWKS, text.as_bytes(), s.jwks_cache) {
            warn(&format!("cannot cache the JWKS: {e}"));
        }
        Ok(text)
    });
    result.map_err(|e| warn(&format!("the issuer's keys are unavailable: {e}"))).ok()
}

fn jwks_uri(s: &Settings) -> Result<String, String> {
    if let Some(uri) = &s.jwks_uri {
        return Ok(uri.clone());
    }
    if let Some(uri) = kv::get(JWKS_URI).and_then(|b| String::from_utf8(b).ok()) {
        return Ok(uri);
    }
    let url = format!("{}/.well-known/openid-configuration", s.issuer.trim_end_matches('/'));
    let r = http::get(&url, &[("accept", "application/json")])?;
    if r.status != 200 {
        return Err(format!("discovery at {url} answered {}", r.status));
    }
    let doc: Value = serde_json::from_slice(&r.body).map_err(|e| format!("discovery document: {e}"))?;
    // OpenID Connect Discovery §4.3: the document must name the issuer it was fetched for.
    if doc.get("issuer").and_then(Value::as_str) != Some(s.issuer.as_str()) {
        return Err("the discovery document names another issuer".into());
    }
    let uri = doc.get("jwks_uri").and_then(Value::as_str).ok_or("the discovery document has no jwks_uri")?.to_owned();
    let _ = kv::set(JWKS_URI, uri.as_bytes(), s.jwks_cache);
    Ok(uri)
}

tollgate_sdk::export_policy!(OidcJwt);

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_sdk::testing::{review, set_config};

    /// The manifest's first vector (RS256) and its inline JWKS.
    fn vector() -> (String, String) {
        let manifest = include_str!("../oidc-jwt.toml");
        let after = |from: &str, start: &str, end: char| {
            let rest = &manifest[manifest.find(from).unwrap()..];
            let at = rest.find(start).unwrap() + start.len();
            rest[at..at + rest[at..].find(end).unwrap()].to_owned()
        };
        (after("[[test]]", "token = \"", '"'), after("[[test]]", "jwks = '", '\''))
    }

    #[test]
    fn natively_the_sdk_verifies_as_the_host_does() {
        let (token, jwks) = vector();
        let config = |algorithms: &str| {
            set_config([
                ("issuer", "https://issuer.test"),
                ("audiences", "kubernetes"),
                ("jwks", jwks.as_str()),
                ("algorithms", algorithms),
            ])
        };
        // The vector's token expired in 2023: past the signature, the claims check says so.
        config("RS256");
        let expired = OidcJwt::authenticate(review(&token));
        assert!(matches!(&expired, Decision::Deny(r) if r.starts_with("expired at")), "{expired:?}");
        config("ES256");
        let refused = OidcJwt::authenticate(review(&token));
        assert!(matches!(&refused, Decision::Deny(r) if r.contains("not in allowed-algs")), "{refused:?}");
        config("RS256");
        let forged = format!("{}AAAA", &token[..token.len() - 4]);
        let forged = OidcJwt::authenticate(review(&forged));
        assert!(matches!(&forged, Decision::Deny(r) if r == "bad signature"), "{forged:?}");
    }
}

//! The claim checks of an OpenID Connect ID or access token, and a peek at a JWT's unverified
//! header and claims (to route it by issuer) — the guest's share of the `oidc-jwt` policy, kept
//! free of the SDK so the very same code runs natively (the benchmark compares it with the
//! guest). The signature is the host's to check (`tollgate_sdk::crypto::verify_jws`, ring at
//! native speed): no cryptography here.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// The algorithms the host verifies (`tollgate:policy/crypto`, contract 0.1.2).
pub const ALGORITHMS: [&str; 9] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

/// A JWS compact token, split and decoded but NOT verified: its claims may only route it.
pub struct Jwt {
    pub alg: String,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    /// The decoded payload the claims were parsed from.
    payload: String,
}

fn b64(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part).ok()
}

impl Jwt {
    /// `None` when `token` is not a JWS compact token (three base64url parts, JSON header and
    /// payload): not ours to judge.
    pub fn parse(token: &str) -> Option<Self> {
        if token.len() > 64 * 1024 {
            return None;
        }
        let mut parts = token.split('.');
        let (h, p, _s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Map<String, Value> = serde_json::from_slice(&b64(h)?).ok()?;
        let payload = String::from_utf8(b64(p)?).ok()?;
        let claims: Map<String, Value> = serde_json::from_str(&payload).ok()?;
        Some(Self {
            alg: header.get("alg")?.as_str()?.to_owned(),
            kid: header.get("kid").and_then(Value::as_str).map(str::to_owned),
            claims,
            payload,
        })
    }

    /// The unverified `iss` (to route the token, never to trust it).
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// The claims of `verified_payload` (what the host's `verify-jws` returned for this token):
    /// the ones parsed here when it is the very payload they were parsed from, so a review
    /// parses its claims once; otherwise parsed from it.
    pub fn into_claims(self, verified_payload: &str) -> Result<Map<String, Value>, String> {
        if verified_payload == self.payload { Ok(self.claims) } else { claims(verified_payload) }
    }
}

/// The claims of a verified payload (JSON text, as the host's `verify-jws` returns it).
pub fn claims(payload: &str) -> Result<Map<String, Value>, String> {
    serde_json::from_str(payload).map_err(|_| "the token's claims are not a JSON object".to_owned())
}

/// What the claims must say.
pub struct Rules<'a> {
    pub issuer: &'a str,
    /// The token's `aud` must name one of them.
    pub audiences: &'a [String],
    /// Tolerated clock difference with the issuer, in seconds.
    pub skew: u64,
    /// Unix seconds.
    pub now: u64,
}

/// Checks `iss`, `aud`, `exp` (required) and `nbf`; returns `exp`.
pub fn check_claims(claims: &Map<String, Value>, rules: &Rules) -> Result<u64, String> {
    if claims.get("iss").and_then(Value::as_str) != Some(rules.issuer) {
        return Err("wrong issuer".into());
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => rules.audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => {
            list.iter().filter_map(Value::as_str).any(|a| rules.audiences.iter().any(|x| x == a))
        }
        _ => false,
    };
    if !aud_ok {
        return Err("wrong audience".into());
    }
    let number = |k: &str| claims.get(k).and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)));
    let exp = number("exp").ok_or("the token has no exp")?;
    if rules.now >= exp.saturating_add(rules.skew) {
        return Err(format!("expired at {exp}"));
    }
    if let Some(nbf) = number("nbf")
        && nbf > rules.now.saturating_add(rules.skew)
    {
        return Err(format!("not valid before {nbf}"));
    }
    Ok(exp)
}

/// A claim as a list of strings (a JSON array of strings, or one string).
pub fn string_list(claims: &Map<String, Value>, name: &str) -> Result<Vec<String>, String> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| format!("claim {name} holds a non-string")))
            .collect(),
        Some(_) => Err(format!("claim {name} is neither a string nor a list of strings")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn rules(audiences: &[String], now: u64) -> Rules<'_> {
        Rules { issuer: "https://issuer.test", audiences, skew: 60, now }
    }

    #[test]
    fn claims_need_the_issuer_an_audience_and_a_live_window() {
        let aud = ["k8s".to_owned(), "other".to_owned()];
        let ok = claims(json!({"iss": "https://issuer.test", "aud": ["x", "k8s"], "exp": 1000, "nbf": 500}));
        assert_eq!(check_claims(&ok, &rules(&aud, 900)), Ok(1000));
        assert_eq!(check_claims(&ok, &rules(&aud, 1059)), Ok(1000), "within the skew");
        assert!(check_claims(&ok, &rules(&aud, 1060)).unwrap_err().starts_with("expired"));
        assert!(check_claims(&ok, &rules(&aud, 439)).unwrap_err().starts_with("not valid before"));
        let one = claims(json!({"iss": "https://issuer.test", "aud": "other", "exp": 1000}));
        assert!(check_claims(&one, &rules(&aud, 900)).is_ok(), "aud as one string");
        for bad in [
            json!({"iss": "https://issuer.test/", "aud": "k8s", "exp": 1000}),
            json!({"iss": "https://issuer.test", "aud": "k8s-other", "exp": 1000}),
            json!({"iss": "https://issuer.test", "aud": [], "exp": 1000}),
            json!({"iss": "https://issuer.test", "aud": "k8s"}),
            json!({"iss": "https://issuer.test", "aud": "k8s", "exp": "1000"}),
            json!({"iss": "https://issuer.test", "aud": "k8s", "exp": -5.0}),
        ] {
            assert!(check_claims(&claims(bad.clone()), &rules(&aud, 900)).is_err(), "{bad}");
        }
    }

    #[test]
    fn groups_are_strings_or_lists_of_strings() {
        let c = claims(json!({"a": "one", "b": ["x", "y"], "c": [1], "d": 7, "e": null}));
        assert_eq!(string_list(&c, "a").unwrap(), ["one"]);
        assert_eq!(string_list(&c, "b").unwrap(), ["x", "y"]);
        assert!(string_list(&c, "c").is_err() && string_list(&c, "d").is_err());
        assert!(string_list(&c, "e").unwrap().is_empty() && string_list(&c, "missing").unwrap().is_empty());
    }

    #[test]
    fn only_compact_jws_tokens_parse() {
        let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let header = b64(json!({"alg": "RS256", "kid": "k1"}));
        let payload = b64(json!({"iss": "https://issuer.test"}));
        let jwt = Jwt::parse(&format!("{header}.{payload}.c2ln")).unwrap();
        assert_eq!(
            (jwt.alg.as_str(), jwt.kid.as_deref(), jwt.issuer()),
            ("RS256", Some("k1"), Some("https://issuer.test"))
        );
        assert!(Jwt::parse("opaque-token").is_none());
        assert!(Jwt::parse(&format!("{header}.{payload}")).is_none(), "two parts");
        assert!(Jwt::parse(&format!("{header}.{payload}.c2ln.x")).is_none(), "JWE-like");
        assert!(Jwt::parse(&format!("{header}.bm90IGpzb24.c2ln")).is_none(), "payload not JSON");
        assert!(super::claims("{\"sub\": \"a\"}").is_ok() && super::claims("[1]").is_err());
    }
}

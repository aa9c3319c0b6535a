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

/// The last NumericDate the ports read the same: 2^53 - 1, the largest integer a JavaScript
/// number holds exactly (some 285 million years away). The Python and JavaScript ports apply
/// the same bound, so a later one is refused in every language rather than read as "never".
pub const MAX_NUMERIC_DATE: u64 = (1 << 53) - 1;

/// A NumericDate claim (RFC 7519 §2) as whole seconds: `None` when absent or not a number, a
/// fraction cut, a negative number 0 (before the epoch: long past), and one beyond
/// [`MAX_NUMERIC_DATE`] refused. (A number beyond a double never gets here: serde_json refuses
/// it, so the token is no JWT to [`Jwt::parse`].)
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    let seconds = claims.get(name).and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)));
    match seconds {
        Some(s) if s > MAX_NUMERIC_DATE => Err(format!("the token's {name} is out of range")),
        other => Ok(other),
    }
}

/// Checks `iss`, `aud`, `exp` (required), `nbf` and that `iat` is in range; returns `exp`.
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
    let exp = numeric_date(claims, "exp")?.ok_or("the token has no exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    numeric_date(claims, "iat")?;
    if rules.now >= exp.saturating_add(rules.skew) {
        return Err(format!("expired at {exp}"));
    }
    if let Some(nbf) = nbf
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

    /// What the ports agree on (the shared vectors carry each case): a number beyond a double
    /// makes the token no JSON at all; exp, nbf and iat are whole seconds below 2^53 (a
    /// fraction cut, a negative one 0), and anything beyond is refused, never read as "never".
    #[test]
    fn numeric_dates_are_whole_seconds_below_2_53() {
        let aud = ["k8s".to_owned()];
        let token = |payload: &str| {
            let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
            format!("{}.{}.c2ln", b64(r#"{"alg":"RS256"}"#), b64(payload))
        };
        for huge in ["1e400", "-1e400", "1e309", &"9".repeat(400)] {
            let payload = format!(r#"{{"iss": "https://issuer.test", "aud": "k8s", "exp": 1000, "iat": {huge}}}"#);
            assert!(Jwt::parse(&token(&payload)).is_none(), "{huge}: not JSON, not a JWT");
        }
        let check = |claims: &str| {
            let text = format!(r#"{{"iss": "https://issuer.test", "aud": "k8s", {claims}}}"#);
            check_claims(&super::claims(&text).unwrap(), &rules(&aud, 900))
        };
        assert_eq!(check(r#""exp": 9007199254740991"#), Ok(9007199254740991), "2^53 - 1: the last in range");
        assert_eq!(check(r#""exp": 1000.9"#), Ok(1000), "a fraction is cut");
        assert_eq!(check(r#""exp": 1000, "nbf": -5, "iat": -1e300"#), Ok(1000), "before the epoch is 0");
        assert_eq!(check(r#""exp": -1"#), Err("expired at 0".into()));
        assert_eq!(check(r#""exp": "1000""#), Err("the token has no exp".into()));
        for (claims, name) in [
            (r#""exp": 9007199254740992"#, "exp"),
            (r#""exp": 1e300"#, "exp"),
            (r#""exp": 18446744073709551615"#, "exp"),
            (r#""exp": 18446744073709551616"#, "exp"),
            (r#""exp": 1000, "nbf": 9007199254740992"#, "nbf"),
            (r#""exp": 1000, "iat": 1e20"#, "iat"),
        ] {
            assert_eq!(check(claims), Err(format!("the token's {name} is out of range")), "{claims}");
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

//! JWS compact tokens verified against a JWKS, and the claim checks of an OpenID Connect ID or
//! access token — the core of the `oidc-jwt` policy, kept free of the SDK so the very same code
//! runs natively (the benchmark compares it with the guest).
//!
//! Only RS256 (RSA PKCS#1 v1.5 with SHA-256, keys of 2048 bits or more) and ES256 (ECDSA P-256
//! with SHA-256) are accepted: never `none`, never HMAC (a public key used as an HMAC secret is
//! the classic JWT confusion attack), never a header with `crit` extensions.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Verifier as _;
use serde_json::{Map, Value};

/// The algorithms this crate verifies.
pub const ALGORITHMS: [&str; 2] = ["RS256", "ES256"];

/// A JWS compact token, split and decoded but not verified.
pub struct Jwt<'a> {
    pub alg: String,
    pub kid: Option<String>,
    /// The header names extensions the verifier must understand (`crit`): refused.
    pub crit: bool,
    pub claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

fn b64(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()
}

impl<'a> Jwt<'a> {
    /// `None` when `token` is not a JWS compact token (three base64url parts, JSON header and
    /// payload): not ours to judge.
    pub fn parse(token: &'a str) -> Option<Self> {
        if token.len() > 64 * 1024 {
            return None;
        }
        let mut parts = token.split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Map<String, Value> = serde_json::from_slice(&b64(h)?).ok()?;
        let claims: Map<String, Value> = serde_json::from_slice(&b64(p)?).ok()?;
        Some(Self {
            alg: header.get("alg")?.as_str()?.to_owned(),
            kid: header.get("kid").and_then(Value::as_str).map(str::to_owned),
            crit: header.contains_key("crit"),
            claims,
            signing_input: &token[..h.len() + 1 + p.len()],
            signature: b64(s)?,
        })
    }

    /// The unverified `iss` (to route the token, never to trust it).
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// Verifies the signature with `key`.
    pub fn verify(&self, key: &Key) -> Result<(), String> {
        if self.crit {
            return Err("the token header has critical extensions (crit)".into());
        }
        key.verify(&self.alg, self.signing_input.as_bytes(), &self.signature)
    }
}

enum Public {
    Rsa(rsa::pkcs1v15::VerifyingKey<sha2::Sha256>),
    Ec(p256::ecdsa::VerifyingKey),
}

/// One verification key of a JWKS.
pub struct Key {
    pub kid: Option<String>,
    /// The algorithm it is for (`RS256` or `ES256`).
    pub alg: &'static str,
    public: Public,
}

impl Key {
    fn verify(&self, alg: &str, input: &[u8], signature: &[u8]) -> Result<(), String> {
        if alg != self.alg {
            return Err(format!("the token's algorithm {alg} is not its key's {}", self.alg));
        }
        let ok = match &self.public {
            Public::Rsa(key) => {
                rsa::pkcs1v15::Signature::try_from(signature).ok().is_some_and(|sig| key.verify(input, &sig).is_ok())
            }
            Public::Ec(key) => {
                p256::ecdsa::Signature::from_slice(signature).ok().is_some_and(|sig| key.verify(input, &sig).is_ok())
            }
        };
        if ok { Ok(()) } else { Err("bad signature".into()) }
    }

    fn from_jwk(jwk: &Map<String, Value>) -> Option<Self> {
        let field = |k: &str| jwk.get(k).and_then(Value::as_str);
        if field("use").is_some_and(|u| u != "sig") {
            return None;
        }
        let bytes = |k: &str| field(k).and_then(b64);
        let (alg, public) = match field("kty")? {
            "RSA" => {
                let n = rsa::BigUint::from_bytes_be(&bytes("n")?);
                let e = rsa::BigUint::from_bytes_be(&bytes("e")?);
                let key = rsa::RsaPublicKey::new(n, e).ok()?;
                if rsa::traits::PublicKeyParts::size(&key) < 256 {
                    return None; // under 2048 bits
                }
                ("RS256", Public::Rsa(rsa::pkcs1v15::VerifyingKey::new(key)))
            }
            "EC" if field("crv")? == "P-256" => {
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                let point = p256::EncodedPoint::from_affine_coordinates(
                    p256::FieldBytes::from_slice(&x),
                    p256::FieldBytes::from_slice(&y),
                    false,
                );
                ("ES256", Public::Ec(p256::ecdsa::VerifyingKey::from_encoded_point(&point).ok()?))
            }
            _ => return None,
        };
        if field("alg").is_some_and(|a| a != alg) {
            return None;
        }
        Some(Self { kid: field("kid").map(str::to_owned), alg, public })
    }
}

/// The usable keys of a JWKS document (keys of other types, uses or sizes are skipped).
pub struct KeySet {
    pub keys: Vec<Key>,
}

impl KeySet {
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let doc: Value = serde_json::from_slice(json).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
        let keys = doc.get("keys").and_then(Value::as_array).ok_or("the JWKS has no keys array")?;
        Ok(Self { keys: keys.iter().filter_map(Value::as_object).filter_map(Key::from_jwk).collect() })
    }

    /// The key for a token's `kid` and `alg`: with a `kid`, that key; without one, the only key
    /// of that algorithm.
    pub fn find(&self, kid: Option<&str>, alg: &str) -> Option<&Key> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid) && k.alg == alg),
            None => {
                let mut of_alg = self.keys.iter().filter(|k| k.alg == alg);
                match (of_alg.next(), of_alg.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        }
    }
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
    fn only_compact_jws_tokens_parse_and_crit_is_refused() {
        let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let header = b64(json!({"alg": "RS256", "kid": "k1"}));
        let payload = b64(json!({"iss": "https://issuer.test"}));
        let token = format!("{header}.{payload}.c2ln");
        let jwt = Jwt::parse(&token).unwrap();
        assert_eq!(
            (jwt.alg.as_str(), jwt.kid.as_deref(), jwt.issuer()),
            ("RS256", Some("k1"), Some("https://issuer.test"))
        );
        assert!(Jwt::parse("opaque-token").is_none());
        assert!(Jwt::parse(&format!("{header}.{payload}")).is_none(), "two parts");
        assert!(Jwt::parse(&format!("{header}.{payload}.c2ln.x")).is_none(), "JWE-like");
        assert!(Jwt::parse(&format!("{header}.bm90IGpzb24.c2ln")).is_none(), "payload not JSON");
        let crit = b64(json!({"alg": "ES256", "crit": ["exp"]}));
        let with_crit = format!("{crit}.{payload}.c2ln");
        let jwt = Jwt::parse(&with_crit).unwrap();
        let keys = KeySet::parse(
            br#"{"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256",
            "x": "YaUahW7KqTzB7MpF75viXxaFkF3jxglPXz5KoeoNCYM", "y": "sMRp8VjbIpBMuyFL0eZNW3wyNvoH12qpsvMb-eaaieE"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"}, {"kty": "oct", "k": "c2VjcmV0"}]}"#,
        )
        .unwrap();
        assert_eq!(keys.keys.len(), 1, "a short RSA key and a symmetric key are skipped");
        assert!(jwt.verify(&keys.keys[0]).unwrap_err().contains("crit"));
        assert!(
            Jwt::parse(&format!("{header}.{payload}.c2ln"))
                .unwrap()
                .verify(&keys.keys[0])
                .unwrap_err()
                .contains("not its key's")
        );
    }
}

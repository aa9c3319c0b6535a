//! Every algorithm, every way a token or a key set can be wrong: tokens signed here with ring,
//! keys published as a JWKS, then verified the way a plugin's host call does.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use ring::rand::SystemRandom;
use ring::signature::{self as sig, KeyPair as _};
use serde_json::{Value, json};
use tollgate_crypto::{
    Alg, EcdsaTwin, JwsError, KeySet, MAX_JWS_BYTES, canonical_jws, constant_time_eq, ecdsa_twin, hmac_sha256, sha256,
    verify_jws,
};

/// A 2048-bit RSA key (PKCS#1 DER) made with `openssl genpkey` for these tests only (ring cannot generate RSA keys).
const RSA_2048: &[u8] = include_bytes!("keys/test-only-rsa-2048.der");

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key and its public JWK (without `kid`/`alg`, which each test sets).
enum Signer {
    Rsa(sig::RsaKeyPair),
    Ec(sig::EcdsaKeyPair),
    Ed(sig::Ed25519KeyPair),
}

impl Signer {
    fn new(alg: Alg) -> Signer {
        let rng = SystemRandom::new();
        match alg {
            Alg::Es256 | Alg::Es384 => {
                let a = if alg == Alg::Es256 {
                    &sig::ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &sig::ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(a, &rng).unwrap();
                Signer::Ec(sig::EcdsaKeyPair::from_pkcs8(a, pkcs8.as_ref(), &rng).unwrap())
            }
            Alg::EdDsa => {
                let pkcs8 = sig::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
                Signer::Ed(sig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
            }
            _ => Signer::Rsa(sig::RsaKeyPair::from_der(RSA_2048).unwrap()),
        }
    }

    fn jwk(&self) -> Value {
        match self {
            Signer::Rsa(k) => {
                let c = sig::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Signer::Ec(k) => {
                let point = k.public_key().as_ref();
                let half = (point.len() - 1) / 2;
                let crv = if half == 32 { "P-256" } else { "P-384" };
                json!({"kty": "EC", "crv": crv, "x": b64(&point[1..1 + half]), "y": b64(&point[1 + half..])})
            }
            Signer::Ed(k) => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref())}),
        }
    }

    fn sign(&self, alg: Alg, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Signer::Rsa(k) => {
                let padding: &dyn sig::RsaEncoding = match alg {
                    Alg::Rs256 => &sig::RSA_PKCS1_SHA256,
                    Alg::Rs384 => &sig::RSA_PKCS1_SHA384,
                    Alg::Rs512 => &sig::RSA_PKCS1_SHA512,
                    Alg::Ps256 => &sig::RSA_PSS_SHA256,
                    Alg::Ps384 => &sig::RSA_PSS_SHA384,
                    _ => &sig::RSA_PSS_SHA512,
                };
                let mut out = vec![0; k.public().modulus_len()];
                k.sign(padding, &rng, input, &mut out).unwrap();
                out
            }
            Signer::Ec(k) => k.sign(&rng, input).unwrap().as_ref().to_vec(),
            Signer::Ed(k) => k.sign(input).as_ref().to_vec(),
        }
    }
}

const CLAIMS: &str = r#"{"iss":"https://issuer.test","sub":"alice","aud":"kubernetes","exp":4102444800}"#;

fn token_with(header: &Value, payload: &str, signer: &Signer, alg: Alg) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(payload));
    let signature = signer.sign(alg, input.as_bytes());
    format!("{input}.{}", b64(signature))
}

fn token(signer: &Signer, alg: Alg, kid: Option<&str>) -> String {
    let mut header = json!({"alg": alg.name(), "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    token_with(&header, CLAIMS, signer, alg)
}

fn jwks(keys: &[Value]) -> KeySet {
    KeySet::parse(&json!({ "keys": keys }).to_string()).unwrap()
}

fn with(mut jwk: Value, fields: Value) -> Value {
    for (k, v) in fields.as_object().unwrap() {
        jwk[k] = v.clone();
    }
    jwk
}

fn all() -> Vec<String> {
    Alg::ALL.iter().map(|a| a.name().to_owned()).collect()
}

#[test]
fn every_algorithm_verifies_its_own_and_refuses_tampering_and_other_keys() {
    for alg in Alg::ALL {
        let signer = Signer::new(alg);
        let keys = jwks(&[with(signer.jwk(), json!({"kid": "k1", "alg": alg.name(), "use": "sig"}))]);
        let good = token(&signer, alg, Some("k1"));
        let verified = verify_jws(&good, &keys, &[alg.name().to_owned()]).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(
            (verified.alg.as_str(), verified.key_id.as_deref(), verified.payload.as_str()),
            (alg.name(), Some("k1"), CLAIMS)
        );
        assert!(verified.header.contains(alg.name()));

        // Another payload under the same signature.
        let (h, rest) = good.split_once('.').unwrap();
        let s = rest.split_once('.').unwrap().1;
        let forged = format!("{h}.{}.{s}", b64(CLAIMS.replace("alice", "admin")));
        assert_eq!(verify_jws(&forged, &keys, &all()), Err(JwsError::BadSignature), "{alg:?} payload");
        // A flipped bit of the signature.
        let mut signature = URL_SAFE_NO_PAD.decode(s).unwrap();
        signature[3] ^= 1;
        let flipped = format!("{}.{}", good.rsplit_once('.').unwrap().0, b64(&signature));
        assert_eq!(verify_jws(&flipped, &keys, &all()), Err(JwsError::BadSignature), "{alg:?} signature");
        // Signed by another key of the same kind, published under the same kid.
        let other = if matches!(alg, Alg::Es256 | Alg::Es384 | Alg::EdDsa) {
            Signer::new(alg)
        } else {
            // Only one RSA test key: publish a modulus that differs in one bit instead.
            let mut n = URL_SAFE_NO_PAD.decode(signer.jwk()["n"].as_str().unwrap()).unwrap();
            n[100] ^= 1;
            let keys = jwks(&[json!({"kty": "RSA", "kid": "k1", "n": b64(&n), "e": "AQAB"})]);
            assert_eq!(verify_jws(&good, &keys, &all()), Err(JwsError::BadSignature), "{alg:?} other modulus");
            continue;
        };
        let by_other = token(&other, alg, Some("k1"));
        assert_eq!(verify_jws(&by_other, &keys, &all()), Err(JwsError::BadSignature), "{alg:?} other key");
    }
}

#[path = "support/ecdsa.rs"]
mod ecdsa;
use ecdsa::{high_s, minus};

/// The identity the host takes from a token: its canonical form, or the token itself.
fn identity(token: &str) -> String {
    canonical_jws(token).unwrap_or_else(|| token.to_owned())
}

/// One token, one identity (SECURITY.md §14): ring signs with a high `s` about half the time,
/// as OpenSSL, Java and Go do; both forms verify, and the high one canonicalises to the low one.
#[test]
fn an_ecdsa_token_and_its_high_s_twin_both_verify_and_have_one_canonical_form() {
    for alg in [Alg::Es256, Alg::Es384] {
        let signer = Signer::new(alg);
        let keys = jwks(&[with(signer.jwk(), json!({"kid": "k1", "alg": alg.name()}))]);
        let mut seen_high = false;
        for n in 0..16 {
            let header = json!({"alg": alg.name(), "kid": "k1", "n": n});
            let signed = token_with(&header, CLAIMS, &signer, alg);
            let (input, encoded) = signed.rsplit_once('.').unwrap();
            let raw = URL_SAFE_NO_PAD.decode(encoded).unwrap();
            seen_high |= high_s(&raw);
            let low = if high_s(&raw) { ecdsa::twin(&raw) } else { raw.clone() };
            let high = ecdsa::twin(&low);
            assert!(!high_s(&low) && high_s(&high), "{alg:?}");
            let (low, high) = (format!("{input}.{}", b64(&low)), format!("{input}.{}", b64(&high)));
            for form in [&low, &high] {
                let verified = verify_jws(form, &keys, &all()).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
                assert_eq!(verified.payload, CLAIMS, "{alg:?}");
            }
            assert_eq!(canonical_jws(&high).as_deref(), Some(low.as_str()), "{alg:?}: the twin's canonical form");
            assert_eq!(canonical_jws(&low), None, "{alg:?}: the low-s form is its own");
            assert_eq!(ecdsa_twin(&low), Some(EcdsaTwin { token: high.clone(), canonical: false }), "{alg:?}");
            assert_eq!(ecdsa_twin(&high), Some(EcdsaTwin { token: low.clone(), canonical: true }), "{alg:?}");
            assert_eq!((identity(&signed), identity(&high)), (low.clone(), low.clone()), "{alg:?}");
        }
        // 2^-16 that ring never signed high in 16 tries: the sample shows what signers do.
        assert!(seen_high, "{alg:?}: ring signed 16 tokens, none with a high s");
    }
}

/// Only an ES256/ES384 JWS the verifier could accept on its form, with `r` and `s` in `[1, n)`,
/// has a twin; only one with `s` in `(n/2, n)` has a canonical form other than itself. At the
/// edges, `floor(n/2) + 1` maps to `floor(n/2)` and `n - 1` to `1`, and back.
#[test]
fn only_an_ecdsa_jws_in_range_has_a_twin_and_only_a_high_s_another_canonical_form() {
    let payload = b64(CLAIMS);
    for (alg, len) in [(Alg::Es256, 32), (Alg::Es384, 48)] {
        let n = ecdsa::order(len);
        let one = [vec![0u8; len - 1], vec![1]].concat();
        let half = minus(&n, &one); // n - 1, halved below
        let half: Vec<u8> = {
            let mut out = vec![0u8; len];
            let mut carry = 0u8;
            for (o, b) in out.iter_mut().zip(&half) {
                *o = (b >> 1) | (carry << 7);
                carry = b & 1;
            }
            out
        };
        let half_plus_one = {
            let mut v = half.clone();
            *v.last_mut().unwrap() += 1; // no carry: floor(n/2) ends in 0xa8 (P-256), 0xb9 (P-384)
            v
        };
        let r = vec![0x5au8; len];
        let header = |v: Value| b64(v.to_string());
        let es = header(json!({"alg": alg.name(), "kid": "k"}));
        let jws = |h: &str, p: &str, r: &[u8], s: &[u8]| format!("{h}.{p}.{}", b64([r, s].concat()));
        // The edges.
        assert_eq!(canonical_jws(&jws(&es, &payload, &r, &half)), None, "{alg:?}: s = floor(n/2) is low");
        assert_eq!(
            ecdsa_twin(&jws(&es, &payload, &r, &half)),
            Some(EcdsaTwin { token: jws(&es, &payload, &r, &half_plus_one), canonical: false }),
            "{alg:?}: s = floor(n/2) has a high twin"
        );
        assert_eq!(
            ecdsa_twin(&jws(&es, &payload, &r, &one)),
            Some(EcdsaTwin { token: jws(&es, &payload, &r, &minus(&n, &one)), canonical: false }),
            "{alg:?}: s = 1"
        );
        assert_eq!(
            canonical_jws(&jws(&es, &payload, &r, &half_plus_one)),
            Some(jws(&es, &payload, &r, &half)),
            "{alg:?}: s = floor(n/2) + 1"
        );
        assert_eq!(
            canonical_jws(&jws(&es, &payload, &r, &minus(&n, &one))),
            Some(jws(&es, &payload, &r, &one)),
            "{alg:?}: s = n - 1"
        );
        let high = minus(&n, &one);
        let good = jws(&es, &payload, &r, &high);
        assert!(canonical_jws(&good).is_some(), "{alg:?}");
        let other_width = if len == 32 { vec![0xf0u8; 96] } else { vec![0xf0u8; 64] };
        let (h, rest) = good.split_once('.').unwrap();
        let encoded = rest.split_once('.').unwrap().1;
        let mut none: Vec<(String, &str)> = vec![
            (jws(&es, &payload, &r, &n), "s = n"),
            (jws(&es, &payload, &r, &vec![0xff; len]), "s > n"),
            (jws(&es, &payload, &r, &vec![0; len]), "s = 0"),
            (jws(&es, &payload, &vec![0; len], &high), "r = 0"),
            (jws(&es, &payload, &n, &high), "r = n"),
            (format!("{es}.{payload}.{}", b64(&other_width)), "the other curve's width"),
            (format!("{es}.{payload}.{}", b64(&high)), "s alone"),
            (format!("{good}="), "padding"),
            (format!("{h}.{payload}"), "two parts"),
            (format!("{good}.{payload}"), "four parts"),
            (format!("{h}=.{payload}.{encoded}"), "header padding"),
            (jws(&header(json!({"alg": alg.name(), "crit": ["x"]})), &payload, &r, &high), "crit"),
            (jws(&header(json!({"alg": alg.name(), "kid": 7})), &payload, &r, &high), "kid not a string"),
            (jws(&header(json!({"alg": alg.name().to_lowercase()})), &payload, &r, &high), "alg spelled otherwise"),
            (jws(&header(json!({"typ": "JWT"})), &payload, &r, &high), "no alg"),
            (jws(&b64("not json"), &payload, &r, &high), "header not JSON"),
            (jws(&es, "pay!load", &r, &high), "payload not base64url"),
            (jws(&es, &b64([0xff, 0xfe]), &r, &high), "payload not UTF-8"),
            (jws(&es, &"A".repeat(MAX_JWS_BYTES), &r, &high), "over 64 KiB"),
        ];
        if len == 32 {
            // 64 bytes leave 4 unused bits in the last character: set, the encoding is not canonical.
            const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let at = ALPHABET.iter().position(|&c| Some(c) == encoded.bytes().last()).unwrap();
            let last = ALPHABET[at | 1] as char;
            let bits = format!("{es}.{payload}.{}{last}", &encoded[..encoded.len() - 1]);
            assert!(URL_SAFE_NO_PAD.decode(bits.rsplit_once('.').unwrap().1).is_err());
            none.push((bits, "non-canonical base64url"));
        }
        for (token, why) in &none {
            assert_eq!((canonical_jws(token), ecdsa_twin(token)), (None, None), "{alg:?}: {why}");
        }
        // Other algorithms have no twin to fold, whatever their signature bytes.
        for other in [Alg::Rs256, Alg::Ps256, Alg::EdDsa] {
            let h = header(json!({"alg": other.name()}));
            assert_eq!(ecdsa_twin(&jws(&h, &payload, &r, &high)), None, "{other:?}");
        }
    }
    for opaque in ["", ".", "..", "team-qa-0123abcd", "a.b.c", "eyJ.eyJ.eyJ"] {
        assert_eq!(ecdsa_twin(opaque), None, "{opaque:?}");
    }
}

#[test]
fn the_algorithm_must_be_allowed_and_fit_the_key() {
    let rsa = Signer::new(Alg::Rs256);
    let ec = Signer::new(Alg::Es256);
    let keys = jwks(&[
        with(rsa.jwk(), json!({"kid": "rsa", "alg": "RS256"})),
        with(ec.jwk(), json!({"kid": "ec"})),
        with(rsa.jwk(), json!({"kid": "rsa-any"})),
    ]);
    let rs256 = token(&rsa, Alg::Rs256, Some("rsa"));
    assert!(verify_jws(&rs256, &keys, &["RS256".into()]).is_ok());
    assert!(
        matches!(verify_jws(&rs256, &keys, &["ES256".into()]), Err(JwsError::Algorithm(m)) if m.contains("not in allowed-algs"))
    );
    // The key names RS256: a PS256 signature by the very same RSA key is refused.
    let ps256 = token(&rsa, Alg::Ps256, Some("rsa"));
    assert!(matches!(verify_jws(&ps256, &keys, &all()), Err(JwsError::NoKey(m)) if m.contains("for RS256, not PS256")));
    // A key without alg verifies any algorithm of its type...
    assert!(verify_jws(&token(&rsa, Alg::Ps256, Some("rsa-any")), &keys, &all()).is_ok());
    // ...but never one of another type: an RSA token naming the EC key.
    assert!(
        matches!(verify_jws(&token(&rsa, Alg::Rs256, Some("ec")), &keys, &all()), Err(JwsError::NoKey(m)) if m.contains("not a key for RS256"))
    );
    // ES384 needs a P-384 key, not this P-256 one.
    let p384 = Signer::new(Alg::Es384);
    assert!(matches!(verify_jws(&token(&p384, Alg::Es384, Some("ec")), &keys, &all()), Err(JwsError::NoKey(_))));
    // allowed-algs must be real and non-empty.
    for bad in [vec![], vec!["RS256".to_owned(), "HS256".to_owned()], vec!["none".to_owned()], vec!["rs256".to_owned()]]
    {
        assert!(matches!(verify_jws(&rs256, &keys, &bad), Err(JwsError::Algorithm(_))), "{bad:?}");
    }
}

#[test]
fn none_and_hmac_are_never_accepted() {
    let rsa = Signer::new(Alg::Rs256);
    let n = rsa.jwk()["n"].clone();
    // The classic confusion: HMAC "signed" with the public key's bytes, and a symmetric key in the set.
    let keys = jwks(&[
        with(rsa.jwk(), json!({"kid": "k1"})),
        json!({"kty": "oct", "kid": "k1", "k": n}),
        json!({"kty": "oct", "kid": "k2", "k": "c2VjcmV0"}),
    ]);
    let payload = b64(CLAIMS);
    for alg in ["none", "None", "NONE", "HS256", "HS384", "HS512"] {
        for kid in ["k1", "k2"] {
            let header = b64(json!({"alg": alg, "kid": kid}).to_string());
            let input = format!("{header}.{payload}");
            let mac = ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, n.as_str().unwrap().as_bytes()),
                input.as_bytes(),
            );
            for signature in [String::new(), b64(mac)] {
                let got = verify_jws(&format!("{input}.{signature}"), &keys, &all());
                assert!(matches!(got, Err(JwsError::Algorithm(_))), "{alg} {kid}: {got:?}");
            }
        }
    }
    // A symmetric key named by an RS256 token is no key at all.
    let got = verify_jws(&token(&rsa, Alg::Rs256, Some("k2")), &keys, &all());
    assert!(matches!(&got, Err(JwsError::NoKey(m)) if m.contains("symmetric")), "{got:?}");
}

#[test]
fn weak_and_unusable_keys_are_refused_with_their_reason() {
    // A 1024-bit modulus (the value does not matter: it is refused before any arithmetic).
    let mut n = vec![0xc5u8; 128];
    n[127] = 0x01;
    let weak = json!({"kty": "RSA", "kid": "weak", "n": b64(&n), "e": "AQAB"});
    let rsa = Signer::new(Alg::Rs256);
    let keys = jwks(&[
        weak,
        with(rsa.jwk(), json!({"kid": "enc", "use": "enc"})),
        with(rsa.jwk(), json!({"kid": "ops", "key_ops": ["encrypt"]})),
        with(rsa.jwk(), json!({"kid": "even-e", "e": "AQA"})),
        // Found by `make fuzz` (jws): an empty modulus underflowed the bit count.
        with(rsa.jwk(), json!({"kid": "empty-n", "n": ""})),
        with(rsa.jwk(), json!({"kid": "zero-n", "n": "AAAA"})),
        json!({"kty": "EC", "kid": "short", "crv": "P-256", "x": "AAAA", "y": "AAAA"}),
        json!({"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AAAA", "y": "AAAA"}),
        json!("not an object"),
    ]);
    assert_eq!(keys.usable(), 0);
    for (kid, why) in [
        ("weak", "1024 bits; at least 2048"),
        ("enc", "use is \"enc\""),
        ("ops", "key_ops"),
        ("even-e", "exponent"),
        ("empty-n", "modulus n is zero"),
        ("zero-n", "modulus n is zero"),
        ("short", "x is 3 bytes, not 32"),
        ("p521", "curve \"P-521\""),
    ] {
        let alg = if kid == "short" || kid == "p521" { Alg::Es256 } else { Alg::Rs256 };
        let got = verify_jws(&token(&Signer::new(alg), alg, Some(kid)), &keys, &all());
        assert!(matches!(&got, Err(JwsError::NoKey(m)) if m.contains(why)), "{kid}: {got:?}");
    }
    let got = verify_jws(&token(&rsa, Alg::Rs256, Some("missing")), &keys, &all());
    assert!(matches!(&got, Err(JwsError::NoKey(m)) if m.contains("no key with kid \"missing\"")), "{got:?}");
}

#[test]
fn without_a_kid_only_a_single_fitting_key_is_used() {
    let a = Signer::new(Alg::Es256);
    let b = Signer::new(Alg::Es256);
    let one = jwks(&[a.jwk(), Signer::new(Alg::Rs256).jwk()]);
    assert_eq!(verify_jws(&token(&a, Alg::Es256, None), &one, &all()).unwrap().key_id, None);
    let two = jwks(&[a.jwk(), b.jwk()]);
    let got = verify_jws(&token(&a, Alg::Es256, None), &two, &all());
    assert!(matches!(&got, Err(JwsError::NoKey(m)) if m.contains("several keys")), "{got:?}");
}

#[test]
fn malformed_tokens_are_refused_before_any_key_is_touched() {
    let ec = Signer::new(Alg::Es256);
    let keys = jwks(&[with(ec.jwk(), json!({"kid": "k"}))]);
    let good = token(&ec, Alg::Es256, Some("k"));
    let (h, rest) = good.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    let header = |v: Value| b64(v.to_string());
    let der = {
        // The same signature in ASN.1 DER: JWS wants the fixed r || s form.
        let signature = URL_SAFE_NO_PAD.decode(s).unwrap();
        let int = |b: &[u8]| {
            let mut v = b.to_vec();
            if v[0] & 0x80 != 0 {
                v.insert(0, 0);
            }
            [vec![2, v.len() as u8], v].concat()
        };
        let body = [int(&signature[..32]), int(&signature[32..])].concat();
        b64([vec![0x30, body.len() as u8], body].concat())
    };
    let cases: Vec<(String, &str)> = vec![
        (format!("{h}.{p}"), "three"),
        (format!("{good}.x"), "three"),
        (format!("{h}.{p}.{s}.{p}.{s}"), "three"),
        (format!("{h}=.{p}.{s}"), "header is not base64url"),
        (format!("{h}.{p}.{s}="), "signature is not base64url"),
        (format!("{h}.{p}!.{s}"), "payload is not base64url"),
        (format!("{}.{p}.{s}", b64("not json")), "not a JSON object"),
        (format!("{}.{p}.{s}", header(json!(["alg", "ES256"]))), "not a JSON object"),
        (format!("{}.{p}.{s}", header(json!({"typ": "JWT"}))), "no alg"),
        (format!("{}.{p}.{s}", header(json!({"alg": "ES256", "kid": 7}))), "kid is not a string"),
        (format!("{}.{p}.{s}", header(json!({"alg": "ES256", "crit": ["exp"]}))), "crit"),
        (format!("{h}.{}.{s}", b64([0xff, 0xfe])), "not UTF-8"),
        (format!("{}.{p}.{s}", b64([0xff, b'{'])), "not UTF-8"),
        (format!("{h}.{}.{s}", "A".repeat(MAX_JWS_BYTES)), "over 64 KiB"),
    ];
    for (bad, why) in &cases {
        let got = verify_jws(bad, &keys, &all());
        assert!(matches!(&got, Err(JwsError::Malformed(m)) if m.contains(why)), "{why}: {got:?}");
        let shown = got.unwrap_err().to_string();
        assert!(!shown.contains(p) && !shown.contains(s), "an error repeats the token: {shown}");
    }
    assert_eq!(verify_jws(&format!("{h}.{p}.{der}"), &keys, &all()), Err(JwsError::BadSignature), "DER signature");
    // Unknown algorithms name themselves, cut short.
    let long = "X".repeat(500);
    let got = verify_jws(&format!("{}.{p}.{s}", header(json!({"alg": long}))), &keys, &all()).unwrap_err();
    assert!(matches!(&got, JwsError::Algorithm(m) if m.len() < 200), "{got:?}");
}

#[test]
fn unusable_key_sets_say_why() {
    for (jwks, why) in [
        ("", "not JSON"),
        ("[]", "no \"keys\" array"),
        (r#"{"keys": {}}"#, "no \"keys\" array"),
        (&format!(r#"{{"keys": [{}]}}"#, vec!["{}"; 65].join(",")), "65 keys"),
        (&format!(r#"{{"keys": [], "pad": "{}"}}"#, "x".repeat(256 << 10)), "over the 256 KiB limit"),
    ] {
        let got = KeySet::parse(jwks);
        assert!(matches!(&got, Err(JwsError::Jwks(m)) if m.contains(why)), "{why}: {got:?}");
    }
}

#[test]
fn digests_macs_and_equality() {
    // FIPS 180-2 "abc"; RFC 4231 test case 2.
    assert_eq!(b64(sha256(b"abc").unwrap()), "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?").unwrap();
    assert_eq!(
        mac.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert!(sha256(&vec![0; (1 << 20) + 1]).is_none() && hmac_sha256(b"k", &vec![0; (1 << 20) + 1]).is_none());
    assert!(sha256(&vec![0; 1 << 20]).is_some());
    assert!(
        constant_time_eq(b"same", b"same") && !constant_time_eq(b"same", b"sane") && !constant_time_eq(b"a", b"ab")
    );
    assert!(constant_time_eq(b"", b""));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever a token or a key set holds, an answer comes back: no panic, no hang.
    #[test]
    fn arbitrary_tokens_and_key_sets_never_panic(
        token in "[A-Za-z0-9_.=-]{0,300}",
        raw in proptest::collection::vec(any::<u8>(), 0..300),
        jwks in "\\PC{0,200}",
        alg in "[A-Za-z0-9]{0,8}",
    ) {
        let keys = KeySet::parse(r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "YaUahW7KqTzB7MpF75viXxaFkF3jxglPXz5KoeoNCYM", "y": "sMRp8VjbIpBMuyFL0eZNW3wyNvoH12qpsvMb-eaaieE"}]}"#).unwrap();
        let _ = verify_jws(&token, &keys, &all());
        let _ = verify_jws(&String::from_utf8_lossy(&raw), &keys, &[alg]);
        let _ = KeySet::parse(&jwks);
    }

    /// Structured garbage: valid base64url JSON parts with arbitrary fields, keys of every shape.
    #[test]
    fn arbitrary_headers_and_keys_never_panic(
        alg in prop_oneof![Just("RS256".to_owned()), Just("ES256".to_owned()), Just("EdDSA".to_owned()), "[A-Z0-9]{0,6}"],
        kid in proptest::option::of("[a-z0-9]{0,4}"),
        kty in prop_oneof![Just("RSA"), Just("EC"), Just("OKP"), Just("oct"), Just("?")],
        crv in prop_oneof![Just("P-256"), Just("P-384"), Just("Ed25519"), Just("")],
        n in proptest::collection::vec(any::<u8>(), 0..600),
        e in proptest::collection::vec(any::<u8>(), 0..8),
        x in proptest::collection::vec(any::<u8>(), 0..50),
        signature in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let jwk = json!({"kty": kty, "crv": crv, "kid": kid, "n": b64(&n), "e": b64(&e), "x": b64(&x), "y": b64(&x)});
        let keys = jwks(&[jwk]);
        let header = json!({"alg": alg, "kid": kid});
        let compact = format!("{}.{}.{}", b64(header.to_string()), b64(CLAIMS), b64(&signature));
        let got = verify_jws(&compact, &keys, &all());
        prop_assert!(got.is_err(), "a random signature verified");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever the input, an answer: no panic; the canonical form is its own canonical form, and
    /// the twin of a twin is the token.
    #[test]
    fn canonical_jws_never_panics_and_is_idempotent(
        token in "[A-Za-z0-9_.=-]{0,300}",
        raw in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        for token in [token, String::from_utf8_lossy(&raw).into_owned()] {
            if let Some(canonical) = canonical_jws(&token) {
                prop_assert_eq!(canonical_jws(&canonical), None);
                prop_assert_eq!(canonical.len(), token.len());
            }
            if let Some(twin) = ecdsa_twin(&token) {
                prop_assert_eq!(ecdsa_twin(&twin.token).map(|t| (t.token, t.canonical)), Some((token.clone(), !twin.canonical)));
            }
        }
    }

    /// Any `r || s` of either width under an ES256/ES384 header: a token and its `(r, n - s)`
    /// twin have one identity, the low-s one, which keeps the header and payload text.
    #[test]
    fn a_signature_and_its_twin_have_one_identity(
        p384 in any::<bool>(),
        claims in "\\PC{0,100}",
        r in proptest::collection::vec(any::<u8>(), 48),
        s in proptest::collection::vec(any::<u8>(), 48),
    ) {
        let alg = if p384 { Alg::Es384 } else { Alg::Es256 };
        let len = if p384 { 48 } else { 32 };
        let (r, s) = (&r[..len], &s[..len]);
        let input = format!("{}.{}", b64(json!({"alg": alg.name()}).to_string()), b64(&claims));
        let token = format!("{input}.{}", b64([r, s].concat()));
        let n = ecdsa::order(len);
        let in_range = |x: &[u8]| x.iter().any(|&b| b != 0) && x < n.as_slice();
        let canonical = canonical_jws(&token);
        if !(in_range(r) && in_range(s)) {
            prop_assert_eq!(canonical, None);
            return Ok(());
        }
        let signature = [r, s].concat();
        let twin = format!("{input}.{}", b64(ecdsa::twin(&signature)));
        prop_assert_eq!(canonical.is_some(), high_s(&signature));
        prop_assert_eq!(identity(&token), identity(&twin));
        let one = identity(&token);
        prop_assert_eq!(canonical_jws(&one), None);
        let back = ecdsa_twin(&token).and_then(|t| ecdsa_twin(&t.token)).map(|t| t.token);
        prop_assert_eq!(back.as_deref(), Some(token.as_str()), "the twin of the twin is the token");
        let prefix = format!("{input}.");
        prop_assert!(one.starts_with(&prefix));
        prop_assert!(!high_s(&URL_SAFE_NO_PAD.decode(one.rsplit_once('.').unwrap().1).unwrap()));
    }
}

//! Every algorithm, every way a token or a key set can be wrong: tokens signed here with ring,
//! keys published as a JWKS, then verified the way a plugin's host call does.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use ring::rand::SystemRandom;
use ring::signature::{self as sig, KeyPair as _};
use serde_json::{Value, json};
use tollgate_crypto::{Alg, JwsError, KeySet, MAX_JWS_BYTES, constant_time_eq, hmac_sha256, sha256, verify_jws};

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

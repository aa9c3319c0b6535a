//! `tollgate:policy/crypto` (contract 0.1.2) through a real server: a plugin has the host verify
//! signed tokens and compute digests, gets the host's reasons back, and traps when it asks for
//! more than the limits.

use serde_json::json;
use tollgate_tests::*;

/// The shipped oidc-jwt manifest's RS256 and ES256 tokens and their JWKS (real signatures by
/// keys whose private halves are gone; the host does not check claims, so their age is moot).
struct Fixture {
    rs256: String,
    es256: String,
    jwks: String,
}

fn fixture() -> Fixture {
    let manifest = std::fs::read_to_string(built::OIDC_JWT_MANIFEST).unwrap();
    let token_after = |name: &str| {
        let at = manifest.find(&format!("name = \"{name}")).unwrap();
        let rest = &manifest[at..];
        let start = rest.find("token = \"").unwrap() + "token = \"".len();
        rest[start..start + rest[start..].find('"').unwrap()].to_owned()
    };
    let start = manifest.find("jwks = '").unwrap() + "jwks = '".len();
    let jwks = manifest[start..start + manifest[start..].find('\'').unwrap()].to_owned();
    Fixture { rs256: token_after("RS256"), es256: token_after("ES256"), jwks }
}

/// A probe that verifies every token against `jwks` with `algs`.
fn jws_probe(jwks: &str, algs: &str) -> String {
    probe_manifest("", "jws", &format!("jwks = '{jwks}'\nalgs = \"{algs}\""))
}

/// The reason in the audit line of `token`'s denial.
fn reason(server: &Server, token: &str) -> String {
    let denials = |lines: &[serde_json::Value]| lines.iter().filter(|l| l["result"] == "denied").count();
    let before = denials(&server.audit_lines());
    let answer = server.review(token);
    assert_eq!(answer.review_status(V1)["authenticated"], false, "{}", answer.body);
    let lines = server.wait_audit("the denial", |l| denials(l) > before);
    let line = lines.iter().rev().find(|l| l["result"] == "denied").unwrap();
    line["reason"].as_str().unwrap().to_owned()
}

#[test]
fn the_host_verifies_signed_tokens_for_a_plugin_and_says_why_it_refuses() {
    let f = fixture();
    let dir = PluginDir::new();
    dir.probe("10-jws", &jws_probe(&f.jwks, "RS256,ES256"));
    let server = Server::start(dir.path(), &[]);
    assert_eq!(granted_username(&server.review(&f.rs256)).as_deref(), Some("jws:RS256:rsa-1"));
    assert_eq!(granted_username(&server.review(&f.es256)).as_deref(), Some("jws:ES256:ec-1"));

    // A flipped signature bit, a token under a key id the set lacks, alg none.
    let (input, signature) = f.rs256.rsplit_once('.').unwrap();
    let mut flipped = signature.as_bytes().to_vec();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{input}.{}", String::from_utf8(flipped).unwrap());
    let why = reason(&server, &tampered);
    assert!(why.contains("BadSignature"), "{why}");
    assert!(!why.contains(signature) && !why.contains(input), "a reason repeats the token: {why}");
    let b64 = |v: serde_json::Value| base64_url(v.to_string().as_bytes());
    let payload = input.split_once('.').unwrap().1;
    let unknown = format!("{}.{payload}.{signature}", b64(json!({"alg": "RS256", "kid": "rotated-away"})));
    assert!(reason(&server, &unknown).contains("NoKey(\"no key with kid \\\"rotated-away\\\"\")"));
    let unsigned = format!("{}.{payload}.", b64(json!({"alg": "none"})));
    assert!(reason(&server, &unsigned).contains("Algorithm(\"alg none"));
    let not_a_jws = reason(&server, "opaque-token-123456");
    assert!(not_a_jws.contains("Malformed"), "{not_a_jws}");
    drop(server);

    // The plugin allows only ES256: the RS256 token is refused for its algorithm, not its key.
    let dir = PluginDir::new();
    dir.probe("10-jws", &jws_probe(&f.jwks, "ES256"));
    let server = Server::start(dir.path(), &[]);
    assert!(reason(&server, &f.rs256).contains("alg RS256 is not in allowed-algs"));
    assert_eq!(granted_username(&server.review(&f.es256)).as_deref(), Some("jws:ES256:ec-1"));
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn digests_and_macs_are_the_standard_ones_and_big_inputs_trap() {
    let token = random_token("digest-me-");
    let dir = PluginDir::new();
    dir.probe(
        "10-digest",
        &probe_manifest(
            "[match]\ntoken_prefix = [\"digest-me-\"]",
            "digest",
            &format!("key = \"mac-key\"\nexpect = \"{}\"", sha256_hex(&token)),
        ),
    )
    .probe(
        "20-big",
        &probe_manifest("[match]\ntoken_prefix = [\"big-\"]", "hash-big", "mib = \"2\"\nusername = \"big\""),
    )
    .probe(
        "30-edge",
        &probe_manifest("[match]\ntoken_prefix = [\"edge-\"]", "hash-big", "mib = \"1\"\nusername = \"edge\""),
    );
    let server = Server::start(dir.path(), &[]);
    let answer = server.review(&token);
    let status = answer.review_status(V1);
    assert_eq!(status["user"]["username"], format!("sha256:{}", sha256_hex(&token)), "{status}");
    let mac = {
        use hmac_sha256_reference::mac;
        mac(b"mac-key", token.as_bytes())
    };
    assert_eq!(status["user"]["groups"], json!([format!("hmac:{mac}"), "eq:true"]), "{status}");

    // Exactly 1 MiB is allowed; 2 MiB traps with the limit in the log, and the server goes on.
    assert_eq!(granted_username(&server.review("edge-123456789")).as_deref(), Some("edge"));
    let failed = server.review("big-123456789").review_status(V1);
    assert!(failed["error"].as_str().unwrap_or_default().starts_with("plugin 20-big failed"), "{failed}");
    wait_for("the trap's message in the log", std::time::Duration::from_secs(5), || {
        server.logs.text().contains("crypto.sha256; the limit is 1024 KiB per call").then_some(())
    });
    assert_eq!(granted_username(&server.review("edge-987654321")).as_deref(), Some("edge"));
}

/// HMAC-SHA-256 (RFC 2104) from the sha2 crate, independent of the host's ring.
mod hmac_sha256_reference {
    use sha2::{Digest, Sha256};

    pub fn mac(key: &[u8], data: &[u8]) -> String {
        let mut k = [0u8; 64];
        k[..key.len()].copy_from_slice(key);
        let pad = |byte: u8| k.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
        let inner = Sha256::new().chain_update(pad(0x36)).chain_update(data).finalize();
        hex::encode(Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize())
    }
}

/// An ECDSA key of the harness (ring), its JWK, and compact tokens it signs.
struct EcSigner {
    alg: &'static str,
    kid: &'static str,
    key: ring::signature::EcdsaKeyPair,
}

impl EcSigner {
    fn new(alg: &'static str, kid: &'static str) -> Self {
        use ring::signature as sig;
        let rng = ring::rand::SystemRandom::new();
        let scheme =
            if alg == "ES256" { &sig::ECDSA_P256_SHA256_FIXED_SIGNING } else { &sig::ECDSA_P384_SHA384_FIXED_SIGNING };
        let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(scheme, &rng).unwrap();
        EcSigner { alg, kid, key: sig::EcdsaKeyPair::from_pkcs8(scheme, pkcs8.as_ref(), &rng).unwrap() }
    }

    fn jwk(&self) -> serde_json::Value {
        use ring::signature::KeyPair as _;
        let point = self.key.public_key().as_ref();
        let half = (point.len() - 1) / 2;
        let crv = if half == 32 { "P-256" } else { "P-384" };
        json!({"kty": "EC", "crv": crv, "kid": self.kid, "alg": self.alg,
            "x": base64_url(&point[1..1 + half]), "y": base64_url(&point[1 + half..])})
    }

    /// A token for `claims` in both encodings of its signature: (r, s) with s <= n/2, then (r, n - s).
    fn low_and_high(&self, claims: serde_json::Value) -> (String, String) {
        let header = json!({"alg": self.alg, "kid": self.kid, "typ": "JWT"});
        let input =
            format!("{}.{}", base64_url(header.to_string().as_bytes()), base64_url(claims.to_string().as_bytes()));
        let signed = self.key.sign(&ring::rand::SystemRandom::new(), input.as_bytes()).unwrap().as_ref().to_vec();
        let low = if ecdsa::high_s(&signed) { ecdsa::twin(&signed) } else { signed };
        let high = ecdsa::twin(&low);
        assert!(!ecdsa::high_s(&low) && ecdsa::high_s(&high));
        (format!("{input}.{}", base64_url(&low)), format!("{input}.{}", base64_url(&high)))
    }
}

#[path = "../../crypto/tests/support/ecdsa.rs"]
mod ecdsa;

fn cache_metric(server: &Server, result: &str) -> u64 {
    let metrics = server.get("/metrics").body;
    let start = format!("tollgate_decision_cache_total{{result=\"{result}\"}}");
    metrics.lines().find_map(|l| l.strip_prefix(&start).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0)
}

/// One token, one identity (SECURITY.md §14): an ES256/ES384 token and its high-s twin `(r, n - s)`
/// both verify (mainstream signers emit high s about half the time, so the host refuses
/// neither), and the host takes them for one token: one audit `token_id`, one decision-cache
/// entry. The plugin still gets the token byte for byte: a twin reviewed first is verified by it.
#[test]
fn an_ecdsa_token_and_its_high_s_twin_are_one_token() {
    let signers = [EcSigner::new("ES256", "p256"), EcSigner::new("ES384", "p384")];
    let jwks = json!({"keys": signers.iter().map(EcSigner::jwk).collect::<Vec<_>>()}).to_string();
    let dir = PluginDir::new();
    dir.probe("10-jws", &jws_probe(&jwks, "ES256,ES384"));
    let server = Server::start(dir.path(), &["--cache-ttl", "60s"]);
    let mut reviewed = Vec::new();
    let mut ids = Vec::new();
    for signer in &signers {
        let user = format!("jws:{}:{}", signer.alg, signer.kid);
        // The low-s form first, then its twin; and for another token the twin first.
        for (n, twin_first) in [(1, false), (2, true)] {
            let (low, high) = signer.low_and_high(json!({"sub": "alice", "n": n}));
            let (first, second) = if twin_first { (&high, &low) } else { (&low, &high) };
            let before = server.audit_lines().len();
            let hits = cache_metric(&server, "hit");
            assert_eq!(granted_username(&server.review(first)).as_deref(), Some(user.as_str()), "{} {n}", signer.alg);
            assert_eq!(granted_username(&server.review(second)).as_deref(), Some(user.as_str()), "{} {n}", signer.alg);
            let lines = server.wait_audit("both reviews", |l| l.len() >= before + 2);
            let (a, b) = (&lines[before], &lines[before + 1]);
            assert_eq!(a["cache"], "miss", "{} {n}: {a}", signer.alg);
            assert_eq!(
                (&b["token_id"], &b["cache"]),
                (&a["token_id"], &json!("hit")),
                "{} {n} (twin first: {twin_first}): a token and its high-s twin are one token (token_id, cache)",
                signer.alg
            );
            assert_eq!(cache_metric(&server, "hit"), hits + 1, "{} {n}", signer.alg);
            ids.push(a["token_id"].as_str().unwrap().to_owned());
            reviewed.extend([low, high]);
        }
    }
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "other tokens have other token_ids: {ids:?}");
    let (logs, audit) = (server.logs.text(), server.audit.text());
    for token in &reviewed {
        let signature = token.rsplit_once('.').unwrap().1;
        assert!(!logs.contains(signature) && !audit.contains(signature), "a signature reached the logs");
    }
}

/// The twin is as good a credential as the token: whatever a plugin says loses it too, and a
/// grant that carries it is refused as one that carries the token, whichever form was reviewed.
#[test]
fn the_twin_of_a_token_is_scrubbed_and_kept_out_of_grants() {
    let signer = EcSigner::new("ES256", "p256");
    let (low, high) = signer.low_and_high(json!({"sub": "alice"}));
    // Reviewed with one form, a plugin's reason and grant hold the other.
    let cases = [("high", &high, &low), ("low", &low, &high)];
    let dir = PluginDir::new();
    for (name, _, leaked) in cases {
        let deny = probe_manifest("", "deny", &format!("reason = \"twin {leaked} end\""));
        dir.add_in(&format!("deny-{name}"), "10-deny", built::PROBE, &deny);
        let username = format!("tollgate:grant-{name}:alice");
        let grant = probe_manifest("", "allow", &format!("username = \"{username}\"\nextra = \"t={leaked}\""));
        dir.add_in(&format!("grant-{name}"), "10-grant", built::PROBE, &grant);
    }
    let server = Server::start(dir.path(), &[]);
    let mut answers = String::new();
    for (name, reviewed, _) in cases {
        let denied = server.review_at(&format!("/authenticate/deny-{name}"), V1, Some(reviewed), &[]);
        assert_eq!(denied.review_status(V1)["authenticated"], false, "{name}: {}", denied.body);
        let granted = server.review_at(&format!("/authenticate/grant-{name}"), V1, Some(reviewed), &[]);
        let status = granted.review_status(V1);
        assert_eq!(status["authenticated"], false, "{name}: the grant carries the twin: {}", granted.body);
        let lines = server
            .wait_audit("both reviews", |l| l.iter().filter(|l| l["tenant"] == format!("grant-{name}")).count() == 1);
        let deny = lines.iter().find(|l| l["tenant"] == format!("deny-{name}")).unwrap();
        assert_eq!(deny["reason"], "twin [token] end", "{name}: {deny}");
        let grant = lines.iter().find(|l| l["tenant"] == format!("grant-{name}")).unwrap();
        assert_eq!(
            (&grant["result"], &grant["error_class"]),
            (&json!("refused"), &json!("token-in-grant")),
            "{name}: {grant}"
        );
        answers.push_str(&denied.body);
        answers.push_str(&granted.body);
    }
    let (logs, audit) = (server.logs.text(), server.audit.text());
    for form in [&low, &high] {
        let signature = form.rsplit_once('.').unwrap().1;
        for (what, text) in [("log", &logs), ("audit", &audit), ("answers", &answers)] {
            assert!(!text.contains(signature), "a signature reached the {what}");
        }
    }
}

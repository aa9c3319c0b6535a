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

//! Policies that ask the token's issuer, against a real OpenID provider (npm `oidc-provider`,
//! tests/oidc) on loopback: `oidc-jwt` verifying its JWTs with a JWKS fetched once and cached,
//! and `introspection` asking it about opaque tokens with client credentials from a file.
//! The Python and JavaScript ports of `oidc-jwt` (plugins/python, plugins/js: built by
//! `plugins/languages.sh` into target/guests/LANG/oidc-jwt.wasm) go through the same scenarios.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};
use tollgate_tests::*;

const K8S: &str = "https://kubernetes.test";
const K8S_ES256: &str = "https://es256.kubernetes.test";
const OPAQUE: &str = "https://opaque.test";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The decoded header of a JWS compact token.
fn header(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// A plugin folder trusting the provider's CA (a file in the folder, as a mounted ConfigMap).
fn plugin_dir(idp: &OpenIdProvider) -> PluginDir {
    let dir = PluginDir::new();
    std::fs::create_dir_all(dir.path().join(".secrets")).unwrap();
    std::fs::write(dir.path().join(".secrets/idp-ca.pem"), &idp.pki.ca_pem).unwrap();
    dir
}

fn oidc_manifest(idp: &OpenIdProvider, timeout_ms: u64, extra_config: &str) -> String {
    let issuer = &idp.issuer;
    format!(
        "role = \"authenticator\"\nallowed_outbound_hosts = [\"{issuer}\"]\n\
         [outbound]\nca_file = \".secrets/idp-ca.pem\"\n\
         [match]\njwt_issuer = [\"{issuer}\"]\n\
         [limits]\ntimeout_ms = {timeout_ms}\n\
         [config]\nissuer = \"{issuer}\"\naudiences = \"{K8S},{K8S_ES256}\"\nusername_prefix = \"oidc:\"\n\
         groups_claim = \"groups\"\ngroups_prefix = \"oidc:\"\n{extra_config}\n\
         [[test]]\nname = \"not a JWT\"\ntoken = \"not-a-jwt-at-all\"\nexpect = \"abstain\"\n"
    )
}

/// Serves `dir` with the operator's grant of the issuer (a loopback literal: no manifest alone
/// can open one), once its plugins are loaded (an 18 MB Python component compiles for a while:
/// the compile cache the language tests share keeps that to once per run).
fn start(dir: &PluginDir, idp: &OpenIdProvider) -> Server {
    let tenants = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tenants.path(), format!("[default]\noutbound_hosts = [\"{}\"]\n", idp.issuer)).unwrap();
    let (_, path) = tenants.keep().unwrap();
    let cache = shared_compile_cache();
    let server = Server::start(
        dir.path(),
        &["--deny-reason-in-status", "--tenants", path.to_str().unwrap(), "--cache-dir", &cache],
    );
    wait_for("readyz", Duration::from_secs(300), || (server.get("/readyz").status == 200).then_some(()));
    server
}

fn user(answer: &Answer) -> (String, Vec<String>) {
    let status = answer.review_status(V1);
    assert_eq!(status["authenticated"], true, "{status}");
    let groups = status["user"]["groups"].as_array().unwrap().iter().map(|g| g.as_str().unwrap().to_owned()).collect();
    (status["user"]["username"].as_str().unwrap().to_owned(), groups)
}

fn denied(answer: &Answer, why: &str) {
    let status = answer.review_status(V1);
    assert_eq!(status["authenticated"], false, "{status}");
    assert!(status.get("user").is_none(), "{status}");
    assert!(status["error"].as_str().unwrap_or_default().contains(why), "want {why:?}: {status}");
}

#[test]
fn real_tokens_are_verified_with_keys_fetched_once_and_a_rotation_is_picked_up() {
    keys_fetched_once_and_a_rotation_picked_up(built::OIDC_JWT);
}

fn keys_fetched_once_and_a_rotation_picked_up(oidc_jwt: &str) {
    let idp = OpenIdProvider::start();
    let dir = plugin_dir(&idp);
    dir.add("10-oidc", oidc_jwt, &oidc_manifest(&idp, 2000, ""));
    let server = start(&dir, &idp);
    assert_eq!(idp.hits()["jwks"], 0, "the vectors asked nobody");

    let alice = idp.token("alice", K8S);
    assert_eq!(header(&alice)["alg"], "RS256");
    let bob = idp.token("bob-es256", K8S_ES256);
    assert_eq!(header(&bob)["alg"], "ES256");
    for _ in 0..5 {
        assert_eq!(user(&server.review(&alice)), ("oidc:alice".into(), vec!["oidc:dev".into(), "oidc:ops".into()]));
        assert_eq!(user(&server.review(&bob)), ("oidc:bob-es256".into(), vec!["oidc:solo".into()]));
    }
    let hits = idp.hits();
    assert_eq!(
        (hits["discovery"].as_u64(), hits["jwks"].as_u64()),
        (Some(1), Some(1)),
        "10 reviews, one fetch: {hits}"
    );
    // The grant expires with the token: kube-apiserver caches it no longer.
    let answer = server.review(&alice);
    assert!(answer.review_status(V1)["user"].is_object());

    // The provider rotates its keys: a token under the new key id refetches the JWKS once.
    idp.rotate();
    let carol = idp.token("alice", K8S);
    assert_ne!(header(&carol)["kid"], header(&alice)["kid"]);
    assert_eq!(user(&server.review(&carol)).0, "oidc:alice");
    assert_eq!(user(&server.review(&carol)).0, "oidc:alice");
    assert_eq!(idp.hits()["jwks"], 2, "one refetch for the new key");
    // The old key is gone from the issuer's set: its tokens no longer verify.
    denied(&server.review(&alice), "no key with kid");
}

#[test]
fn forged_expired_and_misaddressed_tokens_are_denied() {
    forged_expired_and_misaddressed_denied(built::OIDC_JWT);
}

fn forged_expired_and_misaddressed_denied(oidc_jwt: &str) {
    let idp = OpenIdProvider::start();
    let dir = plugin_dir(&idp);
    dir.add("10-oidc", oidc_jwt, &oidc_manifest(&idp, 2000, "clock_skew_seconds = \"0\""));
    let server = start(&dir, &idp);
    let good = idp.token("alice", K8S);
    let kid = header(&good)["kid"].as_str().unwrap().to_owned();
    assert_eq!(user(&server.review(&good)).0, "oidc:alice");

    let t = now();
    let claims = |patch: Value| {
        let mut c = json!({"iss": idp.issuer, "aud": K8S, "sub": "mallory", "iat": t - 10, "exp": t + 600, "groups": ["admins"]});
        c.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
        c
    };
    // The control: a token the provider's published key signs, with sound claims, passes.
    let forged_ok = idp.forge(claims(json!({})), &kid, true);
    assert_eq!(user(&server.review(&forged_ok)).0, "oidc:mallory");
    // Claims beyond ASCII (raw UTF-8 in the payload: a decoder's other path) name the user as
    // the issuer wrote them.
    let accented = idp.forge(claims(json!({"sub": "josé", "groups": ["équipe", "開発"]})), &kid, true);
    assert_eq!(user(&server.review(&accented)), ("oidc:josé".into(), vec!["oidc:équipe".into(), "oidc:開発".into()]));

    denied(&server.review(&idp.forge(claims(json!({"exp": t - 60})), &kid, true)), "expired");
    denied(&server.review(&idp.forge(claims(json!({"nbf": t + 600})), &kid, true)), "not valid before");
    denied(&server.review(&idp.forge(claims(json!({"aud": "https://elsewhere.test"})), &kid, true)), "audience");
    denied(&server.review(&idp.forge(claims(json!({})), &kid, false)), "bad signature");
    denied(&server.review(&idp.forge(claims(json!({})), "made-up-kid", true)), "no key with kid");
    // Another issuer's token is not this plugin's to judge ([match] jwt_issuer): nobody allows it.
    let other = server.review(&idp.forge(claims(json!({"iss": "https://evil.test"})), &kid, true));
    assert_eq!(other.review_status(V1)["authenticated"], false);
    // A real short-lived token (2 s) expires for real.
    let short = idp.token("carol-short", K8S);
    assert_eq!(user(&server.review(&short)).0, "oidc:carol-short");
    std::thread::sleep(Duration::from_millis(3100));
    denied(&server.review(&short), "expired");
    assert!(idp.hits()["jwks"].as_u64().unwrap() <= 2, "made-up key ids do not make it hammer its issuer");
}

#[test]
fn an_issuer_that_is_down_gets_503_without_retry_after() {
    let mut idp = OpenIdProvider::start();
    let dir = plugin_dir(&idp);
    dir.add("10-oidc", built::OIDC_JWT, &oidc_manifest(&idp, 2000, ""));
    let token = idp.token("alice", K8S);
    let server = start(&dir, &idp);
    idp.kill();
    let answer = server.review(&token);
    answer.assert_status_object(503, "ServiceUnavailable");
    assert!(answer.json()["message"].as_str().unwrap().contains("issuer cannot be reached"), "{}", answer.body);
    assert!(!answer.body.contains(&token));
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn a_slow_issuer_cannot_hold_a_review_past_its_deadline() {
    let idp = OpenIdProvider::start();
    let dir = plugin_dir(&idp);
    dir.add("10-oidc", built::OIDC_JWT, &oidc_manifest(&idp, 500, ""));
    let server = start(&dir, &idp);
    let token = idp.token("alice", K8S);
    idp.delay(5000);
    let began = std::time::Instant::now();
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let pending: Vec<_> = (0..3).map(|_| s.spawn(|| server.review(&token))).collect();
        assert_eq!(server.get("/healthz").status, 200, "the server answers meanwhile");
        pending.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = began.elapsed();
    for answer in answers {
        answer.assert_status_object(503, "ServiceUnavailable");
    }
    assert!(took < Duration::from_secs(4), "a 5 s issuer held three 500 ms reviews for {took:?}");
    idp.delay(0);
    let answer = wait_for_answer(&server, "/authenticate", &token, "the issuer back", |a| a.status == 200);
    assert_eq!(user(&answer).0, "oidc:alice");
}

#[test]
fn introspection_asks_the_issuer_with_a_secret_from_a_file_and_remembers_the_answer() {
    let mut idp = OpenIdProvider::start();
    let dir = plugin_dir(&idp);
    let secret = OpenIdProvider::secret("tollgate");
    std::fs::write(dir.path().join(".secrets/introspection-client-secret"), format!("{secret}\n")).unwrap();
    let issuer = &idp.issuer;
    let manifest = format!(
        "role = \"authenticator\"\nallowed_outbound_hosts = [\"{issuer}\"]\n\
         secret_files = {{ client_secret = \".secrets/introspection-client-secret\" }}\n\
         [outbound]\nca_file = \".secrets/idp-ca.pem\"\n[limits]\ntimeout_ms = 2000\n\
         [config]\nintrospection_endpoint = \"{issuer}/token/introspection\"\nclient_id = \"tollgate\"\n\
         username_prefix = \"idp:\"\ngroups_prefix = \"idp:\"\n"
    );
    dir.add("10-introspection", built::INTROSPECTION, &manifest);
    let server = start(&dir, &idp);

    let token = idp.token("alice", OPAQUE);
    assert!(!token.contains('.'), "an opaque token");
    for _ in 0..3 {
        assert_eq!(user(&server.review(&token)), ("idp:alice".into(), vec!["idp:dev".into(), "idp:ops".into()]));
    }
    assert_eq!(idp.hits()["introspection"], 1, "one question, then the plugin's cache");
    denied(&server.review("opaque-but-made-up-0123456789"), "not active");
    assert_eq!(idp.hits()["introspection"], 2);

    // The issuer goes down: what it already answered still holds; a new token is 503.
    let fresh = idp.token("bob-es256", OPAQUE);
    idp.kill();
    assert_eq!(user(&server.review(&token)).0, "idp:alice");
    server.review(&fresh).assert_status_object(503, "ServiceUnavailable");

    std::thread::sleep(Duration::from_millis(300));
    let everything = format!("{}{}{}", server.logs.text(), server.audit.text(), server.get("/metrics").body);
    for leaked in [secret, token.as_str(), fresh.as_str()] {
        assert!(!everything.contains(leaked), "a secret or token reached a log");
    }
}

#[test]
fn the_shipped_policies_pass_their_vectors_offline() {
    let dir = PluginDir::new();
    std::fs::create_dir_all(dir.path().join(".secrets")).unwrap();
    std::fs::write(dir.path().join(".secrets/introspection-client-secret"), "example-secret-0123456").unwrap();
    dir.example("oidc-jwt", built::OIDC_JWT, built::OIDC_JWT_MANIFEST).example(
        "introspection",
        built::INTROSPECTION,
        built::INTROSPECTION_MANIFEST,
    );
    let (code, out, err) = run_cli(&["check", dir.path().to_str().unwrap()], "");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), 2, "{out}");
    // The JWT vectors are real RS256/ES256 tokens under a fixed clock (`now`), years after they
    // expired; the introspection vectors show that no vector reaches an issuer.
    let vectors = |name: &str| {
        std::fs::read_to_string(dir.path().join(format!("{name}.toml"))).unwrap().matches("[[test]]").count()
    };
    assert!(out.contains(&format!("{} vectors passed", vectors("oidc-jwt"))), "{out}");
    assert!(out.contains(&format!("{} vectors passed", vectors("introspection"))), "{out}");
    assert!(!out.contains("example-secret-0123456") && !err.contains("example-secret-0123456"));
}

// ---- the ports: Python and JavaScript ------------------------------------------------------

/// `target/guests/LANG/oidc-jwt.wasm`, or a failure that says how to build it.
fn port(lang: &str) -> String {
    let path = std::path::Path::new(built::ROOT).join(format!("target/guests/{lang}/oidc-jwt.wasm"));
    assert!(path.is_file(), "{} is missing: run `plugins/languages.sh {lang}`", path.display());
    path.to_str().unwrap().to_owned()
}

/// `plugins/LANG/oidc-jwt.toml`.
fn port_manifest(lang: &str) -> String {
    std::path::Path::new(built::ROOT).join(format!("plugins/{lang}/oidc-jwt.toml")).to_str().unwrap().to_owned()
}

/// The `[[test]]` vectors of a manifest (all of it after the first).
fn vectors_of(path: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.split_once("[[test]]").map(|(_, v)| v.to_owned()).unwrap_or_default()
}

fn port_passes_the_rust_vectors(lang: &str) {
    let manifest = port_manifest(lang);
    assert_eq!(
        vectors_of(&manifest),
        vectors_of(built::OIDC_JWT_MANIFEST),
        "{manifest}: not the Rust manifest's vectors"
    );
    let dir = PluginDir::new();
    dir.example("oidc-jwt", &port(lang), &manifest);
    let cache = shared_compile_cache();
    let (code, out, err) = run_cli(&["check", "--cache-dir", &cache, dir.path().to_str().unwrap()], "");
    assert_eq!(code, 0, "{lang}: {out}{err}");
    let count = vectors_of(&manifest).matches("[[test]]").count() + 1;
    assert!(out.starts_with("ok ") && out.contains(&format!("{count} vectors passed")), "{lang}: {out}");
}

/// Inline keys and no `allowed_outbound_hosts`: a component that imports wasi:http loads without
/// any outbound grant (the host stubs what it does not grant, `io-error` included) and answers.
fn port_with_inline_keys_needs_no_grant(lang: &str) {
    let idp = OpenIdProvider::start();
    let token = idp.token("alice", K8S);
    let client = tls_client(&idp.pki.ca_pem, None, &["http/1.1"]);
    let get = |url: &str| client.get(url).send().unwrap().text().unwrap();
    let discovery: Value =
        serde_json::from_str(&get(&format!("{}/.well-known/openid-configuration", idp.issuer))).unwrap();
    let jwks = get(discovery["jwks_uri"].as_str().unwrap());
    assert!(jwks.contains("\"keys\"") && !jwks.contains("'''"), "{jwks}");
    let manifest = format!(
        "role = \"authenticator\"\n[limits]\ntimeout_ms = 2000\n[config]\nissuer = \"{}\"\naudiences = \"{K8S}\"\n\
         username_prefix = \"oidc:\"\ngroups_claim = \"groups\"\ngroups_prefix = \"oidc:\"\njwks = '''{jwks}'''\n",
        idp.issuer
    );
    let dir = PluginDir::new();
    dir.add("10-oidc", &port(lang), &manifest);
    let server = Server::start(dir.path(), &["--deny-reason-in-status", "--cache-dir", &shared_compile_cache()]);
    wait_for("readyz", Duration::from_secs(300), || (server.get("/readyz").status == 200).then_some(()));
    let hits = idp.hits()["jwks"].as_u64().unwrap();
    assert_eq!(user(&server.review(&token)), ("oidc:alice".into(), vec!["oidc:dev".into(), "oidc:ops".into()]));
    denied(&server.review(&format!("{}AAAA", &token[..token.len() - 4])), "bad signature");
    assert_eq!(idp.hits()["jwks"].as_u64().unwrap(), hits, "inline keys: the plugin asked nobody");
}

macro_rules! ported {
    ($($lang:ident),*) => {$(
        mod $lang {
            #[test]
            fn real_tokens_are_verified_with_keys_fetched_once_and_a_rotation_is_picked_up() {
                super::keys_fetched_once_and_a_rotation_picked_up(&super::port(stringify!($lang)));
            }

            #[test]
            fn forged_expired_and_misaddressed_tokens_are_denied() {
                super::forged_expired_and_misaddressed_denied(&super::port(stringify!($lang)));
            }

            #[test]
            fn shipped_vectors_are_the_rust_ones_and_pass_tollgate_check() {
                super::port_passes_the_rust_vectors(stringify!($lang));
            }

            #[test]
            fn inline_keys_without_an_outbound_grant_load_and_answer() {
                super::port_with_inline_keys_needs_no_grant(stringify!($lang));
            }
        }
    )*};
}

ported!(python, js);

//! The example policies in other languages (plugins/python, js, c, go) answer exactly as the
//! Rust pair (plugins/static-tokens, plugins/group-mapper) does: the same TokenReview answers in
//! both API versions, their shipped vectors pass `tollgate check`, and edge-case configs are
//! parsed — or refused — the same way.
//!
//! The components are built by `plugins/languages.sh` into target/guests/LANG; a missing one
//! fails its tests (run the script), it is never skipped.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use tollgate_tests::*;

/// `target/guests/LANG/NAME.wasm`, or a failure that says how to build it.
fn component(lang: &str, name: &str) -> String {
    let path = Path::new(built::ROOT).join(format!("target/guests/{lang}/{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `plugins/languages.sh {lang}` (it installs the {lang} toolchain and builds the component)",
        path.display()
    );
    path.to_str().unwrap().to_owned()
}

/// The manifest shipped beside a language's policy: `plugins/LANG/NAME.toml`.
fn shipped_manifest(lang: &str, name: &str) -> String {
    Path::new(built::ROOT).join(format!("plugins/{lang}/{name}.toml")).to_str().unwrap().to_owned()
}

/// The `[limits]` table of a shipped manifest ("" if none): heavy runtimes may need one.
fn limits(lang: &str, name: &str) -> String {
    let text = std::fs::read_to_string(shipped_manifest(lang, name)).unwrap();
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            inside = line.trim() == "[limits]";
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The chain of chain.rs: static-tokens knowing ALICE and BOB, then the group mapper with the
/// manifest shipped beside it. `lang` None is the Rust pair.
fn chain_dir(lang: Option<&str>) -> PluginDir {
    chain_dir_in(lang, "")
}

/// As [`chain_dir`], with `instances` (an `[instances]` table, or "") appended to both manifests.
fn chain_dir_in(lang: Option<&str>, instances: &str) -> PluginDir {
    let dir = PluginDir::new();
    match lang {
        None => {
            dir.add("10-static-tokens", built::STATIC_TOKENS, &static_tokens_manifest("")).example(
                "50-group-mapper",
                built::GROUP_MAPPER,
                built::GROUP_MAPPER_MANIFEST,
            );
        }
        Some(lang) => {
            dir.add(
                "10-static-tokens",
                &component(lang, "static-tokens"),
                &(static_tokens_manifest(&limits(lang, "static-tokens")) + instances),
            )
            .add(
                "50-group-mapper",
                &component(lang, "group-mapper"),
                &(std::fs::read_to_string(shipped_manifest(lang, "group-mapper")).unwrap() + instances),
            );
        }
    }
    dir
}

const UNKNOWN: &str = "e2e-token-nobody-3c9d0e1f2a4b";

/// Warm instances (`[instances] reuse = true`), the mode heavy runtimes are meant to run in.
const REUSE: &str = "\n[instances]\nreuse = true\n";

fn answers_like_the_rust_pair(lang: &str) {
    let rust_dir = chain_dir(None);
    let rust = Server::start(rust_dir.path(), &[]);
    for instances in ["", REUSE] {
        let dir = chain_dir_in(Some(lang), instances);
        // A compile cache shared by the test servers: each language compiles once per run.
        let server = Server::start(dir.path(), &["--cache-dir", &shared_compile_cache()]);
        answers_like(lang, &rust, &server);
        let warm = server.get("/metrics").body.lines().any(|l| l.starts_with("tollgate_warm_calls_total"));
        assert_eq!(warm, instances == REUSE, "{lang}: warm instances used iff reuse is on");
    }
}

fn answers_like(lang: &str, rust: &Server, server: &Server) {
    let alice = json!({"authenticated": true, "user": {
        "username": "alice", "uid": "1001",
        "groups": ["demo:admins", "demo:dev-web", "demo:authenticated"],
        "extra": {"team": ["platform", "sre"], "site": ["eu"]}}});
    let bob = json!({"authenticated": true, "user": {"username": "bob", "groups": ["demo:authenticated"]}});
    let nobody = json!({"authenticated": false});
    for version in VERSIONS {
        for (token, want) in [(ALICE, &alice), (BOB, &bob), (UNKNOWN, &nobody)] {
            let reference = rust.review_at("/authenticate", version, Some(token), &[]).review_status(version);
            assert_eq!(&reference, want, "the Rust pair, {version}");
            let got = server.review_at("/authenticate", version, Some(token), &[]).review_status(version);
            assert_eq!(got, reference, "{lang}, {version}: not the Rust pair's answer");
        }
    }

    // Several reviews in a row and side by side (fresh or warm instances): always the same answers.
    for round in 0..20 {
        let (token, want) = [(ALICE, &alice), (BOB, &bob), (UNKNOWN, &nobody)][round % 3];
        let version = VERSIONS[round % 2];
        let got = server.review_at("/authenticate", version, Some(token), &[]).review_status(version);
        assert_eq!(&got, want, "{lang}: review {round}");
    }
    std::thread::scope(|s| {
        for t in 0..4 {
            let (server, alice, bob, nobody) = (&server, &alice, &bob, &nobody);
            s.spawn(move || {
                for i in 0..10 {
                    let (token, want) = [(ALICE, alice), (BOB, bob), (UNKNOWN, nobody)][(t + i) % 3];
                    let got = server.review_at("/authenticate", V1, Some(token), &[]).review_status(V1);
                    assert_eq!(&got, want, "{lang}: concurrent review {t}/{i}");
                }
            });
        }
    });
}

/// `tollgate check` lines of a run: plugin path -> the line.
fn check_lines(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("ok    ").or_else(|| l.strip_prefix("FAIL  "))?;
            Some((rest.split_whitespace().next()?.to_owned(), l.to_owned()))
        })
        .collect()
}

fn shipped_vectors_pass_tollgate_check(lang: &str) {
    let dir = PluginDir::new();
    dir.example("10-static-tokens", &component(lang, "static-tokens"), &shipped_manifest(lang, "static-tokens"))
        .example("50-group-mapper", &component(lang, "group-mapper"), &shipped_manifest(lang, "group-mapper"));
    let (code, out, err) = run_cli(&["check", dir.path().to_str().unwrap()], "");
    assert_eq!(code, 0, "{lang}: tollgate check failed:\n{out}\n{err}");
    let lines = check_lines(&out);
    assert_eq!(lines.len(), 2, "{out}");
    let line = |name: &str| {
        lines
            .iter()
            .find(|(path, _)| path.ends_with(name))
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| panic!("no line for {name}:\n{out}"))
    };
    let st = line("10-static-tokens.wasm");
    assert!(st.starts_with("ok ") && st.contains("authenticator") && st.contains("4 vectors passed"), "{st}");
    let gm = line("50-group-mapper.wasm");
    assert!(gm.starts_with("ok ") && gm.contains("mapper") && gm.contains("2 vectors passed"), "{gm}");
    // The shipped manifests carry exactly the Rust manifests' vectors.
    for name in ["static-tokens", "group-mapper"] {
        let rust = std::fs::read_to_string(Path::new(built::ROOT).join(format!("plugins/{name}/{name}.toml"))).unwrap();
        let ours = std::fs::read_to_string(shipped_manifest(lang, name)).unwrap();
        let vectors = |s: &str| s.split_once("[[test]]").map(|(_, v)| v.to_owned()).unwrap_or_default();
        assert_eq!(vectors(&ours), vectors(&rust), "{lang}/{name}.toml: not the Rust manifest's vectors");
    }
}

// ---- conformance: edge cases of the config formats --------------------------------------

/// TOML basic-string text of `s` (`\uXXXX` escapes stay escapes).
fn toml_str(s: &str) -> String {
    format!("\"{s}\"")
}

/// The static-tokens edge cases: a manifest of vectors every implementation must pass, and
/// `tokens` tables (TOML string bodies) every implementation must refuse by trapping.
fn static_tokens_cases() -> (String, Vec<String>) {
    let h = sha256_hex;
    let (a, b, c, d, e) = (
        "conformance-token-a-0001",
        "conformance-token-b-0002",
        "conformance-token-c-0003",
        "conformance-token-d-0004",
        "conformance-token-e-0005",
    );
    let uni = "tøken-ünïcode-✓-0006";
    let ok = format!(
        r##"
[[test]]
name = "unicode whitespace, CRLF, comments, empty list items, merged extra keys"
token = "{a}"
config = {{ tokens = {t1} }}
expect = "allow"
username = "alice"
uid = "1001"
groups = ["g1", "g2", "g3"]
extra = {{ k = ["v", "w", ""], j = ["=x"] }}

[[test]]
name = "an upper-case digest"
token = "{b}"
config = {{ tokens = "{hb_upper} bob" }}
expect = "allow"
username = "bob"
uid = ""
groups = []
extra = {{}}

[[test]]
name = "dash fields, a dash username is a name, groups not de-duplicated"
token = "{c}"
config = {{ tokens = "{hc} - - g1,g1 -" }}
expect = "allow"
username = "-"
uid = ""
groups = ["g1", "g1"]

[[test]]
name = "the first matching line wins"
token = "{d}"
config = {{ tokens = "{hd} first 1\n{hd} second 2" }}
expect = "allow"
username = "first"
uid = "1"

[[test]]
name = "audiences trimmed, empty items skipped"
token = "{e}"
config = {{ tokens = "{he} eve", audiences = " a, ,b,,\u3000c " }}
expect = "allow"
username = "eve"
grant_audiences = ["a", "b", "c"]

[[test]]
name = "a non-ASCII token is hashed as UTF-8"
token = "{uni}"
config = {{ tokens = "{huni} uni" }}
expect = "allow"
username = "uni"

[[test]]
name = "no table: abstain"
token = "{a}"
expect = "abstain"

[[test]]
name = "commented-out lines do not match"
token = "{a}"
config = {{ tokens = "# {ha} alice\n{hb} bob # {ha}" }}
expect = "abstain"
"##,
        t1 = toml_str(&format!(
            "  # only a comment\\r\\n\\t{ha}\\u00A0alice\\u2003 1001\\tg1,,g2,g3,\\u3000k=v,k=w,j==x,k=\\r\\n\\n",
            ha = h(a)
        )),
        ha = h(a),
        hb = h(b),
        hb_upper = h(b).to_uppercase(),
        hc = h(c),
        hd = h(d),
        he = h(e),
        huni = h(uni),
    );
    let bad = [
        h(a).to_string(),
        format!("{} a b c d e", h(a)),
        format!("{} alice", &h(a)[..63]),
        format!("g{} alice", &h(a)[1..]),
        format!("{} bob - - noequals", h(b)),
        format!("{} alice\\nbroken", h(a)),
        format!("{}\\uFEFFalice", h(a)),
        format!("{}\\u001Calice", h(a)),
    ];
    (ok, bad.to_vec())
}

/// The group-mapper edge cases, as [`static_tokens_cases`]: vectors, and `[config]` lines.
fn group_mapper_cases() -> (String, Vec<String>) {
    let ok = r#"role = "mapper"

[[test]]
name = "only the first * of TO is replaced"
current = { username = "u", groups = ["a:b"] }
config = { rules = "a:* x:*:*" }
expect = "allow"
groups = ["x:b:*"]

[[test]]
name = "the first matching rule wins; a bare * matches everything"
current = { username = "u", groups = ["idp:x", "idp:y", "other"] }
config = { rules = "idp:x first\nidp:* second-*\n* all-*" }
expect = "allow"
groups = ["first", "second-y", "all-other"]

[[test]]
name = "dropping and de-duplicating, first appearance kept"
current = { username = "u", groups = ["a", "a", "b", "c", "d"] }
config = { rules = "b a\nc -" }
expect = "allow"
groups = ["a", "d"]

[[test]]
name = "prefix on kept unmapped groups; add trimmed and de-duplicated"
current = { username = "u", groups = ["a", "b"] }
config = { prefix = "p:", add = " x, ,p:a,\u3000y " }
expect = "allow"
groups = ["p:a", "p:b", "x", "y"]

[[test]]
name = "an empty username_prefix; uid and extra kept"
current = { username = "carol", uid = "42", groups = [], extra = { t = ["1", "2"] } }
config = { username_prefix = "" }
expect = "allow"
username = "carol"
uid = "42"
groups = []
extra = { t = ["1", "2"] }

[[test]]
name = "audiences are cleared"
current = { username = "u", groups = [], audiences = ["aud1"] }
expect = "allow"
grant_audiences = []

[[test]]
name = "unicode whitespace and comments in rules"
current = { username = "u", groups = ["idp:a", "idp:b"] }
config = { rules = "\u3000idp:a\u00A0cluster-a # comment\r\n#idp:b x" }
expect = "allow"
groups = ["cluster-a", "idp:b"]

[[test]]
name = "TO is literal: no $& or $1 expansion"
current = { username = "u", groups = ["p:q"] }
config = { rules = "p:* $&-*$1" }
expect = "allow"
groups = ["$&-q$1"]

[[test]]
name = "a prefix rule matches the bare prefix"
current = { username = "u", groups = ["p:"] }
config = { rules = "p:* z*" }
expect = "allow"
groups = ["z"]
"#
    .to_owned();
    let bad = [
        ("rules", "lonely"),
        ("rules", "a b c"),
        ("rules", "a*b c"),
        ("rules", "a** c"),
        ("unmapped", "Drop"),
        ("unmapped", ""),
    ];
    (ok, bad.iter().map(|(key, value)| format!("{key} = \"{value}\"")).collect())
}

const CONFORMANCE_TOKEN: &str = "conformance-token-a-0001";

/// Serves the edge cases with these two components, a tenant each, and reviews every tenant
/// once: tenant -> "loaded" (its vectors passed: a tenant whose plugin fails its vectors is not
/// served), "failed" (the plugin trapped on its config: a plugin failure) or what else came back.
/// One server, so each component is compiled once.
fn conformance(lang: Option<&str>, static_tokens: &str, group_mapper: &str) -> (BTreeMap<String, String>, String) {
    // A heavy runtime's shipped [limits] apply here too.
    let (st_limits, gm_limits) = match lang {
        Some(lang) => (limits(lang, "static-tokens"), limits(lang, "group-mapper")),
        None => (String::new(), String::new()),
    };
    let (st_ok, st_bad) = static_tokens_cases();
    let (gm_ok, gm_bad) = group_mapper_cases();
    let dir = PluginDir::new();
    let mut tenants = vec![];
    dir.add_in("st-ok", "10-static-tokens", static_tokens, &format!("{st_limits}\n{st_ok}"));
    dir.add_in(
        "gm-ok",
        "50-group-mapper",
        group_mapper,
        &gm_ok.replacen("role = \"mapper\"\n", &format!("role = \"mapper\"\n{gm_limits}\n"), 1),
    );
    // Run as an authenticator (no current grant), the mapper has no opinion.
    dir.add_in(
        "gm-authn",
        "10-group-mapper",
        group_mapper,
        &format!("{gm_limits}\n[[test]]\ntoken = \"{CONFORMANCE_TOKEN}\"\nconfig = {{ rules = \"a b\" }}\nexpect = \"abstain\"\n"),
    );
    tenants.extend(["st-ok", "gm-ok", "gm-authn"].map(|t| (t.to_owned(), CONFORMANCE_TOKEN)));
    for (i, table) in st_bad.iter().enumerate() {
        let tenant = format!("st-bad-{}", i + 1);
        dir.add_in(
            &tenant,
            "10-static-tokens",
            static_tokens,
            &format!("{st_limits}\n[config]\ntokens = \"{table}\"\n"),
        );
        tenants.push((tenant, CONFORMANCE_TOKEN));
    }
    for (i, line) in gm_bad.iter().enumerate() {
        let tenant = format!("gm-bad-{}", i + 1);
        dir.add_in(&tenant, "10-static-tokens", static_tokens, &static_tokens_manifest(&st_limits)).add_in(
            &tenant,
            "50-group-mapper",
            group_mapper,
            &format!("role = \"mapper\"\n{gm_limits}\n[config]\n{line}\n"),
        );
        tenants.push((tenant, ALICE));
    }
    let server = Server::start(dir.path(), &[]);
    wait_for("readyz", std::time::Duration::from_secs(300), || (server.get("/readyz").status == 200).then_some(()));
    let results = tenants
        .iter()
        .map(|(tenant, token)| {
            let answer = server.review_at(&format!("/authenticate/{tenant}"), V1, Some(token), &[]);
            let outcome = if answer.status != 200 {
                format!("HTTP {}", answer.status)
            } else {
                let status = answer.review_status(V1);
                match (&status["authenticated"], status["error"].as_str()) {
                    (_, Some(e)) if e.starts_with("plugin ") && e.contains(" failed") => "failed".to_owned(),
                    (json_false, None) if json_false == &json!(false) => "loaded".to_owned(),
                    _ => status.to_string(),
                }
            };
            (tenant.clone(), outcome)
        })
        .collect();
    let status = server.get("/status").body;
    (results, format!("--- /status ---\n{status}\n--- log ---\n{}", server.logs.text()))
}

fn parses_configs_exactly_like_the_rust_pair(lang: &str) {
    let (rust, rust_out) = conformance(None, built::STATIC_TOKENS, built::GROUP_MAPPER);
    for (tenant, outcome) in &rust {
        let want = if tenant.contains("bad") { "failed" } else { "loaded" };
        assert_eq!(outcome, want, "the Rust pair, tenant {tenant}:\n{rust_out}");
    }
    assert_eq!(rust.len(), 3 + 8 + 6);
    let (ours, out) = conformance(Some(lang), &component(lang, "static-tokens"), &component(lang, "group-mapper"));
    assert_eq!(ours, rust, "{lang} on the edge cases (left) is not the Rust pair (right):\n{out}");
}

macro_rules! language_tests {
    ($($lang:ident),*) => {$(
        mod $lang {
            #[test]
            fn answers_like_the_rust_pair_in_both_versions() {
                super::answers_like_the_rust_pair(stringify!($lang));
            }

            #[test]
            fn shipped_vectors_pass_tollgate_check() {
                super::shipped_vectors_pass_tollgate_check(stringify!($lang));
            }

            #[test]
            fn parses_configs_exactly_like_the_rust_pair() {
                super::parses_configs_exactly_like_the_rust_pair(stringify!($lang));
            }
        }
    )*};
}

language_tests!(python, js, c, go);

// ---- the host's crypto through each language's helpers ---------------------------------

/// A JWS test token and JWKS: the shipped oidc-jwt manifest's RS256 and ES256 tokens (real
/// signatures by keys whose private halves are gone; the host does not check claims).
fn jws_fixture() -> (String, String, String) {
    let manifest = std::fs::read_to_string(built::OIDC_JWT_MANIFEST).unwrap();
    let token_after = |name: &str| {
        let rest = &manifest[manifest.find(&format!("name = \"{name}")).unwrap()..];
        let start = rest.find("token = \"").unwrap() + "token = \"".len();
        rest[start..start + rest[start..].find('"').unwrap()].to_owned()
    };
    let start = manifest.find("jwks = '").unwrap() + "jwks = '".len();
    let jwks = manifest[start..start + manifest[start..].find('\'').unwrap()].to_owned();
    (token_after("RS256"), token_after("ES256"), jwks)
}

/// HMAC-SHA-256 (RFC 2104) from the sha2 crate, independent of the host's ring.
fn hmac_sha256_hex(key: &[u8], data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| k.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(data).finalize();
    hex::encode(Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize())
}

/// The language's helpers over `tollgate:policy/crypto` (plugins/c/tollgate_crypto.h,
/// plugins/go/tgcrypto) really call the host: `testing/jws-check` verifies the token, hashes and
/// MACs it, and answers with what it got back; every error kind comes back as `KIND: MESSAGE`.
fn verifies_tokens_through_the_host(lang: &str) {
    use base64::Engine as _;
    let (rs256, es256, jwks) = jws_fixture();
    let wasm = component(lang, "jws-check");
    let manifest = |jwks: &str, algs: &str| {
        format!(
            "{}\n[config]\njwks = '{jwks}'\nalgs = \"{algs}\"\nmac_key = \"mac-key\"\n",
            limits(lang, "static-tokens")
        )
    };
    // The default tenant grants; the named ones (whose grants would need the tenant's prefix)
    // only refuse.
    let dir = PluginDir::new();
    dir.add("10-jws", &wasm, &manifest(&jwks, "RS256, ES256"))
        .add_in("es", "10-jws", &wasm, &manifest(&jwks, "ES256"))
        .add_in("badjwks", "10-jws", &wasm, &manifest("{\"keys\": 7}", "ES256"));
    let server = Server::start(dir.path(), &["--deny-reason-in-status"]);
    let review = |tenant: &str, token: &str| {
        let path = if tenant.is_empty() { "/authenticate".to_owned() } else { format!("/authenticate/{tenant}") };
        server.review_at(&path, V1, Some(token), &[]).review_status(V1)
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for (token, username) in [(&rs256, "jws:RS256:rsa-1"), (&es256, "jws:ES256:ec-1")] {
        let mut parts = token.split('.');
        let mut decoded = || String::from_utf8(b64.decode(parts.next().unwrap()).unwrap()).unwrap();
        let (header, payload) = (decoded(), decoded());
        let want = json!({"authenticated": true, "user": {
            "username": username,
            "groups": [
                format!("sha256:{}", sha256_hex(token)),
                format!("hmac:{}", hmac_sha256_hex(b"mac-key", token.as_bytes())),
                "eq:true",
                "ne:false",
            ],
            "extra": {"header": [header], "payload": [payload]}}});
        assert_eq!(review("", token), want, "{lang}: {username}");
    }

    let error = |tenant: &str, token: &str| {
        let status = review(tenant, token);
        assert_eq!(status["authenticated"], false, "{lang}: {status}");
        status["error"].as_str().unwrap_or_default().to_owned()
    };
    let (input, signature) = rs256.rsplit_once('.').unwrap();
    let mut flipped = signature.as_bytes().to_vec();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{input}.{}", String::from_utf8(flipped).unwrap());
    let header = |v: serde_json::Value| b64.encode(v.to_string());
    let payload = input.split_once('.').unwrap().1;
    let unknown = format!("{}.{payload}.{signature}", header(json!({"alg": "RS256", "kid": "rotated-away"})));
    let unsigned = format!("{}.{payload}.", header(json!({"alg": "none"})));
    for (tenant, token, want) in [
        ("", tampered.as_str(), "bad-signature"),
        ("", &unknown, "no-key: no key with kid \"rotated-away\""),
        ("", &unsigned, "algorithm: alg none"),
        ("", "opaque-token-123456", "malformed: "),
        ("es", &rs256, "algorithm: alg RS256 is not in allowed-algs"),
        ("badjwks", &es256, "jwks: "),
    ] {
        let got = error(tenant, token);
        assert!(got.starts_with(want), "{lang}, tenant {tenant}: want {want:?}…, got {got:?}");
        assert!(!got.contains(signature) && !got.contains(payload), "{lang}: the reason repeats the token: {got}");
    }
    // Verified again after the refusals: the same JWKS text, the host's parsed keys.
    assert_eq!(granted_username(&server.review(&es256)).as_deref(), Some("jws:ES256:ec-1"));
}

macro_rules! host_crypto_tests {
    ($($lang:ident),*) => {$(
        mod $lang {
            #[test]
            fn verifies_tokens_through_the_host() {
                super::super::verifies_tokens_through_the_host(stringify!($lang));
            }
        }
    )*};
}

/// The languages whose helpers over `tollgate:policy/crypto` have a `testing/jws-check`.
mod host_crypto {
    host_crypto_tests!(c, go);
}

/// The core sandbox tests again, with a Python guest (18 MB of CPython): the same deadline,
/// memory cap and lack of ambient authority hold for a heavy runtime.
#[test]
fn a_python_guest_is_held_to_the_same_sandbox() {
    let probe = component("python", "probe");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dir = PluginDir::new();
    let routed = |prefix: &str, action: &str, limits: &str, config: &str| {
        format!(
            "[match]\ntoken_prefix = [\"{prefix}\"]\n[limits]\ntimeout_ms = 300\n{limits}\n[config]\naction = \"{action}\"\n{config}\n"
        )
    };
    dir.add("10-loop", &probe, &routed("loop-", "loop", "", ""))
        .add("11-oom", &probe, &routed("oom-", "oom", "memory_mib = 96", ""))
        .add("12-raise", &probe, &routed("raise-", "raise", "", ""))
        .add("13-file", &probe, &routed("file-", "file", "", "path = \"/etc/passwd\""))
        .add("14-env", &probe, &routed("env-", "env", "", ""))
        .add("15-socket", &probe, &routed("socket-", "socket", "", &format!("addr = \"{addr}\"")))
        .add("99-ok", &probe, &routed("ok-", "allow", "", "username = \"alice\""));
    // A review deadline well past the plugins' own 300 ms: unwinding a trapped CPython takes
    // a while on a busy machine, and this test is about the plugin's budget, not the review's.
    let server = Server::start(dir.path(), &["--review-timeout-ms", "5000"]);
    let ok = || assert_eq!(granted_username(&server.review("ok-12345678")).as_deref(), Some("alice"));
    ok();
    for (token, plugin, class) in [
        ("loop-12345678", "10-loop", "deadline"),
        ("oom-12345678", "11-oom", "memory"),
        ("raise-12345678", "12-raise", "trap"),
    ] {
        let status = server.review(token).review_status(V1);
        assert!(
            status["error"].as_str().unwrap_or_default().starts_with(&format!("plugin {plugin} failed")),
            "{token}: {status}"
        );
        let lines = server.wait_audit("audit", |l| l.iter().any(|l| l["plugin"] == plugin));
        let line = lines.iter().find(|l| l["plugin"] == plugin).unwrap();
        assert_eq!(line["error_class"], class, "{token}");
        if plugin == "12-raise" {
            // The exception's message is in the failure itself, not only in the log's stderr lines.
            let reason = line["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("probe raised on purpose"), "{line}");
        }
        ok();
    }
    for (token, reason) in
        [("file-12345678", "file denied"), ("env-12345678", "env denied"), ("socket-12345678", "socket denied")]
    {
        assert_eq!(server.review(token).review_status(V1), json!({"authenticated": false}), "{token}");
        server.wait_audit(reason, |l| l.iter().any(|l| l["reason"].as_str().is_some_and(|r| r.contains(reason))));
        ok();
    }
    assert!(listener.accept().is_err(), "the Python plugin reached a socket on this machine");
    assert!(server.logs.text().contains("probe raised on purpose"), "the traceback reaches the log");
}

//! Plugins in OCI registries (issue 14): `tollgate push`, `pull`, `sign`, `verify`, `save` and
//! `load` against a real registry (Debian's docker-registry, TLS and basic auth) on loopback.

use std::path::Path;
use std::time::Duration;

use tollgate_tests::*;

fn cli(args: &[&str], extra: &[String]) -> (i32, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(extra.iter().map(String::as_str));
    run_cli(&all, "")
}

/// A plugin folder with the static-tokens example as `10-static-tokens.{wasm,toml}`.
fn plugin_folder(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(built::STATIC_TOKENS, dir.path().join("10-static-tokens.wasm")).unwrap();
    std::fs::write(dir.path().join("10-static-tokens.toml"), manifest).unwrap();
    dir
}

fn same_files(a: &Path, b: &Path) {
    for f in ["10-static-tokens.wasm", "10-static-tokens.toml"] {
        assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f}");
    }
}

#[test]
fn push_pull_sign_and_verify_through_a_real_registry() {
    let registry = OciRegistry::start();
    let args = registry.args();
    let src = plugin_folder(&static_tokens_manifest(""));
    let wasm = src.path().join("10-static-tokens.wasm");
    let wasm = wasm.to_str().unwrap();
    let reference = registry.reference("acme/static-tokens:1");

    // Basic auth is required: without credentials the push is refused.
    let ca = registry.pki.ca_path.display().to_string();
    let (code, _, err) = cli(&["push", wasm, &reference, "--registry-ca", &ca], &[]);
    assert_ne!(code, 0, "an anonymous push went through");
    assert!(err.contains("pushing to"), "{err}");
    // Without the registry's CA, TLS fails.
    let auth = registry.auth_file.display().to_string();
    let (code, _, err) = cli(&["push", wasm, &reference, "--registry-auth", &auth], &[]);
    assert_ne!(code, 0, "{err}");

    let (code, out, err) = cli(&["push", wasm, &reference], &args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pushed 10-static-tokens.wasm with 10-static-tokens.toml to"), "{out}");
    let digest = out.split("(sha256:").nth(1).and_then(|r| r.split(')').next()).map(|h| format!("sha256:{h}")).unwrap();

    let dest = tempfile::tempdir().unwrap();
    let (code, out, err) = cli(&["pull", &reference, dest.path().to_str().unwrap()], &args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&digest), "{out}");
    same_files(src.path(), dest.path());

    // Signatures: none yet; then ours; a stranger's key verifies nothing.
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = signing_key(keys.path(), "operator");
    let (_, stranger) = signing_key(keys.path(), "stranger");
    let (public, stranger, private) = (public.to_str().unwrap(), stranger.to_str().unwrap(), private.to_str().unwrap());
    let (code, _, err) = cli(&["verify", &reference, "--key", public], &args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not signed"), "{err}");
    let (code, out, err) = cli(&["sign", &reference, "--key", private], &args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&digest), "{out}");
    let (code, out, err) = cli(&["verify", &reference, "--key", public], &args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signed by") && out.contains("operator.pub"), "{out}");
    cosign_layout_is_what_cosign_reads(&registry, "acme/static-tokens", &digest, &keys.path().join("operator.pub"));
    let (code, _, err) = cli(&["verify", &reference, "--key", stranger], &args);
    assert_eq!(code, 1);
    assert!(err.contains("none of its 1 signature(s) verifies"), "{err}");
    let (code, _, err) = cli(&["pull", &reference, dest.path().to_str().unwrap(), "--key", stranger], &args);
    assert_ne!(code, 0, "a pull with a stranger's key went through");
    assert!(err.contains("verifies"), "{err}");
    let (code, _, err) = cli(&["pull", &reference, dest.path().to_str().unwrap(), "--key", public], &args);
    assert_eq!(code, 0, "{err}");

    // The tag moves to a new version: the signature of the old digest does not cover it.
    let v2 = plugin_folder(&static_tokens_manifest("# v2"));
    let (code, out, err) = cli(&["push", v2.path().join("10-static-tokens.wasm").to_str().unwrap(), &reference], &args);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(&digest), "a new manifest, a new digest: {out}");
    let (code, _, err) = cli(&["verify", &reference, "--key", public], &args);
    assert_eq!(code, 1, "the moved tag is not signed: {err}");

    // A plain component (no manifest layer) pushed by another tool is a plugin too.
    let bare = tempfile::tempdir().unwrap();
    std::fs::copy(built::STATIC_TOKENS, bare.path().join("bare.wasm")).unwrap();
    let bare_ref = registry.reference("acme/bare:1");
    assert_eq!(cli(&["push", bare.path().join("bare.wasm").to_str().unwrap(), &bare_ref], &args).0, 0);
    let out_dir = tempfile::tempdir().unwrap();
    let (code, _, err) = cli(&["pull", &bare_ref, out_dir.path().to_str().unwrap()], &args);
    assert_eq!(code, 0, "{err}");
    assert!(out_dir.path().join("bare.wasm").is_file() && !out_dir.path().join("bare.toml").exists());
}

#[test]
fn save_and_load_carry_plugins_without_a_registry() {
    let registry = OciRegistry::start();
    let args = registry.args();
    let src = plugin_folder(&static_tokens_manifest(""));
    let reference = registry.reference("acme/static-tokens:2");
    let (code, out, err) =
        cli(&["push", src.path().join("10-static-tokens.wasm").to_str().unwrap(), &reference], &args);
    assert_eq!(code, 0, "{err}");
    let digest = out.split("(").nth(1).unwrap().trim_end().trim_end_matches(')').to_owned();

    let layout = tempfile::tempdir().unwrap();
    let out_dir = layout.path().join("layout");
    let (code, out, err) = cli(&["save", &reference, out_dir.to_str().unwrap()], &args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&digest), "the layout keeps the registry's digest: {out}");
    drop(registry);

    // No registry: the layout alone gives the same files and digest.
    let dest = tempfile::tempdir().unwrap();
    let (code, out, err) = run_cli(&["load", out_dir.to_str().unwrap(), dest.path().to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&digest) && out.contains(&reference), "{out}");
    same_files(src.path(), dest.path());
    // ...and a server on them serves the plugin the registry held (same component digest).
    let server = Server::start(dest.path(), &[]);
    assert_eq!(granted_username(&server.review(ALICE)).as_deref(), Some("alice"));
    let wasm = std::fs::read(dest.path().join("10-static-tokens.wasm")).unwrap();
    let status = server.get("/status").json();
    let digests = status["tenants"][0]["live"]["plugins"][0]["digest"].as_str().unwrap().to_owned();
    assert!(digests.contains(&sha256_hex(&wasm)), "{digests}");
    drop(server);

    // A tampered blob is refused.
    let blobs = out_dir.join("blobs/sha256");
    let biggest = std::fs::read_dir(&blobs).unwrap().flatten().max_by_key(|e| e.metadata().unwrap().len()).unwrap();
    let mut bytes = std::fs::read(biggest.path()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(biggest.path(), bytes).unwrap();
    let (code, _, err) = run_cli(&["load", out_dir.to_str().unwrap(), dest.path().to_str().unwrap()], "");
    assert_ne!(code, 0);
    assert!(err.contains("does not match its digest"), "{err}");
}

fn wait_user(server: &Server, path: &str, want: &str) {
    let what = format!("{path} to answer {want}");
    wait_for_answer(server, path, "tok-12345678", &what, |a| granted_username(a).as_deref() == Some(want));
}

/// Pushes the probe plugin granting `username` to `reference`; signs it with `key` if given.
fn publish(registry: &OciRegistry, reference: &str, username: &str, key: Option<&Path>) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(built::PROBE, dir.path().join("10-grant.wasm")).unwrap();
    let manifest = probe_manifest("", "allow", &format!("username = \"{username}\""));
    std::fs::write(dir.path().join("10-grant.toml"), manifest).unwrap();
    let args = registry.args();
    let (code, out, err) = cli(&["push", dir.path().join("10-grant.wasm").to_str().unwrap(), reference], &args);
    assert_eq!(code, 0, "{err}");
    if let Some(key) = key {
        let (code, _, err) = cli(&["sign", reference, "--key", key.to_str().unwrap()], &args);
        assert_eq!(code, 0, "{err}");
    }
    out.split('(').nth(1).unwrap().trim_end().trim_end_matches(')').to_owned()
}

#[test]
fn a_tenant_serves_signed_plugins_from_a_registry_and_follows_its_tag() {
    let mut registry = OciRegistry::start();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = signing_key(keys.path(), "operator");
    let (stranger, _) = signing_key(keys.path(), "stranger");
    let live = registry.reference("acme/grant:live");
    let v1 = publish(&registry, &live, "acme:v1", Some(&private));

    let source = |extra: &str| {
        format!(
            "[[tenant.acme.oci]]\nname = \"10-grant\"\nref = \"{live}\"\nkeys = [\"{}\"]\npoll = \"1s\"\nauth = \"{}\"\nca_file = \"{}\"\n{extra}",
            public.display(),
            registry.auth_file.display(),
            registry.pki.ca_path.display()
        )
    };
    let tenants = tenants_file(&format!(
        "[tenant.acme]\nusername_prefix = \"acme:\"\nallowed_groups = [\"acme:*\"]\n{}\n[tenant.pinned]\nusername_prefix = \"acme:\"\n{}",
        source(""),
        source(&format!("digest = \"{v1}\"")).replace("tenant.acme.oci", "tenant.pinned.oci")
    ));
    // Registry-only tenants: the plugin directory has no folder for them.
    let dir = PluginDir::new();
    let cache = tempfile::tempdir().unwrap();
    // A folder tollgate makes itself (mode 0700).
    let cache = cache.path().join("cc");
    let args = ["--tenants", tenants.path().to_str().unwrap(), "--cache-dir", cache.to_str().unwrap()];
    let server = Server::start(dir.path(), &args);
    wait_user(&server, "/authenticate/acme", "acme:v1");
    wait_user(&server, "/authenticate/pinned", "acme:v1");

    // The tag moves to an unsigned version: refused, v1 stays.
    publish(&registry, &live, "acme:v2", None);
    let why = wait_for("the unsigned version refused", Duration::from_secs(20), || {
        last_refusal(&server, "acme").filter(|r| r.contains("is not signed"))
    });
    assert!(why.contains("10-grant") && why.contains(&live), "{why}");
    wait_user(&server, "/authenticate/acme", "acme:v1");
    // Signed by a key the operator did not name: refused too.
    publish(&registry, &live, "acme:v3", Some(&stranger));
    wait_for("the stranger's version refused", Duration::from_secs(20), || {
        last_refusal(&server, "acme").filter(|r| r.contains("verifies with the configured key"))
    });
    wait_user(&server, "/authenticate/acme", "acme:v1");
    // Signed by the operator's key: live within a poll. The pinned tenant ignores the move.
    let v4 = publish(&registry, &live, "acme:v4", Some(&private));
    wait_user(&server, "/authenticate/acme", "acme:v4");
    wait_user(&server, "/authenticate/pinned", "acme:v1");
    let metrics = server.get("/metrics").body;
    assert!(metrics.contains("tollgate_reloads_total{tenant=\"acme\",result=\"refused\"}"), "{metrics}");
    let status = server.get("/status").json();
    let acme = status["tenants"].as_array().unwrap().iter().find(|t| t["tenant"] == "acme").unwrap().clone();
    assert_eq!(acme["live"]["plugins"][0]["name"], "10-grant", "{acme}");
    drop(server);

    // The registry goes away: a restart serves the last verified versions from the disk cache,
    // and says the registry is unreachable.
    registry.stop();
    let server = Server::start(dir.path(), &args);
    wait_user(&server, "/authenticate/acme", "acme:v4");
    wait_user(&server, "/authenticate/pinned", "acme:v1");
    let why = wait_for("the registry's absence noted", Duration::from_secs(20), || last_refusal(&server, "acme"));
    assert!(why.contains("resolving"), "{why}");
    let _ = v4;
}

/// A registry that accepts connections and never answers (pinned digest: no tag lookup, straight
/// to the signature) holds neither the first load nor the listener: the poll gives up, the
/// tenant is refused with the reason, the server serves.
#[test]
fn a_silent_registry_does_not_hold_the_start() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || silent.incoming().take(8).flatten().collect::<Vec<_>>());
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = signing_key(keys.path(), "operator");
    let tenants = tenants_file(&format!(
        "[[tenant.acme.oci]]\nname = \"10-a\"\nref = \"{host}/acme/a:1\"\ndigest = \"sha256:{}\"\nkeys = [\"{}\"]\n",
        "ab".repeat(32),
        public.display()
    ));
    let dir = PluginDir::new();
    let cache = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let server = Server::start(
        dir.path(),
        &["--tenants", tenants.path().to_str().unwrap(), "--cache-dir", cache.path().join("cc").to_str().unwrap()],
    );
    assert!(started.elapsed() < Duration::from_secs(100), "started after {:?}", started.elapsed());
    let why = last_refusal(&server, "acme").expect("the tenant is refused, with a reason");
    // Given up by the request's own timeout (30s), or by the poll's (60s).
    assert!(why.contains("10-a") && why.contains(" within "), "{why}");
    drop(server);
    drop(held);
}

#[test]
fn registry_plugins_in_the_tenants_file_are_checked_before_anything_runs() {
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = signing_key(keys.path(), "operator");
    let dir = PluginDir::new();
    let cache = tempfile::tempdir().unwrap();
    for (spec, says) in [
        ("name = \"10-a\"\nref = \"127.0.0.1:1/a:1\"\nkeys = []", "keys is empty"),
        ("name = \"../a\"\nref = \"127.0.0.1:1/a:1\"\nkeys = [\"KEY\"]", "not a plugin file name"),
        ("name = \"10-a\"\nref = \"127.0.0.1:1/a:1\"\nkeys = [\"/nonexistent.pub\"]", "reading key"),
        (
            "name = \"10-a\"\nref = \"127.0.0.1:1/a:1\"\nkeys = [\"KEY\"]\ndigest = \"sha256:12\"",
            "is not sha256:<64 hex>",
        ),
        (
            "name = \"10-a\"\nref = \"127.0.0.1:1/a:1\"\nkeys = [\"KEY\"]\nauth = \"rel/config.json\"",
            "not an absolute path",
        ),
        ("name = \"10-a\"\nref = \"127.0.0.1:1/a:1\"\nkeys = [\"KEY\"]\nmystery = 1", "unknown field"),
        ("name = \"10-a\"\nref = \"127.0.0.1:1/a:1\"\nkeys = [\"KEY\"]\npoll = \"500ms\"", "poll below 1s"),
        (
            "name = \"10-a\"\nref = \"127.0.0.1:1/a:1\"\nkeys = [\"KEY\"]\npoll = \"soon\"",
            "poll: \"soon\" is not a duration",
        ),
    ] {
        let text = format!("[[tenant.acme.oci]]\n{}\n", spec.replace("KEY", public.to_str().unwrap()));
        let tenants = tenants_file(&text);
        let started = Server::try_start(
            dir.path(),
            &["--tenants", tenants.path().to_str().unwrap(), "--cache-dir", cache.path().join("cc").to_str().unwrap()],
        );
        let (_, logs) = started.err().unwrap_or_else(|| panic!("started with {spec}"));
        assert!(logs.contains(says), "{spec}: {logs}");
    }
    // Without --cache-dir there is nowhere to keep verified artifacts for a restart.
    let tenants = tenants_file(&format!(
        "[[tenant.acme.oci]]\nname = \"10-a\"\nref = \"127.0.0.1:1/a:1\"\nkeys = [\"{}\"]\n",
        public.display()
    ));
    let (_, logs) = Server::try_start(dir.path(), &["--tenants", tenants.path().to_str().unwrap()]).err().unwrap();
    assert!(logs.contains("--cache-dir is needed"), "{logs}");
}

/// What `cosign verify --key` reads, checked without the sigstore crate: the manifest under the
/// tag `sha256-<hex>.sig` in the same repository, one simple-signing layer whose payload names
/// the digest, and the base64 ECDSA P-256 signature of that payload in the layer's
/// `dev.cosignproject.cosign/signature` annotation, verified here with ring and the public key.
fn cosign_layout_is_what_cosign_reads(registry: &OciRegistry, repository: &str, digest: &str, public_pem: &Path) {
    use base64::Engine as _;
    let client = tls_client(&registry.pki.ca_pem, None, &["http/1.1"]);
    let get = |path: &str, accept: &str| {
        let response = client
            .get(format!("https://{}/v2/{repository}/{path}", registry.host))
            .basic_auth(registry.user, Some(registry.password))
            .header("Accept", accept)
            .send()
            .unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        response.bytes().unwrap().to_vec()
    };
    let tag = format!("{}.sig", digest.replace(':', "-"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&get(&format!("manifests/{tag}"), "application/vnd.oci.image.manifest.v1+json"))
            .unwrap();
    let layer = &manifest["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.dev.cosign.simplesigning.v1+json", "{manifest}");
    let payload = get(&format!("blobs/{}", layer["digest"].as_str().unwrap()), "*/*");
    let simple: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(simple["critical"]["type"], "cosign container image signature", "{simple}");
    assert_eq!(simple["critical"]["image"]["docker-manifest-digest"], digest, "{simple}");
    assert_eq!(simple["critical"]["identity"]["docker-reference"], format!("{}/{repository}", registry.host));
    let signature = base64::engine::general_purpose::STANDARD
        .decode(layer["annotations"]["dev.cosignproject.cosign/signature"].as_str().expect("the signature annotation"))
        .unwrap();
    let pem = std::fs::read_to_string(public_pem).unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>())
        .unwrap();
    // SubjectPublicKeyInfo of a P-256 key: the point is the last 65 bytes.
    let point = &der[der.len() - 65..];
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point);
    key.verify(&payload, &signature).expect("the signature verifies over the payload with the public key");
}

/// The tenants file of the revocation and cache tests: `acme` follows the tag `live`, `pinned`
/// is pinned to `pin`; both trust only `key`.
fn two_sources(registry: &OciRegistry, live: &str, pin: &str, key: &Path) -> String {
    let source = |tenant: &str, extra: &str| {
        format!(
            "[tenant.{tenant}]\nusername_prefix = \"acme:\"\n[[tenant.{tenant}.oci]]\nname = \"10-grant\"\nref = \"{live}\"\nkeys = [\"{}\"]\npoll = \"1s\"\nauth = \"{}\"\nca_file = \"{}\"\n{extra}\n",
            key.display(),
            registry.auth_file.display(),
            registry.pki.ca_path.display()
        )
    };
    format!("{}{}", source("acme", ""), source("pinned", &format!("digest = \"{pin}\"")))
}

/// `tollgate_reloads_total{tenant, result="refused"}`, 0 when absent.
fn refused_count(server: &Server, tenant: &str) -> u64 {
    let metrics = server.get("/metrics").body;
    let line = format!("tollgate_reloads_total{{tenant=\"{tenant}\",result=\"refused\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(line.as_str())).map_or(0, |n| n.trim().parse().unwrap())
}

/// Waits until `tenant` answers 503 (its plugins are not served).
fn wait_unavailable(server: &Server, tenant: &str) {
    wait_for(&format!("{tenant} to answer 503"), Duration::from_secs(20), || {
        let answer = server.review_at(&format!("/authenticate/{tenant}"), V1, Some("tok-12345678"), &[]);
        (answer.status == 503).then_some(())
    });
}

/// Checks that `tenant` answers 503 at once and for `long` (never granting anything).
fn stays_unavailable(server: &Server, tenant: &str, long: Duration) {
    let until = std::time::Instant::now() + long;
    while std::time::Instant::now() < until {
        let answer = server.review_at(&format!("/authenticate/{tenant}"), V1, Some("tok-12345678"), &[]);
        assert_eq!(answer.status, 503, "{tenant}: {}", answer.body);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 26, 1: the operator replaces key A (leaked) by B in the tenants file. What only A signed
/// is served no longer — neither from memory nor from the cache, neither tag-polled nor pinned,
/// neither after a restart with the registry nor without it — and the refusal says so; once B
/// signs the same digest it is live again, and the cache keeps B's signature for restarts.
#[test]
fn a_revoked_key_revokes_what_it_signed() {
    let mut registry = OciRegistry::start();
    let keys = tempfile::tempdir().unwrap();
    let (a_private, a_public) = signing_key(keys.path(), "leaked");
    let (b_private, b_public) = signing_key(keys.path(), "successor");
    let live = registry.reference("acme/grant:live");
    let v1 = publish(&registry, &live, "acme:v1", Some(&a_private));

    let tenants_dir = tempfile::tempdir().unwrap();
    let tenants = tenants_dir.path().join("tenants.toml");
    std::fs::write(&tenants, two_sources(&registry, &live, &v1, &a_public)).unwrap();
    let dir = PluginDir::new();
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().join("cc");
    let args = ["--tenants", tenants.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap()];
    let server = Server::start(dir.path(), &args);
    wait_user(&server, "/authenticate/acme", "acme:v1");
    wait_user(&server, "/authenticate/pinned", "acme:v1");
    let refused_before = refused_count(&server, "acme");

    // A leaked: the operator names B instead. Both tenants stop serving what A signed.
    std::fs::write(&tenants, two_sources(&registry, &live, &v1, &b_public)).unwrap();
    wait_unavailable(&server, "acme");
    wait_unavailable(&server, "pinned");
    for tenant in ["acme", "pinned"] {
        let why = wait_for("the refusal under the new key", Duration::from_secs(20), || {
            last_refusal(&server, tenant).filter(|r| r.contains("verifies with the configured key"))
        });
        assert!(why.contains("10-grant"), "{why}");
    }
    assert!(refused_count(&server, "acme") > refused_before, "the refusal is counted");
    assert!(server.logs.text().contains("verifies with the configured key"), "the refusal is logged");
    // Polls do not bring it back.
    stays_unavailable(&server, "acme", Duration::from_secs(3));
    stays_unavailable(&server, "pinned", Duration::from_secs(1));
    drop(server);

    // Restarts: with the registry, and without it, the cache does not serve what A signed.
    let server = Server::start(dir.path(), &args);
    stays_unavailable(&server, "acme", Duration::from_secs(3));
    stays_unavailable(&server, "pinned", Duration::from_secs(1));
    drop(server);
    registry.stop();
    let server = Server::start(dir.path(), &args);
    stays_unavailable(&server, "acme", Duration::from_secs(1));
    stays_unavailable(&server, "pinned", Duration::from_secs(1));
    drop(server);

    // B signs the same digest: live again, and the cache keeps B's signature for a restart
    // without the registry.
    registry.run();
    let (code, _, err) =
        cli(&["sign", &oci_pinned(&live, &v1), "--key", b_private.to_str().unwrap()], &registry.args());
    assert_eq!(code, 0, "{err}");
    let server = Server::start(dir.path(), &args);
    wait_user(&server, "/authenticate/acme", "acme:v1");
    wait_user(&server, "/authenticate/pinned", "acme:v1");
    drop(server);
    registry.stop();
    let server = Server::start(dir.path(), &args);
    wait_user(&server, "/authenticate/acme", "acme:v1");
    wait_user(&server, "/authenticate/pinned", "acme:v1");

    // B's file replaced in place by a key that signed nothing (a mounted Secret rotated): a
    // change of keys too, seen at the next poll even without the registry.
    let (_, other) = signing_key(keys.path(), "other");
    std::fs::copy(&other, &b_public).unwrap();
    wait_unavailable(&server, "acme");
    wait_unavailable(&server, "pinned");
}

/// `registry/repository@digest` of a tag reference.
fn oci_pinned(reference: &str, digest: &str) -> String {
    format!("{}@{digest}", reference.rsplit_once(':').unwrap().0)
}

/// Every file named `name` under `dir`, recursively.
fn files_named(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_named(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
    found
}

/// What someone with write access to `--cache-dir` could do: a cached plugin manifest granting
/// another username, with its hash updated wherever the cache records one beside it.
fn forge_cache(cache: &Path) {
    let tomls = files_named(cache, "plugin.toml");
    assert!(!tomls.is_empty(), "nothing cached under {}", cache.display());
    for toml in tomls {
        let text = std::fs::read_to_string(&toml).unwrap().replace("acme:v1", "acme:forged");
        std::fs::write(&toml, &text).unwrap();
        let meta = toml.with_file_name("meta.json");
        if let Ok(bytes) = std::fs::read(&meta) {
            let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            value["manifest_sha256"] = sha256_hex(&text).into();
            std::fs::write(&meta, value.to_string()).unwrap();
        }
    }
}

/// Issue 26, 2: the cache is not a second source of truth. A cached plugin manifest edited on
/// disk (its recorded hash edited along) is never served — not with the registry up (it is
/// pulled again), not pinned, not with the registry down (503, with the reason).
#[test]
fn the_cache_is_not_a_second_source_of_truth() {
    let mut registry = OciRegistry::start();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = signing_key(keys.path(), "operator");
    let live = registry.reference("acme/grant:live");
    let v1 = publish(&registry, &live, "acme:v1", Some(&private));
    let tenants = tenants_file(&two_sources(&registry, &live, &v1, &public));
    let dir = PluginDir::new();
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().join("cc");
    let args = ["--tenants", tenants.path().to_str().unwrap(), "--cache-dir", cache.to_str().unwrap()];
    let server = Server::start(dir.path(), &args);
    wait_user(&server, "/authenticate/acme", "acme:v1");
    wait_user(&server, "/authenticate/pinned", "acme:v1");
    drop(server);

    let never_forged = |server: &Server, tenant: &str| {
        let path = format!("/authenticate/{tenant}");
        wait_for(&format!("{tenant} to serve acme:v1"), Duration::from_secs(20), || {
            let answer = server.review_at(&path, V1, Some("tok-12345678"), &[]);
            let user = granted_username(&answer);
            assert_ne!(user.as_deref(), Some("acme:forged"), "{tenant} served the forged cache entry");
            (user.as_deref() == Some("acme:v1")).then_some(())
        });
    };
    // The registry is up: the signed artifact is pulled again, the forged one never served.
    forge_cache(&cache);
    let server = Server::start(dir.path(), &args);
    never_forged(&server, "acme");
    never_forged(&server, "pinned");
    std::thread::sleep(Duration::from_secs(3));
    never_forged(&server, "acme");
    never_forged(&server, "pinned");
    drop(server);

    // The registry is down: nothing verifiable in the cache, so nothing served, and why.
    forge_cache(&cache);
    registry.stop();
    let server = Server::start(dir.path(), &args);
    stays_unavailable(&server, "acme", Duration::from_secs(1));
    stays_unavailable(&server, "pinned", Duration::from_secs(1));
    let why = last_refusal(&server, "pinned").expect("a refusal");
    assert!(why.contains("10-grant"), "{why}");
}

/// A document as large as a hostile registry makes it: chunked, with no length announced, so the
/// reader must count.
const HUGE: u64 = 1 << 30;

/// A TLS front of the real registry: it passes every request through (credentials and all),
/// except the GET whose path ends as `huge` says, which it answers with an endless document.
struct Front {
    host: String,
    huge: std::sync::Arc<std::sync::Mutex<Option<(String, u16)>>>,
    /// A Docker config.json with the registry's credentials for the front's host.
    auth_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Front {
    fn start(registry: &OciRegistry) -> Front {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        install_crypto_provider();
        let leaf = registry.pki.server("front");
        let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = std::sync::Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let huge = std::sync::Arc::new(std::sync::Mutex::new(None::<(String, u16)>));
        let (upstream, ca) = (registry.host.clone(), registry.pki.ca_pem.clone());
        let rules = huge.clone();
        std::thread::spawn(move || {
            let client = tls_client(&ca, None, &["http/1.1"]);
            for tcp in listener.incoming().flatten() {
                let (tls, client, upstream, rules) = (tls.clone(), client.clone(), upstream.clone(), rules.clone());
                std::thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(tls) else { return };
                    let stream = rustls::StreamOwned::new(conn, tcp);
                    let _ = Self::answer(stream, &client, &upstream, &rules);
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let auth_file = dir.path().join("config.json");
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", registry.user, registry.password));
        std::fs::write(&auth_file, format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#)).unwrap();
        Front { host, huge, auth_file, _dir: dir }
    }

    /// Answers the endless document from now on for GETs of a path ending in `path`.
    fn serve_huge(&self, path: &str, status: u16) {
        *self.huge.lock().unwrap() = Some((path.to_owned(), status));
    }

    fn answer(
        stream: impl std::io::Read + std::io::Write,
        client: &reqwest::blocking::Client,
        upstream: &str,
        rules: &std::sync::Mutex<Option<(String, u16)>>,
    ) -> std::io::Result<()> {
        use std::io::BufRead as _;
        let mut reader = std::io::BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("/").to_owned());
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let stream = reader.get_mut();
        let huge = rules.lock().unwrap().clone().filter(|(end, _)| method == "GET" && path.ends_with(end.as_str()));
        if let Some((_, status)) = huge {
            write!(
                stream,
                "HTTP/1.1 {status} Whatever\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            )?;
            let chunk = vec![b'x'; 64 << 10];
            // Something a JSON parser keeps reading: a string that never ends.
            let start = br#"{"schemaVersion":2,"mediaType":""#;
            write!(stream, "{:x}\r\n", start.len())?;
            stream.write_all(start)?;
            stream.write_all(b"\r\n")?;
            let mut sent = 0u64;
            while sent < HUGE {
                write!(stream, "{:x}\r\n", chunk.len())?;
                stream.write_all(&chunk)?;
                stream.write_all(b"\r\n")?;
                sent += chunk.len() as u64;
            }
            stream.write_all(b"0\r\n\r\n")?;
            return stream.flush();
        }
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut request = client.request(method.clone(), format!("https://{upstream}{path}"));
        for (name, value) in &headers {
            if ["authorization", "accept"].contains(&name.as_str()) {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        let response = request.send().map_err(std::io::Error::other)?;
        let status = response.status();
        let mut head = format!("HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or("?"));
        for name in ["content-type", "docker-content-digest", "www-authenticate", "location"] {
            for value in response.headers().get_all(name) {
                head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
            }
        }
        let length = response.headers().get("content-length").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = response.bytes().map_err(std::io::Error::other)?;
        let length = if method == reqwest::Method::HEAD { length.unwrap_or_default() } else { body.len().to_string() };
        write!(stream, "{head}content-length: {length}\r\nconnection: close\r\n\r\n")?;
        if method != reqwest::Method::HEAD {
            stream.write_all(&body)?;
        }
        stream.flush()
    }
}

/// The server's peak resident memory (VmHWM), in MiB.
fn peak_mib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib >> 10
}

/// A JSON document of the real registry (`/v2/REPOSITORY/PATH`).
fn registry_json(registry: &OciRegistry, repository: &str, path: &str) -> serde_json::Value {
    let client = tls_client(&registry.pki.ca_pem, None, &["http/1.1"]);
    let response = client
        .get(format!("https://{}/v2/{repository}/{path}", registry.host))
        .basic_auth(registry.user, Some(registry.password))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
    serde_json::from_slice(&response.bytes().unwrap()).unwrap()
}

/// Issue 26, 3: every document a registry serves for a signed artifact is read under a bound of
/// tollgate's own. A front of the real registry answers one of them at a time with an endless
/// document (1 GiB, chunked): the server's peak memory stays where it was, the transfer is cut
/// off, the refusal names the bound, and the last good generation stays live. The config blob
/// is not read at all (nothing in it is used).
#[test]
fn a_registry_cannot_make_the_server_hold_a_huge_document() {
    let registry = OciRegistry::start();
    let front = Front::start(&registry);
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = signing_key(keys.path(), "operator");
    let live = registry.reference("acme/grant:live");
    publish(&registry, &live, "acme:v1", Some(&private));
    let tenants = tenants_file(&format!(
        "[tenant.acme]\nusername_prefix = \"acme:\"\n[[tenant.acme.oci]]\nname = \"10-grant\"\nref = \"{}/acme/grant:live\"\nkeys = [\"{}\"]\npoll = \"1s\"\nauth = \"{}\"\nca_file = \"{}\"\n",
        front.host,
        public.display(),
        front.auth_file.display(),
        registry.pki.ca_path.display()
    ));
    let dir = PluginDir::new();
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().join("cc");
    let server = Server::start(
        dir.path(),
        &["--tenants", tenants.path().to_str().unwrap(), "--cache-dir", cache.to_str().unwrap()],
    );
    wait_user(&server, "/authenticate/acme", "acme:v1");
    let base = peak_mib(&server);

    // v2, signed: each of its documents in turn comes back endless.
    let v2 = publish(&registry, &live, "acme:v2", Some(&private));
    let manifest = registry_json(&registry, "acme/grant", &format!("manifests/{v2}"));
    let signature_tag = format!("{}.sig", v2.replace(':', "-"));
    let signature = registry_json(&registry, "acme/grant", &format!("manifests/{signature_tag}"));
    let layer = |media_type: &str| {
        let layers = manifest["layers"].as_array().unwrap();
        layers.iter().find(|l| l["mediaType"] == media_type).unwrap()["digest"].as_str().unwrap().to_owned()
    };
    let cases = [
        ("the manifest", format!("/manifests/{v2}"), 200, "max_manifest_bytes"),
        ("the signature manifest", format!("/manifests/{signature_tag}"), 200, "max_manifest_bytes"),
        (
            "the signature payload",
            format!("/blobs/{}", signature["layers"][0]["digest"].as_str().unwrap()),
            200,
            "more than",
        ),
        ("an error answer", format!("/manifests/{signature_tag}"), 404, "is not signed"),
        ("the component", format!("/blobs/{}", layer("application/wasm")), 200, "more than"),
        (
            "the plugin manifest",
            format!("/blobs/{}", layer("application/vnd.tollgate.plugin.manifest.v1+toml")),
            200,
            "more than",
        ),
    ];
    for (what, path, status, says) in cases {
        front.serve_huge(&path, status);
        let piece = path.rsplit('/').next().unwrap().to_owned();
        let why = wait_for(&format!("{what} refused"), Duration::from_secs(60), || {
            let grown = peak_mib(&server).saturating_sub(base);
            assert!(grown < 64, "{what}: the server's peak memory grew by {grown} MiB");
            last_refusal(&server, "acme").filter(|r| r.contains(says) && (status == 404 || r.contains(&piece)))
        });
        assert!(why.contains("10-grant"), "{what}: {why}");
        wait_user(&server, "/authenticate/acme", "acme:v1");
    }
    // The config blob is never read: v2 goes live with an endless one.
    front.serve_huge(&format!("/blobs/{}", manifest["config"]["digest"].as_str().unwrap()), 200);
    wait_for("v2 live", Duration::from_secs(60), || {
        let grown = peak_mib(&server).saturating_sub(base);
        assert!(grown < 64, "the config: the server's peak memory grew by {grown} MiB");
        let answer = server.review_at("/authenticate/acme", V1, Some("tok-12345678"), &[]);
        (granted_username(&answer).as_deref() == Some("acme:v2")).then_some(())
    });
    let grown = peak_mib(&server).saturating_sub(base);
    assert!(grown < 64, "the server's peak memory grew by {grown} MiB");
}

/// An egress proxy as clusters have them: `CONNECT host:port` (each request's head kept, for the
/// test to read), `200`, then bytes copied both ways.
struct ConnectProxy {
    url: String,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ConnectProxy {
    fn start(credentials: &str) -> ConnectProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{credentials}{}", listener.local_addr().unwrap());
        let heads = std::sync::Arc::<std::sync::Mutex<Vec<String>>>::default();
        let seen = heads.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || Self::tunnel(client, &seen));
            }
        });
        ConnectProxy { url, heads }
    }

    fn tunnel(client: std::net::TcpStream, seen: &std::sync::Mutex<Vec<String>>) -> std::io::Result<()> {
        use std::io::{BufRead as _, Write as _};
        let mut reader = std::io::BufReader::new(client.try_clone()?);
        let mut head = String::new();
        while reader.read_line(&mut head)? > 0 && !head.ends_with("\r\n\r\n") {}
        seen.lock().unwrap().push(head.clone());
        let target = head.strip_prefix("CONNECT ").and_then(|l| l.split_whitespace().next()).unwrap_or("");
        let mut upstream = std::net::TcpStream::connect(target)?;
        (&client).write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
        let (mut from_upstream, mut to_client) = (upstream.try_clone()?, client);
        let down = std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_upstream, &mut to_client);
            let _ = to_client.shutdown(std::net::Shutdown::Write);
        });
        let _ = std::io::copy(&mut reader, &mut upstream);
        let _ = upstream.shutdown(std::net::Shutdown::Write);
        let _ = down.join();
        Ok(())
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// `tollgate serve` as the harness starts it, with variables added to its environment (which
/// the harness's `Server` does not take), answering reviews, its log kept.
struct ServerWithEnv {
    child: std::process::Child,
    addr: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ServerWithEnv {
    fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> ServerWithEnv {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(tollgate_bin())
            .args(["serve", "--plugins"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .env("TOLLGATE_LOG", "info,tollgate=debug")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawning tollgate");
        let (stderr, log) = (child.stderr.take().unwrap(), std::sync::Arc::<std::sync::Mutex<String>>::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split(|c: char| c.is_whitespace() || c == '"').next().unwrap().to_owned());
                }
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(120));
        let addr = addr.unwrap_or_else(|_| panic!("tollgate did not start:\n{}", log.lock().unwrap()));
        ServerWithEnv { child, addr, log }
    }

    /// Waits (bounded) until `/authenticate/TENANT` grants `want`.
    fn wait_user(&self, tenant: &str, want: &str) {
        let client = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
        let review = serde_json::json!({"apiVersion": V1, "kind": "TokenReview", "spec": {"token": "tok-12345678"}});
        let url = format!("http://{}/authenticate/{tenant}", self.addr);
        let what = format!("{tenant} to grant {want}");
        wait_for(&what, Duration::from_secs(60), || {
            let answer = client.post(&url).json(&review).send().ok()?;
            let answer: serde_json::Value = answer.json().ok()?;
            (answer["status"]["user"]["username"] == want).then_some(())
        });
    }
}

impl Drop for ServerWithEnv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registry pulls honour the cluster's egress proxy as reqwest did: with `HTTPS_PROXY` the
/// signed plugin is pulled, verified and served through a `CONNECT` tunnel to the registry
/// (the proxy given its own credentials, and no other); with `NO_PROXY` naming the registry's
/// host (loopback, not bypassed by itself), it goes direct and the proxy sees nothing.
#[test]
fn registry_pulls_go_through_the_egress_proxy_unless_no_proxy_names_the_registry() {
    let registry = OciRegistry::start();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = signing_key(keys.path(), "operator");
    let live = registry.reference("acme/grant:live");
    publish(&registry, &live, "acme:v1", Some(&private));
    let tenants = tenants_file(&format!(
        "[tenant.acme]\nusername_prefix = \"acme:\"\n[[tenant.acme.oci]]\nname = \"10-grant\"\nref = \"{live}\"\nkeys = [\"{}\"]\npoll = \"1s\"\nauth = \"{}\"\nca_file = \"{}\"\n",
        public.display(),
        registry.auth_file.display(),
        registry.pki.ca_path.display()
    ));
    let dir = PluginDir::new();
    let serve = |proxy: &ConnectProxy, no_proxy: &str| {
        let cache = tempfile::tempdir().unwrap();
        let cache_dir = cache.path().join("cc");
        let args = ["--tenants", tenants.path().to_str().unwrap(), "--cache-dir", cache_dir.to_str().unwrap()];
        let server = ServerWithEnv::start(dir.path(), &args, &[("HTTPS_PROXY", &proxy.url), ("NO_PROXY", no_proxy)]);
        server.wait_user("acme", "acme:v1");
        (server, cache)
    };

    let proxy = ConnectProxy::start("egress:pr%40xy-secret@");
    let (server, _cache) = serve(&proxy, "localhost,.cluster.local,10.0.0.0/8");
    let heads = proxy.heads();
    assert!(heads.len() >= 3, "the manifest, its signature and its blobs through the proxy: {heads:?}");
    use base64::Engine as _;
    let proxy_auth = base64::engine::general_purpose::STANDARD.encode("egress:pr@xy-secret");
    let registry_auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", registry.user, registry.password));
    for head in &heads {
        let host = &registry.host;
        assert_eq!(
            head,
            &format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Basic {proxy_auth}\r\n\r\n"),
            "the registry's credentials stay inside its TLS"
        );
        assert!(!head.contains(&registry_auth));
    }
    let log = server.log.lock().unwrap().clone();
    assert!(!log.contains("pr@xy-secret") && !log.contains("pr%40xy-secret") && !log.contains(&proxy_auth), "{log}");
    drop(server);

    let proxy = ConnectProxy::start("");
    let (server, _cache) = serve(&proxy, "other.example, 127.0.0.1");
    std::thread::sleep(Duration::from_secs(2));
    server.wait_user("acme", "acme:v1");
    assert_eq!(proxy.heads(), Vec::<String>::new(), "NO_PROXY names the registry: direct");
}

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
    assert!(why.contains("10-a") && why.contains("no answer within 60s"), "{why}");
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

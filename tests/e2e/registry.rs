//! Plugins in OCI registries (issue 14): `tollgate push`, `pull`, `sign`, `verify`, `save` and
//! `load` against a real registry (Debian's docker-registry, TLS and basic auth) on loopback.

use std::path::Path;

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

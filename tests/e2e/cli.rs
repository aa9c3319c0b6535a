//! `tollgate review` and `tollgate check` (SPEC §6): the same loading path as `serve`.

use tollgate_tests::*;

fn examples_dir() -> PluginDir {
    let dir = PluginDir::new();
    dir.add("10-static-tokens", built::STATIC_TOKENS, &static_tokens_manifest("")).example(
        "50-group-mapper",
        built::GROUP_MAPPER,
        built::GROUP_MAPPER_MANIFEST,
    );
    dir
}

#[test]
fn review_reads_the_token_from_standard_input() {
    let dir = examples_dir();
    let plugins = dir.path().to_str().unwrap();
    let (code, out, err) = run_cli(&["review", "--plugins", plugins, "--explain"], &format!("{ALICE}\n"));
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["apiVersion"], V1);
    assert_eq!(
        answer["status"]["user"]["groups"],
        serde_json::json!(["demo:admins", "demo:dev-web", "demo:authenticated"])
    );
    assert!(err.contains("10-static-tokens") && err.contains("allow(username=\"alice\""), "{err}");
    assert!(err.contains("50-group-mapper"), "{err}");
    assert!(!out.contains(ALICE) && !err.contains(ALICE));

    let (code, out, _) = run_cli(&["review", "--plugins", plugins, "--api-version", "v1beta1"], "unknown-token\n");
    assert_eq!(code, 1);
    assert!(out.contains(V1BETA1) && out.contains("\"authenticated\":false"), "{out}");

    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), BOB).unwrap();
    let (code, out, _) =
        run_cli(&["review", "--plugins", plugins, "--token-file", token_file.path().to_str().unwrap()], "");
    assert_eq!(code, 0);
    assert!(out.contains("\"username\":\"bob\""), "{out}");

    let (code, _, err) = run_cli(&["review", "--plugins", plugins], "");
    assert_eq!(code, 2);
    assert!(err.contains("no token given"), "{err}");
}

#[test]
fn review_applies_the_guardrails() {
    let dir = PluginDir::new();
    dir.example("10-seed-demo", built::SEED_DEMO, built::SEED_DEMO_MANIFEST);
    let (code, out, err) =
        run_cli(&["review", "--plugins", dir.path().to_str().unwrap(), "--explain"], "anything-goes\n");
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("refused by host rule system-identity"), "{err}");
}

#[test]
fn check_runs_every_vector_and_reports_one_line_per_plugin() {
    let dir = PluginDir::new();
    dir.example("static-tokens", built::STATIC_TOKENS, built::STATIC_TOKENS_MANIFEST).example(
        "group-mapper",
        built::GROUP_MAPPER,
        built::GROUP_MAPPER_MANIFEST,
    );
    let (code, out, err) = run_cli(&["check", dir.path().to_str().unwrap()], "");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), 2, "{out}");
    assert!(out.contains("4 vectors passed") && out.contains("2 vectors passed"), "{out}");
    assert!(!out.contains("warn"), "the examples hold no live credential in a vector: {out}");

    // A vector failing, a live secret in a vector, a manifest without its plugin, garbage.
    let bad = PluginDir::new();
    bad.probe("fails", &probe_manifest("[[test]]\ntoken = \"t\"\nexpect = \"deny\"", "allow", "username = \"x\""))
        .probe(
            "leaks",
            &probe_manifest(
                "[[test]]\ntoken = \"live-secret\"\nexpect = \"allow\"\nusername = \"x\"",
                "allow",
                "username = \"x\"",
            ),
        );
    let (code, out, _) = run_cli(
        &["check", bad.path().join("fails.wasm").to_str().unwrap(), bad.path().join("leaks.wasm").to_str().unwrap()],
        "",
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL") && out.contains("expected deny, got allow"), "{out}");
    assert!(out.contains("warn") && out.contains("accepted under the live [config]"), "{out}");

    std::fs::write(bad.path().join("orphan.toml"), "role = \"mapper\"\n").unwrap();
    let (code, out, _) = run_cli(&["check", bad.path().to_str().unwrap()], "");
    assert_eq!(code, 1);
    assert!(out.contains("orphan.toml: a manifest without orphan.wasm"), "{out}");

    let garbage = PluginDir::new();
    std::fs::write(garbage.path().join("junk.wasm"), b"\0asm junk").unwrap();
    let (code, out, _) = run_cli(&["check", garbage.path().join("junk.wasm").to_str().unwrap()], "");
    assert_eq!(code, 1);
    assert!(out.contains("FAIL") && out.contains("not a WebAssembly component"), "{out}");
}

/// What `check` could not check, it says (issue 16): a component without its manifest, a
/// manifest without vectors, a `[config]` key that only the vectors supply (a typo in
/// `[config]`: the vectors pass and every live review abstains).
#[test]
fn check_says_what_it_could_not_check() {
    let dir = PluginDir::new();
    std::fs::copy(built::PROBE, dir.path().join("bare.wasm")).unwrap();
    dir.probe("untested", &probe_manifest("", "allow", "username = \"x\"")).probe(
        "typo",
        &probe_manifest(
            "[[test]]\ntoken = \"t-1\"\nexpect = \"allow\"\nusername = \"x\"\nconfig = { username = \"x\" }",
            "allow",
            "usernme = \"x\"",
        ),
    );
    let (code, out, _) = run_cli(&["check", dir.path().to_str().unwrap()], "");
    assert_eq!(code, 0, "warnings are not failures: {out}");
    let warning = |plugin: &str| {
        out.lines()
            .filter(|l| l.starts_with("warn") && l.contains(&format!("{plugin}.wasm")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(warning("bare").contains("no bare.toml beside it"), "{out}");
    assert!(warning("untested").contains("no [[test]] vectors"), "{out}");
    let typo = warning("typo");
    assert!(
        typo.contains("config key \"username\", which [config] lacks") && typo.contains("[config] has \"usernme\""),
        "{out}"
    );
    // What the vectors read tells the rest: the typo is never read, and `username` (set by
    // the vector, read by the plugin) is reported once, not again by the read-based check.
    assert!(typo.contains("[config] key \"usernme\" was never read in the 1 [[test]] vectors"), "{out}");
    assert_eq!(typo.matches("\"username\"").count(), 2, "one warning names it (and the hint): {out}");
}

/// What the plugin reads of its `[config]` decides two warnings (issue 16): a `[config]` key
/// it never read, and a key it reads that `[config]` lacks while holding a near miss. An option
/// it reads and leaves at its default, or one only some vectors set (a feature under test),
/// is no warning.
#[test]
fn check_warns_from_what_the_plugin_read() {
    let dir = PluginDir::new();
    let vector = |config: &str| format!("[[test]]\ntoken = \"t-1\"\nexpect = \"allow\"\nconfig = {{ {config} }}\n");
    let two = format!("{}{}", vector("groups = \"a\""), vector("uid = \"u\""));
    dir.probe("options", &probe_manifest(&two, "allow", "username = \"x\""))
        .probe("near", &probe_manifest(&vector("username = \"x\""), "allow", "username = \"x\"\nexpire_at = \"1\""));
    let (code, out, err) = run_cli(&["check", dir.path().to_str().unwrap()], "");
    assert_eq!(code, 0, "{out}{err}");
    // (The probe allows every token, so each also draws the live-credential warning.)
    let warnings = |plugin: &str| {
        out.lines()
            .filter(|l| {
                l.starts_with("warn") && l.contains(&format!("{plugin}.wasm")) && !l.contains("real credential")
            })
            .collect::<Vec<_>>()
    };
    let near = warnings("near").join("\n");
    assert!(
        near.contains("reads config key \"expires_at\", which [config] lacks: live it gets none ([config] has \"expire_at\": a typo?)"),
        "{out}"
    );
    assert!(
        near.contains("[config] key \"expire_at\" was never read in the 1 [[test]] vectors (the plugin reads \"expires_at\": a typo?)"),
        "{out}"
    );
    assert_eq!(warnings("near").len(), 2, "{out}");
    assert_eq!(warnings("options"), Vec::<&str>::new(), "{out}");
}

/// `check` runs a vector a second time (without its `config` overlay) to see whether the live
/// `[config]` accepts its token; that second run says nothing in the log (issue 16).
#[test]
fn check_logs_each_vector_once() {
    let dir = PluginDir::new();
    let vector = "[[test]]\ntoken = \"t-1\"\nexpect = \"abstain\"\nconfig = { stamp = \"s\" }\n";
    dir.probe("chatty", &probe_manifest(vector, "leak-log", ""));
    let (code, out, err) = run_cli(&["check", dir.path().to_str().unwrap()], "");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(err.matches("saw ").count(), 1, "{err}");
}

/// `review --explain` lists the `[config]` keys each plugin asked for, found or not (never
/// their values).
#[test]
fn explain_shows_what_each_plugin_read_of_its_config() {
    let dir = PluginDir::new();
    dir.probe("10-probe", &probe_manifest("", "allow", "username = \"sekrit-name\""));
    let (code, out, err) = run_cli(&["review", "--plugins", dir.path().to_str().unwrap(), "--explain"], "t-1\n");
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("config(\"action\") -> found") && err.contains("config(\"username\") -> found"), "{err}");
    assert!(err.contains("config(\"groups\") -> none") && err.contains("config(\"expires_at\") -> none"), "{err}");
    let explain: String = err.lines().filter(|l| l.contains("config(")).collect();
    assert!(!explain.contains("sekrit-name"), "values are never shown: {err}");
}

#[test]
fn serve_refuses_plain_http_off_loopback() {
    let dir = examples_dir();
    let (code, _, err) = run_cli(&["serve", "--plugins", dir.path().to_str().unwrap(), "--listen", "0.0.0.0:0"], "");
    assert_eq!(code, 2);
    assert!(err.contains("loopback only"), "{err}");
}

#[test]
fn a_manifest_typo_is_refused_not_ignored() {
    let dir = PluginDir::new();
    dir.probe("10-x", "rol = \"mapper\"\n[config]\naction = \"abstain\"\n");
    let (code, out, _) = run_cli(&["check", dir.path().to_str().unwrap()], "");
    assert_eq!(code, 1);
    assert!(out.contains("unknown field `rol`"), "{out}");
}

/// `check` and `review` take `--cache-dir` as `serve` does: an author iterating on a large
/// component pays its compile once.
#[test]
fn check_and_review_use_the_compile_cache() {
    let dir = examples_dir();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("cache");
    let plugins = dir.path().to_str().unwrap();
    let args = ["--cache-dir", cache_dir.to_str().unwrap()];
    let (code, out, err) = run_cli(&[&["check", plugins][..], &args].concat(), "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("compiled digest="), "{err}");
    let (code, out, err) = run_cli(&[&["review", "--plugins", plugins][..], &args].concat(), &format!("{BOB}\n"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("loaded from the compile cache") && !err.contains("compiled digest="), "{err}");
}

//! What every benchmark reviews: one bench token known to the example `static-tokens` plugin,
//! mapped by the example `group-mapper`, in a TokenReview shaped as kube-apiserver sends it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// The token every benchmark presents. Not a secret: it is listed (as its SHA-256) only in the
/// benchmark's own copy of the static-tokens manifest.
pub const BENCH_TOKEN: &str = "tollgate-bench-7c1e4a9f0b3d5e2a8c6f1d0e9b7a5c3e";

/// What the chain grants [`BENCH_TOKEN`]: static-tokens says `bench-user` in `idp:admins` and
/// `idp:dev-web`, group-mapper maps those and adds `demo:authenticated`.
pub const BENCH_USER: &str = "bench-user";
pub const BENCH_GROUPS: [&str; 3] = ["demo:admins", "demo:dev-web", "demo:authenticated"];

/// The repository root (this crate is `bench/` in it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ has a parent").to_path_buf()
}

/// Where the guest components are built (`cd plugins && cargo build --release`), or
/// `$TOLLGATE_BENCH_GUESTS`.
pub fn guests_dir() -> PathBuf {
    std::env::var_os("TOLLGATE_BENCH_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/guests/wasm32-wasip2/release"))
}

/// A built guest component, e.g. `static_tokens`.
pub fn guest(name: &str) -> Result<PathBuf> {
    guest_in(&guests_dir(), name)
}

/// A guest component from another build directory (experiments with guest build settings).
pub fn guest_in(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.wasm"));
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build the guests (`cd plugins && cargo build --release`)",
        path.display()
    );
    Ok(path)
}

/// The shipped static-tokens manifest with one more user: the bench token. Its `[[test]]`
/// vectors stay, so tollgate loads it exactly as it loads the shipped one.
pub fn static_tokens_manifest() -> Result<String> {
    let path = repo_root().join("plugins/static-tokens/static-tokens.toml");
    let shipped = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let line = format!("{}  {BENCH_USER}  2001  idp:admins,idp:dev-web  team=platform\n", sha256_hex(BENCH_TOKEN));
    let marker = "tokens = \"\"\"\n";
    anyhow::ensure!(shipped.contains(marker), "{} has no `tokens = \"\"\"` table", path.display());
    Ok(shipped.replacen(marker, &format!("{marker}{line}"), 1))
}

/// The shipped group-mapper manifest, unchanged.
pub fn group_mapper_manifest() -> Result<String> {
    let path = repo_root().join("plugins/group-mapper/group-mapper.toml");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The `[config]` table of a manifest, as (key, value) pairs.
pub fn config_of(manifest: &str) -> Result<Vec<(String, String)>> {
    let value: toml::Table = toml::from_str(manifest).context("parsing a manifest")?;
    let Some(table) = value.get("config").and_then(|c| c.as_table()) else { return Ok(Vec::new()) };
    Ok(table.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned()))).collect())
}

/// Both plugins' `[config]` merged (their keys do not collide), for the native chain.
pub fn native_config() -> Result<Vec<(String, String)>> {
    let mut config = config_of(&static_tokens_manifest()?)?;
    config.extend(config_of(&group_mapper_manifest()?)?);
    Ok(config)
}

/// Lays out the default tenant as `make run` does: `10-static-tokens` (with the bench user)
/// and `50-group-mapper`, each with its manifest.
pub fn write_plugin_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::copy(guest("static_tokens")?, dir.join("10-static-tokens.wasm"))?;
    std::fs::write(dir.join("10-static-tokens.toml"), static_tokens_manifest()?)?;
    std::fs::copy(guest("group_mapper")?, dir.join("50-group-mapper.wasm"))?;
    std::fs::write(dir.join("50-group-mapper.toml"), group_mapper_manifest()?)?;
    Ok(())
}

/// The Python pair (`plugins/python`, built by `plugins/languages.sh python` into
/// `target/guests/python`) with the bench user, and `instances` appended to both manifests.
pub fn write_python_dir(dir: &Path, instances: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let guests = repo_root().join("target/guests/python");
    for (name, file) in [("static-tokens", "10-static-tokens"), ("group-mapper", "50-group-mapper")] {
        let wasm = guests.join(format!("{name}.wasm"));
        anyhow::ensure!(wasm.exists(), "{} is missing: run `plugins/languages.sh python`", wasm.display());
        std::fs::copy(&wasm, dir.join(format!("{file}.wasm")))?;
        let shipped = repo_root().join(format!("plugins/python/{name}.toml"));
        let mut manifest =
            std::fs::read_to_string(&shipped).with_context(|| format!("reading {}", shipped.display()))?;
        if name == "static-tokens" {
            let line =
                format!("{}  {BENCH_USER}  2001  idp:admins,idp:dev-web  team=platform\n", sha256_hex(BENCH_TOKEN));
            manifest = manifest.replacen("tokens = \"\"\"\n", &format!("tokens = \"\"\"\n{line}"), 1);
        }
        std::fs::write(dir.join(format!("{file}.toml")), manifest + instances)?;
    }
    Ok(())
}

/// The audiences a real kube-apiserver sends (from `--service-account-issuer`).
pub const AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// The request body: a v1 TokenReview exactly as kube-apiserver serializes it.
pub fn review_body() -> String {
    format!(
        r#"{{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{{"creationTimestamp":null}},"spec":{{"token":"{BENCH_TOKEN}","audiences":["{AUDIENCE}"]}},"status":{{"user":{{}}}}}}"#
    )
}

/// Checks that an answer body grants the bench user with the mapped groups.
pub fn check_answer(body: &str) -> Result<()> {
    let v: serde_json::Value = serde_json::from_str(body).with_context(|| format!("not JSON: {body}"))?;
    let status = &v["status"];
    anyhow::ensure!(status["authenticated"] == true, "not authenticated: {body}");
    anyhow::ensure!(status["user"]["username"] == BENCH_USER, "wrong user: {body}");
    anyhow::ensure!(status["user"]["groups"] == serde_json::json!(BENCH_GROUPS), "wrong groups: {body}");
    anyhow::ensure!(v["apiVersion"] == "authentication.k8s.io/v1" && v["kind"] == "TokenReview", "wrong kind: {body}");
    Ok(())
}

/// SHA-256 hex, as the static-tokens table wants it (and as tollgate names a component).
pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes.as_ref()))
}

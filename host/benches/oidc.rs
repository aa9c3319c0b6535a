//! What verifying a JWT in the sandbox costs (issues 8 and 13). The `oidc-jwt` policy in Rust,
//! Python and JavaScript with a warm key cache (the JWKS already in its `tollgate:policy/kv`, so a
//! review is: read the cache, have the host verify the signature with `tollgate:policy/crypto`,
//! check the claims) next to the same work natively (the host's own `verify_jws` behind the same
//! key cache, and `jwt-verify`'s claim checks), RS256 and ES256, in fresh and in warm instances
//! (one plugin call each) — side by side in one run, each round timing a batch of every variant
//! in turn (a batch is consecutive reviews of one variant).
//!
//! `cargo bench -p tollgate --bench oidc` (part of `make bench`). Writes
//! `$TOLLGATE_BENCH_OUT/oidc.json` for the report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use jwt_verify::{Rules, check_claims, claims, string_list};
use serde_json::{Value, json};
use tollgate::observe::scrub::Scrubber;
use tollgate::plugins::loader::{Loader, PluginDefaults};
use tollgate::plugins::sandbox::crypto::KeyCache;
use tollgate::plugins::sandbox::{Decision, PluginEnv, Review, Sandbox, SandboxConfig};
use tollgate::policy::chain::Generation;
use tollgate_bench::{fixtures, stats};

#[path = "support/load.rs"]
mod load;

/// The shipped manifest's vectors: real RS256 and ES256 tokens, their JWKS, and the fixed clock
/// under which they are valid.
struct Fixture {
    tokens: [(String, &'static str); 2],
    jwks: String,
    issuer: String,
    now: u64,
}

fn fixture() -> Result<Fixture> {
    let path = fixtures::repo_root().join("plugins/oidc-jwt/oidc-jwt.toml");
    let manifest: toml::Table = toml::from_str(&std::fs::read_to_string(&path)?).context("oidc-jwt.toml")?;
    let tests = manifest["test"].as_array().context("no vectors")?;
    let vector = |name: &str| tests.iter().find(|t| t["name"].as_str().is_some_and(|n| n.starts_with(name)));
    let rs = vector("RS256").context("the RS256 vector")?;
    let es = vector("ES256").context("the ES256 vector")?;
    let text = |v: &toml::Value| v.as_str().map(str::to_owned).context("a string");
    Ok(Fixture {
        tokens: [(text(&rs["token"])?, "RS256"), (text(&es["token"])?, "ES256")],
        jwks: text(&rs["config"]["jwks"])?,
        issuer: text(&rs["config"]["issuer"])?,
        now: rs["now"].as_integer().context("now")? as u64,
    })
}

/// A generation of just `oidc-jwt`, its cache holding the JWKS and its clock at the vectors'.
fn generation(loader: &Loader, wasm: &Path, f: &Fixture, reuse: bool) -> Result<Generation> {
    let manifest = format!(
        "allowed_outbound_hosts = [\"{issuer}\"]\n[config]\nissuer = \"{issuer}\"\naudiences = \"kubernetes\"\n\
         username_prefix = \"oidc:\"\ngroups_claim = \"groups\"\ngroups_prefix = \"oidc:\"\n{}",
        if reuse { "[instances]\nreuse = true\n" } else { "" },
        issuer = f.issuer,
    );
    let mut generation = load::with_loader(loader, vec![("10-oidc", wasm.to_path_buf(), manifest)])?;
    let plugin = Arc::get_mut(&mut generation.plugins[0]).context("a fresh generation")?;
    plugin.env.kv.set("jwks", f.jwks.as_bytes().to_vec(), 3600).map_err(anyhow::Error::msg)?;
    plugin.env = Arc::new(PluginEnv { clock: Some(f.now), ..PluginEnv::clone(&plugin.env) });
    Ok(generation)
}

/// One call of the plugin (a fresh or warm instance, the call, the host's checks of its answer).
/// Not `chain::evaluate`: the vectors' tokens are valid only under their fixed clock, and the
/// chain's final-grant check rightly refuses a grant that expired by the real one.
fn in_sandbox(sandbox: &Sandbox, generation: &Generation, token: &str) -> Result<Duration> {
    let plugin = &generation.plugins[0];
    let review = Review {
        token: token.into(),
        audiences: vec![],
        tenant: String::new(),
        current: None,
        request_id: "0123456789abcdef".into(),
        client: None,
        attributes: Vec::new(),
    };
    let started = Instant::now();
    let (decision, _) = tollgate_bench::block_on(sandbox.call(
        &plugin.code,
        &plugin.env,
        &review.request_id,
        &review,
        Scrubber::new(token),
        Instant::now() + Duration::from_secs(5),
    ));
    let took = started.elapsed();
    match decision {
        Ok(Decision::Allow(grant)) => ensure!(grant.user.username.starts_with("oidc:"), "{}", grant.user.username),
        other => anyhow::bail!("not allowed: {other:?}"),
    }
    Ok(took)
}

/// What a review costs natively: the host's own `verify_jws` behind the same per-plugin key
/// cache the import uses (a hash of the JWKS text, then the check), the claims checked and the
/// user and groups named with `jwt-verify`, as the Rust guest does.
fn native(f: &Fixture, keys: &KeyCache, token: &str) -> Result<Duration> {
    let started = Instant::now();
    let set = keys.key_set(std::hint::black_box(&f.jwks)).map_err(anyhow::Error::msg)?;
    let algs = ["RS256".to_owned(), "ES256".to_owned()];
    let verified = tollgate_crypto::verify_jws(token, &set, &algs).map_err(anyhow::Error::msg)?;
    let claims = claims(&verified.payload).map_err(anyhow::Error::msg)?;
    let audiences = ["kubernetes".to_owned()];
    let rules = Rules { issuer: &f.issuer, audiences: &audiences, skew: 60, now: f.now };
    check_claims(&claims, &rules).map_err(anyhow::Error::msg)?;
    let user = format!("oidc:{}", claims.get("sub").and_then(Value::as_str).context("sub")?);
    let groups: Vec<String> =
        string_list(&claims, "groups").map_err(anyhow::Error::msg)?.into_iter().map(|g| format!("oidc:{g}")).collect();
    std::hint::black_box((user, groups));
    Ok(started.elapsed())
}

/// The signature check alone, as the host's import does it once the keys are parsed.
fn verify_only(f: &Fixture, keys: &KeyCache, token: &str) -> Result<Duration> {
    let set = keys.key_set(&f.jwks).map_err(anyhow::Error::msg)?;
    let algs = ["RS256".to_owned(), "ES256".to_owned()];
    let started = Instant::now();
    tollgate_crypto::verify_jws(token, &set, &algs).map_err(anyhow::Error::msg)?;
    Ok(started.elapsed())
}

/// The policy in each language (`target/guests/...`, built by `make plugins`/`languages.sh`).
fn components() -> Result<Vec<(&'static str, PathBuf)>> {
    let root = fixtures::repo_root().join("target/guests");
    let mut all = vec![("Rust", fixtures::guest("oidc_jwt")?)];
    for (name, dir) in [("Python", "python"), ("JavaScript", "js")] {
        let path = root.join(dir).join("oidc-jwt.wasm");
        ensure!(path.exists(), "{} is missing: run plugins/languages.sh {dir}", path.display());
        all.push((name, path));
    }
    Ok(all)
}

fn main() -> Result<()> {
    let f = fixture()?;
    let sandbox = Arc::new(Sandbox::new(&SandboxConfig::default())?);
    let loader = Loader::new(sandbox.clone(), PluginDefaults::default(), None);
    // [language] -> (fresh, warm) generations.
    let mut variants = Vec::new();
    // `TOLLGATE_BENCH_OIDC_LANGUAGES=Rust` (comma-separated) measures only those (for profiling).
    let only = std::env::var("TOLLGATE_BENCH_OIDC_LANGUAGES").ok();
    let wanted = |language: &str| only.as_deref().is_none_or(|o| o.split(',').any(|l| l == language));
    for (language, wasm) in components()?.into_iter().filter(|(l, _)| wanted(l)) {
        let fresh = generation(&loader, &wasm, &f, false).with_context(|| format!("{language} oidc-jwt"))?;
        let warm = generation(&loader, &wasm, &f, true).with_context(|| format!("{language} oidc-jwt"))?;
        variants.push((language, fresh, warm));
    }
    let rounds: usize = std::env::var("TOLLGATE_BENCH_OIDC_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    let batch = 30;
    let keys = KeyCache::new();
    // [alg]: native, verify only, then fresh and warm per language, in microseconds.
    let columns = 2 + 2 * variants.len();
    let mut samples: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); columns]; f.tokens.len()];
    for round in 0..rounds {
        // A batch of each variant in turn: consecutive reviews of one policy, as a server sees
        // them (one review of an 18 MB Python component between two Rust ones would measure the
        // caches it evicts, not the Rust one).
        for (i, (token, _)) in f.tokens.iter().enumerate() {
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            for _ in 0..batch {
                samples[i][0].push(us(native(&f, &keys, token)?));
            }
            for _ in 0..batch {
                samples[i][1].push(us(verify_only(&f, &keys, token)?));
            }
            for (v, (_, fresh, warm)) in variants.iter().enumerate() {
                for _ in 0..batch {
                    samples[i][2 + 2 * v].push(us(in_sandbox(&sandbox, fresh, token)?));
                }
                for _ in 0..batch {
                    samples[i][3 + 2 * v].push(us(in_sandbox(&sandbox, warm, token)?));
                }
            }
        }
        eprintln!("oidc: round {}/{rounds}", round + 1);
    }
    let rows: Vec<Value> = f
        .tokens
        .iter()
        .zip(&mut samples)
        .map(|((_, alg), s)| {
            let p50: Vec<(f64, f64)> =
                s.iter_mut().map(|v| stats::summarize(v)).map(|(p50, p99, _)| (p50, p99)).collect();
            let native = p50[0].0;
            let languages: Vec<Value> = variants
                .iter()
                .enumerate()
                .map(|(v, (language, _, _))| {
                    let (fresh, warm) = (p50[2 + 2 * v], p50[3 + 2 * v]);
                    json!({
                        "language": language,
                        "fresh_p50_us": fresh.0, "fresh_p99_us": fresh.1,
                        "warm_p50_us": warm.0, "warm_p99_us": warm.1,
                        "fresh_over_native": fresh.0 / native,
                        "warm_over_native": warm.0 / native,
                    })
                })
                .collect();
            json!({
                "alg": alg,
                "native_p50_us": native, "native_p99_us": p50[0].1,
                "verify_p50_us": p50[1].0,
                "languages": languages,
                "reviews": s[0].len(),
            })
        })
        .collect();
    for r in &rows {
        eprintln!("{r}");
    }
    if let Some(out) = std::env::var_os("TOLLGATE_BENCH_OUT") {
        std::fs::write(
            Path::new(&out).join("oidc.json"),
            serde_json::to_vec_pretty(&json!({ "rounds": rounds, "batch": batch, "rows": rows }))?,
        )?;
    }
    Ok(())
}

//! Per language (issue 5): component size, compile time, cached-load time, and the per-review
//! cost of the static-tokens + group-mapper chain in fresh and in warm instances — the Rust pair
//! and its Python, JavaScript, C and Go twins, side by side in one run: every round times a batch
//! of each language and mode in turn, so all of them see the same machine.
//!
//! `cargo bench -p tollgate --bench languages` (part of `make bench`); the components come from
//! `plugins/languages.sh`. Writes `$TOLLGATE_BENCH_OUT/languages.json` for the report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::json;
use tollgate::plugins::compile_cache::DiskCache;
use tollgate::plugins::loader::{Loader, PluginDefaults};
use tollgate::plugins::sandbox::{Sandbox, SandboxConfig};
use tollgate::policy::chain::Generation;
use tollgate::policy::chain::{self, Outcome, ReviewInput};
use tollgate_bench::fixtures::{self, AUDIENCE, BENCH_TOKEN, BENCH_USER};
use tollgate_bench::stats;

#[path = "support/load.rs"]
mod load;

const REUSE: &str = "\n[instances]\nreuse = true\n";

struct Lang {
    name: &'static str,
    /// (static-tokens, group-mapper) components.
    wasm: [PathBuf; 2],
    /// The directory holding the shipped manifests.
    manifests: PathBuf,
}

struct Measured {
    name: &'static str,
    sizes: [usize; 2],
    compile_ms: [f64; 2],
    load_ms: [f64; 2],
    fresh: Generation,
    warm: Generation,
    fresh_us: Vec<f64>,
    warm_us: Vec<f64>,
}

fn languages() -> Vec<Lang> {
    let root = fixtures::repo_root();
    let mut langs = vec![Lang {
        name: "Rust",
        wasm: [fixtures::guest("static_tokens").unwrap(), fixtures::guest("group_mapper").unwrap()],
        manifests: PathBuf::new(),
    }];
    for (name, dir) in [("Python", "python"), ("JavaScript", "js"), ("C", "c"), ("Go", "go")] {
        let guests = root.join("target/guests").join(dir);
        langs.push(Lang {
            name,
            wasm: [guests.join("static-tokens.wasm"), guests.join("group-mapper.wasm")],
            manifests: root.join("plugins").join(dir),
        });
    }
    langs
}

/// The language's shipped manifests, with the bench user added to the static tokens.
fn manifests(lang: &Lang) -> Result<[String; 2]> {
    if lang.name == "Rust" {
        return Ok([fixtures::static_tokens_manifest()?, fixtures::group_mapper_manifest()?]);
    }
    let read = |f: &str| {
        std::fs::read_to_string(lang.manifests.join(f)).with_context(|| format!("{}/{f}", lang.manifests.display()))
    };
    let line =
        format!("{}  {BENCH_USER}  2001  idp:admins,idp:dev-web  team=platform\n", fixtures::sha256_hex(BENCH_TOKEN));
    let st = read("static-tokens.toml")?.replacen("tokens = \"\"\"\n", &format!("tokens = \"\"\"\n{line}"), 1);
    Ok([st, read("group-mapper.toml")?])
}

fn measure(sandbox: &Arc<Sandbox>, cache: &Path, lang: &Lang) -> Result<Measured> {
    let mut sizes = [0; 2];
    let mut compile_ms = [0.0; 2];
    let mut load_ms = [0.0; 2];
    let disk = || DiskCache::open(cache, sandbox.engine_hash(), 4 << 30);
    for (i, path) in lang.wasm.iter().enumerate() {
        let bytes =
            std::fs::read(path).with_context(|| format!("{} is missing: run plugins/languages.sh", path.display()))?;
        sizes[i] = bytes.len();
        let started = Instant::now();
        let (_, serialized) = sandbox.compile(&bytes)?;
        compile_ms[i] = started.elapsed().as_secs_f64() * 1000.0;
        let digest = tollgate::plugins::sandbox::digest(&bytes);
        let mut loads = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            // SAFETY: `serialized` was just compiled by this very sandbox.
            drop(unsafe { sandbox.load_compiled(&serialized, digest.clone(), bytes.len()) }?);
            loads.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        load_ms[i] = stats::median(&loads);
        disk()?.put(&digest, &serialized)?;
    }
    // The generations load from the compile cache just filled: nothing compiles twice.
    let loader = Loader::new(sandbox.clone(), PluginDefaults::default(), Some(disk()?));
    let [st, gm] = manifests(lang)?;
    let generation = |suffix: &str| -> Result<Generation> {
        load::with_loader(
            &loader,
            vec![
                ("10-static-tokens", lang.wasm[0].clone(), format!("{st}{suffix}")),
                ("50-group-mapper", lang.wasm[1].clone(), format!("{gm}{suffix}")),
            ],
        )
    };
    Ok(Measured {
        name: lang.name,
        sizes,
        compile_ms,
        load_ms,
        fresh: generation("")?,
        warm: generation(REUSE)?,
        fresh_us: Vec::new(),
        warm_us: Vec::new(),
    })
}

fn review(sandbox: &Sandbox, generation: &Generation) -> Result<Duration> {
    let input = ReviewInput::new(BENCH_TOKEN.into(), vec![AUDIENCE.into()], None, "0123456789abcdef".into());
    let started = Instant::now();
    let verdict = tollgate_bench::block_on(chain::evaluate(
        sandbox,
        generation,
        &generation.built_under,
        &input,
        Instant::now() + Duration::from_secs(5),
    ));
    let took = started.elapsed();
    anyhow::ensure!(
        matches!(verdict.outcome, Outcome::Authenticated { .. }),
        "not authenticated: {:?}",
        verdict.outcome
    );
    Ok(took)
}

fn main() -> Result<()> {
    let sandbox = Arc::new(Sandbox::new(&SandboxConfig::default())?);
    let cache = tempfile::tempdir()?;
    let mut measured = Vec::new();
    for lang in languages() {
        eprintln!("languages: compiling {}...", lang.name);
        measured.push(measure(&sandbox, &cache.path().join("cc"), &lang)?);
    }
    let rounds: usize = std::env::var("TOLLGATE_BENCH_LANG_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    for round in 0..rounds {
        for m in &mut measured {
            // A heavy fresh instance is milliseconds: fewer of those per batch.
            let batch = if m.name == "Python" { 10 } else { 50 };
            for _ in 0..batch {
                m.fresh_us.push(review(&sandbox, &m.fresh)?.as_secs_f64() * 1e6);
                m.warm_us.push(review(&sandbox, &m.warm)?.as_secs_f64() * 1e6);
            }
        }
        eprintln!("languages: round {}/{rounds}", round + 1);
    }
    let rows: Vec<_> = measured
        .iter()
        .map(|m| {
            let (fresh_p50, fresh_p99, _) = stats::summarize(&mut m.fresh_us.clone());
            let (warm_p50, warm_p99, _) = stats::summarize(&mut m.warm_us.clone());
            json!({
                "language": m.name,
                "size_kb": m.sizes.map(|s| s as f64 / 1024.0),
                "compile_ms": m.compile_ms,
                "cached_load_ms": m.load_ms,
                "fresh_p50_us": fresh_p50,
                "fresh_p99_us": fresh_p99,
                "warm_p50_us": warm_p50,
                "warm_p99_us": warm_p99,
                "reviews": m.fresh_us.len(),
            })
        })
        .collect();
    for r in &rows {
        eprintln!("{r}");
    }
    if let Some(out) = std::env::var_os("TOLLGATE_BENCH_OUT") {
        std::fs::write(
            Path::new(&out).join("languages.json"),
            serde_json::to_vec_pretty(&json!({ "rounds": rounds, "rows": rows }))?,
        )?;
    }
    Ok(())
}

//! In-process cost of one review (issue 6): the chain — fresh instance, call, result checks —
//! for the example Rust plugins, next to the same policy code compiled natively, plus the cost
//! of a fresh instance alone; and the sandbox tuning knobs, each against the seed's settings.
//!
//! Two passes over the same cases:
//! 1. criterion (`cargo bench -p tollgate --bench review`), for its usual statistics;
//! 2. an interleaved pass: every round runs a batch of each case in turn and times every
//!    iteration, so all cases see the same machine (this VM has seconds-long slow stretches)
//!    and their percentiles and ratios are comparable. Its summary goes to
//!    `$TOLLGATE_BENCH_OUT/inprocess.json` for the report (`make bench`).
//!
//! Env: `TOLLGATE_BENCH_GUESTS` (built components), `TOLLGATE_BENCH_OUT`,
//! `TOLLGATE_BENCH_GUESTS_B` (add a case: the chain from other builds of the guests),
//! `TOLLGATE_BENCH_ROUNDS` (interleaved rounds, default 150), `TOLLGATE_BENCH_QUICK=1` (criterion
//! with short windows), `TOLLGATE_BENCH_PROFILE=KEY` (run one case for 10 s, for `perf record`).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use criterion::Criterion;
use serde_json::json;
use tollgate::plugins::sandbox::{Sandbox, SandboxConfig, Tuning};
use tollgate::policy::chain::Generation;
use tollgate::policy::chain::{self, Outcome, ReviewInput};
use tollgate_bench::fixtures::{self, AUDIENCE, BENCH_GROUPS, BENCH_TOKEN, BENCH_USER};
use tollgate_bench::native::NativeChain;
use tollgate_bench::stats;

#[path = "support/load.rs"]
mod load;

/// One sandbox configuration with the example tenant loaded twice: static-tokens alone, and
/// static-tokens + group-mapper (the `make run` chain).
struct Setup {
    sandbox: Arc<Sandbox>,
    alone: Generation,
    chain: Generation,
}

impl Setup {
    fn new(tuning: Tuning) -> Result<Self> {
        Self::with_guests(tuning, &fixtures::guests_dir())
    }

    fn with_guests(tuning: Tuning, guests: &std::path::Path) -> Result<Self> {
        let sandbox = Arc::new(Sandbox::new(&SandboxConfig { tuning, ..SandboxConfig::default() })?);
        anyhow::ensure!(sandbox.pooling(), "the pooling allocator is unavailable: figures would not be tollgate's");
        Ok(Self {
            alone: load::example_chain(&sandbox, guests, false)?,
            chain: load::example_chain(&sandbox, guests, true)?,
            sandbox,
        })
    }

    fn review(&self, generation: &Generation) -> Outcome {
        let input = ReviewInput::new(BENCH_TOKEN.into(), vec![AUDIENCE.into()], None, "0123456789abcdef".into());
        tollgate_bench::block_on(chain::evaluate(
            &self.sandbox,
            generation,
            &generation.built_under,
            &input,
            Instant::now() + Duration::from_secs(1),
        ))
        .outcome
    }

    fn instantiate(&self) {
        let plugin = &self.alone.plugins[0];
        let until = Instant::now() + plugin.env.timeout;
        drop(
            tollgate_bench::block_on(self.sandbox.bare(&plugin.code, &plugin.env, until, false)).expect("instantiates"),
        );
    }
}

/// A named case: what one iteration does.
struct Case<'a> {
    key: &'static str,
    label: &'static str,
    run: Box<dyn FnMut() + 'a>,
}

fn check(outcome: Outcome, groups: &[&str]) -> Result<()> {
    match outcome {
        Outcome::Authenticated { user, .. } if user.username == BENCH_USER && user.groups == groups => Ok(()),
        other => anyhow::bail!("unexpected outcome {other:?}"),
    }
}

fn main() -> Result<()> {
    let tuned = Setup::new(Tuning::DEFAULT).context("loading the example plugins")?;
    let seed = Setup::new(Tuning::SEED)?;
    let copy_init = Setup::new(Tuning { memory_init_cow: false, ..Tuning::DEFAULT })?;
    // An experiment: the same chain built from other guest components (e.g. other build flags).
    let guests_b = std::env::var_os("TOLLGATE_BENCH_GUESTS_B").map(PathBuf::from);
    let other = guests_b.as_deref().map(|dir| Setup::with_guests(Tuning::DEFAULT, dir)).transpose()?;
    let native = NativeChain::new(fixtures::native_config()?);
    let audiences = vec![AUDIENCE.to_string()];

    // Correctness first: every case answers the same review the same way.
    for s in [&tuned, &seed, &copy_init] {
        check(s.review(&s.alone), &["idp:admins", "idp:dev-web"])?;
        check(s.review(&s.chain), &BENCH_GROUPS)?;
    }
    if let Some(o) = &other {
        check(o.review(&o.chain), &BENCH_GROUPS)?;
    }
    let user = native.review(BENCH_TOKEN, &audiences).context("the native chain refused the bench token")?;
    anyhow::ensure!(user.username == BENCH_USER && user.groups == BENCH_GROUPS, "native chain: {user:?}");

    let mut cases: Vec<Case> = vec![
        Case {
            key: "chain_static_tokens_wasm",
            label: "chain [static-tokens], Wasm (instantiate + call + checks)",
            run: Box::new(|| drop(black_box(tuned.review(&tuned.alone)))),
        },
        Case {
            key: "static_tokens_native",
            label: "static-tokens, native Rust function",
            run: Box::new(|| drop(black_box(native.static_tokens(black_box(BENCH_TOKEN), &audiences)))),
        },
        Case {
            key: "chain_both_wasm",
            label: "chain [static-tokens + group-mapper], Wasm",
            run: Box::new(|| drop(black_box(tuned.review(&tuned.chain)))),
        },
        Case {
            key: "both_native",
            label: "static-tokens + group-mapper, native Rust",
            run: Box::new(|| drop(black_box(native.review(black_box(BENCH_TOKEN), &audiences)))),
        },
        Case {
            key: "instantiate_wasm",
            label: "fresh instance of static-tokens (Store + instantiate + drop)",
            run: Box::new(|| tuned.instantiate()),
        },
        Case {
            key: "chain_both_seed",
            label: "chain [both], seed settings (WASI context built for every call)",
            run: Box::new(|| drop(black_box(seed.review(&seed.chain)))),
        },
        Case {
            key: "chain_both_copy_init",
            label: "chain [both], defaults + memory_init_cow(false) (rejected knob)",
            run: Box::new(|| drop(black_box(copy_init.review(&copy_init.chain)))),
        },
        Case {
            key: "instantiate_seed",
            label: "fresh instance of static-tokens, seed settings",
            run: Box::new(|| seed.instantiate()),
        },
    ];
    if let Some(o) = &other {
        cases.push(Case {
            key: "chain_both_guests_b",
            label: "chain [both], guests from $TOLLGATE_BENCH_GUESTS_B",
            run: Box::new(|| drop(black_box(o.review(&o.chain)))),
        });
    }

    // Profiling aid: `TOLLGATE_BENCH_PROFILE=KEY` runs one case for 10 s and nothing else.
    if let Ok(key) = std::env::var("TOLLGATE_BENCH_PROFILE") {
        let case = cases.iter_mut().find(|c| c.key == key).context("no such case")?;
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_secs(10) {
            (case.run)();
            n += 1;
        }
        println!("{key}: {n} iterations, {:.2} µs each", started.elapsed().as_secs_f64() * 1e6 / n as f64);
        return Ok(());
    }

    // 1. criterion.
    let skip_criterion = std::env::var_os("TOLLGATE_BENCH_SKIP_CRITERION").is_some();
    let quick = std::env::var_os("TOLLGATE_BENCH_QUICK").is_some();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(if quick { 300 } else { 1000 }))
        .measurement_time(Duration::from_millis(if quick { 1000 } else { 3000 }))
        .sample_size(if quick { 20 } else { 50 })
        .configure_from_args();
    let mut group = criterion.benchmark_group("review");
    for case in cases.iter_mut().filter(|_| !skip_criterion) {
        group.bench_function(case.key, |b| b.iter(&mut case.run));
    }
    group.finish();
    let criterion_medians = read_criterion_medians(cases.iter().map(|c| c.key));

    // 2. interleaved, every iteration timed.
    let rounds: usize = std::env::var("TOLLGATE_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(150);
    let batch = 200;
    let mut samples: Vec<Vec<f64>> = cases.iter().map(|_| Vec::with_capacity(rounds * batch)).collect();
    let started = Instant::now();
    for round in 0..rounds {
        // Alternate the order so no case always follows the same one.
        let order: Vec<usize> =
            if round % 2 == 0 { (0..cases.len()).collect() } else { (0..cases.len()).rev().collect() };
        for i in order {
            let case = &mut cases[i];
            for _ in 0..batch {
                let t = Instant::now();
                (case.run)();
                samples[i].push(t.elapsed().as_nanos() as f64 / 1000.0);
            }
        }
    }
    let interleaved_secs = started.elapsed().as_secs_f64();

    let mut results = serde_json::Map::new();
    println!("\ninterleaved: {rounds} rounds x {batch} iterations per case, {interleaved_secs:.1} s");
    println!("{:<64} {:>9} {:>9} {:>11}", "case", "p50 µs", "p99 µs", "criterion");
    for (case, s) in cases.iter().zip(samples.iter_mut()) {
        let (p50, p99, p999) = stats::summarize(s);
        let crit = criterion_medians.get(case.key).copied();
        println!(
            "{:<64} {:>9.2} {:>9.2} {:>11}",
            case.label,
            p50,
            p99,
            crit.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into())
        );
        results.insert(
            case.key.into(),
            json!({"label": case.label, "p50_us": p50, "p99_us": p99, "p999_us": p999, "samples": s.len(), "criterion_median_us": crit}),
        );
    }
    let p50 = |k: &str| results.get(k).and_then(|c| c["p50_us"].as_f64()).unwrap_or(f64::NAN);
    let ratios = json!({
        "static_tokens_wasm_over_native": p50("chain_static_tokens_wasm") / p50("static_tokens_native"),
        "both_wasm_over_native": p50("chain_both_wasm") / p50("both_native"),
        "tuned_over_seed": p50("chain_both_wasm") / p50("chain_both_seed"),
        "copy_init_over_tuned": p50("chain_both_copy_init") / p50("chain_both_wasm"),
        "instantiate_tuned_over_seed": p50("instantiate_wasm") / p50("instantiate_seed"),
        "guests_b_over_default": p50("chain_both_guests_b") / p50("chain_both_wasm"),
    });
    println!("ratios (p50): {ratios:#}");
    let out = out_dir();
    std::fs::create_dir_all(&out)?;
    let summary =
        json!({"rounds": rounds, "batch": batch, "seconds": interleaved_secs, "cases": results, "ratios": ratios});
    std::fs::write(out.join("inprocess.json"), serde_json::to_vec_pretty(&summary)?)?;
    println!("wrote {}", out.join("inprocess.json").display());
    Ok(())
}

fn out_dir() -> PathBuf {
    std::env::var_os("TOLLGATE_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures::repo_root().join("target/bench"))
}

/// criterion's median estimate (µs) of each case, from `$CRITERION_HOME/review/KEY/new/estimates.json`.
fn read_criterion_medians<'a>(keys: impl Iterator<Item = &'a str>) -> std::collections::HashMap<String, f64> {
    let home =
        std::env::var_os("CRITERION_HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/criterion"));
    keys.filter_map(|k| {
        let text = std::fs::read_to_string(home.join("review").join(k).join("new/estimates.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some((k.to_string(), v["median"]["point_estimate"].as_f64()? / 1000.0))
    })
    .collect()
}

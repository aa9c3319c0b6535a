//! The fresh-instance ladder (issue 27): from the runtime's own floor to tollgate's example chain,
//! one layer added per rung, so each change shows which layer it moved.
//!
//! | rung | adds |
//! |---|---|
//! | a | the trivial guest (`plugins/testing/abstain`), wasmtime with tollgate's pool (`pool_config`), sync |
//! | b | async (`instantiate_async` + `call_async`) |
//! | c | the rest of tollgate's engine (`engine_config`: epoch interruption, backtraces) |
//! | d | tollgate's Store (`HostState`, limiter, epoch callback): `Sandbox::bare` |
//! | e | the two `timeout_at` wrappers of `Sandbox::call` |
//! | f | the real `static-tokens` guest instead of the trivial one |
//! | g | `Sandbox::call`'s checks and `chain::evaluate` around it |
//! | h | `group-mapper` as the second plugin: the example chain, the `make run` layout |
//!
//! and, to price the guests' own work, warm calls (one instance called again and again) of the
//! trivial guest, static-tokens and group-mapper; the chain with `memory_init_cow(false)` (a
//! rejected knob, re-measured); and the two native functions.
//!
//! Every round runs a block of each rung in turn (the order reverses every other round) and
//! keeps the block's median; a rung's figure is the median of its block medians, and "quiet" is
//! their lower quartile (this VM has seconds-long slow stretches, which the median of all rounds
//! includes). Writes `$TOLLGATE_BENCH_OUT/ladder.json` for the report (`make bench`).
//!
//! Env: `TOLLGATE_BENCH_GUESTS` (built components), `TOLLGATE_BENCH_OUT`,
//! `TOLLGATE_LADDER_ROUNDS` (default 200), `TOLLGATE_LADDER_BLOCK` (iterations per block,
//! default 100), `TOLLGATE_BENCH_PROFILE=RUNG` (one rung for 10 s, for `perf record`).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::json;
use tollgate::plugins::sandbox::{
    Bare, Decision, EXPORT, Grant, Prior, Review, Sandbox, SandboxConfig, Tuning, UserInfo, pool_config,
};
use tollgate::policy::chain::{self, Generation, Outcome, ReviewInput};
use tollgate_bench::fixtures::{self, AUDIENCE, BENCH_GROUPS, BENCH_TOKEN, BENCH_USER};
use tollgate_bench::native::NativeChain;
use tollgate_bench::{block_on, stats};
use wasmtime::component::{Component, ComponentExportIndex, InstancePre, Linker, TypedFunc};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Store};

#[path = "support/load.rs"]
mod load;

/// The trivial guest on a bare engine: rungs a-c.
struct Raw {
    engine: Engine,
    pre: InstancePre<()>,
    authenticate: ComponentExportIndex,
    /// The engine interrupts at epochs (tollgate's): the store needs a deadline.
    epochs: bool,
}

impl Raw {
    fn new(engine: Engine, wasm: &[u8], epochs: bool) -> Result<Self> {
        let component = Component::new(&engine, wasm).map_err(anyhow::Error::from)?;
        let mut linker = Linker::<()>::new(&engine);
        // The trivial guest calls nothing: whatever it imports may trap.
        linker.define_unknown_imports_as_traps(&component).map_err(anyhow::Error::from)?;
        let pre = linker.instantiate_pre(&component).map_err(anyhow::Error::from)?;
        let interface = component.get_export_index(None, EXPORT).context("the guest exports no authenticator")?;
        let authenticate =
            component.get_export_index(Some(&interface), "authenticate").context("no authenticate function")?;
        Ok(Self { engine, pre, authenticate, epochs })
    }

    fn store(&self) -> Store<()> {
        let mut store = Store::new(&self.engine, ());
        if self.epochs {
            store.set_epoch_deadline(u64::MAX / 2);
        }
        store
    }

    fn sync(&self, review: &Review) -> Result<Decision> {
        let mut store = self.store();
        let instance = self.pre.instantiate(&mut store).map_err(anyhow::Error::from)?;
        let f: TypedFunc<(&Review,), (Decision,)> =
            instance.get_typed_func(&mut store, self.authenticate).map_err(anyhow::Error::from)?;
        Ok(f.call(&mut store, (review,)).map_err(anyhow::Error::from)?.0)
    }

    async fn call_async(&self, review: &Review) -> Result<Decision> {
        let mut store = self.store();
        let instance = self.pre.instantiate_async(&mut store).await.map_err(anyhow::Error::from)?;
        let f: TypedFunc<(&Review,), (Decision,)> =
            instance.get_typed_func(&mut store, self.authenticate).map_err(anyhow::Error::from)?;
        Ok(f.call_async(&mut store, (review,)).await.map_err(anyhow::Error::from)?.0)
    }
}

/// wasmtime with the pool exactly as tollgate sets it ([`pool_config`]) and its defaults
/// otherwise: the runtime's floor.
fn floor_engine(cfg: &SandboxConfig) -> Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(cfg)));
    Engine::new(&config).map_err(anyhow::Error::from)
}

fn review(token: &str, current: Option<Grant>) -> Review {
    Review {
        token: token.into(),
        audiences: vec![AUDIENCE.into()],
        tenant: String::new(),
        current: current.map(|grant| Prior { grant, plugin: "10-static-tokens".into() }),
        request_id: "0123456789abcdef".into(),
        client: None,
        attributes: Vec::new(),
    }
}

/// What static-tokens grants the bench token, as group-mapper sees it.
fn bench_grant() -> Grant {
    Grant {
        user: UserInfo {
            username: BENCH_USER.into(),
            uid: "2001".into(),
            groups: vec!["idp:admins".into(), "idp:dev-web".into()],
            extra: vec![("team".into(), vec!["platform".into()])],
        },
        audiences: Vec::new(),
        expires_at: None,
    }
}

struct Rung<'a> {
    key: &'static str,
    label: &'static str,
    run: Box<dyn FnMut() -> Result<()> + 'a>,
}

fn evaluate(sandbox: &Sandbox, generation: &Generation) -> Outcome {
    let input = ReviewInput::new(BENCH_TOKEN.into(), vec![AUDIENCE.into()], None, "0123456789abcdef".into());
    block_on(chain::evaluate(
        sandbox,
        generation,
        &generation.built_under,
        &input,
        Instant::now() + Duration::from_secs(1),
    ))
    .outcome
}

fn expect_user(outcome: Outcome, groups: &[&str]) -> Result<()> {
    match outcome {
        Outcome::Authenticated { user, .. } if user.username == BENCH_USER && user.groups == groups => Ok(()),
        other => anyhow::bail!("unexpected outcome {other:?}"),
    }
}

fn expect_allow(decision: Decision) -> Result<()> {
    anyhow::ensure!(matches!(decision, Decision::Allow(_)), "expected allow, got {decision:?}");
    Ok(())
}

fn expect_abstain(decision: Decision) -> Result<()> {
    anyhow::ensure!(matches!(decision, Decision::Abstain), "expected abstain, got {decision:?}");
    Ok(())
}

fn main() -> Result<()> {
    let guests = fixtures::guests_dir();
    let cfg = SandboxConfig::default();
    let sandbox = Arc::new(Sandbox::new(&cfg)?);
    anyhow::ensure!(sandbox.pooling(), "the pooling allocator is unavailable: figures would not be tollgate's");
    let nocow = Arc::new(Sandbox::new(&SandboxConfig {
        tuning: Tuning { memory_init_cow: false, ..Tuning::DEFAULT },
        ..cfg.clone()
    })?);

    let abstain_wasm = std::fs::read(fixtures::guest_in(&guests, "abstain")?)?;
    let floor = Raw::new(floor_engine(&cfg)?, &abstain_wasm, false)?;
    let engine = Raw::new(sandbox.engine().clone(), &abstain_wasm, true)?;
    let trivial = load::generation(
        &sandbox,
        &guests,
        vec![load::Source { name: "10-abstain", guest: "abstain", manifest: "role = \"authenticator\"\n".into() }],
    )?;
    let alone = load::example_chain(&sandbox, &guests, false)?;
    let chain = load::example_chain(&sandbox, &guests, true)?;
    let chain_nocow = load::example_chain(&nocow, &guests, true)?;
    let native = NativeChain::new(fixtures::native_config()?);
    let audiences = vec![AUDIENCE.to_string()];

    let (abstain, tokens, mapper) = (&trivial.plugins[0], &alone.plugins[0], &chain.plugins[1]);
    let authn = review(BENCH_TOKEN, None);
    let mapped = review("", Some(bench_grant()));
    let far = || Instant::now() + Duration::from_secs(3600);
    let fresh = |plugin: &tollgate::plugins::plugin::Plugin, review: &Review, timers: bool| -> Result<Decision> {
        block_on(async {
            let until = Instant::now() + plugin.env.timeout;
            let mut bare =
                sandbox.bare(&plugin.code, &plugin.env, until, timers).await.map_err(|f| anyhow::anyhow!("{f}"))?;
            bare.call(review, timers).await.map_err(|f| anyhow::anyhow!("{f}"))
        })
    };
    let warm = |plugin: &tollgate::plugins::plugin::Plugin| -> Result<Bare> {
        block_on(sandbox.bare(&plugin.code, &plugin.env, far(), true)).map_err(|f| anyhow::anyhow!("{f}"))
    };
    let (mut warm_abstain, mut warm_tokens, mut warm_mapper) = (warm(abstain)?, warm(tokens)?, warm(mapper)?);
    let call_warm =
        |bare: &mut Bare, review: &Review| block_on(bare.call(review, true)).map_err(|f| anyhow::anyhow!("{f}"));

    // An experiment: the same rungs with the guests of another build (`TOLLGATE_BENCH_GUESTS_B`,
    // e.g. the previous version of the examples), side by side.
    let guests_b = std::env::var_os("TOLLGATE_BENCH_GUESTS_B").map(PathBuf::from);
    let chain_b = guests_b.as_deref().map(|dir| load::example_chain(&sandbox, dir, true)).transpose()?;
    let mut warm_b = match &chain_b {
        Some(c) => Some((warm(&c.plugins[0])?, warm(&c.plugins[1])?)),
        None => None,
    };

    let mut rungs: Vec<Rung> = vec![
        Rung {
            key: "a",
            label: "a: trivial guest, wasmtime with tollgate's pool settings, sync",
            run: Box::new(|| expect_abstain(floor.sync(black_box(&authn))?)),
        },
        Rung {
            key: "b",
            label: "b: + async (instantiate_async + call_async)",
            run: Box::new(|| expect_abstain(block_on(floor.call_async(black_box(&authn)))?)),
        },
        Rung {
            key: "c",
            label: "c: + tollgate's engine_config",
            run: Box::new(|| expect_abstain(block_on(engine.call_async(black_box(&authn)))?)),
        },
        Rung {
            key: "d",
            label: "d: + tollgate's Store (HostState, limiter, epoch callback)",
            run: Box::new(|| expect_abstain(fresh(abstain, black_box(&authn), false)?)),
        },
        Rung {
            key: "e",
            label: "e: + the two timeout_at wrappers",
            run: Box::new(|| expect_abstain(fresh(abstain, black_box(&authn), true)?)),
        },
        Rung {
            key: "f",
            label: "f: the real static-tokens instead (allow, 2 groups, 1 extra)",
            run: Box::new(|| expect_allow(fresh(tokens, black_box(&authn), true)?)),
        },
        Rung {
            key: "g",
            label: "g: + Sandbox::call's checks and chain::evaluate: [static-tokens]",
            run: Box::new(|| expect_user(evaluate(&sandbox, &alone), &["idp:admins", "idp:dev-web"])),
        },
        Rung {
            key: "h",
            label: "h: + group-mapper: the example chain [static-tokens + group-mapper]",
            run: Box::new(|| expect_user(evaluate(&sandbox, &chain), &BENCH_GROUPS)),
        },
        Rung {
            key: "h_nocow",
            label: "h with memory_init_cow(false) (data segments copied in)",
            run: Box::new(|| expect_user(evaluate(&nocow, &chain_nocow), &BENCH_GROUPS)),
        },
        Rung {
            key: "m",
            label: "m: group-mapper alone, fresh instance, as rung f",
            run: Box::new(|| expect_allow(fresh(mapper, black_box(&mapped), true)?)),
        },
        Rung {
            key: "warm_abstain",
            label: "warm call: trivial guest (one instance, called again)",
            run: Box::new(|| expect_abstain(call_warm(&mut warm_abstain, black_box(&authn))?)),
        },
        Rung {
            key: "warm_tokens",
            label: "warm call: static-tokens",
            run: Box::new(|| expect_allow(call_warm(&mut warm_tokens, black_box(&authn))?)),
        },
        Rung {
            key: "warm_mapper",
            label: "warm call: group-mapper",
            run: Box::new(|| expect_allow(call_warm(&mut warm_mapper, black_box(&mapped))?)),
        },
        Rung {
            key: "native",
            label: "native: static-tokens + group-mapper as Rust functions",
            run: Box::new(|| {
                let user = native.review(black_box(BENCH_TOKEN), &audiences).context("the native chain refused")?;
                anyhow::ensure!(user.groups == BENCH_GROUPS, "native chain: {user:?}");
                Ok(())
            }),
        },
    ];

    if let Some(chain_b) = &chain_b {
        rungs.push(Rung {
            key: "f_b",
            label: "f with static-tokens from $TOLLGATE_BENCH_GUESTS_B",
            run: Box::new(|| expect_allow(fresh(&chain_b.plugins[0], black_box(&authn), true)?)),
        });
        rungs.push(Rung {
            key: "h_b",
            label: "h with both guests from $TOLLGATE_BENCH_GUESTS_B",
            run: Box::new(|| expect_user(evaluate(&sandbox, chain_b), &BENCH_GROUPS)),
        });
        let (tokens_b, mapper_b) = warm_b.as_mut().map(|(t, m)| (t, m)).context("warm instances of B")?;
        rungs.push(Rung {
            key: "warm_tokens_b",
            label: "warm call: static-tokens from $TOLLGATE_BENCH_GUESTS_B",
            run: Box::new(|| expect_allow(call_warm(tokens_b, black_box(&authn))?)),
        });
        rungs.push(Rung {
            key: "warm_mapper_b",
            label: "warm call: group-mapper from $TOLLGATE_BENCH_GUESTS_B",
            run: Box::new(|| expect_allow(call_warm(mapper_b, black_box(&mapped))?)),
        });
    }

    // Correctness first: every rung answers as it should.
    for rung in &mut rungs {
        (rung.run)().with_context(|| format!("rung {}", rung.key))?;
    }

    if let Ok(key) = std::env::var("TOLLGATE_BENCH_PROFILE") {
        let rung = rungs.iter_mut().find(|r| r.key == key).context("no such rung")?;
        let (started, mut n) = (Instant::now(), 0u64);
        while started.elapsed() < Duration::from_secs(10) {
            (rung.run)()?;
            n += 1;
        }
        println!("{key}: {n} iterations, {:.2} µs each", started.elapsed().as_secs_f64() * 1e6 / n as f64);
        return Ok(());
    }

    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (rounds, block) = (env("TOLLGATE_LADDER_ROUNDS", 200), env("TOLLGATE_LADDER_BLOCK", 100));
    let mut medians: Vec<Vec<f64>> = rungs.iter().map(|_| Vec::with_capacity(rounds)).collect();
    let mut times = vec![0f64; block];
    let started = Instant::now();
    for round in 0..rounds {
        let order: Vec<usize> =
            if round % 2 == 0 { (0..rungs.len()).collect() } else { (0..rungs.len()).rev().collect() };
        for i in order {
            for t in times.iter_mut() {
                let at = Instant::now();
                (rungs[i].run)()?;
                *t = at.elapsed().as_nanos() as f64 / 1000.0;
            }
            medians[i].push(stats::median(&times));
        }
    }
    let seconds = started.elapsed().as_secs_f64();

    let mut results = serde_json::Map::new();
    println!("\nladder: {rounds} rounds x {block} iterations per rung, {seconds:.1} s");
    println!("{:<72} {:>10} {:>10}", "rung", "median µs", "quiet µs");
    for (rung, m) in rungs.iter().zip(medians.iter_mut()) {
        m.sort_by(f64::total_cmp);
        let (median, quiet) = (stats::median(m), stats::percentile(m, 25.0));
        println!("{:<72} {median:>10.2} {quiet:>10.2}", rung.label);
        results.insert(rung.key.into(), json!({"label": rung.label, "median_us": median, "quiet_us": quiet}));
    }
    // Issue 27's target for the chain: at most 1.3 x (two fresh instances at rung e + the two
    // guests' warm calls).
    let q = |k: &str| results.get(k).and_then(|r| r["median_us"].as_f64()).unwrap_or(f64::NAN);
    let budget = 2.0 * q("e") + q("warm_tokens") + q("warm_mapper");
    let target = json!({"chain_us": q("h"), "floor_us": budget, "ratio": q("h") / budget, "goal": 1.3});
    println!(
        "chain h = {:.1} µs; 2 x e + warm static-tokens + warm group-mapper = {budget:.1} µs: {:.2}x (goal <= 1.3x)",
        q("h"),
        q("h") / budget
    );
    let out = std::env::var_os("TOLLGATE_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures::repo_root().join("target/bench"));
    std::fs::create_dir_all(&out)?;
    let summary = json!({
        "rounds": rounds, "block": block, "seconds": seconds, "rungs": results, "target": target,
        "wasmtime": wasmtime_version(),
    });
    std::fs::write(out.join("ladder.json"), serde_json::to_vec_pretty(&summary)?)?;
    println!("wrote {}", out.join("ladder.json").display());
    Ok(())
}

/// The wasmtime the host links, from the lock file the bench was built with.
fn wasmtime_version() -> String {
    let lock = std::fs::read_to_string(fixtures::repo_root().join("Cargo.lock")).unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasmtime\""
            && let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            return v.trim_end_matches('"').to_owned();
        }
    }
    "unknown".into()
}

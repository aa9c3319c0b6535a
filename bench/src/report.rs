//! The table `make bench` prints and writes into BENCHMARKS.md (between the `bench:begin` and
//! `bench:end` markers; the hand-written analysis around them stays).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::e2e::{self, Run};
use crate::reload::{Mode, Swaps};
use crate::restart::Restarts;
use crate::stats::{median, percentile};

pub const BEGIN: &str = "<!-- bench:begin (written by `make bench`; edits here are overwritten) -->";
pub const END: &str = "<!-- bench:end -->";

/// What the machine looked like (captured at the start and end of the run).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub date: String,
    pub cpus: String,
    pub cpu_model: String,
    pub kernel: String,
    pub rustc: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub busy_at_start: String,
    pub command: String,
    pub minutes: f64,
}

fn read<T: for<'de> Deserialize<'de>>(out: &Path, name: &str) -> Option<T> {
    let text = std::fs::read_to_string(out.join(name)).ok()?;
    serde_json::from_str(&text).ok()
}

fn ms(us: f64) -> String {
    if us >= 100_000.0 { format!("{:.0}", us / 1000.0) } else { format!("{:.2}", us / 1000.0) }
}

pub fn render(out: &Path) -> Result<String> {
    let machine: Machine = read(out, "machine.json").unwrap_or_default();
    let mut md = String::new();
    writeln!(
        md,
        "Latest run: {} — `{}` took {:.1} min in all (tools and builds already in place).\n",
        machine.date, machine.command, machine.minutes
    )?;
    writeln!(
        md,
        "Machine: {} CPUs ({}), Linux {}, {}; load average {} at the start, {} at the end. \
         Busiest processes at the start: {}. The load generator (wrk) runs on the same cores.\n",
        machine.cpus,
        machine.cpu_model,
        machine.kernel,
        machine.rustc,
        machine.loadavg_start,
        machine.loadavg_end,
        machine.busy_at_start
    )?;

    // End to end.
    if let Some(runs) = read::<Vec<Run>>(out, "e2e.json") {
        let rounds = runs.iter().map(|r| r.round).max().unwrap_or(0);
        let secs = runs.first().map(|r| r.seconds).unwrap_or(0.0);
        writeln!(
            md,
            "### End to end: loopback HTTP/1.1 keep-alive, wrk -t2 -c64, {rounds} rounds of {secs:.0} s per server, interleaved\n"
        )?;
        writeln!(md, "| server | reviews/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/review | errors |")?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|---:|")?;
        for (key, label) in e2e::CONFIGS {
            let mine: Vec<&Run> = runs.iter().filter(|r| r.config == key).collect();
            if mine.is_empty() {
                continue;
            }
            let m = |f: fn(&Run) -> f64| median(&mine.iter().map(|r| f(r)).collect::<Vec<_>>());
            writeln!(
                md,
                "| {label} | {:.0} | {} | {} | {} | {:.1} | {} |",
                m(|r| r.rps),
                ms(m(|r| r.p50_us)),
                ms(m(|r| r.p99_us)),
                ms(m(|r| r.p999_us)),
                m(|r| r.cpu_us_per_review),
                mine.iter().map(|r| r.errors).sum::<u64>()
            )?;
        }
        let ratio = |a: &str, b: &str| -> Option<(f64, Vec<f64>)> {
            let per_round: Vec<f64> = (1..=rounds)
                .filter_map(|round| {
                    let get = |k: &str| runs.iter().find(|r| r.config == k && r.round == round).map(|r| r.rps);
                    Some(get(a)? / get(b)?)
                })
                .collect();
            (!per_round.is_empty()).then(|| (median(&per_round), per_round))
        };
        writeln!(md)?;
        writeln!(md, "Throughput ratios, per round (same round = minutes apart), median of rounds:\n")?;
        if let Some((r, all)) = ratio("tollgate", "ceiling") {
            writeln!(
                md,
                "- (a)/(b) tollgate / ceiling = **{r:.2}** (rounds: {}) — target ≥ 0.5 (issue 27; a fresh instance per plugin call): **{}**",
                fmt_list(&all, 2),
                met(r >= 0.5)
            )?;
        }
        if let Some((r, all)) = ratio("tollgate", "flask") {
            writeln!(
                md,
                "- (a)/(c) tollgate / Flask = **{r:.0}×** (rounds: {}) — target ≥ 50× (stretch 100×): **{}**",
                fmt_list(&all, 0),
                met(r >= 50.0)
            )?;
        }
        if let Some((r, all)) = ratio("tollgate-audit-file", "tollgate") {
            writeln!(md, "- audit log to a file / off = {r:.2} (rounds: {})", fmt_list(&all, 2))?;
        }
        if let Some((r, all)) = ratio("tollgate-cache", "tollgate") {
            writeln!(md, "- decision cache hits / no cache = {r:.2} (rounds: {})", fmt_list(&all, 2))?;
        }
        if let Some((r, all)) = ratio("python-reuse", "python-fresh") {
            writeln!(md, "- (d) Python: warm instances / fresh = {r:.1}× (rounds: {})", fmt_list(&all, 1))?;
        }
        if let Some((r, all)) = ratio("python-reuse", "tollgate") {
            writeln!(
                md,
                "- (d) Python with warm instances / (a) the Rust chain = {r:.2} (rounds: {})",
                fmt_list(&all, 2)
            )?;
        }
        if let Some((r, all)) = ratio("tollgate-compare", "tollgate") {
            writeln!(md, "- (experiment) --compare build / this build = {r:.2} (rounds: {})", fmt_list(&all, 2))?;
        }
        let cpu = |k: &str| {
            let v: Vec<f64> = runs.iter().filter(|r| r.config == k).map(|r| r.cpu_us_per_review).collect();
            (!v.is_empty()).then(|| median(&v))
        };
        if let (Some(a), Some(b)) = (cpu("tollgate"), cpu("ceiling")) {
            writeln!(
                md,
                "- server CPU per review: tollgate {a:.1} µs, ceiling {b:.1} µs: tollgate spends {:.1} µs more per review (a machine-noise-robust view of the same gap)",
                a - b
            )?;
        }
        writeln!(md)?;
    }

    // In process.
    if let Some(v) = read::<Value>(out, "inprocess.json") {
        writeln!(
            md,
            "### In process: one review through `chain::evaluate` (criterion, then {} interleaved rounds × {} iterations per case, each timed)\n",
            v["rounds"], v["batch"]
        )?;
        writeln!(md, "| case | p50 µs | p99 µs | criterion median µs |")?;
        writeln!(md, "|---|---:|---:|---:|")?;
        let order = [
            "chain_static_tokens_wasm",
            "static_tokens_native",
            "chain_both_wasm",
            "both_native",
            "instantiate_wasm",
            "chain_both_seed",
            "chain_both_copy_init",
            "instantiate_seed",
            "chain_both_guests_b",
        ];
        for key in order {
            let c = &v["cases"][key];
            if c.is_null() {
                continue;
            }
            writeln!(
                md,
                "| {} | {:.2} | {:.2} | {} |",
                c["label"].as_str().unwrap_or(key),
                c["p50_us"].as_f64().unwrap_or(0.0),
                c["p99_us"].as_f64().unwrap_or(0.0),
                c["criterion_median_us"].as_f64().map(|x| format!("{x:.2}")).unwrap_or_else(|| "—".into())
            )?;
        }
        let r = &v["ratios"];
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let p50 = v["cases"]["chain_static_tokens_wasm"]["p50_us"].as_f64().unwrap_or(f64::NAN);
        writeln!(md)?;
        writeln!(
            md,
            "- Wasm / native, static-tokens: **{:.1}×**; the two-plugin chain: **{:.1}×** (p50 over p50)",
            f("static_tokens_wasm_over_native"),
            f("both_wasm_over_native")
        )?;
        writeln!(
            md,
            "- per-review cost of the Rust chain (static-tokens) ≤ 15 µs median: **{p50:.1} µs — {}**",
            met(p50 <= 15.0)
        )?;
        writeln!(
            md,
            "- tuning, p50 ratios side by side (< 1 is faster): lazy WASI (the default now) / seed = {:.2} for the chain of two, {:.2} for a fresh instance alone; memory_init_cow(false) / default = {:.2} (not adopted)\n",
            f("tuned_over_seed"),
            f("instantiate_tuned_over_seed"),
            f("copy_init_over_tuned")
        )?;
    }

    // The ladder.
    if let Some(v) = read::<Value>(out, "ladder.json") {
        writeln!(
            md,
            "### The fresh-instance ladder: one layer per rung (`cargo bench -p tollgate --bench ladder`, wasmtime {}, {} interleaved rounds × {} iterations)\n",
            v["wasmtime"].as_str().unwrap_or("?"),
            v["rounds"],
            v["block"]
        )?;
        writeln!(md, "| rung | median of block medians µs | quiet (lower quartile) µs |")?;
        writeln!(md, "|---|---:|---:|")?;
        let order = [
            "a",
            "b",
            "c",
            "d",
            "e",
            "f",
            "g",
            "h",
            "h_nocow",
            "m",
            "warm_abstain",
            "warm_tokens",
            "warm_mapper",
            "native",
            "f_b",
            "h_b",
            "warm_tokens_b",
            "warm_mapper_b",
        ];
        for key in order {
            let r = &v["rungs"][key];
            if r.is_null() {
                continue;
            }
            writeln!(
                md,
                "| {} | {:.2} | {:.2} |",
                r["label"].as_str().unwrap_or(key),
                r["median_us"].as_f64().unwrap_or(f64::NAN),
                r["quiet_us"].as_f64().unwrap_or(f64::NAN)
            )?;
        }
        let t = &v["target"];
        let f = |k: &str| t[k].as_f64().unwrap_or(f64::NAN);
        writeln!(
            md,
            "\n- the example chain (h) = {:.1} µs against 2 × e + the two guests' warm calls = {:.1} µs: **{:.2}×** — target ≤ 1.3×: **{}**\n",
            f("chain_us"),
            f("floor_us"),
            f("ratio"),
            met(f("ratio") <= 1.3)
        )?;
    }

    // Reviews during a recompile.
    if let Some(all) = read::<Vec<crate::recompile::Recompiles>>(out, "recompile.json") {
        writeln!(
            md,
            "### Reviews during a recompile: a second tenant recompiles a large Python component (componentize-py) again and again while reviews come at 1,000/s\n"
        )?;
        writeln!(
            md,
            "| server | round | quiet p50 ms | quiet p99 ms | compiling p50 ms | compiling p99 ms | compiling p99 / quiet p99 | compile wall ms | reviews (quiet, compiling) | errors |"
        )?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---|---|---:|")?;
        for r in &all {
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {} | {}, {} | {} |",
                if r.config == "tollgate" { "tollgate (under test)" } else { "tollgate (--compare)" },
                r.round,
                ms(r.quiet_p50_us),
                ms(r.quiet_p99_us),
                ms(r.compiling_p50_us),
                ms(r.compiling_p99_us),
                r.compiling_p99_us / r.quiet_p99_us,
                fmt_list(&r.compile_ms, 0),
                r.quiet_reviews,
                r.compiling_reviews,
                r.errors
            )?;
        }
        let ratios: Vec<f64> =
            all.iter().filter(|r| r.config == "tollgate").map(|r| r.compiling_p99_us / r.quiet_p99_us).collect();
        writeln!(
            md,
            "\n- p99 during a recompile / quiet p99 (tollgate under test, median of rounds) = **{:.2}** — target ≤ 2: **{}**\n",
            median(&ratios),
            met(median(&ratios) <= 2.0)
        )?;
    }

    // Languages.
    if let Some(v) = read::<Value>(out, "languages.json") {
        writeln!(
            md,
            "### Per language: the static-tokens + group-mapper chain (`cargo bench -p tollgate --bench languages`, {} interleaved rounds)\n",
            v["rounds"]
        )?;
        writeln!(
            md,
            "| language | size KB (static-tokens, group-mapper) | compile ms | cached load ms | per review, fresh p50 µs | per review, warm p50 µs | fresh / warm |"
        )?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|---:|")?;
        let pair = |x: &Value| format!("{:.0}, {:.0}", x[0].as_f64().unwrap_or(0.0), x[1].as_f64().unwrap_or(0.0));
        let pair1 = |x: &Value| format!("{:.1}, {:.1}", x[0].as_f64().unwrap_or(0.0), x[1].as_f64().unwrap_or(0.0));
        for r in v["rows"].as_array().into_iter().flatten() {
            let (fresh, warm) = (r["fresh_p50_us"].as_f64().unwrap_or(0.0), r["warm_p50_us"].as_f64().unwrap_or(0.0));
            writeln!(
                md,
                "| {} | {} | {} | {} | {fresh:.1} | {warm:.1} | {:.1}× |",
                r["language"].as_str().unwrap_or("?"),
                pair(&r["size_kb"]),
                pair(&r["compile_ms"]),
                pair1(&r["cached_load_ms"]),
                fresh / warm.max(f64::MIN_POSITIVE)
            )?;
        }
        writeln!(
            md,
            "\nCompile: once per content digest, off the request path; cached load: the same code from `--cache-dir` (deserialize + world check). Fresh: a new instance per plugin call (the default); warm: `[instances] reuse = true`.\n"
        )?;
    }

    // Verifying JWTs in the sandbox, the signature checked by the host (issues 8 and 13).
    if let Some(v) = read::<Value>(out, "oidc.json") {
        writeln!(
            md,
            "### oidc-jwt with a warm key cache, the signature checked by the host (`tollgate:policy/crypto`), per language, vs the same work natively (`cargo bench -p tollgate --bench oidc`, {} interleaved rounds of {})
",
            v["rounds"], v["batch"]
        )?;
        writeln!(
            md,
            "| algorithm | native review p50 µs | of which the signature check | policy in | fresh instance p50 µs | warm instance p50 µs | fresh / native | warm / native | warm / Rust warm |"
        )?;
        writeln!(md, "|---|---:|---:|---|---:|---:|---:|---:|---:|")?;
        for r in v["rows"].as_array().into_iter().flatten() {
            let g = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
            let languages = r["languages"].as_array().cloned().unwrap_or_default();
            let rust_warm = languages.first().map_or(0.0, |l| g(l, "warm_p50_us"));
            for (i, l) in languages.iter().enumerate() {
                let (alg, native, verify) = if i == 0 {
                    (
                        r["alg"].as_str().unwrap_or("?").to_owned(),
                        format!("{:.1}", g(r, "native_p50_us")),
                        format!("{:.1}", g(r, "verify_p50_us")),
                    )
                } else {
                    Default::default()
                };
                writeln!(
                    md,
                    "| {alg} | {native} | {verify} | {} | {:.1} | {:.1} | {:.1}× | {:.1}× | {:.1}× |",
                    l["language"].as_str().unwrap_or("?"),
                    g(l, "fresh_p50_us"),
                    g(l, "warm_p50_us"),
                    g(l, "fresh_over_native"),
                    g(l, "warm_over_native"),
                    g(l, "warm_p50_us") / rust_warm.max(f64::MIN_POSITIVE)
                )?;
            }
        }
        writeln!(
            md,
            "\nPer review: the JWKS read from the plugin's cache (`tollgate:policy/kv`), the signature verified by the host (`verify-jws`: the parsed keys cached per JWKS text, ring), `iss`/`aud`/`exp`/`nbf` checked, user and groups named. Natively: the host's `verify_jws` behind the same key cache, and the Rust policy's claim checks (`jwt-verify`). In the sandbox: one plugin call — a fresh (or warm) instance, the call, the host's checks and scrubbing of its answer.\n"
        )?;
    }

    // Reload.
    if let Some(all) = read::<Vec<Swaps>>(out, "reload.json") {
        writeln!(md, "### Hot reload: from the first write to the first review answered by the new version\n")?;
        writeln!(
            md,
            "| swap (static-tokens, 87 KB, recompiled each time) | swaps | median ms | p90 ms | worst ms | stale answers meanwhile | non-200 |"
        )?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|---:|")?;
        for s in all {
            let mut sorted = s.ms.clone();
            sorted.sort_by(f64::total_cmp);
            let what = match s.mode {
                Mode::Replace => "plain replace (write beside, rename over: .wasm then .toml)",
                Mode::KubeData => "kubelet `..data` swap (ConfigMap/Secret volume)",
            };
            writeln!(
                md,
                "| {what} | {} | {:.0} | {:.0} | {:.0} | {} | {} |",
                s.ms.len(),
                median(&s.ms),
                percentile(&sorted, 90.0),
                sorted.last().copied().unwrap_or(0.0),
                s.stale_answers,
                s.non_200
            )?;
        }
        writeln!(md)?;
    }

    // Restart.
    if let Some(all) = read::<Vec<Restarts>>(out, "restart.json") {
        writeln!(md, "### Restart: process start to the \"listening\" line and to `/readyz` 200 (`--cache-dir`)\n")?;
        writeln!(
            md,
            "| plugin directory | cache | starts | to listening, median ms | to /readyz, median ms | worst ms |"
        )?;
        writeln!(md, "|---|---|---:|---:|---:|---:|")?;
        for r in all {
            for (cache, l, ready) in [
                ("cold (empty)", &r.cold_listening_ms, &r.cold_ready_ms),
                ("warm", &r.warm_listening_ms, &r.warm_ready_ms),
            ] {
                writeln!(
                    md,
                    "| {} ({:.1} MB) | {cache} | {} | {:.0} | {:.0} | {:.0} |",
                    r.what,
                    r.bytes as f64 / 1e6,
                    ready.len(),
                    median(l),
                    median(ready),
                    ready.iter().copied().fold(0.0, f64::max)
                )?;
            }
        }
        writeln!(md)?;
    }
    Ok(md)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

fn fmt_list(v: &[f64], decimals: usize) -> String {
    v.iter().map(|x| format!("{x:.decimals$}")).collect::<Vec<_>>().join(", ")
}

/// Replaces the marked section of `path` with `table` (appending the markers if absent).
pub fn write_markdown(path: &Path, table: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{BEGIN}\n{table}{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{section}{}", &old[..b], &old[e + END.len()..]),
        _ => format!("{old}\n{section}\n"),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

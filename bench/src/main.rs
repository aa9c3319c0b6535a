//! `tollgate-bench`: the end-to-end, reload and restart benchmarks against the real `tollgate`
//! binary, and the report. `make bench` runs it (see the Makefile and BENCHMARKS.md):
//!
//! ```text
//! tollgate-bench start  --out DIR --command "make bench"   # notes the machine and the time
//! cargo bench -p tollgate --bench review                   # in-process figures -> DIR/inprocess.json
//! tollgate-bench run    --out DIR --tollgate BIN --ceiling BIN --python PY [--large WASM]
//! tollgate-bench report --out DIR --markdown BENCHMARKS.md # prints the table, updates the file
//! ```

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use tollgate_bench::report::{self, Machine};
use tollgate_bench::{e2e, fixtures, recompile, reload, restart};

#[derive(Parser)]
#[command(name = "tollgate-bench", about = "tollgate's benchmarks (make bench)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Notes the machine's state and the start time.
    Start {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "make bench")]
        command: String,
        /// A file holding the start time (unix seconds) to count from, e.g. written by `make`
        /// before it installed and built anything; default: now.
        #[arg(long)]
        since: Option<PathBuf>,
    },
    /// End to end, reload and restart.
    Run(RunArgs),
    /// Prints the table and writes it into the markdown file.
    Report {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long)]
    out: PathBuf,
    /// The tollgate binary under test (a private copy: the shared target dir may change).
    #[arg(long)]
    tollgate: PathBuf,
    #[arg(long)]
    ceiling: PathBuf,
    /// A python3 with Flask, for the seed's server.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// Seconds of load per server per round.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of unrecorded load before each measurement.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Only these end-to-end configurations (tollgate, ceiling, flask, tollgate-audit-file).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Hot-reload swaps per mode (0 = skip).
    #[arg(long, default_value_t = 50)]
    swaps: usize,
    /// Starts per cache state (0 = skip).
    #[arg(long, default_value_t = 5)]
    restarts: usize,
    /// A large component for the restart benchmark (e.g. a componentize-py build).
    #[arg(long)]
    large: Option<PathBuf>,
    /// Another tollgate build (or wrapper script) measured beside --tollgate (experiments).
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Skip the end-to-end load.
    #[arg(long)]
    no_e2e: bool,
    /// Recompiles of --large per server per round while reviews go on (0 = skip).
    #[arg(long, default_value_t = 3)]
    recompiles: usize,
    #[arg(long, default_value_t = 2)]
    recompile_rounds: usize,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Start { out, command, since } => start(out, command, since),
        Cmd::Run(args) => run(args),
        Cmd::Report { out, markdown } => {
            let mut machine: Machine = std::fs::read_to_string(out.join("machine.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            machine.loadavg_end = loadavg();
            if let Ok(t) = std::fs::read_to_string(out.join("started")) {
                let started: f64 = t.trim().parse().unwrap_or(0.0);
                machine.minutes = (now_secs() - started) / 60.0;
            }
            std::fs::write(out.join("machine.json"), serde_json::to_vec_pretty(&machine)?)?;
            let table = report::render(&out)?;
            println!("{table}");
            if let Some(md) = markdown {
                report::write_markdown(&md, &table)?;
                eprintln!("wrote {}", md.display());
            }
            Ok(())
        }
    }
}

fn start(out: PathBuf, command: String, since: Option<PathBuf>) -> Result<()> {
    std::fs::create_dir_all(&out)?;
    for stale in ["inprocess.json", "ladder.json", "e2e.json", "reload.json", "restart.json", "recompile.json"] {
        let _ = std::fs::remove_file(out.join(stale));
    }
    let started = since
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| t.trim().parse::<f64>().ok())
        .unwrap_or_else(now_secs);
    std::fs::write(out.join("started"), format!("{started}"))?;
    let sh = |cmd: &str| -> String {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let machine = Machine {
        date: sh("date -u '+%Y-%m-%d %H:%M UTC'"),
        cpus: sh("nproc"),
        cpu_model: sh("sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1"),
        kernel: sh("uname -r"),
        rustc: sh("rustc --version"),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        busy_at_start: sh(
            "ps -eo pcpu=,comm= --sort=-pcpu | head -3 | awk '{printf \"%s%s %s%%\", (NR>1?\", \":\"\"), $2, $1}'",
        ),
        command,
        minutes: 0.0,
    };
    std::fs::write(out.join("machine.json"), serde_json::to_vec_pretty(&machine)?)?;
    Ok(())
}

fn run(mut a: RunArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out)?;
    // Absolute paths: tollgate's watcher misses every event under a relative --plugins path
    // (events come with absolute paths), leaving only the 30 s rescan (see BENCHMARKS.md).
    a.out = std::path::absolute(&a.out)?;
    if !a.no_e2e {
        eprintln!("end to end ({} rounds x {} s per server)...", a.rounds, a.duration);
        let settings = e2e::Settings {
            tollgate: a.tollgate.clone(),
            ceiling: a.ceiling.clone(),
            python: a.python.clone(),
            duration: Duration::from_secs(a.duration),
            warmup: Duration::from_secs(a.warmup),
            rounds: a.rounds,
            connections: a.connections,
            threads: a.threads,
            only: a.only.clone(),
            compare: a.compare.clone(),
        };
        let runs = e2e::run(&settings, &a.out)?;
        std::fs::write(a.out.join("e2e.json"), serde_json::to_vec_pretty(&runs)?)?;
    }
    if a.swaps > 0 {
        let mut all = Vec::new();
        for mode in [reload::Mode::Replace, reload::Mode::KubeData] {
            eprintln!("hot reload, {mode:?}, {} swaps...", a.swaps);
            let swaps = reload::run(&a.tollgate, &a.out, a.swaps, mode)?;
            eprintln!(
                "  median {:.0} ms, worst {:.0} ms",
                tollgate_bench::stats::median(&swaps.ms),
                swaps.ms.iter().copied().fold(0.0, f64::max)
            );
            all.push(swaps);
        }
        std::fs::write(a.out.join("reload.json"), serde_json::to_vec_pretty(&all)?)?;
    }
    if let Some(large) = a.large.as_ref().filter(|_| a.recompiles > 0) {
        eprintln!(
            "reviews during a recompile of {} ({} rounds x {} compiles)...",
            large.display(),
            a.recompile_rounds,
            a.recompiles
        );
        let runs = recompile::rounds(&a.tollgate, a.compare.as_ref(), large, &a.out, a.recompile_rounds, a.recompiles)?;
        std::fs::write(a.out.join("recompile.json"), serde_json::to_vec_pretty(&runs)?)?;
    }
    if a.restarts > 0 {
        let mut all = Vec::new();
        let rust = a.out.join("work/restart-plugins-rust");
        let _ = std::fs::remove_dir_all(&rust);
        fixtures::write_plugin_dir(&rust)?;
        eprintln!("restart, Rust examples...");
        all.push(restart::run(
            &a.tollgate,
            &a.out,
            "rust",
            "Rust examples: static-tokens + group-mapper",
            &rust,
            a.restarts,
        )?);
        if let Some(large) = &a.large {
            let dir = a.out.join("work/restart-plugins-large");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            std::fs::copy(large, dir.join("10-large.wasm")).with_context(|| format!("copying {}", large.display()))?;
            eprintln!("restart, large component {}...", large.display());
            let reps = a.restarts.min(3);
            all.push(restart::run(
                &a.tollgate,
                &a.out,
                "large",
                "large: a Python policy built with componentize-py 0.25.1",
                &dir,
                reps,
            )?);
        }
        std::fs::write(a.out.join("restart.json"), serde_json::to_vec_pretty(&all)?)?;
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

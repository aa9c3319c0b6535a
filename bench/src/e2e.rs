//! End-to-end: reviews/s and latency over loopback HTTP/1.1 keep-alive, with `wrk` as the load
//! generator on the same cores, for tollgate, the ceiling and the seed's Flask server —
//! interleaved in rounds (the order reversed every other round) so every ratio compares runs
//! made minutes apart at most.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::fixtures;
use crate::procs::{self, Proc};

#[derive(Clone, Debug)]
pub struct Settings {
    pub tollgate: PathBuf,
    pub ceiling: PathBuf,
    /// `python3` that has Flask.
    pub python: PathBuf,
    pub duration: Duration,
    pub warmup: Duration,
    pub rounds: usize,
    pub connections: usize,
    pub threads: usize,
    /// Which configurations to run (keys of [`CONFIGS`]); all when empty.
    pub only: Vec<String>,
    /// Another tollgate binary (or a wrapper script) to measure beside the one under test, for
    /// before/after experiments: the `tollgate-compare` configuration.
    pub compare: Option<PathBuf>,
}

/// The configurations, in the order of a round.
pub const CONFIGS: [(&str, &str); 8] = [
    (
        "tollgate",
        "(a) tollgate, Rust chain (static-tokens + group-mapper), fresh instance per call, decision cache off, --audit-log off",
    ),
    ("ceiling", "(b) ceiling: bare axum, same TokenReview JSON, same policy code compiled natively"),
    ("flask", "(c) seed Flask server: python3 webhook.py (Werkzeug dev server, debug=True as written)"),
    ("tollgate-audit-file", "(a) with --audit-log FILE (one JSON line per review, appended to a file)"),
    ("tollgate-cache", "(a) with the decision cache on (--cache-ttl 60s): every review after the first is a hit"),
    (
        "python-reuse",
        "(d) tollgate, the same chain in Python (componentize-py), warm instances ([instances] reuse = true)",
    ),
    ("python-fresh", "(d) the Python chain with a fresh instance per call (the default)"),
    ("tollgate-compare", "(experiment) (a) with another tollgate build (--compare), --audit-log off"),
];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    pub config: String,
    pub round: usize,
    pub rps: f64,
    pub requests: u64,
    pub seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Non-2xx answers, timeouts and socket errors.
    pub errors: u64,
    /// CPU time the server's processes used per review during the run (user + system).
    #[serde(default)]
    pub cpu_us_per_review: f64,
}

#[derive(Deserialize)]
struct WrkJson {
    requests: u64,
    duration_us: u64,
    status_errors: u64,
    connect_errors: u64,
    read_errors: u64,
    write_errors: u64,
    timeouts: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

/// wrk's script: POST the body file, report the numbers as one JSON line.
const WRK_LUA: &str = r#"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("TOLLGATE_BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  io.write(string.format("JSON {\"requests\":%d,\"duration_us\":%d,\"status_errors\":%d,\"connect_errors\":%d,\"read_errors\":%d,\"write_errors\":%d,\"timeouts\":%d,\"p50_us\":%d,\"p99_us\":%d,\"p999_us\":%d,\"max_us\":%d}\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"#;

struct Target {
    proc: Proc,
    url: String,
    audit_file: Option<PathBuf>,
}

pub fn run(settings: &Settings, out: &Path) -> Result<Vec<Run>> {
    let work = procs::work_dir(out, "e2e")?;
    let plugins = work.join("plugins");
    fixtures::write_plugin_dir(&plugins)?;
    let wants = |k: &str| settings.only.is_empty() || settings.only.iter().any(|o| o == k);
    if wants("python-reuse") || wants("python-fresh") {
        fixtures::write_python_dir(&work.join("plugins-python-reuse"), "\n[instances]\nreuse = true\n")?;
        fixtures::write_python_dir(&work.join("plugins-python-fresh"), "")?;
    }
    let body_path = work.join("review.json");
    std::fs::write(&body_path, fixtures::review_body())?;
    let lua = work.join("review.lua");
    std::fs::write(&lua, WRK_LUA)?;
    let webhook = work.join("webhook.py");

    let configs: Vec<&str> = CONFIGS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| settings.only.is_empty() || settings.only.iter().any(|o| o == k))
        .filter(|k| *k != "tollgate-compare" || settings.compare.is_some())
        .collect();
    let mut runs = Vec::new();
    for round in 1..=settings.rounds {
        let mut order = configs.clone();
        if round % 2 == 0 {
            order.reverse();
        }
        for config in order {
            let target =
                start(config, settings, &work, &plugins, &webhook).with_context(|| format!("starting {config}"))?;
            let result = measure(settings, &target, &lua, &body_path, config, round);
            let audit_bytes = target.audit_file.as_ref().and_then(|f| std::fs::metadata(f).ok()).map(|m| m.len());
            target.proc.stop();
            if let Some(f) = &target.audit_file {
                let _ = std::fs::remove_file(f);
            }
            let run = result?;
            eprintln!(
                "  e2e round {round} {config:<20} {:>9.0} reviews/s  {:>6.1} µs CPU/review  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  errors {}{}",
                run.rps,
                run.cpu_us_per_review,
                run.p50_us / 1000.0,
                run.p99_us / 1000.0,
                run.p999_us / 1000.0,
                run.errors,
                audit_bytes.map(|b| format!("  (audit file {} MB)", b >> 20)).unwrap_or_default()
            );
            runs.push(run);
        }
    }
    Ok(runs)
}

fn start(config: &str, settings: &Settings, work: &Path, plugins: &Path, webhook: &Path) -> Result<Target> {
    let port = procs::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let (proc, url, audit_file) = match config {
        "tollgate"
        | "tollgate-audit-file"
        | "tollgate-compare"
        | "tollgate-cache"
        | "python-reuse"
        | "python-fresh" => {
            let audit_file = (config == "tollgate-audit-file").then(|| work.join("audit.log"));
            let bin =
                if config == "tollgate-compare" { settings.compare.as_ref().unwrap() } else { &settings.tollgate };
            let dir = match config {
                "python-reuse" | "python-fresh" => work.join(format!("plugins-{config}")),
                _ => plugins.to_path_buf(),
            };
            let mut cmd = Command::new(bin);
            cmd.args(["serve", "--plugins"]).arg(&dir).args(["--listen", &addr, "--audit-log"]);
            match &audit_file {
                Some(f) => cmd.arg(f),
                None => cmd.arg("off"),
            };
            if config == "tollgate-cache" {
                cmd.args(["--cache-ttl", "60s"]);
            }
            // 18 MB of CPython compiles once, then loads from the cache in later rounds.
            cmd.arg("--cache-dir").arg(work.join("compile-cache"));
            let p = Proc::spawn(config, cmd, None)?;
            p.wait_line("listening on", Duration::from_secs(120))?;
            (p, format!("http://{addr}/authenticate"), audit_file)
        }
        "ceiling" => {
            let mut cmd = Command::new(&settings.ceiling);
            cmd.arg(&addr);
            let p = Proc::spawn(config, cmd, None)?;
            p.wait_line("listening on", Duration::from_secs(30))?;
            (p, format!("http://{addr}/authenticate"), None)
        }
        "flask" => {
            let seed = std::fs::read_to_string(fixtures::repo_root().join("bench/seed/webhook.py"))?;
            let line = "app.run(host= '0.0.0.0', port=6000, debug=True)";
            anyhow::ensure!(seed.contains(line), "bench/seed/webhook.py is not the blog's webhook.py");
            std::fs::write(
                webhook,
                seed.replace(line, &format!("app.run(host= '127.0.0.1', port={port}, debug=True)")),
            )?;
            let mut cmd = Command::new(&settings.python);
            cmd.arg("webhook.py").current_dir(work);
            let p = Proc::spawn(config, cmd, None)?;
            (p, format!("http://{addr}/"), None)
        }
        other => bail!("unknown configuration {other}"),
    };
    let body = fixtures::review_body();
    let flask = config == "flask";
    procs::wait_answer(&url, &body, Duration::from_secs(60), |status, text| {
        status == 200
            && if flask {
                // The seed says yes, system:masters, to every token (and echoes the token).
                text.contains("\"authenticated\": true") || text.contains("\"authenticated\":true")
            } else {
                fixtures::check_answer(text).is_ok()
            }
    })
    .with_context(|| format!("{config} never answered the bench review correctly:\n{}", proc.log()))?;
    Ok(Target { proc, url, audit_file })
}

fn measure(settings: &Settings, target: &Target, lua: &Path, body: &Path, config: &str, round: usize) -> Result<Run> {
    if !settings.warmup.is_zero() {
        wrk(settings, target, lua, body, settings.warmup)?;
    }
    let cpu_before = target.proc.cpu_seconds();
    let w = wrk(settings, target, lua, body, settings.duration)?;
    let cpu = target.proc.cpu_seconds() - cpu_before;
    let seconds = w.duration_us as f64 / 1e6;
    Ok(Run {
        config: config.into(),
        round,
        rps: w.requests as f64 / seconds,
        requests: w.requests,
        seconds,
        p50_us: w.p50_us,
        p99_us: w.p99_us,
        p999_us: w.p999_us,
        max_us: w.max_us,
        errors: w.status_errors + w.connect_errors + w.read_errors + w.write_errors + w.timeouts,
        cpu_us_per_review: cpu * 1e6 / w.requests.max(1) as f64,
    })
}

fn wrk(settings: &Settings, target: &Target, lua: &Path, body: &Path, duration: Duration) -> Result<WrkJson> {
    let output = Command::new("wrk")
        .arg(format!("-t{}", settings.threads))
        .arg(format!("-c{}", settings.connections))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .args(["--timeout", "5s", "-s"])
        .arg(lua)
        .arg(&target.url)
        .env("TOLLGATE_BENCH_BODY", body)
        .output()
        .context("running wrk (apt-get install wrk; `make bench` does)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("JSON "))
        .with_context(|| format!("wrk printed no result: {stdout}{}", String::from_utf8_lossy(&output.stderr)))?;
    Ok(serde_json::from_str(line)?)
}

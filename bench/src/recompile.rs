//! Reviews during a recompile (issue 27): the latency of live reviews while a reload compiles a
//! large component (a componentize-py build: about 8 s of CPU), against the same server's quiet
//! latency minutes apart.
//!
//! The server serves the example chain in the default tenant; a second tenant, `bg`, receives
//! no reviews and gets a new version of the large component (a custom section appended: a new
//! digest, compiled for real) again and again. Reviews come at a steady pace well below
//! saturation (`PACE`), as kube-apiserver sends them, each timed from its send; a review counts
//! as "during a compile" when it was sent between the write and the server's `compiled` line,
//! and as quiet when it was sent before the first compile or in the pauses between them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::procs::{self, Proc};
use crate::reload::with_custom_section;
use crate::{fixtures, stats};

/// Client threads, and the time between two reviews of one thread: 2 x 500 reviews/s, a tenth
/// of what the chain sustains on this machine, so latency is the server's, not a queue's.
const CLIENTS: usize = 2;
const PACE: Duration = Duration::from_millis(2);
/// Quiet reviews measured before the compiles, and the pause after each compile (quiet too,
/// once the new generation has settled: quiet samples are spread over the whole run).
const QUIET: Duration = Duration::from_secs(4);
const GAP: Duration = Duration::from_secs(3);
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Recompiles {
    /// Which binary (`tollgate`, or `tollgate-compare` for `--compare`).
    pub config: String,
    pub round: usize,
    pub quiet_p50_us: f64,
    pub quiet_p99_us: f64,
    pub compiling_p50_us: f64,
    pub compiling_p99_us: f64,
    pub quiet_reviews: usize,
    pub compiling_reviews: usize,
    /// Wall time of each compile, from the write to the `compiled` line.
    pub compile_ms: Vec<f64>,
    /// Answers that were not a 200 granting the bench user (a plugin past its deadline answers
    /// 200 with `status.error`, and counts here too).
    pub errors: u64,
    /// The first few of them, as they came (status and the start of the body).
    #[serde(default)]
    pub error_samples: Vec<String>,
}

/// One server, `compiles` recompiles of `large` while reviews go on.
pub fn run(
    tollgate: &Path,
    config: &str,
    round: usize,
    large: &Path,
    out: &Path,
    compiles: usize,
) -> Result<Recompiles> {
    let work = procs::work_dir(out, &format!("recompile-{config}"))?;
    let plugins = work.join("plugins");
    fixtures::write_plugin_dir(&plugins)?;
    std::fs::create_dir_all(plugins.join("bg"))?;
    let wasm = std::fs::read(large).with_context(|| format!("reading {}", large.display()))?;
    let port = procs::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(tollgate);
    cmd.args(["serve", "--plugins"]).arg(&plugins).args(["--listen", &addr, "--audit-log", "off"]);
    let server = Proc::spawn(config, cmd, None)?;
    server.wait_line("listening on", Duration::from_secs(60))?;
    let url = format!("http://{addr}/authenticate");
    let body = fixtures::review_body();
    procs::wait_answer(&url, &body, Duration::from_secs(30), |s, t| s == 200 && fixtures::check_answer(t).is_ok())?;

    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(Instant, f64)>>> = Arc::default();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let error_samples: Arc<Mutex<Vec<String>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, samples, errors, url, body) =
                (stop.clone(), samples.clone(), errors.clone(), url.clone(), body.clone());
            std::thread::spawn(move || {
                let client = procs::client();
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let ok =
                        matches!(procs::post(&client, &url, &body), Ok((200, t)) if fixtures::check_answer(&t).is_ok());
                    let us = sent.elapsed().as_secs_f64() * 1e6;
                    if ok {
                        samples.lock().unwrap().push((sent, us));
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    next += PACE;
                    match next.checked_duration_since(Instant::now()) {
                        Some(wait) => std::thread::sleep(wait),
                        // Late (a slow answer): no burst to catch up.
                        None => next = Instant::now(),
                    }
                }
            })
        })
        .collect();

    let quiet_from = Instant::now();
    std::thread::sleep(QUIET);
    let mut quiet = vec![(quiet_from, Instant::now())];
    let mut windows = Vec::new();
    let mut compile_ms = Vec::new();
    let result = (|| -> Result<()> {
        for n in 0..compiles {
            let version =
                with_custom_section(&wasm, "tollgate-bench-version", format!("{config}-{round}-{n}").as_bytes());
            let digest = format!("compiled digest=\"sha256:{}\"", fixtures::sha256_hex(&version));
            let staged = plugins.join("bg/.10-large.wasm");
            std::fs::write(&staged, &version)?;
            let written = Instant::now();
            std::fs::rename(&staged, plugins.join("bg/10-large.wasm"))?;
            server.wait_line(&digest, Duration::from_secs(300))?;
            windows.push((written, Instant::now()));
            compile_ms.push(written.elapsed().as_secs_f64() * 1e3);
            std::thread::sleep(SETTLE);
            let from = Instant::now();
            std::thread::sleep(GAP - SETTLE);
            quiet.push((from, Instant::now()));
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    server.stop();
    result?;

    let samples = samples.lock().unwrap();
    let within = |(from, to): &(Instant, Instant), at: &Instant| at >= from && at <= to;
    let mut q: Vec<f64> =
        samples.iter().filter(|(at, _)| quiet.iter().any(|w| within(w, at))).map(|(_, us)| *us).collect();
    let mut c: Vec<f64> =
        samples.iter().filter(|(at, _)| windows.iter().any(|w| within(w, at))).map(|(_, us)| *us).collect();
    let (quiet_p50_us, quiet_p99_us, _) = stats::summarize(&mut q);
    let (compiling_p50_us, compiling_p99_us, _) = stats::summarize(&mut c);
    Ok(Recompiles {
        config: config.into(),
        round,
        quiet_p50_us,
        quiet_p99_us,
        compiling_p50_us,
        compiling_p99_us,
        quiet_reviews: q.len(),
        compiling_reviews: c.len(),
        compile_ms,
        errors: errors.load(Ordering::Relaxed),
        error_samples: error_samples.lock().unwrap().clone(),
    })
}

/// Rounds of [`run`] for `tollgate` and, if given, `compare`, interleaved.
pub fn rounds(
    tollgate: &Path,
    compare: Option<&PathBuf>,
    large: &Path,
    out: &Path,
    rounds: usize,
    compiles: usize,
) -> Result<Vec<Recompiles>> {
    let mut all = Vec::new();
    for round in 1..=rounds {
        let mut binaries = vec![("tollgate", tollgate.to_path_buf())];
        if let Some(other) = compare {
            binaries.push(("tollgate-compare", other.clone()));
        }
        if round % 2 == 0 {
            binaries.reverse();
        }
        for (config, bin) in binaries {
            let r = run(&bin, config, round, large, out, compiles)?;
            eprintln!(
                "  recompile round {round} {config:<17} quiet p50 {:.2} ms p99 {:.2} ms | compiling p50 {:.2} ms p99 {:.2} ms | compiles {} ms | errors {}",
                r.quiet_p50_us / 1e3,
                r.quiet_p99_us / 1e3,
                r.compiling_p50_us / 1e3,
                r.compiling_p99_us / 1e3,
                r.compile_ms.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join("/"),
                r.errors
            );
            all.push(r);
        }
    }
    Ok(all)
}

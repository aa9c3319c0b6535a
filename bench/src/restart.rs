//! Restart time (issue 3): process start to the "listening" log line (the first load is done
//! before the listener opens) and to `/readyz` 200, with an empty compile cache (cold) and a
//! populated one (warm), interleaved.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::procs::{self, Proc};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Restarts {
    pub setup: String,
    /// What the plugin directory holds (for the report).
    pub what: String,
    pub bytes: u64,
    pub cold_listening_ms: Vec<f64>,
    pub cold_ready_ms: Vec<f64>,
    pub warm_listening_ms: Vec<f64>,
    pub warm_ready_ms: Vec<f64>,
}

/// Starts tollgate on `plugins` `reps` times cold and `reps` times warm.
pub fn run(tollgate: &Path, out: &Path, setup: &str, what: &str, plugins: &Path, reps: usize) -> Result<Restarts> {
    let work = procs::work_dir(out, &format!("restart-{setup}"))?;
    let bytes = std::fs::read_dir(plugins)?.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
    let warm_cache = work.join("cache-warm");
    // Populate the warm cache (not measured).
    start_once(tollgate, plugins, &warm_cache)?;
    let mut r = Restarts {
        setup: setup.into(),
        what: what.into(),
        bytes,
        cold_listening_ms: vec![],
        cold_ready_ms: vec![],
        warm_listening_ms: vec![],
        warm_ready_ms: vec![],
    };
    for rep in 0..reps {
        let cold_cache = work.join(format!("cache-cold-{rep}"));
        let (l, ready) = start_once(tollgate, plugins, &cold_cache)?;
        r.cold_listening_ms.push(l);
        r.cold_ready_ms.push(ready);
        let _ = std::fs::remove_dir_all(&cold_cache);
        let (l, ready) = start_once(tollgate, plugins, &warm_cache)?;
        r.warm_listening_ms.push(l);
        r.warm_ready_ms.push(ready);
        eprintln!(
            "  restart {setup} #{}: cold {:.0} ms, warm {:.0} ms (to /readyz 200)",
            rep + 1,
            r.cold_ready_ms[rep],
            r.warm_ready_ms[rep]
        );
    }
    Ok(r)
}

/// One start: (ms to the "listening" line, ms to /readyz 200).
fn start_once(tollgate: &Path, plugins: &Path, cache: &PathBuf) -> Result<(f64, f64)> {
    let port = procs::free_port()?;
    let mut cmd = Command::new(tollgate);
    cmd.args(["serve", "--plugins"])
        .arg(plugins)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--audit-log", "off", "--cache-dir"])
        .arg(cache);
    let server = Proc::spawn("tollgate", cmd, None)?;
    let result = (|| {
        let listening = server.wait_line("listening on", Duration::from_secs(300))?;
        let client = procs::client();
        let url = format!("http://127.0.0.1:{port}/readyz");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if client.get(&url).send().map(|r| r.status().as_u16() == 200).unwrap_or(false) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "/readyz never answered 200");
            std::thread::sleep(Duration::from_millis(1));
        }
        let ready = server.started.elapsed();
        Ok((listening.as_secs_f64() * 1000.0, ready.as_secs_f64() * 1000.0))
    })()
    .with_context(|| format!("starting tollgate on {}", plugins.display()));
    server.stop();
    result
}

//! Starting and stopping the servers under test, and talking to them.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// A free loopback port (bound, then released: fine on a machine we control).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running server process (its own process group, so a Flask reloader child goes with it).
pub struct Proc {
    pub name: String,
    child: Child,
    /// Standard error lines as they come (the operational log).
    pub lines: Receiver<String>,
    log: Arc<Mutex<String>>,
    pub started: Instant,
}

impl Proc {
    /// Spawns `cmd` with stdout to `stdout` (None = /dev/null) and stderr followed.
    pub fn spawn(name: &str, mut cmd: Command, stdout: Option<&Path>) -> Result<Proc> {
        cmd.stdin(Stdio::null()).stderr(Stdio::piped()).process_group(0);
        match stdout {
            Some(path) => cmd.stdout(std::fs::File::create(path)?),
            None => cmd.stdout(Stdio::null()),
        };
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = channel();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                let mut s = sink.lock().unwrap();
                if s.len() < 1 << 20 {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Ok(Proc { name: name.into(), child, lines, log, started })
    }

    /// Waits for a stderr line containing `needle`; returns when it came (since spawn).
    pub fn wait_line(&self, needle: &str, limit: Duration) -> Result<Duration> {
        let deadline = self.started + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(self.started.elapsed()),
                Ok(_) => {}
                Err(_) => bail!("{} did not print {needle:?} within {limit:?}:\n{}", self.name, self.log()),
            }
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system, seconds) used so far by every process of this group: a
    /// server's cost per review, which a busy neighbour on the machine disturbs far less than
    /// its throughput.
    pub fn cpu_seconds(&self) -> f64 {
        let pgid = self.child.id() as i64;
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mut total = 0.0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // Fields after the parenthesised command name: state ppid pgrp ... utime(14) stime(15).
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() > 12 && f[2].parse::<i64>() == Ok(pgid) {
                total += (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / ticks;
            }
        }
        total
    }

    /// SIGTERM to the whole group, then SIGKILL after a grace period.
    pub fn stop(mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: plain syscalls on a process group we created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// An HTTP client for checks and reload polling (keep-alive, no redirects).
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client")
}

/// POSTs `body` as JSON; returns (status, body).
pub fn post(client: &reqwest::blocking::Client, url: &str, body: &str) -> Result<(u16, String)> {
    let r = client.post(url).header("Content-Type", "application/json").body(body.to_owned()).send()?;
    let status = r.status().as_u16();
    Ok((status, r.text()?))
}

/// Polls `url` with `body` until `ok` accepts the answer (bounded).
pub fn wait_answer(url: &str, body: &str, limit: Duration, ok: impl Fn(u16, &str) -> bool) -> Result<()> {
    let client = client();
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match post(&client, url, body) {
            Ok((status, text)) if ok(status, &text) => return Ok(()),
            Ok((status, text)) => last = format!("{status} {text}"),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{url} never answered as expected; last: {last}")
}

/// The directory a benchmark run works in (created fresh).
pub fn work_dir(out: &Path, name: &str) -> Result<PathBuf> {
    let dir = out.join("work").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

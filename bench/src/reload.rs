//! Hot reload (issue 3): the time from writing a new version of a plugin to the first review
//! answered by it, over many swaps, for a plain file replace and for a kubelet `..data` swap.
//!
//! Each version is a really new component — the example static-tokens with a custom section
//! naming the version appended, so its digest is new and tollgate compiles it — and a manifest
//! whose bench user is `bench-v{N}`, so the answer tells which version decided. A client posts
//! reviews back to back on a keep-alive connection from the write until it sees the new user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::fixtures;
use crate::procs::{self, Proc};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Each file written beside its target under a dot-name, then renamed over it (`mv`),
    /// the component first, then its manifest.
    Replace,
    /// kubelet's AtomicWriter: a new timestamped directory, `..data` renamed to point at it.
    KubeData,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Swaps {
    pub mode: Mode,
    /// Milliseconds from the first write to the first answer of the new version, per swap.
    pub ms: Vec<f64>,
    /// Answers during the swaps that were not 200 (there should be none).
    pub non_200: u64,
    /// Reviews answered by the old version while waiting.
    pub stale_answers: u64,
}

pub fn run(tollgate: &Path, out: &Path, swaps: usize, mode: Mode) -> Result<Swaps> {
    let work = procs::work_dir(out, &format!("reload-{mode:?}"))?;
    let dir = work.join("plugins");
    let wasm = std::fs::read(fixtures::guest("static_tokens")?)?;
    let version = |n: usize| -> Result<[(String, Vec<u8>); 2]> {
        Ok([
            (
                "10-static-tokens.wasm".to_string(),
                with_custom_section(&wasm, "tollgate-bench-version", n.to_string().as_bytes()),
            ),
            ("10-static-tokens.toml".to_string(), manifest(n)?.into_bytes()),
        ])
    };
    let mut volume = KubeVolume::new(dir.clone());
    match mode {
        Mode::Replace => {
            std::fs::create_dir_all(&dir)?;
            for (name, bytes) in version(0)? {
                std::fs::write(dir.join(name), bytes)?;
            }
        }
        Mode::KubeData => volume.publish(&version(0)?),
    }
    let port = procs::free_port()?;
    let mut cmd = Command::new(tollgate);
    cmd.args(["serve", "--plugins"]).arg(&dir).args(["--listen", &format!("127.0.0.1:{port}"), "--audit-log", "off"]);
    let server = Proc::spawn("tollgate", cmd, None)?;
    server.wait_line("listening on", Duration::from_secs(120))?;
    let url = format!("http://127.0.0.1:{port}/authenticate");
    let result = swap_loop(&server, &url, swaps, mode, &dir, &mut volume, &version);
    server.stop();
    result
}

#[allow(clippy::type_complexity)]
fn swap_loop(
    server: &Proc,
    url: &str,
    swaps: usize,
    mode: Mode,
    dir: &Path,
    volume: &mut KubeVolume,
    version: &dyn Fn(usize) -> Result<[(String, Vec<u8>); 2]>,
) -> Result<Swaps> {
    let client = procs::client();
    let body = fixtures::review_body();
    let user = |text: &str| -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        v["status"]["user"]["username"].as_str().map(str::to_owned)
    };
    let mut result = Swaps { mode, ms: Vec::with_capacity(swaps), non_200: 0, stale_answers: 0 };
    procs::wait_answer(url, &body, Duration::from_secs(30), |s, t| s == 200 && user(t).as_deref() == Some("bench-v0"))?;
    for n in 1..=swaps {
        let files = version(n)?;
        let want = format!("bench-v{n}");
        let started = Instant::now();
        match mode {
            Mode::Replace => {
                for (name, bytes) in &files {
                    let tmp = dir.join(format!(".tmp-{name}"));
                    std::fs::write(&tmp, bytes)?;
                    std::fs::rename(&tmp, dir.join(name))?;
                }
            }
            Mode::KubeData => volume.publish(&files),
        }
        loop {
            let (status, text) = procs::post(&client, url, &body)?;
            if status != 200 {
                result.non_200 += 1;
            } else if user(&text).as_deref() == Some(want.as_str()) {
                break;
            } else {
                result.stale_answers += 1;
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("version {n} never answered within 20 s:\n{}", server.log());
            }
        }
        result.ms.push(started.elapsed().as_secs_f64() * 1000.0);
        // Let the reloader's debounce window close before the next write.
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(result)
}

/// The bench's static-tokens manifest with the bench user renamed `bench-v{n}`.
fn manifest(n: usize) -> Result<String> {
    let text = fixtures::static_tokens_manifest()?;
    let from = format!("  {}  2001", fixtures::BENCH_USER);
    anyhow::ensure!(text.contains(&from), "the bench manifest has no bench user line");
    Ok(text.replacen(&from, &format!("  bench-v{n}  2001"), 1))
}

/// Appends a custom section to a component (or module): new bytes, same behaviour.
pub fn with_custom_section(wasm: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut content = Vec::new();
    leb(name.len(), &mut content);
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    let mut out = wasm.to_vec();
    out.push(0);
    leb(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

/// A folder written as kubelet's AtomicWriter writes a ConfigMap or Secret volume (the same
/// steps as `KubeVolume` in tests/lib.rs): files in a timestamped `..YYYY_...` directory,
/// `..data` pointing to it, each visible name a symlink `NAME -> ..data/NAME`.
pub struct KubeVolume {
    pub dir: PathBuf,
    generation: u64,
}

impl KubeVolume {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, generation: 0 }
    }

    pub fn publish(&mut self, files: &[(String, Vec<u8>)]) {
        use std::os::unix::fs::symlink;
        std::fs::create_dir_all(&self.dir).unwrap();
        self.generation += 1;
        let stamp = format!("..2026_11_28_00_00_00.{:09}", self.generation);
        let new_dir = self.dir.join(&stamp);
        std::fs::create_dir(&new_dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(new_dir.join(name), bytes).unwrap();
        }
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        let tmp = self.dir.join("..data_tmp");
        symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

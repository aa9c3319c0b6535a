//! `tollgate check`: validate plugins as a load would, and run their vectors.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use notify::{RecursiveMode, Watcher as _};

use super::build::{Policy, ToolchainArgs};
use super::{PluginArgs, tenants_file};
use crate::plugins::confine::Folder;
use crate::plugins::loader::{Loader, PluginSource};
use crate::plugins::plugin::Plugin;
use crate::plugins::vectors;
use crate::tenants::scan::{self, TenantsFile};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Plugin files (`NAME.wasm`, with `NAME.toml` beside it) or plugin directories (their
    /// tenant folders included).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The operator's tenants file, so that each tenant's plugins are checked under its rules
    /// (`secret_dirs`, `outbound_hosts`) as `serve` would load them.
    #[arg(long)]
    pub tenants: Option<PathBuf>,
    /// Check again on every change under the paths, until interrupted. A policy folder (as
    /// `tollgate new` writes it) is built first, as `tollgate build` does.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub toolchain: ToolchainArgs,
    #[command(flatten)]
    pub plugin: PluginArgs,
}

/// Prints one line per plugin; exits 1 if anything failed.
pub fn run(args: CheckArgs) -> Result<i32> {
    let tenants = tenants_file(args.tenants.as_deref())?;
    let mut check = Checker { loader: args.plugin.loader()?, tenants, passed: Vec::new(), failed: 0 };
    if args.watch {
        return watch(&args, &mut check);
    }
    check.paths(&args.paths);
    Ok(if check.failed == 0 { 0 } else { 1 })
}

/// How long a burst of changes (an editor's save, a build's outputs) settles before a round.
const SETTLE: Duration = Duration::from_millis(300);

/// Builds and checks, then again at each change, until interrupted. One loader throughout: a
/// component that did not change is not compiled again.
fn watch(args: &CheckArgs, check: &mut Checker) -> Result<i32> {
    let roots: Vec<PathBuf> = args
        .paths
        .iter()
        .map(|p| p.canonicalize().with_context(|| format!("{}", p.display())))
        .collect::<Result<_>>()?;
    // Policy folders are built; their component is then what is checked.
    let policies: Vec<Option<Policy>> =
        roots.iter().map(|p| p.is_dir().then(|| Policy::find(p, None).ok()).flatten()).collect();
    let outputs: Vec<PathBuf> = policies.iter().flatten().map(Policy::wasm).collect();
    let (tx, rx) = mpsc::channel();
    let watched = roots.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.paths.iter().any(|p| !ignored(p, &watched, &outputs))
        {
            let _ = tx.send(());
        }
    })
    .context("watching for changes")?;
    for root in &roots {
        watcher.watch(root, RecursiveMode::Recursive).with_context(|| format!("watching {}", root.display()))?;
    }
    loop {
        check.failed = 0;
        check.passed.clear();
        for (root, policy) in roots.iter().zip(&policies) {
            match policy {
                Some(policy) => match policy.build(&args.toolchain) {
                    Ok(wasm) => check.paths(&[wasm]),
                    Err(e) => check.fail(root, &format!("{e:#}")),
                },
                None => check.paths(std::slice::from_ref(root)),
            }
        }
        println!(
            "--- {}; watching {} for changes (Ctrl-C to stop)",
            if check.failed == 0 { "all passed".to_string() } else { format!("{} failed", check.failed) },
            roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        rx.recv().context("the watcher stopped")?;
        while rx.recv_timeout(SETTLE).is_ok() {}
    }
}

/// What a round writes itself (the component, its temporary copy), or a toolchain keeps beside
/// the sources (below a watched root: the root's own path may hold any name).
fn ignored(path: &Path, roots: &[PathBuf], outputs: &[PathBuf]) -> bool {
    let written = |out: &PathBuf| {
        let tmp = format!("{}.tmp", out.display());
        path == out || path.to_string_lossy().starts_with(&tmp)
    };
    let below = roots.iter().find_map(|r| path.strip_prefix(r).ok()).unwrap_or(path);
    outputs.iter().any(written)
        || below
            .components()
            .any(|c| matches!(c.as_os_str().to_str(), Some("target" | "__pycache__" | "node_modules" | ".git")))
}

impl Checker {
    /// Plugin files and plugin directories (their tenant folders included).
    fn paths(&mut self, paths: &[PathBuf]) {
        for path in paths {
            if path.is_dir() {
                match Folder::open(path) {
                    Ok(root) => {
                        self.dir(&root, "");
                        for name in scan::scan_tenants(&root).unwrap_or_default() {
                            self.dir(&root, &name);
                        }
                    }
                    Err(e) => self.fail(path, &format!("{e:#}")),
                }
            } else {
                match PluginSource::read(path, self.loader.defaults().max_plugin_bytes) {
                    Ok(src) => {
                        let mut vectors_left = self.tenants.guardrails("").folder.vectors;
                        self.one("", &src, &mut vectors_left)
                    }
                    Err(e) => self.fail(path, &format!("{e:#}")),
                }
            }
        }
    }
}

struct Checker {
    loader: Loader,
    tenants: TenantsFile,
    /// Kept until the end: copies of one component (the same digest) then compile once.
    passed: Vec<Plugin>,
    failed: usize,
}

impl Checker {
    /// One tenant folder, read and bounded as `serve` reads it.
    fn dir(&mut self, root: &Folder, tenant: &str) {
        let limits = self.tenants.guardrails(tenant).folder;
        let max = self.loader.defaults().max_plugin_bytes;
        let snapshot = scan::read_tenant(root, tenant, &limits, max);
        match snapshot {
            Ok(snapshot) => {
                let mut vectors_left = limits.vectors;
                snapshot.sources.iter().for_each(|s| self.one(tenant, s, &mut vectors_left))
            }
            Err(e) => self.fail(&root.path().join(tenant), &format!("{e:#}")),
        }
    }

    fn one(&mut self, tenant: &str, src: &PluginSource, vectors_left: &mut usize) {
        match self.loader.load(tenant, src, &self.tenants.guardrails(tenant).load_rules(), vectors_left) {
            Ok(plugin) => {
                println!(
                    "ok    {}  {} ({}, {} vectors passed)",
                    src.wasm_path.display(),
                    plugin.role.as_str(),
                    plugin.digest(),
                    plugin.tests.len()
                );
                for w in plugin.warnings.iter().chain(&vectors::live_secret_warnings(self.loader.sandbox(), &plugin)) {
                    println!("warn  {}  {w}", src.wasm_path.display());
                }
                self.passed.push(plugin);
            }
            Err(e) => self.fail(&src.wasm_path, &format!("{e:#}")),
        }
    }

    fn fail(&mut self, path: &Path, why: &str) {
        println!("FAIL  {}  {why}", path.display());
        self.failed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_ignores_its_own_outputs_and_toolchain_folders_below_the_root() {
        let roots = [PathBuf::from("/work/target/plugins"), PathBuf::from("/p/team")];
        let outputs = [PathBuf::from("/p/team/team.wasm")];
        let ignored = |p: &str| ignored(Path::new(p), &roots, &outputs);
        assert!(!ignored("/work/target/plugins/10-x.wasm"), "a root under target/ is still watched");
        assert!(!ignored("/p/team/team.toml") && !ignored("/p/team/team.c"));
        assert!(ignored("/p/team/team.wasm") && ignored("/p/team/team.wasm.tmp.123"));
        assert!(ignored("/p/team/target/release/x") && ignored("/p/team/__pycache__/a.pyc"));
    }
}

//! `tollgate check`: validate plugins as a load would, and run their vectors.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use super::{PluginArgs, tenants_file};
use crate::confine::Folder;
use crate::plugin::{Loader, Plugin, PluginSource};
use crate::tenant::{self, TenantsFile};
use crate::vectors;

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
    #[command(flatten)]
    pub plugin: PluginArgs,
}

/// Prints one line per plugin; exits 1 if anything failed.
pub fn run(args: CheckArgs) -> Result<i32> {
    let tenants = tenants_file(args.tenants.as_deref())?;
    let mut check = Checker { loader: args.plugin.loader()?, tenants, passed: Vec::new(), failed: 0 };
    for path in &args.paths {
        if path.is_dir() {
            match Folder::open(path) {
                Ok(root) => {
                    check.dir(&root, "");
                    for name in tenant::scan_tenants(&root).unwrap_or_default() {
                        check.dir(&root, &name);
                    }
                }
                Err(e) => check.fail(path, &format!("{e:#}")),
            }
        } else {
            match PluginSource::read(path, check.loader.defaults().max_plugin_bytes) {
                Ok(src) => {
                    let mut vectors_left = check.tenants.guardrails("").folder.vectors;
                    check.one("", &src, &mut vectors_left)
                }
                Err(e) => check.fail(path, &format!("{e:#}")),
            }
        }
    }
    Ok(if check.failed == 0 { 0 } else { 1 })
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
        let snapshot = tenant::read_tenant(root, tenant, &limits, max);
        match snapshot {
            Ok(snapshot) => {
                let mut vectors_left = limits.vectors;
                snapshot.sources.iter().for_each(|s| self.one(tenant, s, &mut vectors_left))
            }
            Err(e) => self.fail(&root.path().join(tenant), &format!("{e:#}")),
        }
    }

    fn one(&mut self, tenant: &str, src: &PluginSource, vectors_left: &mut usize) {
        match self.loader.load(tenant, src, &self.tenants.guardrails(tenant), vectors_left) {
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

//! `tollgate check`: validate plugins as a load would, and run their vectors.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use super::{PluginArgs, tenants_file};
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
    let mut check = Checker { loader: args.plugin.loader(None)?, tenants, passed: Vec::new(), failed: 0 };
    for path in &args.paths {
        if path.is_dir() {
            check.dir("", path);
            for (name, dir) in tenant::scan_tenants(path).unwrap_or_default() {
                check.dir(&name, &dir);
            }
        } else {
            match PluginSource::read(path, check.loader.defaults().max_plugin_bytes) {
                Ok(src) => check.one("", &src),
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
    fn dir(&mut self, tenant: &str, dir: &Path) {
        match tenant::read_tenant(dir, self.loader.defaults().max_plugin_bytes) {
            Ok(snapshot) => snapshot.sources.iter().for_each(|s| self.one(tenant, s)),
            Err(e) => self.fail(dir, &format!("{e:#}")),
        }
    }

    fn one(&mut self, tenant: &str, src: &PluginSource) {
        match self.loader.load(tenant, src, &self.tenants.guardrails(tenant)) {
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

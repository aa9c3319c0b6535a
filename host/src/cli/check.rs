//! `tollgate check`: validate plugins as a load would, and run their vectors.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use super::PluginArgs;
use crate::plugin::{Loader, PluginSource};
use crate::tenant;
use crate::vectors;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Plugin files (`NAME.wasm`, with `NAME.toml` beside it) or plugin directories (their
    /// tenant folders included).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub plugin: PluginArgs,
}

/// Prints one line per plugin; exits 1 if anything failed.
pub fn run(args: CheckArgs) -> Result<i32> {
    let loader = args.plugin.loader(None)?;
    let mut failed = 0usize;
    for path in &args.paths {
        if path.is_dir() {
            failed += check_dir(&loader, "", path);
            for (name, dir) in tenant::scan_tenants(path).unwrap_or_default() {
                failed += check_dir(&loader, &name, &dir);
            }
        } else {
            failed += match PluginSource::read(path, loader.defaults().max_plugin_bytes) {
                Ok(src) => check_one(&loader, "", &src),
                Err(e) => fail(path, &format!("{e:#}")),
            };
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

fn check_dir(loader: &Loader, tenant: &str, dir: &Path) -> usize {
    match tenant::read_tenant(dir, loader.defaults().max_plugin_bytes) {
        Ok(snapshot) => snapshot.sources.iter().map(|s| check_one(loader, tenant, s)).sum(),
        Err(e) => fail(dir, &format!("{e:#}")),
    }
}

fn check_one(loader: &Loader, tenant: &str, src: &PluginSource) -> usize {
    match loader.load(tenant, src) {
        Ok(plugin) => {
            println!(
                "ok    {}  {} ({}, {} vectors passed)",
                src.wasm_path.display(),
                plugin.role.as_str(),
                plugin.digest(),
                plugin.tests.len()
            );
            for w in plugin.warnings.iter().chain(&vectors::live_secret_warnings(loader.sandbox(), &plugin)) {
                println!("warn  {}  {w}", src.wasm_path.display());
            }
            0
        }
        Err(e) => fail(&src.wasm_path, &format!("{e:#}")),
    }
}

fn fail(path: &Path, why: &str) -> usize {
    println!("FAIL  {}  {why}", path.display());
    1
}

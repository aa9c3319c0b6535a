//! The command line (SPEC §6): `serve`, `review`, `check`.

mod build;
mod check;
mod new;
mod oci;
mod review;
mod serve;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::plugins::compile_cache::DiskCache;
use crate::plugins::loader::{Loader, PluginDefaults};
use crate::plugins::sandbox::{Sandbox, SandboxConfig};
use crate::tenants::scan::TenantsFile;

#[derive(Parser, Debug)]
#[command(
    name = "tollgate",
    version,
    about = "Kubernetes webhook token authenticator whose rules are WebAssembly plugins"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Operational log format (audit lines are always JSON).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `tollgate=debug` (tracing's EnvFilter syntax).
    /// (The signature library's own info lines — "no Fulcio cert", at every client — are noise
    /// for key-based signatures: warnings only.)
    #[arg(long, global = true, env = "TOLLGATE_LOG", default_value = "info,sigstore=warn")]
    pub log_level: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve TokenReviews from a plugin directory.
    Serve(Box<serve::ServeArgs>),
    /// Answer one TokenReview locally; the token is read from standard input (or --token-file).
    Review(review::ReviewArgs),
    /// Validate plugins and manifests and run their [[test]] vectors (--watch: again on every save).
    Check(check::CheckArgs),
    /// Write a new policy folder: sources, a manifest whose vectors pass, a README.
    New(new::NewArgs),
    /// Build a policy folder into NAME.wasm with its language's toolchain (installed when missing).
    Build(build::BuildArgs),
    /// Push DIR/NAME.wasm (and NAME.toml) to an OCI registry.
    Push(oci::PushArgs),
    /// Pull a plugin from an OCI registry into a folder (--key: only if signed).
    Pull(oci::PullArgs),
    /// Sign a plugin in a registry (cosign-compatible, key-based).
    Sign(oci::SignArgs),
    /// Verify a plugin's signature in a registry (exit 1 when none verifies).
    Verify(oci::VerifyArgs),
    /// Save plugins from registries into an OCI image layout folder (for air-gapped clusters).
    Save(oci::SaveArgs),
    /// Load the plugins of an OCI image layout folder into a plugin folder.
    Load(oci::LoadArgs),
}

/// Sandbox and plugin limits, shared by every command so that `check` and `review` load a
/// plugin exactly as `serve` does.
#[derive(Args, Debug, Clone)]
pub struct PluginArgs {
    /// Per-call budget of a plugin whose manifest names none.
    #[arg(long, default_value_t = 100)]
    pub plugin_timeout_ms: u64,
    /// The most `[limits] timeout_ms` may ask for.
    #[arg(long, default_value_t = 1000)]
    pub max_plugin_timeout_ms: u64,
    /// Memory of a plugin instance whose manifest names none.
    #[arg(long, default_value_t = 64)]
    pub plugin_memory_mib: u64,
    /// The most `[limits] memory_mib` may ask for.
    #[arg(long, default_value_t = 256)]
    pub max_plugin_memory_mib: u64,
    /// Plugin files larger than this are refused.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_plugin_bytes: u64,
    /// Plugin instances (fresh and warm, all tenants) held at once: the pooling allocator
    /// reserves their memory up front. Warm instances may take at most half, one tenant's at
    /// most an eighth; a review that finds no free slot is overload (503).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub max_instances: u32,
    /// Compiled plugins are kept here (outside the plugin directory, mode 0700), so a restart
    /// — or the next `check` of an 18 MB Python component — compiles nothing that did not change.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Bound on the compile cache; least recently used entries go first.
    #[arg(long, default_value_t = 1024)]
    pub cache_max_mib: u64,
}

impl PluginArgs {
    /// The loader every command uses (with the compile cache when `--cache-dir` is given).
    pub fn loader(&self) -> Result<Loader> {
        anyhow::ensure!(self.plugin_timeout_ms > 0, "--plugin-timeout-ms must be positive");
        anyhow::ensure!(
            self.plugin_timeout_ms <= self.max_plugin_timeout_ms,
            "--plugin-timeout-ms exceeds --max-plugin-timeout-ms"
        );
        anyhow::ensure!(
            self.plugin_memory_mib > 0 && self.plugin_memory_mib <= self.max_plugin_memory_mib,
            "--plugin-memory-mib must be positive and at most --max-plugin-memory-mib"
        );
        let max_memory_bytes = self.max_plugin_memory_mib << 20;
        let sandbox = Sandbox::new(&SandboxConfig {
            max_memory_bytes,
            pool_instances: self.max_instances,
            ..SandboxConfig::default()
        })?;
        let disk = self
            .cache_dir
            .as_deref()
            .map(|dir| DiskCache::open(dir, sandbox.engine_hash(), self.cache_max_mib << 20))
            .transpose()?;
        let defaults = PluginDefaults {
            timeout: Duration::from_millis(self.plugin_timeout_ms),
            max_timeout: Duration::from_millis(self.max_plugin_timeout_ms),
            memory_bytes: self.plugin_memory_mib << 20,
            max_memory_bytes,
            max_plugin_bytes: self.max_plugin_bytes,
        };
        Ok(Loader::new(Arc::new(sandbox), defaults, disk))
    }
}

/// The tenants file, or the defaults when none is given.
fn tenants_file(path: Option<&Path>) -> Result<TenantsFile> {
    path.map(TenantsFile::load).transpose().map(Option::unwrap_or_default)
}

fn plugin_dir(path: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(path).with_context(|| format!("plugin directory {}", path.display()))?;
    anyhow::ensure!(meta.is_dir(), "{} is not a directory", path.display());
    Ok(path.to_path_buf())
}

/// Runs a command; the exit code is the command's.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Review(args) => review::run(args),
        Command::Check(args) => check::run(args),
        Command::New(args) => new::run(args),
        Command::Build(args) => build::run(args),
        Command::Push(args) => oci::push(args),
        Command::Pull(args) => oci::pull(args),
        Command::Sign(args) => oci::sign(args),
        Command::Verify(args) => oci::verify(args),
        Command::Save(args) => oci::save(args),
        Command::Load(args) => oci::load(args),
    }
}

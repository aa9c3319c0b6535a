//! `tollgate review`: one TokenReview, locally, through exactly the chain `serve` runs.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::{PluginArgs, plugin_dir, tenants_file};
use crate::http::review::ApiVersion;
use crate::http::server::{new_request_id, render};
use crate::plugins::confine::Folder;
use crate::plugins::vectors::describe;
use crate::policy::chain::{self, Outcome, ReviewInput, StepResult};
use crate::tenants::scan;

#[derive(Args, Debug)]
pub struct ReviewArgs {
    /// The plugin directory, as `serve --plugins` takes it: its root is the default tenant,
    /// each sub-folder a named tenant.
    #[arg(long)]
    pub plugins: PathBuf,
    /// The operator's tenants file (guardrails per tenant), as `serve --tenants` takes it.
    #[arg(long)]
    pub tenants: Option<PathBuf>,
    /// The tenant folder to use ("" = the default tenant, the directory itself).
    #[arg(long, default_value = "")]
    pub tenant: String,
    /// `spec.audiences` (repeatable).
    #[arg(long = "audience")]
    pub audiences: Vec<String>,
    /// Read the token from this file instead of standard input. Never from the command line,
    /// where `ps` and shell history would keep it.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The apiVersion to answer in: v1 or v1beta1.
    #[arg(long, default_value = "v1", value_parser = ["v1", "v1beta1"])]
    pub api_version: String,
    /// Print each plugin's decision (to standard error).
    #[arg(long)]
    pub explain: bool,
    /// The whole review's deadline, as `serve --review-timeout-ms`.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub review_timeout_ms: u64,
    #[command(flatten)]
    pub plugin: PluginArgs,
}

/// Exit codes: 0 authenticated, 1 not authenticated, 3 unavailable (what serve answers 503).
pub fn run(args: ReviewArgs) -> Result<i32> {
    let dir = plugin_dir(&args.plugins)?;
    anyhow::ensure!(
        args.tenant.is_empty() || crate::plugins::confine::valid_tenant_name(&args.tenant),
        "--tenant must be a DNS label"
    );
    let token = read_token(args.token_file.as_ref())?;
    let guardrails = tenants_file(args.tenants.as_deref())?.guardrails(&args.tenant);
    let loader = args.plugin.loader()?;
    // Read as serve reads it: beneath the plugin directory and within the tenant's bounds.
    let root = Folder::open(&dir)?;
    let snapshot = scan::read_tenant(&root, &args.tenant, &guardrails.folder, loader.defaults().max_plugin_bytes)?;
    let generation = scan::load_generation(&loader, &args.tenant, &snapshot, guardrails.clone(), 1)?;

    let request_id = new_request_id();
    let input = ReviewInput::new(token, args.audiences, None, request_id.clone());
    let deadline = Instant::now() + Duration::from_millis(args.review_timeout_ms);
    let verdict = crate::plugins::sandbox::block_on(chain::evaluate(
        loader.sandbox(),
        &generation,
        &guardrails,
        &input,
        deadline,
    ));
    let scrubber = input.scrubber();

    if args.explain {
        let mut err = std::io::stderr().lock();
        for step in &verdict.steps {
            let what = match &step.result {
                StepResult::Skipped => "skipped ([match] did not claim the token)".to_string(),
                StepResult::Decided(d) => scrubber.clean(&describe(d), 4096),
                StepResult::Failed(f) => {
                    format!("failed: {}", scrubber.clean(&f.to_string(), 4096))
                }
                StepResult::Refused(why) => format!("refused: {why}"),
            };
            writeln!(err, "{:<14} {:<24} {what} ({:?})", step.role.as_str(), step.plugin, step.duration)?;
            // Which [config] keys it asked for (never their values: some are secrets).
            for (key, found) in &step.stats.config.reads {
                let key = scrubber.clean(key, 256);
                writeln!(err, "{:<14} {:<24}   config({key:?}) -> {}", "", "", if *found { "found" } else { "none" })?;
            }
            if step.stats.config.listed {
                writeln!(err, "{:<14} {:<24}   config-keys() -> every key", "", "")?;
            }
        }
        let settled = match &verdict.outcome {
            Outcome::Denied { rule: Some(rule), reason } => {
                format!("refused by host rule {rule}: {}", scrubber.clean(reason, 4096))
            }
            Outcome::Denied { reason, .. } => format!("denied: {}", scrubber.clean(reason, 4096)),
            other => other.class().to_string(),
        };
        writeln!(err, "{:<14} {settled}", "result")?;
    }
    let api_version = ApiVersion::parse(&args.api_version).unwrap_or(ApiVersion::V1);
    let (code, body, _) = render(&verdict, api_version, &request_id, false, &scrubber);
    let mut out = std::io::stdout().lock();
    out.write_all(&body)?;
    writeln!(out)?;
    Ok(match verdict.outcome {
        Outcome::Authenticated { .. } => 0,
        _ if code.as_u16() == 503 => 3,
        _ => 1,
    })
}

/// The token from a file or standard input, without its trailing line break.
fn read_token(file: Option<&PathBuf>) -> Result<String> {
    let mut raw = String::new();
    match file {
        Some(path) => {
            raw = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        }
        None => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("token: ");
            }
            stdin.read_to_string(&mut raw).context("reading the token from standard input")?;
        }
    }
    let token = raw.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&raw);
    if token.is_empty() {
        bail!("no token given (standard input or --token-file)");
    }
    Ok(token.to_owned())
}

//! How the in-process benches load plugins: through tollgate's own loader (vectors run, guardrails
//! applied), exactly as `serve` loads a tenant's folder.

// Each bench includes this file (`#[path]`) and uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use tollgate::plugins::loader::{Loader, PluginDefaults, PluginSource};
use tollgate::plugins::sandbox::Sandbox;
use tollgate::policy::chain::Generation;
use tollgate::tenants::scan::{Snapshot, TenantsFile, load_generation};
use tollgate_bench::fixtures;

/// One plugin of a bench tenant: its file name (`10-static-tokens`), the built guest it runs
/// (`static_tokens`, from `guests`) and its manifest text.
pub struct Source<'a> {
    pub name: &'a str,
    pub guest: &'a str,
    pub manifest: String,
}

/// The default tenant's generation holding `plugins`, in that order, built by `loader`.
pub fn with_loader(loader: &Loader, plugins: Vec<(&str, PathBuf, String)>) -> Result<Generation> {
    let folder = Arc::new(tollgate::plugins::confine::Folder::open(Path::new("."))?);
    let sources = plugins
        .into_iter()
        .map(|(name, wasm_path, manifest)| {
            let wasm = std::fs::read(&wasm_path)?.into();
            Ok(PluginSource {
                name: name.into(),
                wasm_path,
                folder: folder.clone(),
                wasm,
                manifest: Some((PathBuf::from(format!("{name}.toml")), manifest)),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let snapshot = Snapshot { sources, content: String::new() };
    load_generation(loader, "", &snapshot, TenantsFile::default().guardrails(""), 1)
}

/// The same, with built guests (from `guests`) and a loader of its own.
pub fn generation(sandbox: &Arc<Sandbox>, guests: &Path, plugins: Vec<Source<'_>>) -> Result<Generation> {
    let loader = Loader::new(sandbox.clone(), PluginDefaults::default(), None);
    let plugins = plugins
        .into_iter()
        .map(|p| Ok((p.name, fixtures::guest_in(guests, p.guest)?, p.manifest)))
        .collect::<Result<Vec<_>>>()?;
    with_loader(&loader, plugins)
}

/// The example pair as the benches review with it: static-tokens (with the bench user) and,
/// if `mapper`, group-mapper.
pub fn example_chain(sandbox: &Arc<Sandbox>, guests: &Path, mapper: bool) -> Result<Generation> {
    let mut plugins = vec![Source {
        name: "10-static-tokens",
        guest: "static_tokens",
        manifest: fixtures::static_tokens_manifest()?,
    }];
    if mapper {
        plugins.push(Source {
            name: "50-group-mapper",
            guest: "group_mapper",
            manifest: fixtures::group_mapper_manifest()?,
        });
    }
    generation(sandbox, guests, plugins)
}

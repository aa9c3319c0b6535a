//! Tenants: the plugin directory's root is the default tenant, each sub-folder a named one.
//! A tenant's plugins and manifests are loaded together into one [`Generation`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::guardrails::{GuardrailSpec, Guardrails};
use crate::plugin::{Loader, Plugin, PluginSource, read_bounded};
use sha2::{Digest as _, Sha256};

/// One tenant's complete, checked set of plugins. Reviews run on one generation from start to
/// end; a reload swaps in a whole new one.
pub struct Generation {
    /// "" is the default tenant.
    pub tenant: String,
    pub number: u64,
    /// In file-name order.
    pub plugins: Vec<Arc<Plugin>>,
    pub guardrails: Guardrails,
    pub loaded_at: SystemTime,
}

/// The operator's tenants file (`--tenants FILE`): guardrails per tenant. It lives outside the
/// plugin directory because tenants may be able to write their own folders.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsFile {
    #[serde(default)]
    pub default: GuardrailSpec,
    #[serde(default)]
    pub tenant: BTreeMap<String, GuardrailSpec>,
}

impl TenantsFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading tenants file {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses and validates the file's text (`path` names it in errors); logs every
    /// `allow_system` exception loudly.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let file: TenantsFile = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("tenants file {}: {}", path.display(), e.message().trim()))?;
        for name in file.tenant.keys() {
            if !valid_tenant_name(name) {
                bail!("tenants file {}: {name:?} is not a valid tenant name (a DNS label)", path.display());
            }
        }
        for (tenant, spec) in
            std::iter::once(("", &file.default)).chain(file.tenant.iter().map(|(k, v)| (k.as_str(), v)))
        {
            if let Some(dir) = spec.secret_dirs.iter().find(|d| !d.is_absolute()) {
                bail!("tenants file {}: secret_dirs entry {} is not an absolute path", path.display(), dir.display());
            }
            for entry in spec.outbound_hosts.iter().flatten() {
                crate::sandbox::outbound::Destination::parse_allowed(entry)
                    .with_context(|| format!("tenants file {}: outbound_hosts", path.display()))?;
            }
            for name in &spec.allow_system {
                if !name.starts_with("system:") {
                    bail!("tenants file {}: allow_system entry {name:?} is not a system: name", path.display());
                }
                tracing::warn!(tenant = %tenant, identity = %name, "allow_system: this tenant's plugins may grant a system: identity");
            }
        }
        Ok(file)
    }

    /// The guardrails for `tenant` ("" = default); an unlisted tenant gets the safe defaults.
    pub fn guardrails(&self, tenant: &str) -> Guardrails {
        let spec = if tenant.is_empty() { Some(&self.default) } else { self.tenant.get(tenant) };
        Guardrails::from_spec(tenant, spec.unwrap_or(&GuardrailSpec::default()))
    }
}

/// A DNS label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn valid_tenant_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Kubernetes ConfigMap, Secret and projected volumes hold their files in a timestamped
/// directory reached through the `..data` symlink, which kubelet swaps atomically on update.
const K8S_DATA: &str = "..data";

/// How often a scan starts again because `..data` moved under it before giving up (kubelet
/// swaps it at most every sync period, so twice in one scan is already rare).
const DATA_RETRIES: usize = 5;

/// What one scan of a tenant folder read: every plugin's bytes, from one consistent view.
pub struct Snapshot {
    /// In file-name order.
    pub sources: Vec<PluginSource>,
    /// SHA-256 over every name, component and manifest: equal snapshots load equal generations.
    pub content: String,
}

/// Reads a tenant folder's plugins and manifests. Dot-files are ignored and symlinks followed.
/// When the folder is a Kubernetes volume, `..data` is resolved once and every file read through
/// its target — listing the target, not the visible links, which kubelet updates only after the
/// swap; if `..data` moved by the end of the scan, it starts again. So a snapshot never mixes two
/// versions of a ConfigMap. A manifest without its plugin is refused: a typo in a file name must
/// not silently run a plugin without its role and config.
pub fn read_tenant(dir: &Path, max_plugin_bytes: u64) -> Result<Snapshot> {
    for _ in 0..DATA_RETRIES {
        let data = resolve_data(dir)?;
        let mut snapshot = read_listing(data.as_deref().unwrap_or(dir), max_plugin_bytes)?;
        if resolve_data(dir)? == data {
            // File references in manifests are relative to the tenant's folder as the operator
            // sees it, not to kubelet's timestamped directory.
            snapshot.sources.iter_mut().for_each(|s| s.dir = dir.to_path_buf());
            return Ok(snapshot);
        }
        tracing::debug!(dir = %dir.display(), "..data moved during the scan: reading again");
    }
    bail!("{}: ..data kept moving during {DATA_RETRIES} scans", dir.display())
}

/// The directory `dir/..data` points to, if `dir` is a Kubernetes volume.
fn resolve_data(dir: &Path) -> Result<Option<PathBuf>> {
    let link = dir.join(K8S_DATA);
    match std::fs::read_link(&link) {
        Ok(target) => Ok(Some(dir.join(target))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // Not a symlink: a plain `..data` directory.
        Err(_) if link.is_dir() => Ok(Some(link)),
        Err(e) => Err(e).with_context(|| format!("reading {}", link.display())),
    }
}

fn read_listing(dir: &Path, max_plugin_bytes: u64) -> Result<Snapshot> {
    let mut wasm = BTreeMap::new();
    let mut manifests = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            bail!("{}: a file name is not UTF-8", dir.display());
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: a broken one is an error, not a missing plugin.
        let meta = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
        if !meta.is_file() {
            continue;
        }
        if let Some(stem) = name.strip_suffix(".wasm") {
            wasm.insert(stem.to_owned(), path);
        } else if let Some(stem) = name.strip_suffix(".toml") {
            manifests.insert(stem.to_owned(), path);
        }
    }
    if let Some((stem, path)) = manifests.iter().find(|(stem, _)| !wasm.contains_key(*stem)) {
        bail!("{}: a manifest without {stem}.wasm beside it", path.display());
    }
    let mut content = Sha256::new();
    let mut sources = Vec::with_capacity(wasm.len());
    for (name, path) in wasm {
        let bytes: Arc<[u8]> = read_bounded(&path, max_plugin_bytes)?.into();
        let manifest = match manifests.remove(&name) {
            Some(mpath) => {
                let text = std::fs::read_to_string(&mpath).with_context(|| format!("reading {}", mpath.display()))?;
                Some((mpath, text))
            }
            None => None,
        };
        content.update(name.as_bytes());
        content.update([0]);
        content.update(Sha256::digest(&bytes));
        content.update(manifest.as_ref().map(|(_, t)| t.as_bytes()).unwrap_or(b"\0none"));
        content.update([0]);
        sources.push(PluginSource { name, wasm_path: path, dir: dir.to_path_buf(), wasm: bytes, manifest });
    }
    Ok(Snapshot { sources, content: hex::encode(content.finalize()) })
}

/// The tenant folders under the plugin directory (name, path), in name order.
pub fn scan_tenants(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut tenants = Vec::new();
    for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let entry = entry.with_context(|| format!("listing {}", root.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if !std::fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false) {
            continue;
        }
        if !valid_tenant_name(&name) {
            tracing::warn!(folder = %path.display(), "ignored: a tenant folder name must be a DNS label ([a-z0-9-], at most 63)");
            continue;
        }
        tenants.push((name, path));
    }
    tenants.sort();
    Ok(tenants)
}

/// Loads a snapshot into a new generation; any refused file refuses the whole generation.
pub fn load_generation(
    loader: &Loader,
    tenant: &str,
    snapshot: &Snapshot,
    guardrails: Guardrails,
    number: u64,
) -> Result<Generation> {
    let mut plugins = Vec::with_capacity(snapshot.sources.len());
    for src in &snapshot.sources {
        let plugin = loader.load(tenant, src, &guardrails)?;
        for w in &plugin.warnings {
            tracing::warn!(tenant, plugin = %plugin.name, "{w}");
        }
        plugins.push(Arc::new(plugin));
    }
    Ok(Generation { tenant: tenant.to_owned(), number, plugins, guardrails, loaded_at: SystemTime::now() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_dns_labels() {
        for ok in ["acme", "a", "team-1", "0x"] {
            assert!(valid_tenant_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Acme", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!valid_tenant_name(bad), "{bad}");
        }
    }

    #[test]
    fn tenants_file_defaults() {
        let f: TenantsFile =
            toml::from_str("[default]\nallow_system=[\"system:masters\"]\n[tenant.acme]\nusername_prefix=\"a:\"")
                .unwrap();
        assert!(f.guardrails("").allow_system.contains("system:masters"));
        assert_eq!(f.guardrails("acme").username_prefix, "a:");
        assert_eq!(f.guardrails("acme").allowed_groups, Some(vec!["acme:*".to_string()]));
        assert_eq!(f.guardrails("other").username_prefix, "other:");
    }
}

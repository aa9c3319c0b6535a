//! Tenants: the plugin directory's root is the default tenant, each sub-folder a named one.
//! A tenant's plugins and manifests are loaded together into one [`Generation`] (`policy::chain`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::observe::metrics::Meters;
use crate::plugins::confine::{Folder, valid_tenant_name};
use crate::plugins::loader::{Loader, PluginSource};
use crate::policy::chain::Generation;
use crate::policy::guardrails::{FolderLimits, GuardrailSpec, Guardrails};
use sha2::{Digest as _, Sha256};

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
                crate::plugins::sandbox::outbound::Destination::parse_allowed(entry)
                    .with_context(|| format!("tenants file {}: outbound_hosts", path.display()))?;
            }
            let mut names = std::collections::HashSet::new();
            for source in &spec.oci {
                source.validate().with_context(|| format!("tenants file {}: tenant {tenant:?}", path.display()))?;
                anyhow::ensure!(
                    names.insert(&source.name),
                    "tenants file {}: tenant {tenant:?}: two oci plugins named {:?}",
                    path.display(),
                    source.name
                );
                crate::tenants::remote::poll_interval(source)
                    .map_err(|e| anyhow::anyhow!("tenants file {}: {e}", path.display()))?;
            }
            for entry in spec.clients.iter().flatten() {
                crate::policy::values::Dn::parse(entry).with_context(|| {
                    format!(
                        "tenants file {}: tenant {tenant:?}: clients entry {entry:?} is not an RFC 4514 name",
                        path.display()
                    )
                })?;
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

    /// Every registry plugin of every tenant ("" = default), in tenant order.
    pub fn oci_sources(&self) -> Vec<(String, crate::plugins::oci::SourceSpec)> {
        std::iter::once((String::new(), &self.default))
            .chain(self.tenant.iter().map(|(k, v)| (k.clone(), v)))
            .flat_map(|(t, spec)| spec.oci.iter().map(move |s| (t.clone(), s.clone())))
            .collect()
    }

    /// The guardrails for `tenant` ("" = default); an unlisted tenant gets the safe defaults.
    pub fn guardrails(&self, tenant: &str) -> Guardrails {
        let spec = if tenant.is_empty() { Some(&self.default) } else { self.tenant.get(tenant) };
        Guardrails::from_spec(tenant, spec.unwrap_or(&GuardrailSpec::default()))
    }
}

/// Kubernetes ConfigMap, Secret and projected volumes hold their files in a timestamped
/// directory reached through the `..data` symlink, which kubelet swaps atomically on update.
const K8S_DATA: &str = "..data";

/// How often a scan starts again because `..data` moved under it before giving up (kubelet
/// swaps it at most every sync period, so twice in one scan is already rare).
const DATA_RETRIES: usize = 5;

/// Entries one listing of a folder may hold (plugins, manifests, dot-files, sub-folders): tens
/// are normal, and a folder of millions must not cost a scan minutes or gigabytes.
pub const MAX_ENTRIES: usize = 4096;

/// What one scan of a tenant folder read: every plugin's bytes, from one consistent view.
#[derive(Default)]
pub struct Snapshot {
    /// In file-name order.
    pub sources: Vec<PluginSource>,
    /// SHA-256 over every name, component and manifest: equal snapshots load equal generations.
    pub content: String,
}

impl Snapshot {
    /// This snapshot with the tenant's registry plugins (`content` digests them) beside the
    /// folder's, in name order; a name in both is refused.
    pub fn with(mut self, remote: Vec<PluginSource>, content: &str) -> Result<Self> {
        if remote.is_empty() {
            return Ok(self);
        }
        for source in remote {
            if self.sources.iter().any(|s| s.name == source.name) {
                bail!("{}: the tenant's folder has a plugin of the same name as a registry plugin", source.name);
            }
            self.sources.push(source);
        }
        self.sources.sort_by(|a, b| a.name.cmp(&b.name));
        self.content = hex::encode(Sha256::digest(format!("{}|{content}", self.content)));
        Ok(self)
    }
}

/// Reads tenant `tenant`'s plugins and manifests ("" = the plugin directory `root` itself),
/// beneath its folder and within `limits`. The folder is opened beneath `root`: one that is a
/// symlink is followed only while it stays inside (a projected volume's `acme -> ..data/acme`),
/// never to `/etc` or elsewhere.
/// Dot-files are ignored, symlinks followed while they stay inside, and anything but a regular
/// file named `.wasm` or `.toml` refused (a FIFO is never read). When the folder is a Kubernetes
/// volume, `..data` is resolved once and every file read through its target — listing the target,
/// not the visible links, which kubelet updates only after the swap; if `..data` moved by the end
/// of the scan, it starts again. So a snapshot never mixes two versions of a ConfigMap. A
/// manifest without its plugin is refused: a typo in a file name must not silently run a plugin
/// without its role and config. The default tenant (`tenant` "") may not read into another
/// tenant's folder.
pub fn read_tenant(root: &Folder, tenant: &str, limits: &FolderLimits, max_plugin_bytes: u64) -> Result<Snapshot> {
    let folder = &Arc::new(if tenant.is_empty() { root.reopen()? } else { root.dir(Path::new(tenant))? });
    for _ in 0..DATA_RETRIES {
        let link = folder.read_link(K8S_DATA);
        let data = if link.is_some() || folder.lstat(Path::new(K8S_DATA)).is_some() {
            Some(folder.dir(Path::new(K8S_DATA))?)
        } else {
            None
        };
        let listing = data.as_ref().unwrap_or(folder);
        let snapshot = read_listing(folder, listing, tenant, limits, max_plugin_bytes)?;
        if folder.read_link(K8S_DATA) == link {
            return Ok(snapshot);
        }
        tracing::debug!(dir = %folder.path().display(), "..data moved during the scan: reading again");
    }
    bail!("{}: ..data kept moving during {DATA_RETRIES} scans", folder.path().display())
}

fn read_listing(
    folder: &Arc<Folder>,
    listing: &Folder,
    tenant: &str,
    limits: &FolderLimits,
    max_plugin_bytes: u64,
) -> Result<Snapshot> {
    let mut wasm = BTreeSet::new();
    let mut manifests = BTreeSet::new();
    for name in listing.names(MAX_ENTRIES)? {
        if name.starts_with('.') {
            continue;
        }
        if let Some(stem) = name.strip_suffix(".wasm") {
            wasm.insert(stem.to_owned());
        } else if let Some(stem) = name.strip_suffix(".toml") {
            manifests.insert(stem.to_owned());
        }
    }
    if let Some(stem) = manifests.iter().find(|stem| !wasm.contains(*stem)) {
        bail!("{}: a manifest without {stem}.wasm beside it", listing.path().join(format!("{stem}.toml")).display());
    }
    if wasm.len() > limits.plugins {
        bail!(
            "{}: {} plugins, more than this tenant's limit of {} (max_plugins in the tenants file)",
            folder.path().display(),
            wasm.len(),
            limits.plugins
        );
    }
    let mut total = 0u64;
    let mut content = Sha256::new();
    let mut sources = Vec::with_capacity(wasm.len());
    for name in wasm {
        let with_manifest = manifests.contains(&name);
        // File references in manifests are relative to the tenant's folder as the operator
        // sees it, not to kubelet's timestamped directory.
        let source = PluginSource::read_in(folder, listing, tenant.is_empty(), name, with_manifest, max_plugin_bytes)?;
        total += source.wasm.len() as u64 + source.manifest.as_ref().map_or(0, |(_, t)| t.len() as u64);
        if total > limits.total_bytes {
            bail!(
                "{}: its plugins and manifests exceed this tenant's limit of {} MiB (max_total_mib in the tenants file)",
                folder.path().display(),
                limits.total_bytes >> 20
            );
        }
        content.update(source.name.as_bytes());
        content.update([0]);
        content.update(Sha256::digest(&source.wasm));
        content.update(source.manifest.as_ref().map(|(_, t)| t.as_bytes()).unwrap_or(b"\0none"));
        content.update([0]);
        sources.push(source);
    }
    Ok(Snapshot { sources, content: hex::encode(content.finalize()) })
}

/// The tenant folders under the plugin directory, in name order: entries whose names are DNS
/// labels and that are directories or symlinks (opening one checks it stays inside).
pub fn scan_tenants(root: &Folder) -> Result<Vec<String>> {
    let mut tenants = Vec::new();
    for name in root.names(MAX_ENTRIES)? {
        if name.starts_with('.') {
            continue;
        }
        let Some(mode) = root.lstat(Path::new(&name)) else { continue };
        let kind = mode & libc::S_IFMT;
        if kind != libc::S_IFDIR && kind != libc::S_IFLNK {
            continue;
        }
        if !valid_tenant_name(&name) {
            if kind == libc::S_IFDIR {
                tracing::warn!(folder = %root.path().join(&name).display(), "ignored: a tenant folder name must be a DNS label ([a-z0-9-], at most 63)");
            }
            continue;
        }
        tenants.push(name);
    }
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
    let mut vectors_left = guardrails.folder.vectors;
    for src in &snapshot.sources {
        let plugin = loader.load(tenant, src, &guardrails.load_rules(), &mut vectors_left)?;
        for w in &plugin.warnings {
            tracing::warn!(tenant, plugin = %plugin.name, "{w}");
        }
        plugins.push(Arc::new(plugin));
    }
    Ok(Generation {
        tenant: tenant.to_owned(),
        number,
        meters: Meters::new(plugins.iter().map(|p| p.name.clone())),
        plugins,
        built_under: guardrails,
        loaded_at: SystemTime::now(),
    })
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
        assert_eq!(f.guardrails("acme").allowed_groups, Some(vec!["tollgate:acme:*".to_string()]));
        assert_eq!(f.guardrails("other").username_prefix, "tollgate:other:");
    }

    #[test]
    fn clients_entries_must_be_rfc_4514_names() {
        let parse = |text: &str| TenantsFile::parse(text, Path::new("t.toml")).map_err(|e| format!("{e:#}"));
        let ok = parse("[tenant.acme]\nclients = [\"CN=apiserver,O=acme\", 'CN=a\\,b', \"uid=x+dc=y\"]\n").unwrap();
        assert_eq!(ok.guardrails("acme").clients.map(|c| c.len()), Some(3));
        for (entry, why) in [("CN=a, O=b", "no space around"), ("CN=a;O=b", "must be escaped"), ("", "empty")] {
            let err = parse(&format!("[default]\nclients = [{entry:?}]\n")).unwrap_err();
            assert!(
                err.contains("clients entry") && err.contains("not an RFC 4514 name") && err.contains(why),
                "{err}"
            );
        }
    }
}

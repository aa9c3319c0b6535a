//! One plugin: its compiled component, manifest and effective limits.
//!
//! [`Loader::load`] is the one way a plugin is loaded — by `serve`, `review`, `check` and reload
//! alike: size check, manifest, compile (once per content digest), fit-the-world check, and every
//! `[[test]]` vector. A plugin that fails any step never goes live.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::plugins::compile_cache::DiskCache;
use crate::plugins::confine::Folder;
use crate::plugins::manifest::Manifest;
use crate::plugins::plugin::{Matcher, Plugin};
use crate::plugins::sandbox::crypto::KeyCache;
use crate::plugins::sandbox::kv::{KvLimits, KvStore};
use crate::plugins::sandbox::outbound::{self, Destination, OutboundGrant};
use crate::plugins::sandbox::{Code, PluginEnv, Sandbox, Slots, WarmBudget, WarmPool};
use crate::plugins::secrets::{self, Scope};
use crate::plugins::vectors;

/// What the operator allows one tenant's plugins at load, from its guardrails
/// (`policy::guardrails::Guardrails::load_rules`).
#[derive(Clone, Copy, Debug)]
pub struct LoadRules<'a> {
    /// Where `secret_files` and `[outbound] ca_file` may point besides the tenant's folder.
    pub secret_dirs: &'a [PathBuf],
    /// The only `allowed_outbound_hosts` its manifests may name (see `Guardrails::outbound_hosts`).
    pub outbound_hosts: Option<&'a [String]>,
    /// `[[test]]` vectors over all its manifests (named in the error when exceeded).
    pub max_vectors: usize,
}

/// Server-wide defaults and maxima for plugins (SPEC §7).
#[derive(Clone, Debug)]
pub struct PluginDefaults {
    /// Per-call budget when the manifest names none. 100 ms is a hundred times what a compiled
    /// policy needs and still far inside kube-apiserver's patience.
    pub timeout: Duration,
    /// The most a manifest may ask for.
    pub max_timeout: Duration,
    /// Per-instance memory when the manifest names none: 64 MiB fits any compiled guest.
    pub memory_bytes: u64,
    /// The most a manifest may ask for (also the pool's slot size).
    pub max_memory_bytes: u64,
    /// Larger files are refused before they are read whole (`--max-plugin-bytes`).
    pub max_plugin_bytes: u64,
}

impl Default for PluginDefaults {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(100),
            max_timeout: Duration::from_secs(1),
            memory_bytes: 64 << 20,
            max_memory_bytes: 256 << 20,
            // A Python component is ~18 MB and SpiderMonkey ~12 MB: 64 MiB leaves room.
            max_plugin_bytes: 64 << 20,
        }
    }
}

/// A plugin's files, read whole by a scan: a generation is built from what one scan read, never
/// from files re-read later (which may have changed meanwhile).
#[derive(Clone)]
pub struct PluginSource {
    /// The file name without `.wasm`; plugins run in byte order of it.
    pub name: String,
    /// Where it was read (for messages).
    pub wasm_path: PathBuf,
    /// The tenant's folder, where the manifest's relative file references resolve.
    pub folder: Arc<Folder>,
    pub wasm: Arc<[u8]>,
    /// `NAME.toml`, if there is one: its path and text.
    pub manifest: Option<(PathBuf, String)>,
}

/// A manifest is a few hundred bytes of TOML; 64 KiB holds hundreds of vectors. Anything larger
/// is refused before it is read whole (a sparse 50 GB file costs one bounded read).
pub const MAX_MANIFEST_BYTES: u64 = 64 << 10;

impl PluginSource {
    /// Reads the plugin at `wasm_path`, with `NAME.toml` beside it if there is one, as a scan
    /// reads them (`tollgate check FILE`).
    pub fn read(wasm_path: &Path, max_bytes: u64) -> Result<Self> {
        let name = plugin_name(wasm_path)?;
        let dir = wasm_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let folder = Arc::new(Folder::open(dir)?);
        let with_manifest = folder.lstat(Path::new(&format!("{name}.toml"))).is_some();
        Self::read_in(&folder, &folder, false, name, with_manifest, max_bytes)
    }

    /// Reads plugin `name` — `NAME.wasm`, and `NAME.toml` when `with_manifest` — beneath
    /// `listing` (the folder, or its `..data` target), bounded and never blocking; for the
    /// default tenant, never from inside another tenant's folder. `folder` is the tenant's
    /// folder, where its manifest's file references resolve.
    pub fn read_in(
        folder: &Arc<Folder>,
        listing: &Folder,
        default_tenant: bool,
        name: String,
        with_manifest: bool,
        max_bytes: u64,
    ) -> Result<Self> {
        let read = |file: &str, max: u64, what: &str| -> Result<(PathBuf, Vec<u8>)> {
            let path = listing.path().join(file);
            let (opened, _) = listing.file(Path::new(file))?;
            if default_tenant {
                crate::plugins::confine::outside_tenant_folders(listing, &opened, &path)?;
            }
            let bytes = crate::plugins::confine::read_bounded(opened, max, &path, what)?;
            Ok((path, bytes))
        };
        let (wasm_path, wasm) = read(&format!("{name}.wasm"), max_bytes, "the plugin size limit (--max-plugin-bytes)")?;
        let manifest = if with_manifest {
            let (path, bytes) = read(&format!("{name}.toml"), MAX_MANIFEST_BYTES, "the manifest size limit")?;
            let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
            Some((path, text))
        } else {
            None
        };
        Ok(Self { name, wasm_path, folder: folder.clone(), wasm: wasm.into(), manifest })
    }
}

/// `NAME` of `.../NAME.wasm`.
pub fn plugin_name(wasm_path: &Path) -> Result<String> {
    let name = wasm_path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".wasm"))
        .with_context(|| format!("{} is not a NAME.wasm file", wasm_path.display()))?;
    Ok(name.to_owned())
}

/// Loads plugins; remembers compiled code by digest so an unchanged file is never recompiled.
pub struct Loader {
    sandbox: Arc<Sandbox>,
    defaults: PluginDefaults,
    codes: Mutex<HashMap<String, Weak<Code>>>,
    disk: Option<DiskCache>,
    /// The server's own key material, which no manifest may name (as the operator named it:
    /// each open compares what these resolve to then).
    protected: Vec<PathBuf>,
    /// Idle warm instances server-wide: half the instance slots, so fresh instances always
    /// find the other half.
    warm_server: Arc<Slots>,
    /// Idle warm instances per tenant: an eighth of the slots, so four tenants' warm pools
    /// cannot take the whole warm half.
    warm_tenants: Mutex<HashMap<String, Arc<Slots>>>,
    /// Compiles running now (tenants build on threads of their own; see `MAX_COMPILES`).
    compiling: (Mutex<usize>, Condvar),
    /// Per digest being compiled, the lock its other builders wait on.
    compiling_digest: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// The most recently loaded code, kept alive beyond the generations that use it (newest
    /// first; see `RECENT_CODES`).
    recent: Mutex<VecDeque<Arc<Code>>>,
}

/// Code kept in memory after its last generation went: a rollback, or a swap back and forth
/// between two versions, then compiles nothing. At most this many components and this many
/// component bytes (compiled code takes a few times that): eight Rust policies (0.1-0.3 MB
/// each) stay far under the byte bound; one 18 MB Python component fits, and pins tens of MB,
/// not hundreds.
const RECENT_CODES: usize = 8;
const RECENT_BYTES: usize = 32 << 20;

/// Compiles at once. One compile already runs on every core (wasmtime compiles functions in
/// parallel), so more at once only add memory; and a tenant's build waits here at most for the
/// compiles queued before it, each bounded by the plugin size limit — never for another
/// tenant's vectors, which run outside this bound.
const MAX_COMPILES: usize = 2;

impl Loader {
    pub fn new(sandbox: Arc<Sandbox>, defaults: PluginDefaults, disk: Option<DiskCache>) -> Self {
        let warm_server = Slots::new(sandbox.max_instances() / 2);
        Self {
            sandbox,
            defaults,
            codes: Mutex::default(),
            disk,
            protected: Vec::new(),
            warm_server,
            warm_tenants: Mutex::default(),
            compiling: Default::default(),
            compiling_digest: Mutex::default(),
            recent: Mutex::default(),
        }
    }

    /// The warm-instance budget of a new pool in `tenant` (shared by its plugins and generations).
    fn warm_budget(&self, tenant: &str) -> WarmBudget {
        let per_tenant = (self.sandbox.max_instances() / 8).max(1);
        let tenant = self
            .warm_tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant.to_owned())
            .or_insert_with(|| Slots::new(per_tenant))
            .clone();
        WarmBudget { server: self.warm_server.clone(), tenant }
    }

    /// Files no manifest may read through `secret_files` or `ca_file` (TLS key, fingerprint
    /// key...), whatever folder they are in.
    pub fn protect(&mut self, paths: impl IntoIterator<Item = PathBuf>) {
        self.protected.extend(paths.into_iter().filter_map(|p| std::path::absolute(p).ok()));
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    pub fn defaults(&self) -> &PluginDefaults {
        &self.defaults
    }

    /// Loads one plugin for `tenant` and runs its vectors. The error says which file and why.
    /// `rules` are the operator's for this tenant; `vectors_left` is what remains of the
    /// tenant's vector budget.
    pub fn load(
        &self,
        tenant: &str,
        src: &PluginSource,
        rules: &LoadRules<'_>,
        vectors_left: &mut usize,
    ) -> Result<Plugin> {
        check_name(&src.name)?;
        let manifest = match &src.manifest {
            Some((path, text)) => Manifest::parse(text).with_context(|| format!("manifest {}", path.display()))?,
            None => Manifest::default(),
        };
        if manifest.tests.len() > *vectors_left {
            bail!(
                "{}: its [[test]] vectors exceed this tenant's limit of {} (max_vectors in the tenants file)",
                src.name,
                rules.max_vectors
            );
        }
        *vectors_left -= manifest.tests.len();
        let scope = Scope { tenant, folder: &src.folder, secret_dirs: rules.secret_dirs, protected: &self.protected };
        let mut files = Vec::new();
        let mut config = manifest.config;
        let mut secret_values = Vec::new();
        for (key, reference) in &manifest.secret_files {
            let context = || format!("{}: secret_files.{key}", src.name);
            let (file, bytes) = scope.read(reference, secrets::MAX_SECRET_BYTES).with_context(context)?;
            let value = secrets::secret_text(&file.shown(), bytes).with_context(context)?;
            config.insert(key.clone(), value.clone());
            secret_values.push(value);
            files.push(file);
        }
        let outbound = if manifest.allowed_outbound_hosts.is_empty() {
            None
        } else {
            egress_allowed(tenant, &manifest.allowed_outbound_hosts, rules.outbound_hosts)
                .with_context(|| format!("{}: allowed_outbound_hosts", src.name))?;
            let ca = match &manifest.outbound.ca_file {
                Some(reference) => {
                    let (file, pem) = scope
                        .read(reference, secrets::MAX_CA_BYTES)
                        .with_context(|| format!("{}: [outbound] ca_file", src.name))?;
                    files.push(file);
                    Some((reference.clone(), pem))
                }
                None => None,
            };
            let grant = OutboundGrant::new(
                &manifest.allowed_outbound_hosts,
                ca.as_ref().map(|(name, pem)| (name.as_str(), pem.as_slice())),
                manifest.outbound.max_response_kib.map_or(outbound::DEFAULT_RESPONSE_BYTES, |k| k << 10),
                manifest.outbound.max_concurrent_requests.unwrap_or(outbound::DEFAULT_CONCURRENCY),
            )
            .with_context(|| format!("{}: allowed_outbound_hosts", src.name))?;
            Some(Arc::new(grant))
        };
        let kv_limits = KvLimits {
            max_entries: manifest.kv.max_entries.unwrap_or(KvLimits::DEFAULT.max_entries),
            max_bytes: manifest.kv.max_kib.map_or(KvLimits::DEFAULT.max_bytes, |k| k << 10),
        };
        let code = self.code(&src.wasm).with_context(|| format!("{}", src.wasm_path.display()))?;
        // Without an outbound grant wasi:http is not linked at all: its functions trap.
        if outbound.is_none() {
            self.sandbox.seal(&code).with_context(|| format!("{}", src.wasm_path.display()))?;
        }

        let mut warnings = Vec::new();
        if src.manifest.is_none() {
            warnings.push(format!(
                "no {}.toml beside it: loaded with an empty [config] and nothing checked (no [[test]] vectors)",
                src.name
            ));
        } else if manifest.tests.is_empty() {
            warnings.push("no [[test]] vectors: only the component's world and the manifest were checked".into());
        }
        let timeout = match manifest.limits.timeout_ms.map(Duration::from_millis) {
            Some(t) if t > self.defaults.max_timeout => {
                warnings
                    .push(format!("limits.timeout_ms capped to the server maximum {:?}", self.defaults.max_timeout));
                self.defaults.max_timeout
            }
            Some(t) => t,
            None => self.defaults.timeout,
        };
        let memory_bytes = match manifest.limits.memory_mib.map(|m| m.saturating_mul(1 << 20)) {
            Some(m) if m > self.defaults.max_memory_bytes => {
                warnings.push(format!(
                    "limits.memory_mib capped to the server maximum {} MiB",
                    self.defaults.max_memory_bytes >> 20
                ));
                self.defaults.max_memory_bytes
            }
            Some(m) => m,
            None => self.defaults.memory_bytes,
        };
        let mut plugin = Plugin {
            name: src.name.clone(),
            role: manifest.role,
            matcher: manifest.matcher.map(|m| Matcher { token_prefix: m.token_prefix, jwt_issuer: m.jwt_issuer }),
            env: Arc::new(PluginEnv {
                tenant: tenant.to_owned(),
                name: src.name.clone(),
                config,
                timeout,
                memory_bytes,
                // Each load makes its own pool: a reload never hands a new generation an old
                // generation's instances, and no pool is shared across tenants.
                warm: manifest.instances.reuse.then(|| {
                    let i = &manifest.instances;
                    WarmPool::new(
                        i.max_idle.unwrap_or(4),
                        i.max_uses.unwrap_or(1000),
                        Duration::from_secs(i.idle_seconds.unwrap_or(60)),
                        self.warm_budget(tenant),
                    )
                }),
                outbound,
                // A new store per load: a reload empties the plugin's cache.
                kv: Arc::new(KvStore::new(kv_limits)),
                keys: KeyCache::new(),
                secrets: secret_values.into(),
                vector: false,
                clock: None,
                mute: false,
            }),
            code,
            tests: manifest.tests,
            warnings,
            files,
        };
        let run = vectors::run_all(&self.sandbox, &plugin);
        if !run.failures.is_empty() {
            bail!("{}: its own [[test]] vectors fail: {}", src.name, run.failures.join("; "));
        }
        plugin.warnings.extend(vectors::config_warnings(&plugin, &run.config));
        Ok(plugin)
    }

    /// Compiled code for these bytes: from memory if a live generation uses it or it is among
    /// the recent ones, else from the disk cache, else compiled (and cached).
    pub fn code(&self, bytes: &[u8]) -> Result<Arc<Code>> {
        let code = self.find_or_compile(bytes)?;
        self.remember(&code);
        Ok(code)
    }

    /// Keeps `code` among the `RECENT_CODES`, as the newest.
    fn remember(&self, code: &Arc<Code>) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|c| !Arc::ptr_eq(c, code));
        recent.push_front(code.clone());
        while recent.len() > RECENT_CODES
            || (recent.len() > 1 && recent.iter().map(|c| c.size).sum::<usize>() > RECENT_BYTES)
        {
            recent.pop_back();
        }
    }

    fn find_or_compile(&self, bytes: &[u8]) -> Result<Arc<Code>> {
        let digest = crate::plugins::sandbox::digest(bytes);
        let cached = || self.codes.lock().unwrap_or_else(|e| e.into_inner()).get(&digest).and_then(Weak::upgrade);
        if let Some(code) = cached() {
            return Ok(code);
        }
        // One compile per digest at a time: tenants building the same component at once (one
        // image in many tenants, a rollout) wait for the first compile and share its code.
        let turn = DigestTurn::take(&self.compiling_digest, &digest);
        let _mine = turn.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(code) = cached() {
            return Ok(code);
        }
        let code = Arc::new(self.compile_or_load(bytes, &digest)?);
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        codes.retain(|_, w| w.strong_count() > 0);
        codes.insert(digest.clone(), Arc::downgrade(&code));
        Ok(code)
    }

    /// Waits for a place among the `MAX_COMPILES`.
    fn compile_turn(&self) -> CompileTurn<'_> {
        let (count, freed) = &self.compiling;
        let mut running = count.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= MAX_COMPILES {
            running = freed.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
        CompileTurn(&self.compiling)
    }

    fn compile_or_load(&self, bytes: &[u8], digest: &str) -> Result<Code> {
        if let Some(serialized) = self.disk.as_ref().and_then(|d| d.get(digest)) {
            // SAFETY: `get` returns only entries whose HMAC (under this cache's private key,
            // over the engine hash, digest and bytes) checks out: code this engine compiled.
            match unsafe { self.sandbox.load_compiled(&serialized, digest.to_owned(), bytes.len()) } {
                Ok(code) => {
                    tracing::info!(
                        digest,
                        took_us = code.compile_time.as_micros() as u64,
                        "loaded from the compile cache"
                    );
                    return Ok(code);
                }
                Err(e) => {
                    tracing::warn!(digest, error = %format!("{e:#}"), "cached code unusable: recompiling");
                    self.disk.iter().for_each(|d| d.discard(digest));
                }
            }
        }
        let (code, serialized) = {
            let _turn = self.compile_turn();
            self.sandbox.compile(bytes)?
        };
        tracing::info!(digest, took_ms = code.compile_time.as_millis() as u64, "compiled");
        if let Some(disk) = &self.disk
            && let Err(e) = disk.put(digest, &serialized)
        {
            tracing::warn!(digest, error = %e, "cannot write the compile cache");
        }
        Ok(code)
    }
}

/// A builder's hold on one digest's compile lock; the last one out, failed or not, removes the
/// lock, so digests that never compile leave nothing behind.
struct DigestTurn<'a> {
    turns: &'a Mutex<HashMap<String, Arc<Mutex<()>>>>,
    digest: &'a str,
    lock: Arc<Mutex<()>>,
}

impl<'a> DigestTurn<'a> {
    fn take(turns: &'a Mutex<HashMap<String, Arc<Mutex<()>>>>, digest: &'a str) -> Self {
        let lock = turns.lock().unwrap_or_else(|e| e.into_inner()).entry(digest.to_owned()).or_default().clone();
        Self { turns, digest, lock }
    }
}

impl Drop for DigestTurn<'_> {
    fn drop(&mut self) {
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the map's: nobody else is waiting.
        if Arc::strong_count(&self.lock) == 2 {
            turns.remove(self.digest);
        }
    }
}

/// A place among the `MAX_COMPILES` compiles, given back when dropped.
struct CompileTurn<'a>(&'a (Mutex<usize>, Condvar));

impl Drop for CompileTurn<'_> {
    fn drop(&mut self) {
        let (count, freed) = self.0;
        *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        freed.notify_one();
    }
}

/// Whether a tenant's manifest may name these `allowed_outbound_hosts` under the operator's
/// `outbound_hosts` (`ceiling`): egress is the operator's to grant. A named tenant reaches
/// nothing the tenants file does not list; the default tenant (the operator's own folder) any
/// public host unless its list narrows that. An internal literal (loopback, private,
/// link-local, metadata) needs the operator's list to name it, whatever the manifest says.
fn egress_allowed(tenant: &str, entries: &[String], ceiling: Option<&[String]>) -> Result<()> {
    let ceiling: Option<Vec<Destination>> =
        ceiling.map(|c| c.iter().filter_map(|e| Destination::parse_allowed(e).ok()).collect());
    for entry in entries {
        let dest = Destination::parse_allowed(entry)?;
        let listed = ceiling.as_ref().is_some_and(|c| c.contains(&dest));
        if listed {
            continue;
        }
        if ceiling.is_some() {
            bail!("{entry} is not among this tenant's outbound_hosts (tenants file)");
        }
        if !tenant.is_empty() {
            bail!("{entry}: this tenant has no outbound_hosts in the tenants file, so its plugins may reach nothing");
        }
        if dest.literal_ip().is_some_and(outbound::is_internal) {
            bail!(
                "{entry} is an internal address: only the operator's outbound_hosts (tenants file, [default]) can grant it"
            );
        }
    }
    Ok(())
}

/// Plugin names appear in `status.error`, audit lines and metric labels: keep them plain.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        bail!("plugin name {name:?} must be 1-128 characters of [A-Za-z0-9._-]");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_is_the_operators_to_grant() {
        let public = ["https://idp.example".to_string()];
        let internal = ["http://127.0.0.1:8080".to_string()];
        let metadata = ["http://169.254.169.254".to_string()];
        assert!(egress_allowed("", &public, None).is_ok(), "the operator's own folder");
        assert!(egress_allowed("", &internal, None).is_err(), "an internal literal from a manifest alone");
        assert!(egress_allowed("", &metadata, None).is_err());
        assert!(egress_allowed("", &internal, Some(&internal)).is_ok(), "named by the operator");
        assert!(egress_allowed("acme", &public, None).is_err(), "a named tenant without outbound_hosts");
        assert!(egress_allowed("acme", &public, Some(&public)).is_ok());
        assert!(egress_allowed("acme", &internal, Some(&public)).is_err());
    }

    #[test]
    fn plugin_names_are_plain() {
        assert!(check_name("10-static-tokens").is_ok());
        assert!(check_name("a b").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("x\"y").is_err());
    }
}

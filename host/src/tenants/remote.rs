//! Plugins a tenant takes from OCI registries (the tenants file's `[[tenant.NAME.oci]]`). Each
//! is polled at its interval; a new digest is pulled, its cosign signature checked against the
//! operator's keys, and only then kept (on disk, under `--cache-dir`, so a restart without the
//! registry serves the last verified artifact) and offered to the tenant's next generation,
//! which still checks the world, runs the vectors and applies the guardrails. Anything that
//! fails keeps the last verified artifact, and says why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::plugins::confine::Folder;
use crate::plugins::loader::PluginSource;
use crate::plugins::oci::{self, SourceSpec, signature};

/// How often a tag is looked up when the tenants file says nothing: a minute, as Istio's
/// WasmPlugin and Kubewarden poll, and far below registries' rate limits.
const DEFAULT_POLL: Duration = Duration::from_secs(60);

/// One poll (resolve, signature, pull) ends by then: the signature client has no timeouts of
/// its own, and a registry that accepts connections and never answers must not hold the poll
/// thread — or the first load, and so the listener — forever. A minute moves a 64 MiB component
/// at 1 MiB/s.
const POLL_DEADLINE: Duration = Duration::from_secs(60);

/// How often `spec`'s tag is looked up: its `poll` (at least a second: registries rate-limit),
/// or [`DEFAULT_POLL`]. The tenants file is checked with it, and the poller runs by it.
pub fn poll_interval(spec: &SourceSpec) -> Result<Duration> {
    let Some(poll) = &spec.poll else { return Ok(DEFAULT_POLL) };
    let every = crate::policy::decision_cache::parse_duration(poll)
        .map_err(|e| anyhow::anyhow!("oci plugin {:?}: poll: {e}", spec.name))?;
    anyhow::ensure!(every >= Duration::from_secs(1), "oci plugin {:?}: poll below 1s", spec.name);
    Ok(every)
}

/// A verified artifact, as the tenant's scan takes it.
#[derive(Clone)]
struct Verified {
    digest: String,
    wasm: Arc<[u8]>,
    manifest: Option<String>,
    /// Its folder in the cache (where its manifest's relative references resolve).
    dir: PathBuf,
}

struct Source {
    spec: SourceSpec,
    current: Option<Verified>,
    /// The last failure, so each is reported once, not at every poll.
    failing: Option<String>,
    next_poll: Instant,
}

/// What a round of polls changed: tenants with a new verified artifact, and new failures.
#[derive(Default)]
pub struct Polled {
    pub changed: BTreeSet<String>,
    pub failed: Vec<(String, String)>,
}

pub struct Remote {
    /// `--cache-dir`/oci, mode 0700, the operator's.
    cache: Option<PathBuf>,
    max_wasm_bytes: u64,
    sources: Mutex<BTreeMap<(String, String), Source>>,
}

impl Remote {
    pub fn new(cache_dir: Option<&Path>, max_wasm_bytes: u64) -> Result<Self> {
        let cache = cache_dir
            .map(|dir| {
                let oci = dir.join("oci");
                use std::os::unix::fs::DirBuilderExt as _;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&oci)
                    .with_context(|| format!("creating {}", oci.display()))?;
                anyhow::Ok(oci)
            })
            .transpose()?;
        Ok(Self { cache, max_wasm_bytes, sources: Mutex::new(BTreeMap::new()) })
    }

    /// Takes the tenants file's sources: unchanged ones keep their state, new ones start from
    /// what the disk cache verified before (if anything), removed ones go.
    pub fn configure(&self, specs: Vec<(String, SourceSpec)>) -> Result<()> {
        if !specs.is_empty() && self.cache.is_none() {
            bail!(
                "the tenants file lists registry plugins: --cache-dir is needed (their verified artifacts are kept there for restarts without the registry)"
            );
        }
        let mut sources = self.lock();
        let mut next = BTreeMap::new();
        for (tenant, spec) in specs {
            let key = (tenant, spec.name.clone());
            let source = match sources.remove(&key) {
                Some(s) if s.spec == spec => s,
                _ => {
                    let current = self.cached(&key.0, &spec);
                    Source { spec, current, failing: None, next_poll: Instant::now() }
                }
            };
            next.insert(key, source);
        }
        *sources = next;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Source>> {
        self.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tenants that have registry plugins (a tenant may have no folder at all).
    pub fn tenants(&self) -> BTreeSet<String> {
        self.lock().keys().map(|(t, _)| t.clone()).collect()
    }

    /// `tenant`'s registry plugins as the scan takes them; an error while one has no verified
    /// artifact yet (the tenant then keeps what it has, or answers 503 until it has one).
    pub fn plugin_sources(&self, tenant: &str) -> Result<Vec<PluginSource>> {
        let sources = self.lock();
        let mut out = Vec::new();
        for ((t, name), source) in sources.iter() {
            if t != tenant {
                continue;
            }
            let Some(v) = &source.current else {
                let why = source.failing.as_deref().unwrap_or("not pulled yet");
                bail!("registry plugin {name} ({}): no verified artifact: {why}", source.spec.reference);
            };
            let shown = PathBuf::from(format!("{}@{}", source.spec.reference, v.digest));
            out.push(PluginSource {
                name: name.clone(),
                wasm_path: shown.clone(),
                folder: Arc::new(Folder::open(&v.dir)?),
                wasm: v.wasm.clone(),
                manifest: v.manifest.clone().map(|m| (shown.with_extension("toml"), m)),
            });
        }
        Ok(out)
    }

    /// A digest of `tenant`'s verified registry plugins: part of what its scan compares.
    pub fn content(&self, tenant: &str) -> String {
        let sources = self.lock();
        let mut h = Sha256::new();
        for ((t, name), source) in sources.iter().filter(|((t, _), _)| t == tenant) {
            h.update(t.as_bytes());
            h.update(name.as_bytes());
            h.update(source.current.as_ref().map_or("none", |v| v.digest.as_str()).as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// When the next poll is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.lock().values().map(|s| s.next_poll).min()
    }

    /// Polls every source that is due (all of them with `all`), one at a time.
    pub async fn poll(&self, all: bool) -> Polled {
        let now = Instant::now();
        let due: Vec<(String, String, SourceSpec, Option<String>)> = self
            .lock()
            .iter()
            .filter(|(_, s)| all || s.next_poll <= now)
            .map(|((t, n), s)| (t.clone(), n.clone(), s.spec.clone(), s.current.as_ref().map(|v| v.digest.clone())))
            .collect();
        let mut polled = Polled::default();
        for (tenant, name, spec, current) in due {
            let result = tokio::time::timeout(POLL_DEADLINE, self.poll_one(&tenant, &spec, current.as_deref()))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {POLL_DEADLINE:?}")));
            // Checked when the tenants file was read.
            let every = poll_interval(&spec).unwrap_or(DEFAULT_POLL);
            let mut sources = self.lock();
            let Some(source) = sources.get_mut(&(tenant.clone(), name.clone())) else { continue };
            if source.spec != spec {
                continue; // reconfigured meanwhile
            }
            source.next_poll = Instant::now() + every;
            match result {
                Ok(Some(verified)) => {
                    tracing::info!(tenant = %tenant, plugin = %name, reference = %spec.reference, digest = %verified.digest, "registry plugin verified: a new generation follows");
                    source.current = Some(verified);
                    source.failing = None;
                    polled.changed.insert(tenant);
                }
                Ok(None) => source.failing = None,
                Err(e) => {
                    let reason = format!("registry plugin {name} ({}): {e:#}", spec.reference);
                    if source.failing.as_deref() != Some(reason.as_str()) {
                        source.failing = Some(reason.clone());
                        polled.failed.push((tenant, reason));
                    }
                }
            }
        }
        polled
    }

    /// Looks the reference up; when it names another digest than `current`, pulls, verifies and
    /// keeps it.
    async fn poll_one(&self, tenant: &str, spec: &SourceSpec, current: Option<&str>) -> Result<Option<Verified>> {
        let access = spec.access();
        let digest = match &spec.digest {
            Some(pin) => pin.clone(),
            None => oci::resolve(&spec.reference, &access).await?,
        };
        if current == Some(digest.as_str()) {
            return Ok(None);
        }
        let keys = signature::PublicKey::load_all(&spec.keys)?;
        // The signature first: nothing unsigned is even downloaded.
        signature::verify(&spec.reference, &digest, &keys, &access).await?;
        let artifact = oci::pull(&oci::pinned(&spec.reference, &digest)?, &access, self.max_wasm_bytes).await?;
        anyhow::ensure!(artifact.digest == digest, "the registry served {} for {digest}", artifact.digest);
        self.keep(tenant, spec, artifact).map(Some)
    }

    /// The folder of one source's artifacts in the cache.
    fn source_dir(&self, tenant: &str, spec: &SourceSpec) -> Option<PathBuf> {
        let key = hex::encode(Sha256::digest(format!("{tenant}\0{}\0{}", spec.name, spec.reference)));
        self.cache.as_ref().map(|c| c.join(&key[..32]))
    }

    /// Writes a verified artifact to the cache (`DIGEST/plugin.wasm`, `plugin.toml`, then the
    /// `current` pointer, each renamed into place).
    fn keep(&self, tenant: &str, spec: &SourceSpec, artifact: oci::Artifact) -> Result<Verified> {
        let base = self.source_dir(tenant, spec).context("no cache")?;
        let hex = artifact.digest.trim_start_matches("sha256:");
        let dir = base.join(hex);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        oci::replace_file(&dir.join("plugin.wasm"), &artifact.wasm)?;
        if let Some(m) = &artifact.manifest {
            oci::replace_file(&dir.join("plugin.toml"), m.as_bytes())?;
        }
        let meta = serde_json::json!({
            "digest": artifact.digest,
            "wasm_sha256": hex::encode(Sha256::digest(&artifact.wasm)),
            "manifest_sha256": artifact.manifest.as_ref().map(|m| hex::encode(Sha256::digest(m.as_bytes()))),
        });
        oci::replace_file(&dir.join("meta.json"), meta.to_string().as_bytes())?;
        oci::replace_file(&base.join("current"), hex.as_bytes())?;
        Ok(Verified { digest: artifact.digest, wasm: artifact.wasm.into(), manifest: artifact.manifest, dir })
    }

    /// What the cache verified last for a source (its files checked against their digests),
    /// if anything; a pin must match.
    fn cached(&self, tenant: &str, spec: &SourceSpec) -> Option<Verified> {
        let base = self.source_dir(tenant, spec)?;
        let read = || -> Result<Verified> {
            let hex = std::fs::read_to_string(base.join("current"))?;
            anyhow::ensure!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "a bad pointer");
            let dir = base.join(&hex);
            let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json"))?)?;
            let wasm = std::fs::read(dir.join("plugin.wasm"))?;
            anyhow::ensure!(meta["wasm_sha256"] == hex::encode(Sha256::digest(&wasm)), "plugin.wasm changed on disk");
            let manifest = match meta["manifest_sha256"].as_str() {
                Some(sum) => {
                    let text = std::fs::read_to_string(dir.join("plugin.toml"))?;
                    anyhow::ensure!(sum == hex::encode(Sha256::digest(text.as_bytes())), "plugin.toml changed on disk");
                    Some(text)
                }
                None => None,
            };
            let digest = format!("sha256:{hex}");
            anyhow::ensure!(meta["digest"] == digest.as_str(), "meta.json names another digest");
            if let Some(pin) = &spec.digest {
                anyhow::ensure!(*pin == digest, "pinned to another digest");
            }
            Ok(Verified { digest, wasm: wasm.into(), manifest, dir })
        };
        match read() {
            Ok(v) => {
                tracing::info!(tenant = %tenant, plugin = %spec.name, digest = %v.digest, "registry plugin from the cache");
                Some(v)
            }
            Err(e) if base.join("current").exists() => {
                tracing::warn!(tenant = %tenant, plugin = %spec.name, error = %format!("{e:#}"), "the cached registry plugin is unusable; pulling again");
                None
            }
            Err(_) => None,
        }
    }
}

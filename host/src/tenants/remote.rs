//! Plugins a tenant takes from OCI registries (the tenants file's `[[tenant.NAME.oci]]`). Each
//! is polled at its interval; a new digest's cosign signature is checked against the operator's
//! keys, and only then is it pulled, kept (on disk, under `--cache-dir`, so a restart without the
//! registry serves the last verified artifact) and offered to the tenant's next generation,
//! which still checks the world, runs the vectors and applies the guardrails. Anything that
//! fails keeps the last verified artifact, and says why.
//!
//! What is verified is verified against the keys in force *now* (SECURITY.md §17): the cache
//! keeps the OCI manifest and the signatures beside the blobs, and the artifact in force is
//! checked again — offline, from those — at every start, every change of its source in the
//! tenants file, and every poll (which also asks the registry for its signatures again). One
//! that no longer verifies is withdrawn: its tenant's generation is not served until one built
//! from what verifies now loads. Nothing in the cache is trusted for itself: every expected hash
//! comes from the manifest whose SHA-256 is the signed digest.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
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

/// One poll (resolve, signature, pull) ends by then: a registry that accepts connections and
/// answers slowly must not hold the poll thread — or the first load, and so the listener —
/// forever. A minute moves a 64 MiB component at 1 MiB/s.
const POLL_DEADLINE: Duration = Duration::from_secs(60);

/// The cache's `current` pointer: 64 hex digits (a little slack for a newline).
const MAX_POINTER_BYTES: u64 = 128;

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
    /// The cosign signatures of `digest` kept with it: checked again, offline, against the keys
    /// in force at every poll.
    signatures: Arc<[signature::Signed]>,
    /// The fingerprint of the keys it verified under last: other keys, another generation.
    under: String,
}

struct Source {
    spec: SourceSpec,
    current: Option<Verified>,
    /// The last failure, so each is reported once, not at every poll.
    failing: Option<String>,
    next_poll: Instant,
}

/// What a round of polls changed: tenants whose verified artifacts changed (another one, one
/// withdrawn, or the same under other keys), and new failures.
#[derive(Default)]
pub struct Polled {
    pub changed: BTreeSet<String>,
    pub failed: Vec<(String, String)>,
}

/// One source's poll: what verifies now (if anything), and what went wrong.
struct Outcome {
    current: Option<Verified>,
    failure: Option<String>,
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

    /// Takes the tenants file's sources: unchanged ones keep their state; new and changed ones
    /// (other keys, pin, reference, bounds...) start from what the disk cache holds, verified
    /// again under their spec as it is now; removed ones go.
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
                    let (current, failing) = match self.cached(&key.0, &spec) {
                        Ok(current) => (current, None),
                        Err(e) => {
                            let reason =
                                format!("registry plugin {} ({}): the cache: {e:#}", spec.name, spec.reference);
                            tracing::warn!(tenant = %key.0, plugin = %spec.name, "{reason}");
                            (None, Some(reason))
                        }
                    };
                    Source { spec, current, failing, next_poll: Instant::now() }
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
    /// artifact (the tenant then keeps what it has, or answers 503 until it has one).
    pub fn plugin_sources(&self, tenant: &str) -> Result<Vec<PluginSource>> {
        let sources = self.lock();
        let mut out = Vec::new();
        for ((t, name), source) in sources.iter() {
            if t != tenant {
                continue;
            }
            let Some(v) = &source.current else {
                let prefix = format!("registry plugin {name} ({}): ", source.spec.reference);
                let why = source.failing.as_deref().unwrap_or("not pulled yet");
                bail!("{prefix}no verified artifact: {}", why.strip_prefix(prefix.as_str()).unwrap_or(why));
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

    /// A digest of `tenant`'s registry plugins — each source's spec as the tenants file says it,
    /// its verified digest and the keys it verified under: part of what its scan compares, and
    /// what a live generation must have been built from to be served.
    pub fn content(&self, tenant: &str) -> String {
        let sources = self.lock();
        let mut h = Sha256::new();
        for ((t, name), source) in sources.iter().filter(|((t, _), _)| t == tenant) {
            h.update(t.as_bytes());
            h.update(name.as_bytes());
            h.update(Sha256::digest(format!("{:?}", source.spec)));
            match &source.current {
                Some(v) => h.update(format!("{}|{}", v.digest, v.under)),
                None => h.update("none"),
            }
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
        let due: Vec<(String, String, SourceSpec, Option<Verified>)> = self
            .lock()
            .iter()
            .filter(|(_, s)| all || s.next_poll <= now)
            .map(|((t, n), s)| (t.clone(), n.clone(), s.spec.clone(), s.current.clone()))
            .collect();
        let mut polled = Polled::default();
        for (tenant, name, spec, current) in due {
            let outcome = self.poll_one(&tenant, &spec, current).await;
            // Checked when the tenants file was read.
            let every = poll_interval(&spec).unwrap_or(DEFAULT_POLL);
            let mut sources = self.lock();
            let Some(source) = sources.get_mut(&(tenant.clone(), name.clone())) else { continue };
            if source.spec != spec {
                continue; // reconfigured meanwhile
            }
            source.next_poll = Instant::now() + every;
            let state = |v: &Option<Verified>| v.as_ref().map(|v| (v.digest.clone(), v.under.clone()));
            if state(&source.current) != state(&outcome.current) {
                match &outcome.current {
                    Some(v) => {
                        tracing::info!(tenant = %tenant, plugin = %name, reference = %spec.reference, digest = %v.digest, "registry plugin verified: a new generation follows")
                    }
                    None => {
                        tracing::warn!(tenant = %tenant, plugin = %name, reference = %spec.reference, "registry plugin withdrawn: it no longer verifies with the keys in force")
                    }
                }
                polled.changed.insert(tenant.clone());
            }
            source.current = outcome.current;
            match outcome.failure {
                None => source.failing = None,
                Some(reason) => {
                    if source.failing.as_deref() != Some(reason.as_str()) {
                        source.failing = Some(reason.clone());
                        polled.failed.push((tenant, reason));
                    }
                }
            }
        }
        polled
    }

    /// One source's poll. What is live is checked first, offline, against the keys in force now
    /// (files the operator may have replaced): whatever the registry says, it stays only if one
    /// of the signatures kept with it verifies. Then the registry: the reference's digest and its
    /// signatures; the same digest takes the signatures it gained, another one is verified,
    /// pulled and kept.
    async fn poll_one(&self, tenant: &str, spec: &SourceSpec, current: Option<Verified>) -> Outcome {
        let reason = |e: anyhow::Error| format!("registry plugin {} ({}): {e:#}", spec.name, spec.reference);
        let keys = match signature::PublicKey::load_all(&spec.keys) {
            Ok(keys) => keys,
            Err(e) => return Outcome { current: None, failure: Some(reason(e.context("no key to verify with"))) },
        };
        let under = signature::fingerprint(&keys);
        let (live, stale) = match current {
            Some(v) => match signature::check(&v.digest, &v.signatures, &keys) {
                Ok(_) => (Some(Verified { under: under.clone(), ..v }), None),
                Err(e) => (None, Some((v, e))),
            },
            None => (None, None),
        };
        let known = live.as_ref().or(stale.as_ref().map(|(v, _)| v));
        let looked = tokio::time::timeout(POLL_DEADLINE, self.look(tenant, spec, &keys, &under, known))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {POLL_DEADLINE:?}")));
        match looked {
            Ok((verified, note)) => Outcome { current: Some(verified), failure: note.map(reason) },
            Err(e) => {
                let e = match &stale {
                    Some((v, why)) => e.context(format!("{} is withdrawn: {why:#}", v.digest)),
                    None => e,
                };
                Outcome { current: live, failure: Some(reason(e)) }
            }
        }
    }

    /// Asks the registry: the digest the reference names and its signatures. `known` is the
    /// artifact this source had (verified or not under `keys`); with the same digest its blobs
    /// are kept and only its signatures are looked at again.
    async fn look(
        &self,
        tenant: &str,
        spec: &SourceSpec,
        keys: &[signature::PublicKey],
        under: &str,
        known: Option<&Verified>,
    ) -> Result<(Verified, Option<anyhow::Error>)> {
        let access = spec.access();
        let limits = spec.limits(self.max_wasm_bytes);
        let digest = match &spec.digest {
            Some(pin) => pin.clone(),
            None => oci::resolve(&spec.reference, &access, &limits).await?,
        };
        let fetched = signature::fetch(&spec.reference, &digest, &access, &limits)
            .await
            .with_context(|| format!("fetching the signatures of {digest}"))?;
        if let Some(v) = known.filter(|v| v.digest == digest) {
            // A signature the registry no longer holds is not a revocation (the keys are: a
            // registry must not be able to take a tenant down, nor a cache-less restart differ
            // from one with the cache); it is said, and the kept one stays the evidence.
            let all = signature::merge(&v.signatures, &fetched);
            signature::check(&digest, &all, keys)?;
            let note = signature::check(&digest, &fetched, keys).err().map(|e| {
                e.context("the registry no longer holds a signature of the live artifact by the configured key(s); the one kept in the cache stays its evidence (a key is revoked in the tenants file)")
            });
            let mut v = Verified { under: under.to_owned(), ..v.clone() };
            if *v.signatures != *all {
                write_signatures(&v.dir, &all)?;
                v.signatures = all.into();
            }
            return Ok((v, note));
        }
        // The signature first: nothing unsigned is even downloaded.
        signature::check(&digest, &fetched, keys)?;
        let artifact = oci::pull(&oci::pinned(&spec.reference, &digest)?, &access, &limits).await?;
        anyhow::ensure!(artifact.digest == digest, "the registry served {} for {digest}", artifact.digest);
        Ok((self.keep(tenant, spec, artifact, fetched, under)?, None))
    }

    /// The folder of one source's artifacts in the cache.
    fn source_dir(&self, tenant: &str, spec: &SourceSpec) -> Option<PathBuf> {
        let key = hex::encode(Sha256::digest(format!("{tenant}\0{}\0{}", spec.name, spec.reference)));
        self.cache.as_ref().map(|c| c.join(&key[..32]))
    }

    /// Writes a verified artifact to the cache — `DIGEST/plugin.wasm`, `plugin.toml`, the OCI
    /// manifest (`manifest.json`, whose SHA-256 is the digest) and the signatures
    /// (`signatures.json`), then the `current` pointer, each renamed into place.
    fn keep(
        &self,
        tenant: &str,
        spec: &SourceSpec,
        artifact: oci::Artifact,
        signatures: Vec<signature::Signed>,
        under: &str,
    ) -> Result<Verified> {
        let base = self.source_dir(tenant, spec).context("no cache")?;
        let hex = artifact.digest.trim_start_matches("sha256:");
        let dir = base.join(hex);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        oci::replace_file(&dir.join("plugin.wasm"), &artifact.wasm)?;
        if let Some(m) = &artifact.manifest {
            oci::replace_file(&dir.join("plugin.toml"), m.as_bytes())?;
        }
        oci::replace_file(&dir.join("manifest.json"), &artifact.oci_manifest)?;
        write_signatures(&dir, &signatures)?;
        // What earlier versions recorded beside the blobs; nothing reads it.
        match std::fs::remove_file(dir.join("meta.json")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", dir.join("meta.json").display()));
            }
            _ => {}
        }
        oci::replace_file(&base.join("current"), hex.as_bytes())?;
        Ok(Verified {
            digest: artifact.digest,
            wasm: artifact.wasm.into(),
            manifest: artifact.manifest,
            dir,
            signatures: signatures.into(),
            under: under.to_owned(),
        })
    }

    /// What the cache holds for a source, verified as a pull is: the manifest's SHA-256 is the
    /// digest (and the pin, if any), the blobs are the manifest's, and one of the signatures
    /// kept with it verifies with the keys in force now. `None` when nothing is cached; an error
    /// when what is cached does not verify (it is then pulled again, if the registry signs it).
    fn cached(&self, tenant: &str, spec: &SourceSpec) -> Result<Option<Verified>> {
        let Some(base) = self.source_dir(tenant, spec) else { return Ok(None) };
        let pointer = base.join("current");
        if !pointer.exists() {
            return Ok(None);
        }
        let limits = spec.limits(self.max_wasm_bytes);
        let hex = String::from_utf8(read_bounded(&pointer, MAX_POINTER_BYTES)?).context("a bad pointer")?;
        let digest = format!("sha256:{}", hex.trim());
        anyhow::ensure!(oci::is_sha256_digest(&digest), "a bad pointer");
        if let Some(pin) = &spec.digest {
            anyhow::ensure!(*pin == digest, "the cache holds {digest}, not the pinned {pin}");
        }
        let dir = base.join(digest.trim_start_matches("sha256:"));
        let raw = read_bounded(&dir.join("manifest.json"), limits.manifest)?;
        let manifest = oci::plugin_manifest(&digest, &raw).context("manifest.json")?;
        let (wasm_layer, manifest_layer) = oci::plugin_layers(&manifest.layers)?;
        let wasm = read_bounded(&dir.join("plugin.wasm"), limits.wasm)?;
        oci::check_blob(wasm_layer, &wasm).context("plugin.wasm")?;
        let text = match manifest_layer {
            Some(layer) => {
                let bytes = read_bounded(&dir.join("plugin.toml"), oci::MAX_MANIFEST_BYTES)?;
                oci::check_blob(layer, &bytes).context("plugin.toml")?;
                Some(String::from_utf8(bytes).context("plugin.toml is not UTF-8")?)
            }
            None => None,
        };
        let signatures: Vec<signature::Signed> =
            serde_json::from_slice(&read_bounded(&dir.join("signatures.json"), signatures_bound(&limits))?)
                .context("signatures.json")?;
        let keys = signature::PublicKey::load_all(&spec.keys)?;
        let key = signature::check(&digest, &signatures, &keys)?;
        tracing::info!(tenant = %tenant, plugin = %spec.name, digest = %digest, key = %key, "registry plugin from the cache, verified again");
        Ok(Some(Verified {
            digest,
            wasm: wasm.into(),
            manifest: text,
            dir,
            signatures: signatures.into(),
            under: signature::fingerprint(&keys),
        }))
    }
}

/// The most `signatures.json` holds: what `write_signatures` writes under these limits (each
/// payload JSON-escaped, at most 6 bytes per byte, and its signature), plus slack.
fn signatures_bound(limits: &oci::Limits) -> u64 {
    (signature::MAX_SIGNATURES as u64) * (limits.signature * 6 + (16 << 10)) + (64 << 10)
}

/// Writes the signatures kept with an artifact (`DIR/signatures.json`).
fn write_signatures(dir: &Path, signatures: &[signature::Signed]) -> Result<()> {
    let json = serde_json::to_vec(signatures).context("the signatures")?;
    oci::replace_file(&dir.join("signatures.json"), &json)
}

/// A file of the cache, refused when larger than `max` (the cache is the operator's, but a
/// bound keeps a mistake from costing the server's memory).
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut data = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut data).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(data.len() as u64 <= max, "{}: more than {max} bytes", path.display());
    Ok(data)
}

//! Hot reload (SPEC §8): the unit of change is a tenant's generation.
//!
//! A change anywhere in a tenant's folder (or in the tenants file) builds a whole new generation
//! off the request path — compiling only new content, checking the world, running every vector —
//! and only then swaps it in. A refused generation leaves the previous one live, whole. The
//! directory is watched (notify, debounced) with a periodic full rescan as a safety net for lost
//! events.
//!
//! Each tenant builds on a thread of its own: one thread watches and decides, and a tenant whose
//! compile or vectors are slow delays no other tenant's reload (only compiles queue, for a
//! bounded time: see `Loader`). A change that lands during a tenant's build is built right after
//! it, from the folder as it is then.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::observe::metrics::{Metrics, TenantLabel, TenantResult};
use crate::plugins::confine::Folder;
use crate::plugins::loader::Loader;
use crate::policy::chain::Generation;
use crate::policy::evaluator::TenantLimits;
use crate::policy::guardrails::Guardrails;
use crate::tenants::registry::{Refusal, Registry, TenantState};
use crate::tenants::remote::{Polled, Remote};
use crate::tenants::scan::{self, TenantsFile};

/// After an event, wait this long for quiet (one `cp` or kubelet swap is a burst of events)...
const QUIET: Duration = Duration::from_millis(50);
/// ...but no longer than this from the first event, so steady changes are not starved.
const MAX_DELAY: Duration = Duration::from_millis(250);

pub struct Reloader {
    loader: Arc<Loader>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    root: PathBuf,
    tenants_path: Option<PathBuf>,
    /// The last good tenants file (a broken one keeps these guardrails).
    tenants_file: TenantsFile,
    tenants_text: Option<String>,
    /// Per tenant, what the last attempt saw (content + guardrails): unchanged folders are
    /// not reloaded, and a refused folder is not refused again until it changes.
    seen: HashMap<String, String>,
    /// Evaluation slots of each new tenant.
    limits: TenantLimits,
    /// Tenants with a build running, and those changed again since theirs started.
    building: HashSet<String>,
    again: HashSet<String>,
    /// The tenants' plugins from OCI registries.
    remote: Arc<Remote>,
    /// Per tenant, the registry plugins (`Remote::content`) its live generation was built from:
    /// a live generation is served only while they are still what verifies now.
    live_from: HashMap<String, String>,
    /// Per tenant, the number of its last live generation (it may have been withdrawn since).
    numbers: HashMap<String, u64>,
    /// What the reload thread waits on: file events, finished builds, registry polls.
    tx: Sender<Message>,
    rx: Receiver<Message>,
}

enum Message {
    Files(notify::Result<notify::Event>),
    Built(Box<Built>),
    Polled(Polled),
}

/// A tenant's finished build, taken live (or refused) by the reload thread.
struct Built {
    tenant: String,
    dir: PathBuf,
    /// The operator's rules it was built under: a build that raced a change of the tenants
    /// file is built again rather than taken live.
    rules: Arc<Guardrails>,
    /// The registry plugins it was built from (`Remote::content`, taken before they were read):
    /// a build that raced a poll or a change of keys is built again rather than taken live.
    remote: String,
    number: u64,
    took: Duration,
    result: Result<Generation>,
}

impl Reloader {
    /// Fails if the tenants file is broken at start: there are no previous guardrails to keep.
    pub fn new(
        loader: Arc<Loader>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        root: PathBuf,
        tenants_path: Option<PathBuf>,
        limits: TenantLimits,
        remote: Arc<Remote>,
    ) -> Result<Self> {
        // inotify reports absolute paths: a relative root would match none of them and only the
        // periodic rescan would ever notice a change.
        let root = std::path::absolute(&root).with_context(|| format!("resolving {}", root.display()))?;
        let tenants_path =
            tenants_path.map(|p| std::path::absolute(&p)).transpose().context("resolving the tenants file path")?;
        let (tenants_file, tenants_text) = match &tenants_path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading tenants file {}", path.display()))?;
                (TenantsFile::parse(&text, path)?, Some(text))
            }
            None => (TenantsFile::default(), None),
        };
        remote.configure(tenants_file.oci_sources())?;
        let (tx, rx) = channel();
        Ok(Self {
            loader,
            registry,
            metrics,
            root,
            tenants_path,
            tenants_file,
            tenants_text,
            seen: HashMap::new(),
            limits,
            building: HashSet::new(),
            again: HashSet::new(),
            remote,
            live_from: HashMap::new(),
            numbers: HashMap::new(),
            tx,
            rx,
        })
    }

    /// The first load: every tenant at once, each on its own thread, waiting for all of them
    /// (startup takes as long as the slowest tenant, not the sum of them).
    pub fn load_all(&mut self) {
        // Registry plugins first, each tried once (the disk cache stands in for an unreachable
        // registry).
        let polled =
            if self.remote.tenants().is_empty() { Polled::default() } else { poll_blocking(&self.remote, true) };
        self.scan(None);
        while !self.building.is_empty() {
            match self.rx.recv() {
                Ok(Message::Built(built)) => self.take(built),
                // No watcher yet: nothing else is sent.
                Ok(Message::Files(_) | Message::Polled(_)) => {}
                Err(_) => return,
            }
        }
        // What the first polls could not get is said now that every tenant has a state.
        self.polled(Polled { changed: BTreeSet::new(), failed: polled.failed });
    }

    /// Scans every tenant: new folders load, changed ones reload, removed ones go (404).
    fn scan_all(&mut self) {
        self.scan(None);
    }

    /// Scans the tenant list, and the contents of `only` (all when None) and of new tenants.
    fn scan(&mut self, only: Option<&BTreeSet<String>>) {
        let listed = Folder::open(&self.root).and_then(|root| Ok((scan::scan_tenants(&root)?, root)));
        let (found, root) = match listed {
            Ok(listed) => listed,
            Err(e) => {
                // The root itself is unreadable: keep everything as it is.
                tracing::error!(error = %format!("{e:#}"), "cannot list the plugin directory; keeping every tenant as it is");
                return;
            }
        };
        let folders: BTreeSet<String> = found.into_iter().collect();
        let present: Vec<String> = std::iter::once(String::new())
            .chain(folders.union(&self.remote.tenants()).filter(|t| !t.is_empty()).cloned())
            .collect();
        let known: BTreeSet<String> = self.registry.snapshot().keys().chain(&self.building).cloned().collect();
        // Gone from the listing, and not already seen gone (a build may still be running for it).
        let gone: Vec<&String> = known
            .iter()
            .filter(|n| !present.contains(n) && (self.seen.contains_key(*n) || self.registry.get(n).is_some()))
            .collect();
        for name in gone {
            tracing::info!(tenant = %name, "tenant folder removed: no longer served");
            self.registry.remove(name);
            // A build still running for it is dropped when it ends (`take` finds no `seen`).
            self.seen.remove(name);
            self.again.remove(name);
            self.live_from.remove(name);
            self.numbers.remove(name);
            self.metrics.generation.remove(&TenantLabel { tenant: name.clone() });
            self.metrics.plugins_loaded.remove(&TenantLabel { tenant: name.clone() });
        }
        for name in present {
            let known = known.contains(&name);
            if !known || only.is_none_or(|o| o.contains(&name)) {
                self.scan_tenant(&root, &name, name.is_empty() || folders.contains(&name));
            }
        }
    }

    /// Starts a build of `name` if its folder (or its rules, or the files its manifests read)
    /// changed since the last attempt.
    fn scan_tenant(&mut self, root: &Folder, name: &str, has_folder: bool) {
        if self.building.contains(name) {
            self.again.insert(name.to_owned());
            return;
        }
        let guardrails = self.tenants_file.guardrails(name);
        let previous = self.registry.get(name);
        let dir = if name.is_empty() { root.path().to_path_buf() } else { root.path().join(name) };
        // Before the registry plugins are read: if they change meanwhile, the build is redone.
        let remote = self.remote.content(name);
        let snapshot = if has_folder {
            scan::read_tenant(root, name, &guardrails.folder, self.loader.defaults().max_plugin_bytes)
        } else {
            Ok(scan::Snapshot::default())
        };
        let snapshot = snapshot.and_then(|s| s.with(self.remote.plugin_sources(name)?, &self.remote.content(name)));
        // The files the live generation's manifests read (secrets, CA files) count as content:
        // kubelet rotating a mounted Secret reloads the tenant (on the watcher's event when it
        // is inside the plugin directory, else at the next periodic rescan).
        let live = previous.as_ref().and_then(|p| p.live.clone());
        let files = live.as_deref().map(files_digest).unwrap_or_default();
        let seen = match &snapshot {
            Ok(s) => format!("{}|{files}|{guardrails:?}", s.content),
            Err(e) => format!("error: {e:#}|{guardrails:?}"),
        };
        if previous.is_some() && self.seen.get(name) == Some(&seen) {
            return;
        }
        self.seen.insert(name.to_owned(), seen);
        let number = self.numbers.get(name).map_or(1, |n| n + 1);
        let rules = Arc::new(guardrails.clone());
        let (loader, tx, tenant) = (self.loader.clone(), self.tx.clone(), name.to_owned());
        let build = move || {
            let started = Instant::now();
            let result = snapshot.and_then(|s| scan::load_generation(&loader, &tenant, &s, guardrails, number));
            let _ = tx.send(Message::Built(Box::new(Built {
                tenant,
                dir,
                rules,
                remote,
                number,
                took: started.elapsed(),
                result,
            })));
        };
        let spawned = std::thread::Builder::new().name(format!("tollgate-build-{name}")).spawn(build);
        match spawned {
            Ok(_) => {
                self.building.insert(name.to_owned());
            }
            Err(e) => {
                // Tried again at the next change or rescan.
                tracing::error!(tenant = %name, error = %e, "cannot start a build thread; keeping the tenant as it is");
                self.seen.remove(name);
            }
        }
    }

    /// Takes a finished build live, or records its refusal; then builds again whatever changed
    /// while it ran.
    fn take(&mut self, built: Box<Built>) {
        let name = built.tenant.clone();
        self.building.remove(&name);
        if !self.seen.contains_key(&name) {
            // The folder went away while it built: nothing to take.
        } else if *built.rules != self.tenants_file.guardrails(&name) || built.remote != self.remote.content(&name) {
            // The operator changed the rules meanwhile, or the registry plugins changed (another
            // artifact, one withdrawn, other keys): build again from what is in force now.
            self.seen.remove(&name);
            self.again.insert(name.clone());
        } else {
            let (remote, number, loaded) = (built.remote.clone(), built.number, built.result.is_ok());
            let state = self.state(built);
            if loaded {
                self.live_from.insert(name.clone(), remote);
                self.numbers.insert(name.clone(), number);
            }
            self.registry.put(state);
        }
        if self.again.remove(&name) {
            self.scan(Some(&BTreeSet::from([name])));
        }
    }

    fn state(&self, built: Box<Built>) -> TenantState {
        let Built { tenant: name, dir, rules, remote: _, number, took, result } = *built;
        let previous = self.registry.get(&name);
        let slots = previous.as_ref().map_or_else(|| self.limits.slots(), |p| p.slots.clone());
        let live = previous.as_ref().and_then(|p| p.live.clone());
        let label = TenantLabel { tenant: name.clone() };
        match result {
            Ok(generation) => {
                tracing::info!(
                    tenant = %name,
                    generation = number,
                    plugins = generation.plugins.len(),
                    took_ms = took.as_millis() as u64,
                    "generation live"
                );
                self.count(&name, "loaded");
                self.metrics.generation.get_or_create(&label).set(number as i64);
                self.metrics.plugins_loaded.get_or_create(&label).set(generation.plugins.len() as i64);
                TenantState {
                    name,
                    dir,
                    live: Some(Arc::new(generation)),
                    refusal: previous.and_then(|p| p.refusal.clone()),
                    refused_now: false,
                    slots,
                    rules,
                    epoch: 0,
                }
            }
            Err(e) => {
                let reason = format!("{e:#}");
                // A generation loaded under rules the operator has since changed (secrets,
                // egress, bounds) holds what they withdrew, and one built from registry plugins
                // that no longer verify as they did holds what the keys withdrew: neither is
                // served any longer.
                let live = live.filter(|g| g.built_under.same_load_rules(&rules) && self.built_from_current(&name));
                match &live {
                    Some(g) => {
                        tracing::error!(tenant = %name, generation = g.number, "refused; the previous generation stays live: {reason}")
                    }
                    None => {
                        tracing::error!(tenant = %name, "refused; this tenant answers 503 until it loads: {reason}")
                    }
                }
                self.count(&name, "refused");
                TenantState {
                    name,
                    dir,
                    live,
                    refusal: Some(Refusal { at: SystemTime::now(), reason }),
                    refused_now: true,
                    slots,
                    rules,
                    epoch: 0,
                }
            }
        }
    }

    /// Whether `tenant`'s live generation was built from the registry plugins that verify now
    /// (the same artifacts, under the same keys and sources).
    fn built_from_current(&self, tenant: &str) -> bool {
        self.live_from.get(tenant).is_some_and(|from| *from == self.remote.content(tenant))
    }

    /// Withdraws every live generation built from registry plugins that changed since — another
    /// artifact, one that no longer verifies, other keys or another source in the tenants file
    /// (SECURITY.md §17): its tenant answers 503 until a generation built from what verifies now
    /// loads (a change of keys is a load-rule change). The refusal, if the rebuild fails, says
    /// why.
    fn withdraw_stale(&mut self) {
        for state in self.registry.snapshot().values() {
            let Some(live) = &state.live else { continue };
            if self.built_from_current(&state.name) {
                continue;
            }
            tracing::warn!(
                tenant = %state.name,
                generation = live.number,
                "its registry plugins changed (artifact, keys or source): generation withdrawn until one built from what verifies now loads"
            );
            self.registry.put(TenantState { live: None, ..TenantState::clone(state) });
        }
    }

    fn count(&self, tenant: &str, result: &str) {
        self.metrics
            .reloads
            .get_or_create(&TenantResult { tenant: tenant.to_owned(), result: result.to_owned() })
            .inc();
    }

    /// Re-reads the tenants file; true when its guardrails changed, and then they are in force
    /// for every known tenant at once, before any folder is reloaded under them. A broken file is
    /// refused and the last good guardrails stay.
    fn reload_tenants_file(&mut self) -> bool {
        let Some(path) = &self.tenants_path else {
            return false;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.registry.set_tenants_file_error(Some(format!("reading {}: {e}", path.display())));
                return false;
            }
        };
        if self.tenants_text.as_deref() == Some(text.as_str()) {
            return false;
        }
        let parsed = TenantsFile::parse(&text, path).and_then(|file| {
            self.remote.configure(file.oci_sources())?;
            Ok(file)
        });
        match parsed {
            Ok(file) => {
                tracing::info!(path = %path.display(), "tenants file reloaded");
                self.tenants_file = file;
                self.tenants_text = Some(text);
                self.registry.set_tenants_file_error(None);
                self.registry.apply_rules(|tenant| self.tenants_file.guardrails(tenant));
                self.withdraw_stale();
                true
            }
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::error!("tenants file refused; the previous guardrails stay: {reason}");
                self.registry.set_tenants_file_error(Some(reason));
                false
            }
        }
    }

    /// Watches the plugin directory and the tenants file on a thread of its own, for as long as
    /// the process runs.
    pub fn watch(mut self, rescan_every: Duration) -> Result<()> {
        let tx = self.tx.clone();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(Message::Files(event));
        })
        .context("starting the file watcher")?;
        watcher
            .watch(&self.root, RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", self.root.display()))?;
        let tenants_dir = self.tenants_path.as_ref().and_then(|p| p.parent()).map(Path::to_path_buf);
        if let Some(dir) = &tenants_dir {
            // The directory, not the file: editors and kubelet replace files by renaming.
            watcher.watch(dir, RecursiveMode::NonRecursive).with_context(|| format!("watching {}", dir.display()))?;
        }
        if !self.remote.tenants().is_empty() || self.tenants_path.is_some() {
            let (remote, tx) = (self.remote.clone(), self.tx.clone());
            std::thread::Builder::new()
                .name("tollgate-registry".into())
                .spawn(move || poll_forever(&remote, &tx))
                .context("starting the registry poll thread")?;
        }
        std::thread::Builder::new()
            .name("tollgate-reload".into())
            .spawn(move || {
                let _watcher = watcher;
                let mut next_rescan = Instant::now() + rescan_every;
                loop {
                    let wait = next_rescan.saturating_duration_since(Instant::now());
                    let first = match self.rx.recv_timeout(wait) {
                        Ok(Message::Built(built)) => {
                            self.take(built);
                            continue;
                        }
                        Ok(Message::Polled(polled)) => {
                            self.polled(polled);
                            continue;
                        }
                        Ok(Message::Files(event)) => event,
                        Err(RecvTimeoutError::Timeout) => {
                            self.reload_tenants_file();
                            self.scan_all();
                            next_rescan = Instant::now() + rescan_every;
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    };
                    // Debounce: gather the burst (builds that end meanwhile are taken at once).
                    let mut events = vec![first];
                    let burst = Instant::now();
                    while burst.elapsed() < MAX_DELAY {
                        match self.rx.recv_timeout(QUIET) {
                            Ok(Message::Files(event)) => events.push(event),
                            Ok(Message::Built(built)) => self.take(built),
                            Ok(Message::Polled(polled)) => self.polled(polled),
                            Err(_) => break,
                        }
                    }
                    let (tenants, tenants_file) = self.affected(&events, tenants_dir.as_deref());
                    if tenants_file && self.reload_tenants_file() {
                        self.scan_all();
                    } else if !tenants.is_empty() {
                        self.scan(Some(&tenants));
                    }
                }
            })
            .context("starting the reload thread")?;
        Ok(())
    }

    /// A round of registry polls: tenants with a new verified plugin build again; failures are
    /// refusals (whatever is live stays).
    fn polled(&mut self, polled: Polled) {
        for (tenant, reason) in polled.failed {
            tracing::error!(tenant = %tenant, "refused; what is live stays live: {reason}");
            self.count(&tenant, "refused");
            self.registry.refuse(&tenant, reason);
        }
        if !polled.changed.is_empty() {
            self.withdraw_stale();
            self.scan(Some(&polled.changed));
        }
    }

    /// Which tenants a burst of events touched, and whether the tenants file's folder did.
    fn affected(
        &self,
        events: &[notify::Result<notify::Event>],
        tenants_dir: Option<&Path>,
    ) -> (BTreeSet<String>, bool) {
        let mut tenants = BTreeSet::new();
        let mut tenants_file = false;
        for event in events {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    // A watcher error may mean lost events: look at everything.
                    tracing::warn!(error = %e, "file watcher error: rescanning everything");
                    return (self.registry.snapshot().keys().cloned().chain([String::new()]).collect(), true);
                }
            };
            // Our own reads show up as access events.
            if matches!(event.kind, EventKind::Access(_)) {
                continue;
            }
            for path in &event.paths {
                if let Ok(rel) = path.strip_prefix(&self.root) {
                    let mut parts = rel.components();
                    let first = parts.next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
                    // A file (or `..data`) right in the root is the default tenant's; anything
                    // deeper belongs to the tenant folder it is in.
                    let deeper = parts.next().is_some();
                    if crate::plugins::confine::valid_tenant_name(&first) && (deeper || path.is_dir()) {
                        tenants.insert(first);
                    } else {
                        tenants.insert(String::new());
                    }
                } else if tenants_dir.is_some_and(|d| path.starts_with(d)) {
                    tenants_file = true;
                }
            }
        }
        (tenants, tenants_file)
    }
}

/// A digest of the files a generation's manifests read (a missing file counts as a change).
fn files_digest(generation: &Generation) -> String {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    for file in generation.plugins.iter().flat_map(|p| &p.files) {
        h.update(file.shown().as_os_str().as_encoded_bytes());
        match file.read(crate::plugins::secrets::MAX_CA_BYTES) {
            Ok(bytes) => h.update(Sha256::digest(&bytes)),
            Err(_) => h.update(b"\0missing"),
        }
    }
    hex::encode(h.finalize())
}

/// Polls the registries on a runtime of its own (the caller may be inside the server's).
fn poll_blocking(remote: &Arc<Remote>, all: bool) -> Polled {
    let remote = remote.clone();
    let polled = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        Some(runtime.block_on(remote.poll(all)))
    })
    .join();
    polled.ok().flatten().unwrap_or_default()
}

/// The registry poll thread: each source at its interval, results to the reload thread.
fn poll_forever(remote: &Remote, tx: &Sender<Message>) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        tracing::error!("cannot start the registry poll runtime: registry plugins are not polled");
        return;
    };
    loop {
        // The tenants file may gain sources: look again at least every second.
        let wake = remote.next_due().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        std::thread::sleep(wake.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)));
        let polled = runtime.block_on(remote.poll(false));
        if (!polled.changed.is_empty() || !polled.failed.is_empty()) && tx.send(Message::Polled(polled)).is_err() {
            return;
        }
    }
}

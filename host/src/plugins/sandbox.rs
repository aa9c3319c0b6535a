//! The thin core: wasmtime narrowed to what tollgate uses.
//!
//! One [`Engine`] for the process, one pre-instantiated component ([`Code`]) per unique content
//! digest, and a fresh [`Store`] + instance for every plugin call, so no state survives from one
//! review to the next. Every store carries an epoch deadline and a memory cap; guests get WASI p2
//! with nothing granted (no files, environment, arguments or sockets), `wasi:http` limited to what
//! their manifest grants ([`outbound`]), a cache of their own ([`kv`]), and native-speed
//! signature checks and digests ([`crypto`]).

pub mod contract;
pub mod crypto;
pub mod kv;
pub mod outbound;
mod output;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::observe::scrub::Scrubber;
use crypto::KeyCache;
use kv::KvStore;
use outbound::{OutboundGrant, OutboundHooks};
use output::Capture;

mod bindings {
    // The export is called as a future (`call_async`), so a deadline can end it wherever it is,
    // a host call included; the host's own imports never block and stay plain functions. The
    // contract's values are ours (`contract`): no generated `Debug` prints a token.
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        exports: { default: async },
        // The hashes trap on input over their limit rather than make every caller handle an
        // error that only a bug produces; the verifier traps if it ever panics on an input.
        imports: {
            "tollgate:policy/crypto.verify-jws": trappable,
            "tollgate:policy/crypto.sha256": trappable,
            "tollgate:policy/crypto.hmac-sha256": trappable,
        },
        with: { "tollgate:policy/types": super::contract },
    });
}

pub use bindings::tollgate::policy::host::Level;
pub use contract::{Decision, Grant, Prior, Review, UserInfo};

/// The name a component must export (any 0.1.x: a 0.1.0 export matches by semver).
pub const EXPORT: &str = "tollgate:policy/authenticator@0.1.2";

/// How often the epoch advances: at every tick a computing guest yields to the executor, and
/// traps once past its deadline, so it runs at most one tick over and never holds a runtime
/// worker longer than a tick; 10 ms (as Spin) keeps that slack small at negligible cost.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Caps on what a plugin may say through `host.log` in one call: enough to debug a policy,
/// too little to flood the log from a hot path.
const LOG_LINE_BYTES: usize = 2 * 1024;
const LOG_LINES_PER_CALL: usize = 32;

/// Cap on a deny/unavailable reason or a failure message before it reaches the audit log.
pub const REASON_BYTES: usize = 1024;

/// Host memory a guest can make the host allocate outside its own memory limit. Handles
/// (streams, pollables, fields): a policy holds a few dozen, and each costs the host a table
/// slot, so 10,000 is generous for a call yet small next to the plugin's memory cap (wasmtime's
/// own default is a million).
const MAX_HANDLES: usize = 10_000;
/// `wasi:random` bytes in one call: keys and nonces are tens of bytes, and the host allocates
/// the whole answer before the guest's memory limit sees it (wasmtime's default is 64 MiB).
const MAX_RANDOM_BYTES: u64 = 64 << 10;
/// `wasi:http` fields (headers) in one `fields` resource, counted as wasmtime counts them
/// (in-memory, about twice the wire size): a request to an identity provider carries a few
/// headers, and kube-apiserver itself sends far less than this.
const MAX_FIELDS_BYTES: usize = 64 << 10;

/// Server-wide sandbox settings.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The most linear memory any plugin may have (manifests are capped to it).
    pub max_memory_bytes: u64,
    /// Pooling-allocator slots: the most component instances alive at once.
    pub pool_instances: u32,
    /// How fresh instances are made fast (see [`Tuning`]).
    pub tuning: Tuning,
}

/// Host settings that make a fresh instance per review cheap without giving up anything of
/// the sandbox: every instance still starts from pristine memory, under its own deadline and
/// memory cap. Each knob was measured side by side (`make bench`, BENCHMARKS.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Bytes at the start of each linear-memory slot that stay resident between instances and
    /// are reset in place (memset of the dirty pages) instead of being given back to the kernel
    /// and faulted in again. 2 MiB covers what a Rust guest with a 64 KiB stack dirties.
    pub keep_resident: usize,
    /// Find the dirty pages of a slot with one `PAGEMAP_SCAN` ioctl (Linux >= 6.7; `Auto`
    /// falls back on older kernels), so a reset touches only what the guest wrote.
    pub pagemap_scan: bool,
    /// Map a component's data segments copy-on-write into each instance (`true`, wasmtime's
    /// default) or copy them in (`false`). Measured: no difference for the Rust examples
    /// (ratio 0.98-1.04 in three interleaved runs), so the default stays.
    pub memory_init_cow: bool,
    /// Build a call's WASI context (and its stdout/stderr capture) only when the guest first
    /// calls WASI: a policy that never prints never pays for it.
    pub lazy_wasi: bool,
}

impl Tuning {
    /// The settings tollgate shipped with before issue 6 (kept to measure against).
    pub const SEED: Tuning =
        Tuning { keep_resident: 2 << 20, pagemap_scan: true, memory_init_cow: true, lazy_wasi: false };
    /// The measured best (BENCHMARKS.md): the seed's pool settings, and WASI built lazily.
    pub const DEFAULT: Tuning = Tuning { lazy_wasi: true, ..Tuning::SEED };
}

impl Default for Tuning {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            // 256 MiB: room for a Python or JavaScript runtime (SPEC §7 default per plugin is 64).
            max_memory_bytes: 256 << 20,
            // Each slot reserves address space, not memory; 1000 is wasmtime's default and far
            // above the review concurrency bound.
            pool_instances: 1000,
            tuning: Tuning::DEFAULT,
        }
    }
}

/// The engine, the linker with the host imports and WASI, and the epoch ticker.
pub struct Sandbox {
    engine: Engine,
    /// Everything a plugin may import, wasi:http included: the fit-the-world check, and the
    /// instances of plugins with an outbound grant.
    linker: Linker<HostState>,
    /// The same without wasi:http, for plugins without an outbound grant ([`Self::seal`]).
    sealed: Linker<HostState>,
    pooling: bool,
    lazy_wasi: bool,
    max_instances: usize,
    compiler: Compiler,
}

/// Where compiles run. Before the server answers reviews (the first load, `check`, `review`),
/// on every core at normal priority: the sooner it is ready, the better. Once it serves
/// ([`Sandbox::compile_in_background`]), on [`background_threads`] threads of their own at
/// [`BACKGROUND_NICE`]: a reload compiling a large component (a Python policy: about 8 s of CPU)
/// must not make live reviews miss their deadlines on a two-core node, where wasmtime's parallel
/// compile would otherwise take every core.
struct Compiler {
    background: std::sync::atomic::AtomicBool,
    /// Made on the first background compile; `None` if its threads could not be started (then
    /// compiles run as before, and a warning said so).
    pool: std::sync::OnceLock<Option<rayon::ThreadPool>>,
}

/// The niceness of background compile threads. A review's thread sharing a core with one gets
/// about ten times its CPU (scheduler weights 1024 against 110), yet a compile is never starved:
/// `SCHED_IDLE` would let a node busy with other pods postpone a reload — a revoked key, a fixed
/// policy — for as long as they keep the CPU.
const BACKGROUND_NICE: i32 = 10;

/// Background compile threads: half the cores, at least one, so the other half is left to
/// reviews whatever a reload compiles.
fn background_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

impl Compiler {
    fn new() -> Self {
        Self { background: false.into(), pool: std::sync::OnceLock::new() }
    }

    /// Runs `compile` where compiles run now (see [`Compiler`]).
    fn run<R: Send>(&self, compile: impl FnOnce() -> R + Send) -> R {
        if !self.background.load(std::sync::atomic::Ordering::Acquire) {
            return compile();
        }
        let pool = self.pool.get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(background_threads())
                .thread_name(|i| format!("tollgate-compile-{i}"))
                .start_handler(|_| lower_priority(BACKGROUND_NICE))
                .build()
                .map_err(|e| tracing::warn!(error = %e, "cannot start the compile threads: compiling on every core"))
                .ok()
        });
        match pool {
            // wasmtime's parallel compile (rayon) runs in the pool it is called from.
            Some(pool) => pool.install(compile),
            None => compile(),
        }
    }
}

/// Lowers this thread's priority (Linux: niceness is per thread). Failing leaves it as it is.
fn lower_priority(nice: i32) {
    // SAFETY: plain system calls on this thread's own id.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) } != 0;
    if failed {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower a compile thread's priority");
    }
}

/// A compiled component that fits the world, ready to instantiate.
pub struct Code {
    component: Component,
    /// With wasi:http linked (plugins with an outbound grant).
    pre: bindings::PolicyPre<HostState>,
    /// Without it (every other plugin): made on the first load that needs it.
    sealed: std::sync::OnceLock<bindings::PolicyPre<HostState>>,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    pub size: usize,
    pub compile_time: Duration,
}

/// What one plugin is, as a call sees it.
#[derive(Clone, Debug)]
pub struct PluginEnv {
    pub tenant: String,
    pub name: String,
    pub config: BTreeMap<String, String>,
    pub timeout: Duration,
    pub memory_bytes: u64,
    /// Warm instances of this plugin (manifest `[instances] reuse = true`); `None`: a fresh
    /// instance per call, the default.
    pub warm: Option<Arc<WarmPool>>,
    /// What `allowed_outbound_hosts` grants; `None`: every request is refused.
    pub outbound: Option<Arc<OutboundGrant>>,
    /// The plugin's `tollgate:policy/kv` store (one per tenant, plugin and generation).
    pub kv: Arc<KvStore>,
    /// The key sets its `tollgate:policy/crypto` calls parsed (same scope as `kv`).
    pub keys: Arc<KeyCache>,
    /// Values of the plugin's `secret_files` (also in `config`): scrubbed from all its output.
    pub secrets: Arc<[String]>,
    /// A test vector's run: no outbound HTTP, and the wall clock fixed at `clock` if set.
    pub vector: bool,
    /// The wall clock the guest sees (unix seconds), when a vector fixes it (`now`).
    pub clock: Option<u64>,
    /// A vector run a second time (`check`'s live-config pass): its log lines were written the
    /// first time, so they are not written again.
    pub mute: bool,
}

/// Warm instances of one plugin in one tenant and generation (never shared by digest across
/// tenants), for heavy runtimes whose fresh instance costs a millisecond (Python, JavaScript).
/// The trade-off, which the manifest opts into: a guest's state (globals, caches — and whatever
/// it kept of an earlier review) persists from one review of this plugin to the next. An
/// instance is discarded after any trap, after `max_uses` reviews, and with its generation.
pub struct WarmPool {
    idle: Mutex<Vec<Warm>>,
    max_idle: usize,
    max_uses: u32,
    /// An instance idle longer than this is discarded rather than reused.
    ttl: Duration,
    budget: WarmBudget,
}

/// Idle warm instances each hold an instance slot of the pooling allocator, which fresh
/// instances need too: how many may sit idle server-wide and in one tenant, so no tenant's warm
/// pools take the slots every other review needs.
#[derive(Clone)]
pub struct WarmBudget {
    pub server: Arc<Slots>,
    pub tenant: Arc<Slots>,
}

impl WarmBudget {
    fn take(&self) -> bool {
        if !self.server.take() {
            return false;
        }
        if !self.tenant.take() {
            self.server.give();
            return false;
        }
        true
    }

    fn give(&self, n: usize) {
        for _ in 0..n {
            self.tenant.give();
            self.server.give();
        }
    }
}

/// A counted allowance.
#[derive(Debug)]
pub struct Slots {
    used: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { used: Default::default(), max })
    }

    fn take(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| (u < self.max).then_some(u + 1)).is_ok()
    }

    fn give(&self) {
        use std::sync::atomic::Ordering;
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_sub(1));
    }
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool").field("max_idle", &self.max_idle).field("max_uses", &self.max_uses).finish()
    }
}

struct Warm {
    store: Store<HostState>,
    instance: bindings::Policy,
    uses: u32,
    /// When it went idle.
    since: Instant,
}

impl WarmPool {
    pub fn new(max_idle: usize, max_uses: u32, ttl: Duration, budget: WarmBudget) -> Arc<Self> {
        Arc::new(Self { idle: Mutex::new(Vec::new()), max_idle, max_uses, ttl, budget })
    }

    /// The most recently used idle instance that has not outlived its TTL.
    fn take(&self) -> Option<Warm> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(warm) = idle.pop() {
            self.budget.give(1);
            if warm.since.elapsed() <= self.ttl {
                return Some(warm);
            }
        }
        None
    }

    /// Keeps an instance for the next review if its uses, the pool and the budgets allow.
    fn give_back(&self, mut warm: Warm) {
        if warm.uses >= self.max_uses {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest idle instances past their TTL go first (they are at the front).
        let expired = idle.iter().take_while(|w| w.since.elapsed() > self.ttl).count();
        idle.drain(..expired);
        self.budget.give(expired);
        if idle.len() < self.max_idle && self.budget.take() {
            warm.since = Instant::now();
            idle.push(warm);
        }
    }

    /// Instances waiting for a review.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for WarmPool {
    /// A replaced generation's idle instances give their budget back.
    fn drop(&mut self) {
        let idle = self.idle.get_mut().map_or(0, |i| i.len());
        self.budget.give(idle);
    }
}

/// How a call got its instance (for metrics), and what it asked of its `[config]` (for
/// `check`'s unread-key warnings and `review --explain`).
#[derive(Clone, Debug, Default)]
pub struct CallStats {
    /// Time to make a fresh instance (zero for a warm one).
    pub instantiate: Duration,
    /// A warm instance served the call.
    pub warm: bool,
    pub config: ConfigUse,
}

/// The `[config]` keys one call asked for, each once, in the order asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigUse {
    /// `(key, whether [config] had it)`, at most [`CONFIG_READS`] of them.
    pub reads: Vec<(String, bool)>,
    /// The guest listed the keys (`config-keys`): any key may have been read.
    pub listed: bool,
}

/// Distinct keys recorded per call: enough for any real policy, and a guest that asks for
/// millions of made-up keys cannot grow the host's memory.
const CONFIG_READS: usize = 64;

impl ConfigUse {
    fn note(&mut self, key: String, found: bool) {
        if self.reads.len() < CONFIG_READS && !self.reads.iter().any(|(k, _)| *k == key) {
            self.reads.push((key, found));
        }
    }
}

/// Why a call produced no decision. Every case fails the review closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Ran past its own budget or the review's deadline.
    Deadline,
    /// Tried to grow memory past its cap.
    Memory,
    StackOverflow,
    /// Any other trap (unreachable, a Rust panic, a bad memory access...), scrubbed.
    Trap(String),
    /// Returned more than the host accepts (see [`crate::policy::values::GrantLimits`]).
    Oversized(String),
    /// Could not be instantiated.
    Instantiate(String),
    /// Every instance slot of the server is taken: overload (503), not the plugin's fault.
    Exhausted,
}

impl Failure {
    /// A short, stable class for the audit line and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Failure::Deadline => "deadline",
            Failure::Memory => "memory",
            Failure::StackOverflow => "stack-overflow",
            Failure::Trap(_) => "trap",
            Failure::Oversized(_) => "oversized-output",
            Failure::Instantiate(_) => "instantiate",
            Failure::Exhausted => "overloaded",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Deadline => {
                f.write_str("ran past its deadline (the manifest's [limits] timeout_ms, or the review's time left)")
            }
            Failure::Memory => f.write_str("exceeded its memory cap"),
            Failure::StackOverflow => f.write_str("overflowed its stack"),
            Failure::Trap(m) => write!(f, "trapped: {m}"),
            Failure::Oversized(m) => write!(f, "returned oversized output: {m}"),
            Failure::Instantiate(m) => write!(f, "could not be instantiated: {m}"),
            Failure::Exhausted => f.write_str("found no free instance slot (the server is at --max-instances)"),
        }
    }
}

impl Sandbox {
    pub fn new(cfg: &SandboxConfig) -> Result<Self> {
        let (engine, pooling) = match Engine::new(&engine_config(cfg, true)) {
            Ok(engine) => (engine, true),
            Err(e) => {
                // The pool reserves address space up front; under a tight `ulimit -v` (or on a
                // kernel without overcommit) that fails, and on-demand allocation still works.
                tracing::warn!(error = %e, "pooling allocator unavailable, using on-demand allocation");
                let engine = Engine::new(&engine_config(cfg, false))
                    .map_err(anyhow::Error::from)
                    .context("creating the wasmtime engine")?;
                (engine, false)
            }
        };
        start_ticker(&engine);

        let link = |http: bool| -> Result<Linker<HostState>> {
            let mut linker = Linker::<HostState>::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker)
                .map_err(anyhow::Error::from)
                .context("linking WASI p2")?;
            if http {
                // wasi:http/outgoing-handler and its types, with every request checked by
                // `OutboundHooks` against the plugin's grant.
                wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
                    .map_err(anyhow::Error::from)
                    .context("linking wasi:http")?;
            }
            bindings::Policy::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
                .map_err(anyhow::Error::from)
                .context("linking tollgate:policy/host, kv and crypto")?;
            Ok(linker)
        };
        Ok(Self {
            linker: link(true)?,
            sealed: link(false)?,
            engine,
            pooling,
            lazy_wasi: cfg.tuning.lazy_wasi,
            max_instances: cfg.pool_instances as usize,
            compiler: Compiler::new(),
        })
    }

    /// From now on compiles run in the background (see [`Compiler`]): the server answers reviews.
    pub fn compile_in_background(&self) {
        self.compiler.background.store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(threads = background_threads(), nice = BACKGROUND_NICE, "later compiles run in the background");
    }

    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Instances (fresh and warm) the server may hold at once.
    pub fn max_instances(&self) -> usize {
        self.max_instances
    }

    /// Compiles a component and checks that it fits the world: it exports the authenticator
    /// interface and imports nothing beyond the host interface and WASI p2. Also returns the
    /// compiled bytes, for the disk cache.
    pub fn compile(&self, bytes: &[u8]) -> Result<(Code, Vec<u8>)> {
        let digest = digest(bytes);
        let started = Instant::now();
        let component = self
            .compiler
            .run(|| Component::new(&self.engine, bytes))
            .map_err(anyhow::Error::from)
            .context("not a WebAssembly component this host can compile")?;
        let compile_time = started.elapsed();
        let serialized = component.serialize().map_err(anyhow::Error::from).context("serializing compiled code")?;
        let code = self.prepare(component, digest, bytes.len(), compile_time)?;
        Ok((code, serialized))
    }

    /// Loads code this engine compiled earlier (see [`crate::plugins::compile_cache`]), then checks that it
    /// fits the world like a fresh compile.
    ///
    /// # Safety
    /// `serialized` must come from [`Self::compile`] of this engine configuration and must not
    /// have been altered since: wasmtime runs it as machine code. The disk cache guarantees this
    /// with an HMAC under a key only this user can read.
    pub unsafe fn load_compiled(&self, serialized: &[u8], digest: String, size: usize) -> Result<Code> {
        let started = Instant::now();
        // SAFETY: the caller upholds this function's contract.
        let component = unsafe { Component::deserialize(&self.engine, serialized) }
            .map_err(anyhow::Error::from)
            .context("loading cached compiled code")?;
        self.prepare(component, digest, size, started.elapsed())
    }

    /// Identifies the engine's code format: cached code of another wasmtime version or
    /// configuration is never loaded.
    pub fn engine_hash(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    fn prepare(&self, component: Component, digest: String, size: usize, compile_time: Duration) -> Result<Code> {
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow!("does not fit the world tollgate:policy/policy@0.1.x: {}", fit_message(&e.into())))?;
        let pre = bindings::PolicyPre::new(instance_pre)
            .map_err(|e| anyhow!("does not fit the world tollgate:policy/policy@0.1.x: {}", fit_message(&e.into())))?;
        Ok(Code { component, pre, sealed: Default::default(), digest, size, compile_time })
    }

    /// Prepares `code` for plugins without an outbound grant: wasi:http is not linked, and any
    /// of its functions the component imports (componentize-py and jco import it whether the
    /// policy uses it or not) trap when called. The component already fits the world, so
    /// wasi:http is all the sealed linker lacks.
    pub fn seal(&self, code: &Code) -> Result<()> {
        if code.sealed.get().is_some() {
            return Ok(());
        }
        let mut linker = self.sealed.clone();
        stub_wasi_http(&mut linker, &self.engine, &code.component).context("stubbing wasi:http")?;
        let pre =
            linker.instantiate_pre(&code.component).map_err(anyhow::Error::from).context("preparing an instance")?;
        let pre = bindings::PolicyPre::new(pre).map_err(anyhow::Error::from).context("preparing an instance")?;
        let _ = code.sealed.set(pre);
        Ok(())
    }

    /// The pre-instantiated component for this plugin: wasi:http linked only with a grant (a
    /// plugin without one is sealed at load, so the sealed one is there).
    fn pre<'a>(code: &'a Code, env: &PluginEnv) -> Result<&'a bindings::PolicyPre<HostState>, Failure> {
        if env.outbound.is_some() {
            return Ok(&code.pre);
        }
        code.sealed.get().ok_or_else(|| Failure::Trap("the plugin was not prepared without wasi:http".into()))
    }

    /// Runs one plugin on one review in a fresh instance (or a warm one, if the plugin reuses
    /// them). `deadline` is the review's: the call's budget is the plugin's timeout or what
    /// remains of the review, whichever ends first. The guest runs as a future on the caller's
    /// runtime: it yields to the executor every epoch tick, traps at the deadline while it
    /// computes, and is dropped at the deadline while it waits in any host call (a poll, a
    /// stream, outbound HTTP): no host call outlives the budget. Whatever the plugin says loses
    /// what `scrub` removes (the review's token and its twin) and the plugin's secrets.
    pub async fn call(
        &self,
        code: &Code,
        env: &Arc<PluginEnv>,
        request_id: &str,
        review: &Review,
        scrub: Scrubber<'_>,
        deadline: Instant,
    ) -> (Result<Decision, Failure>, CallStats) {
        let mut stats = CallStats::default();
        let now = Instant::now();
        let budget = env.timeout.min(deadline.saturating_duration_since(now));
        if budget.is_zero() {
            return (Err(Failure::Deadline), stats);
        }
        // One deadline for the call: the host-call timeout, the epoch callback and the check of
        // a late answer all read it.
        let until = now + budget;
        let ends = tokio::time::Instant::from_std(until);
        let scrubber = scrub.with_secrets(&env.secrets);
        let (mut store, instance, uses) = match env.warm.as_ref().and_then(|w| w.take()) {
            Some(Warm { mut store, instance, uses, .. }) => {
                store.data_mut().begin(request_id, scrub, until, budget);
                store.set_epoch_deadline(1);
                stats.warm = true;
                (store, instance, uses)
            }
            None => {
                let pre = match Self::pre(code, env) {
                    Ok(pre) => pre,
                    Err(failure) => return (Err(failure), stats),
                };
                let mut store = self.store(env, request_id, scrub, until, budget);
                let started = Instant::now();
                let instance = tokio::time::timeout_at(ends, pre.instantiate_async(&mut store)).await;
                stats.instantiate = started.elapsed();
                match instance {
                    Ok(Ok(instance)) => (store, instance, 0),
                    Ok(Err(e)) => return (Err(classify(e, &store, &scrubber, true, None)), stats),
                    Err(_) => return (Err(Failure::Deadline), stats),
                }
            }
        };
        let called = instance.tollgate_policy_authenticator().call_authenticate(&mut store, review);
        let called = tokio::time::timeout_at(ends, called).await;
        // What the guest wrote goes to the log first: a trap's failure repeats its last words.
        let mut last_words = None;
        if let Some(wasi) = &store.data().wasi {
            emit_output(&store, "stdout", &wasi.stdout, &scrubber);
            last_words = emit_output(&store, "stderr", &wasi.stderr, &scrubber);
        }
        stats.config = std::mem::take(&mut store.data_mut().config_use);
        let result = match called {
            Ok(result) => result.map_err(|e| classify(e, &store, &scrubber, false, last_words.as_deref())),
            // Waiting in a host call at its deadline: the call is dropped where it stood.
            Err(_) => Err(Failure::Deadline),
        };
        let decision = match result {
            // An answer after the deadline is too late, however it got there (finishing in the
            // tick after it).
            Ok(_) if Instant::now() > store.data().deadline => return (Err(Failure::Deadline), stats),
            Ok(decision) => decision,
            // A trapped instance is poisoned: it is dropped here, never reused.
            Err(failure) => return (Err(failure), stats),
        };
        if let Err(e) = crate::policy::values::GrantLimits::DEFAULT.check_decision(&decision) {
            // Nor is one that answered out of bounds.
            return (Err(Failure::Oversized(e)), stats);
        }
        if let Some(warm) = &env.warm {
            warm.give_back(Warm { store, instance, uses: uses + 1, since: Instant::now() });
        }
        let decision = match decision {
            Decision::Deny(r) => Decision::Deny(scrubber.clean(&r, REASON_BYTES)),
            Decision::Unavailable(r) => Decision::Unavailable(scrubber.clean(&r, REASON_BYTES)),
            other => other,
        };
        (Ok(decision), stats)
    }

    /// A fresh store for one call: limits, deadline and (unless lazy) WASI.
    /// `deadline` ends the call; `budget` is how long it was given (the outbound reserve).
    fn store(
        &self,
        env: &Arc<PluginEnv>,
        request_id: &str,
        scrub: Scrubber<'_>,
        deadline: Instant,
        budget: Duration,
    ) -> Store<HostState> {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELDS_BYTES);
        let mut state = HostState {
            wasi: None,
            table,
            limits: GuestLimits { cap: env.memory_bytes as usize, used: 0, exceeded: false },
            env: env.clone(),
            request_id: request_id.to_owned(),
            token: scrub.token().to_owned(),
            twin: scrub.twin().map(str::to_owned),
            log_lines: 0,
            config_use: ConfigUse::default(),
            deadline,
            http,
            hooks: OutboundHooks {
                grant: if env.vector { None } else { env.outbound.clone() },
                no_grant: if env.vector {
                    "test vectors run without outbound HTTP"
                } else {
                    "the manifest grants no outbound host (allowed_outbound_hosts)"
                },
                deadline: OutboundHooks::http_deadline(deadline, budget),
                tenant: env.tenant.clone(),
                plugin: env.name.clone(),
                request_id: request_id.to_owned(),
            },
        };
        if !self.lazy_wasi {
            GuestWasi::get_or_make(&mut state.wasi, env);
        }
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Every tick: past the deadline, trap; before it, yield to the executor (a guest that
        // computes for its whole budget still lets the server's other tasks run).
        store.epoch_deadline_callback(|store| {
            Ok(if Instant::now() >= store.data().deadline {
                wasmtime::UpdateDeadline::Interrupt
            } else {
                wasmtime::UpdateDeadline::Yield(1)
            })
        });
        store.set_epoch_deadline(1);
        store
    }

    /// The engine, for the ladder benchmark's rungs below tollgate's Store
    /// (`host/benches/ladder.rs`).
    #[doc(hidden)]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A fresh store and instance of `code` as [`Self::call`] makes them (tollgate's Store,
    /// limits and epoch callback), without `call`'s checks, for benchmarks that take a call
    /// apart layer by layer (`host/benches/ladder.rs`, `host/benches/review.rs`). `timers`: under
    /// the `timeout_at` wrapper `call` puts around each step. `until`: the store's deadline.
    #[doc(hidden)]
    pub async fn bare(&self, code: &Code, env: &Arc<PluginEnv>, until: Instant, timers: bool) -> Result<Bare, Failure> {
        let scrubber = Scrubber::new("");
        let pre = Self::pre(code, env)?;
        let budget = until.saturating_duration_since(Instant::now());
        let mut store = self.store(env, "bench", scrubber, until, budget);
        let instance = if timers {
            tokio::time::timeout_at(tokio::time::Instant::from_std(until), pre.instantiate_async(&mut store))
                .await
                .map_err(|_| Failure::Deadline)?
        } else {
            pre.instantiate_async(&mut store).await
        };
        let instance = instance.map_err(|e| classify(e, &store, &scrubber, true, None))?;
        Ok(Bare { store, instance })
    }
}

/// A store and instance made by [`Sandbox::bare`]: dropped, it is the fixed cost of a fresh
/// instance; called again and again, the guest's own warm work.
#[doc(hidden)]
pub struct Bare {
    store: Store<HostState>,
    instance: bindings::Policy,
}

impl Bare {
    /// Calls the guest once (under `timeout_at` if `timers`), with no check of its answer.
    pub async fn call(&mut self, review: &Review, timers: bool) -> Result<Decision, Failure> {
        let until = self.store.data().deadline;
        let called = self.instance.tollgate_policy_authenticator().call_authenticate(&mut self.store, review);
        let called = if timers {
            tokio::time::timeout_at(tokio::time::Instant::from_std(until), called)
                .await
                .map_err(|_| Failure::Deadline)?
        } else {
            called.await
        };
        called.map_err(|e| classify(e, &self.store, &Scrubber::new(""), false, None))
    }
}

/// What a sealed plugin's wasi:http resources are: nothing can make one (every function that
/// would trap first).
struct NotLinked;

/// Defines every wasi:http function `component` imports as a trap that says why, and the
/// resources wasi:http introduces as opaque ones; resources it only re-exports (wasi:io's
/// streams, pollable and error, whatever name the re-export takes: `io-error` in
/// wasi:http/types) keep the linker's own types.
fn stub_wasi_http(linker: &mut Linker<HostState>, engine: &Engine, component: &Component) -> Result<()> {
    use wasmtime::component::ResourceType;
    use wasmtime::component::types::ComponentItem;
    let ty = component.component_type();
    let mut known: Vec<ResourceType> = Vec::new();
    for (name, import) in ty.imports(engine) {
        if let ComponentItem::ComponentInstance(instance) = &import.ty
            && !name.starts_with("wasi:http/")
        {
            for (_, item) in instance.exports(engine) {
                if let ComponentItem::Resource(resource) = item.ty {
                    known.push(resource);
                }
            }
        }
    }
    for (name, import) in ty.imports(engine) {
        let ComponentItem::ComponentInstance(instance) = &import.ty else { continue };
        if !name.starts_with("wasi:http/") {
            continue;
        }
        let mut stubs = linker.instance(name).map_err(anyhow::Error::from)?;
        for (export, item) in instance.exports(engine) {
            match item.ty {
                ComponentItem::ComponentFunc(_) => {
                    let called = format!("{name}#{export}");
                    stubs
                        .func_new(export, move |_, _, _, _| {
                            Err(wasmtime::format_err!(
                                "it called `{called}`, but wasi:http is not linked for this plugin: it has no \
                                 outbound grant (allowed_outbound_hosts in its manifest, within the tenants \
                                 file's outbound_hosts)"
                            ))
                        })
                        .map_err(anyhow::Error::from)?;
                }
                ComponentItem::Resource(resource) if !known.contains(&resource) => {
                    known.push(resource);
                    stubs
                        .resource(export, ResourceType::host::<NotLinked>(), |_, _| Ok(()))
                        .map_err(anyhow::Error::from)?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Runs a sandbox future to its end from synchronous code (vectors at load, `tollgate review`):
/// on a thread of its own with a current-thread runtime, so it works whether or not the caller
/// is inside a runtime (the first load runs on one of the server's workers).
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        let thread = std::thread::Builder::new().name("tollgate-block-on".into()).spawn_scoped(s, || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on(future),
                Err(e) => panic!("cannot start a runtime for a guest call: {e}"),
            }
        });
        match thread.map(|t| t.join()) {
            Ok(Ok(output)) => output,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(e) => panic!("cannot start a thread for a guest call: {e}"),
        }
    })
}

/// `sha256:<hex>` of a component's bytes: its identity in caches, `/status` and audit lines.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn engine_config(cfg: &SandboxConfig, pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Always on: a store without a deadline would run forever (and one with a zero deadline
    // traps at once), so every store sets one and the ticker thread always runs.
    config.epoch_interruption(true);
    // Backtraces name guest functions in trap messages, which helps policy authors; DWARF-level
    // details would cost more than they help.
    config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);
    if pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(cfg)));
        config.memory_init_cow(cfg.tuning.memory_init_cow);
    }
    config
}

/// The pooling allocator as tollgate sets it (also the ladder benchmark's floor, rung a).
#[doc(hidden)]
pub fn pool_config(cfg: &SandboxConfig) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(cfg.pool_instances);
    pool.max_memory_size(cfg.max_memory_bytes as usize);
    // Keep the first pages of a slot resident and reset them in place (one PAGEMAP_SCAN
    // ioctl + memset of the dirty pages) instead of madvise + page faults on the next
    // instance: measured 26 µs -> 7 µs per fresh instance of a Rust guest (TOOLCHAINS.md).
    // `Auto` because the ioctl needs Linux 6.7.
    let t = &cfg.tuning;
    pool.pagemap_scan(if t.pagemap_scan { Enabled::Auto } else { Enabled::No });
    pool.linear_memory_keep_resident(t.keep_resident);
    pool.table_keep_resident(4096);
    // One fiber stack per guest call in flight (calls run as futures).
    pool.total_stacks(cfg.pool_instances);
    pool
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a dedicated thread, for as long as the
/// engine lives. `MissedTickBehavior::Skip` semantics by construction: a late wake-up adds one tick.
fn start_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("tollgate-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .map(drop)
        .unwrap_or_else(|e| {
            // Without a ticker every deadline would be infinite: refuse to run guests at all.
            panic!("cannot start the epoch ticker thread: {e}")
        });
}

/// The store's data: WASI with nothing granted, the memory limiter, and what `host.*` needs.
struct HostState {
    /// Built on the guest's first WASI call (see [`Tuning::lazy_wasi`]).
    wasi: Option<Box<GuestWasi>>,
    table: ResourceTable,
    limits: GuestLimits,
    env: Arc<PluginEnv>,
    request_id: String,
    /// The review's token and its twin, for scrubbing the plugin's log lines.
    token: String,
    twin: Option<String>,
    log_lines: usize,
    config_use: ConfigUse,
    /// When this call's budget ends: no host call may block past it.
    deadline: Instant,
    http: WasiHttpCtx,
    hooks: OutboundHooks,
}

/// A call's WASI p2 with nothing granted: no files, environment, arguments or sockets; stdout
/// and stderr captured for the log.
struct GuestWasi {
    ctx: WasiCtx,
    stdout: Capture,
    stderr: Capture,
}

impl GuestWasi {
    /// `clock`: a test vector's fixed wall clock (unix seconds).
    fn new(clock: Option<u64>) -> Self {
        let stdout = Capture::new();
        let stderr = Capture::new();
        let mut builder = WasiCtx::builder();
        builder.stdout(stdout.clone()).stderr(stderr.clone()).max_random_size(MAX_RANDOM_BYTES);
        if let Some(secs) = clock {
            builder.wall_clock(FixedClock(Duration::from_secs(secs)));
        }
        Self { ctx: builder.build(), stdout, stderr }
    }
}

/// The wall clock a test vector sets (`now`): JWT vectors then never expire. Every language
/// reads it through `wasi:clocks/wall-clock`, so no SDK support is needed.
struct FixedClock(Duration);

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

impl GuestWasi {
    /// The call's WASI context, made on first use (lazy WASI) with the plugin's clock.
    fn get_or_make<'a>(slot: &'a mut Option<Box<GuestWasi>>, env: &PluginEnv) -> &'a mut GuestWasi {
        slot.get_or_insert_with(|| Box::new(GuestWasi::new(env.clock)))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let wasi = GuestWasi::get_or_make(&mut self.wasi, &self.env);
        WasiCtxView { ctx: &mut wasi.ctx, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

impl HostState {
    /// A warm instance's next call: its own request id, token and deadline, a fresh log budget.
    fn begin(&mut self, request_id: &str, scrub: Scrubber, deadline: Instant, budget: Duration) {
        request_id.clone_into(&mut self.request_id);
        request_id.clone_into(&mut self.hooks.request_id);
        scrub.token().clone_into(&mut self.token);
        self.twin = scrub.twin().map(str::to_owned);
        self.log_lines = 0;
        self.config_use = ConfigUse::default();
        self.limits.exceeded = false;
        self.deadline = deadline;
        self.hooks.deadline = OutboundHooks::http_deadline(deadline, budget);
    }
}

impl bindings::tollgate::policy::kv::Host for HostState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.env.kv.get(&key)
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_seconds: u32) -> Result<(), String> {
        self.env.kv.set(&key, value, ttl_seconds)
    }

    fn delete(&mut self, key: String) {
        self.env.kv.delete(&key)
    }
}

impl contract::Host for HostState {}

impl bindings::tollgate::policy::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_PER_CALL {
            if self.log_lines == LOG_LINES_PER_CALL + 1 {
                plugin_line(&self.env, &self.request_id, Level::Warn, "log", "further log lines of this call dropped");
            }
            return;
        }
        let message = Scrubber::new(&self.token)
            .with_twin(self.twin.as_deref())
            .with_secrets(&self.env.secrets)
            .clean(&message, LOG_LINE_BYTES);
        plugin_line(&self.env, &self.request_id, level, "log", &message);
    }

    fn config(&mut self, key: String) -> Option<String> {
        let value = self.env.config.get(&key).cloned();
        self.config_use.note(key, value.is_some());
        value
    }

    fn config_keys(&mut self) -> Vec<String> {
        self.config_use.listed = true;
        self.env.config.keys().cloned().collect()
    }
}

/// Caps the total linear memory of one instance (all its memories together).
struct GuestLimits {
    cap: usize,
    used: usize,
    exceeded: bool,
}

impl wasmtime::ResourceLimiter for GuestLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.used - current.min(self.used) + desired;
        if total > self.cap {
            // An error (not `Ok(false)`) traps at the grow: the review fails closed at once with
            // a clear cause, instead of the guest's allocator aborting somewhere later.
            self.exceeded = true;
            wasmtime::bail!("memory cap of {} bytes exceeded", self.cap);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is beyond any real guest.
        Ok(desired <= 1_000_000)
    }
}

/// `last_words`: the guest's telling stderr line (already scrubbed), which a trap's message repeats.
fn classify(
    err: wasmtime::Error,
    store: &Store<HostState>,
    scrubber: &Scrubber,
    instantiating: bool,
    last_words: Option<&str>,
) -> Failure {
    if store.data().limits.exceeded {
        return Failure::Memory;
    }
    if err.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
        return Failure::Exhausted;
    }
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => return Failure::Deadline,
        Some(wasmtime::Trap::StackOverflow) => return Failure::StackOverflow,
        _ => {}
    }
    let message = scrubber.clean(&trap_message(&err, last_words), REASON_BYTES);
    if instantiating && err.downcast_ref::<wasmtime::Trap>().is_none() {
        Failure::Instantiate(message)
    } else {
        Failure::Trap(message)
    }
}

/// Frames of the guest's panic and abort machinery say nothing about where it went wrong.
fn telling_frame(name: &str) -> bool {
    const MACHINERY: [&str; 8] =
        ["std::", "core::", "alloc::", "__rustc::", "__rust_", "rust_panic", "abort", "panic_"];
    !MACHINERY.iter().any(|m| name.starts_with(m))
}

/// The cause first, then where: a long backtrace must not push the cause past the length cap.
/// Then what the guest said on stderr before it trapped (a panic message, a Python exception),
/// or, for an `unreachable` with neither words nor frames of its own — what a JavaScript
/// exception looks like in a QuickJS build whose WASI is stubbed — where the message went.
fn trap_message(err: &wasmtime::Error, last_words: Option<&str>) -> String {
    let cause = err.root_cause().to_string();
    let frames: Vec<&str> = err
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| bt.frames().iter().filter_map(|f| f.func_name()).filter(|n| telling_frame(n)).take(6).collect())
        .unwrap_or_default();
    if let Some(misfit) = frames.first().and_then(|f| python_misfit(f, last_words?)) {
        return misfit;
    }
    let mut message = if frames.is_empty() { cause } else { format!("{cause} (in {})", frames.join(" <- ")) };
    let unreachable = matches!(err.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::UnreachableCodeReached));
    match last_words {
        Some(words) => message.push_str(&format!("; its last words on stderr: {words}")),
        None if unreachable && frames.len() <= 1 => message.push_str(
            "; it left no message (a JavaScript exception, in a build with the WASI stubs? \
             `tollgate build --debug` keeps its message: plugins/js/README.md)",
        ),
        None => {}
    }
    message
}

/// What a Python policy's return value got wrong, in the author's terms. componentize-py's
/// runtime converts the returned object field by field (`wit_dylib_pop_<kind>`) and, on a
/// mismatch, aborts with a `PyErr` that names neither the field nor the function; this says
/// what was expected instead of that abort chain.
fn python_misfit(frame: &str, last_words: &str) -> Option<String> {
    let kind = frame.strip_prefix("wit_dylib_pop_")?;
    let error = last_words.split_once(", value: ")?.1;
    let error = error.rsplit_once(", traceback:").map_or(error, |(e, _)| e);
    let what = if let Some(ty) = error.strip_prefix("KeyError(<class '").and_then(|t| t.split_once('\'')) {
        format!("a {} where a Decision was expected", ty.0)
    } else if let Some(got) =
        error.strip_prefix("TypeError(\"").and_then(|t| t.split_once(" is not an instance of 'str'"))
    {
        format!(
            "{} where a str was expected (username, uid, a group, an extra key or value, an audience, a reason)",
            got.0
        )
    } else {
        format!("{error} (converting a {kind})")
    };
    Some(format!(
        "authenticate returned a value the contract does not take: {what}. A Decision is Decision_Allow(Grant(\
         user=UserInfo(username=str, uid=str, groups=[str], extra=[(str, [str])]), audiences=[str], \
         expires_at=int or None)), Decision_Deny(str), Decision_Abstain() or Decision_Unavailable(str), every \
         field given (plugins/python/README.md)"
    ))
}

/// Logs what the guest wrote to `stream`, line by line; returns its last telling line (not a
/// `note:` or a backtrace header), cut to [`LAST_WORDS_BYTES`].
fn emit_output(
    store: &Store<HostState>,
    stream: &'static str,
    capture: &Capture,
    scrubber: &Scrubber,
) -> Option<String> {
    let (bytes, dropped) = capture.take();
    if bytes.is_empty() && dropped == 0 {
        return None;
    }
    let env = &store.data().env;
    let text = scrubber.clean_bytes(&bytes, output::CAPTURE_BYTES);
    let level = if stream == "stderr" { Level::Warn } else { Level::Info };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        plugin_line(env, &store.data().request_id, level, stream, line);
    }
    if dropped > 0 {
        plugin_line(env, &store.data().request_id, Level::Warn, stream, &format!("{dropped} further bytes dropped"));
    }
    last_words(&text)
}

/// The telling line of what a guest wrote to stderr before it trapped: a Python traceback's
/// last line, or what a Rust panic (the runtime of a JavaScript guest included) says after
/// "panicked at", else the last line that is not a `note:` or a backtrace header, cut to
/// [`LAST_WORDS_BYTES`].
fn last_words(text: &str) -> Option<String> {
    let telling = |l: &&&str| {
        let l = l.trim();
        l.chars().filter(|c| c.is_alphanumeric()).count() >= 8
            && !l.starts_with("note:")
            && !l.starts_with("stack backtrace")
            && !l.starts_with("Traceback")
    };
    if let Some(thrown) = quickjs_exception(text) {
        return Some(thrown[..thrown.floor_char_boundary(LAST_WORDS_BYTES)].to_owned());
    }
    // The scrubbed text has its newlines escaped (`\n`): lines are split on those too.
    let lines: Vec<&str> = text.lines().flat_map(|l| l.split("\\n")).collect();
    let panic_at = lines.iter().rposition(|l| l.contains("panicked at"));
    let last = if text.contains("Traceback (most recent call last)") {
        // A Python exception: its own last line (`KeyError: 'teams'`) says more than the
        // runtime's panic that follows it ("Python function threw an unexpected exception").
        lines[..panic_at.unwrap_or(lines.len())].iter().rev().find(telling)
    } else {
        panic_at.and_then(|i| lines.get(i + 1)).filter(telling)
    };
    let last = last.or_else(|| lines.iter().rev().find(telling))?.trim();
    Some(last[..last.floor_char_boundary(LAST_WORDS_BYTES)].to_owned())
}

/// What a JavaScript policy threw, from the QuickJS runtime's report (`Exception { message:
/// Some("..."), stack: Some("    at f (/policy.js:24:12)...") }`, in a build that keeps WASI):
/// the message and where it was thrown, without the runtime's wrapping.
fn quickjs_exception(text: &str) -> Option<String> {
    let message = text.split_once("Exception { message: Some(\"")?.1;
    let (message, rest) = message.split_once("\"), stack: ")?;
    let at = rest
        .strip_prefix("Some(\"")
        .and_then(|s| s.trim_start().split(['\\', '"']).next())
        .map(str::trim)
        .filter(|f| !f.is_empty());
    Some(match at {
        Some(at) => format!("{message} ({at})"),
        None => message.to_owned(),
    })
}

/// How much of a guest's last stderr line a failure message repeats.
const LAST_WORDS_BYTES: usize = 300;

/// One line from a plugin, tagged with tenant, plugin and request id. The text is already scrubbed.
fn plugin_line(env: &PluginEnv, request_id: &str, level: Level, stream: &'static str, message: &str) {
    if env.mute {
        return;
    }
    macro_rules! line {
        ($lvl:expr) => {
            tracing::event!(target: "tollgate::plugin", $lvl, tenant = %env.tenant, plugin = %env.name, request_id, stream, "{message}")
        };
    }
    match level {
        Level::Trace => line!(tracing::Level::TRACE),
        Level::Debug => line!(tracing::Level::DEBUG),
        Level::Info => line!(tracing::Level::INFO),
        Level::Warn => line!(tracing::Level::WARN),
        Level::Error => line!(tracing::Level::ERROR),
    }
}

/// Turns wasmtime's "matching implementation was not found" into a message that names the
/// import, so an author knows what to remove (e.g. `wasi:http/outgoing-handler`).
fn fit_message(err: &anyhow::Error) -> String {
    let full = format!("{err:#}");
    if full.contains("matching implementation was not found in the linker")
        && let Some(name) = full.split('`').nth(1)
    {
        return format!(
            "it imports `{name}`, which this host does not provide (a plugin may import only \
             tollgate:policy/host, kv and crypto, WASI p2 and wasi:http/outgoing-handler)"
        );
    }
    if full.contains(EXPORT) || full.contains("tollgate:policy/authenticator") {
        return format!("it does not export {EXPORT} as the world defines it ({full})");
    }
    full
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A QuickJS exception report becomes the message and where it was thrown.
    #[test]
    fn a_javascript_exception_is_its_message_and_place() {
        let report = "Failed to call 'authenticate': Exception(Exception { message: Some(\"cannot read property 'lookup' of undefined\"), stack: Some(\"    at authenticate (/team-tokens.js:24:12)\\n    at <eval>\") })";
        assert_eq!(
            last_words(report).as_deref(),
            Some("cannot read property 'lookup' of undefined (at authenticate (/team-tokens.js:24:12))")
        );
        let no_stack = "Exception(Exception { message: Some(\"no such table\"), stack: None })";
        assert_eq!(last_words(no_stack).as_deref(), Some("no such table"));
    }

    /// componentize-py's abort on a return value of the wrong shape becomes what was expected.
    #[test]
    fn a_python_return_value_of_the_wrong_shape_is_named() {
        let abort = |value: &str| {
            format!(
                "called `Result::unwrap()` on an `Err` value: PyErr {{ type: <class 'X'>, value: {value}, traceback: None }}"
            )
        };
        let m = python_misfit("wit_dylib_pop_variant", &abort("KeyError(<class 'str'>)")).unwrap();
        assert!(
            m.starts_with(
                "authenticate returned a value the contract does not take: a str where a Decision was expected"
            ),
            "{m}"
        );
        assert!(m.contains("Decision_Abstain()"), "{m}");
        let m =
            python_misfit("wit_dylib_pop_string", &abort("TypeError(\"'None' is not an instance of 'str'\")")).unwrap();
        assert!(m.contains(": 'None' where a str was expected (username, uid"), "{m}");
        let m = python_misfit("wit_dylib_pop_list", &abort("TypeError(\"odd\")")).unwrap();
        assert!(m.contains(": TypeError(\"odd\") (converting a list)"), "{m}");
        assert_eq!(python_misfit("authenticate", &abort("x")), None);
        assert_eq!(python_misfit("wit_dylib_pop_string", "a plain panic"), None);
    }

    #[test]
    fn a_failure_repeats_what_the_guest_said_before_it_trapped() {
        // As the scrubber leaves them: newlines escaped, one line.
        let rust = r"\nthread '<unnamed>' (1) panicked at src/lib.rs:9:5:\nno team list configured\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(last_words(rust).as_deref(), Some("no team list configured"));
        let js = r#"\nthread '<unnamed>' (1) panicked at crates/runtime/src/interpreter.rs:51:31:\nFailed to call 'authenticate': Exception(Exception { message: Some("team list is missing"), stack: Some("    at authenticate (/bad.js:3:15)\n") })\nnote: run with `RUST_BACKTRACE=1`"#;
        assert_eq!(last_words(js).as_deref(), Some("team list is missing (at authenticate (/bad.js:3:15))"));
        let python = "Traceback (most recent call last):\n  File \"app.py\", line 3, in authenticate\nKeyError: 'teams'\n\
             thread '<unnamed>' (1) panicked at runtime/src/lib.rs:9:5:\nPython function threw an unexpected exception\n";
        assert_eq!(last_words(python).as_deref(), Some("KeyError: 'teams'"));
        assert_eq!(last_words("\n  \nnote: nothing\n"), None);
        let long = "é".repeat(400);
        assert!(last_words(&long).unwrap().len() <= LAST_WORDS_BYTES);
    }

    #[test]
    fn the_panic_machinery_is_left_out_of_a_traps_frames() {
        for machinery in ["std::process::abort", "__rustc::rust_panic", "core::panicking::panic_fmt", "abort"] {
            assert!(!telling_frame(machinery), "{machinery}");
        }
        assert!(telling_frame("wit_dylib_pop_variant") && telling_frame("my_policy::authenticate"));
    }
}

//! The live tenants: what the HTTP handlers read (lock-free) and loads and reloads replace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::policy::chain::Generation;
use crate::policy::evaluator::TenantSlots;
use crate::policy::guardrails::Guardrails;

/// Why a tenant's newest files were not taken live.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub at: SystemTime,
    pub reason: String,
}

/// One tenant: its live generation (if it ever loaded) and its last refusal.
#[derive(Clone)]
pub struct TenantState {
    pub name: String,
    pub dir: PathBuf,
    /// `None` until a generation loads: the tenant then answers 503, never a cacheable denial.
    pub live: Option<Arc<Generation>>,
    pub refusal: Option<Refusal>,
    /// The newest files were refused (a previous generation may still be live).
    pub refused_now: bool,
    /// The tenant's evaluation slots (the same across its generations).
    pub slots: Arc<TenantSlots>,
    /// The operator's rules in force for this tenant: the tenants file as last read, which may
    /// be newer than the rules `live` was loaded under (SPEC §4: guardrails apply when the
    /// operator changes them, not when the tenant's folder next builds).
    pub rules: Arc<Guardrails>,
    /// Unique for the life of the process, new with every change of generation or rules:
    /// the decision cache keys on it, so nothing decided under earlier ones is served — not
    /// even to a tenant folder deleted and created again.
    pub epoch: u64,
}

#[derive(Default)]
pub struct Registry {
    tenants: ArcSwap<BTreeMap<String, Arc<TenantState>>>,
    ready: AtomicBool,
    /// Why the tenants file's latest version was refused (the previous guardrails stay).
    tenants_file_error: Mutex<Option<Refusal>>,
    /// The last epoch handed out.
    epochs: AtomicU64,
}

impl Registry {
    pub fn get(&self, tenant: &str) -> Option<Arc<TenantState>> {
        self.tenants.load().get(tenant).cloned()
    }

    pub fn snapshot(&self) -> Arc<BTreeMap<String, Arc<TenantState>>> {
        self.tenants.load_full()
    }

    /// Replaces one tenant's state atomically, under a new epoch; reviews already running keep
    /// their generation.
    pub fn put(&self, mut state: TenantState) {
        state.epoch = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
        let state = Arc::new(state);
        self.tenants.rcu(|map| {
            let mut map = BTreeMap::clone(map);
            map.insert(state.name.clone(), state.clone());
            map
        });
    }

    /// Records why `tenant`'s newest plugins were refused before any build (a registry plugin
    /// that is unsigned, wrongly signed or unreachable); whatever is live stays live.
    pub fn refuse(&self, tenant: &str, reason: String) {
        if let Some(state) = self.get(tenant) {
            let refusal = Some(Refusal { at: SystemTime::now(), reason });
            self.put(TenantState { refusal, refused_now: true, ..TenantState::clone(&state) });
        }
    }

    pub fn remove(&self, tenant: &str) {
        self.tenants.rcu(|map| {
            let mut map = BTreeMap::clone(map);
            map.remove(tenant);
            map
        });
    }

    /// Puts the operator's new rules in force for every tenant at once, before any folder is
    /// reloaded under them: the next review is checked against them.
    pub fn apply_rules(&self, rules_for: impl Fn(&str) -> Guardrails) {
        for state in self.snapshot().values() {
            let rules = rules_for(&state.name);
            if *state.rules != rules {
                self.put(TenantState { rules: Arc::new(rules), ..TenantState::clone(state) });
            }
        }
    }

    pub fn set_tenants_file_error(&self, reason: Option<String>) {
        *self.tenants_file_error.lock().unwrap_or_else(|e| e.into_inner()) =
            reason.map(|reason| Refusal { at: SystemTime::now(), reason });
    }

    pub fn tenants_file_error(&self) -> Option<Refusal> {
        self.tenants_file_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Set once the first scan is done and this process accepts on the main listener (`/readyz`).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

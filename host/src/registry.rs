//! The live tenants: what the HTTP handlers read (lock-free) and loads and reloads replace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::evaluator::TenantSlots;
use crate::tenant::Generation;

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
}

#[derive(Default)]
pub struct Registry {
    tenants: ArcSwap<BTreeMap<String, Arc<TenantState>>>,
    ready: AtomicBool,
    /// Why the tenants file's latest version was refused (the previous guardrails stay).
    tenants_file_error: Mutex<Option<Refusal>>,
}

impl Registry {
    pub fn get(&self, tenant: &str) -> Option<Arc<TenantState>> {
        self.tenants.load().get(tenant).cloned()
    }

    pub fn snapshot(&self) -> Arc<BTreeMap<String, Arc<TenantState>>> {
        self.tenants.load_full()
    }

    /// Replaces one tenant's state atomically; reviews already running keep their generation.
    pub fn put(&self, state: TenantState) {
        let state = Arc::new(state);
        self.tenants.rcu(|map| {
            let mut map = BTreeMap::clone(map);
            map.insert(state.name.clone(), state.clone());
            map
        });
    }

    pub fn remove(&self, tenant: &str) {
        self.tenants.rcu(|map| {
            let mut map = BTreeMap::clone(map);
            map.remove(tenant);
            map
        });
    }

    pub fn set_tenants_file_error(&self, reason: Option<String>) {
        *self.tenants_file_error.lock().unwrap_or_else(|e| e.into_inner()) =
            reason.map(|reason| Refusal { at: SystemTime::now(), reason });
    }

    pub fn tenants_file_error(&self) -> Option<Refusal> {
        self.tenants_file_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Set once the first scan is done (`/readyz`).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

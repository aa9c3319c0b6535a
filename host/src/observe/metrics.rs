//! Prometheus metrics (SPEC §9). Labels hold tenant, plugin, result, outcome and rule names —
//! never a token or a username — and only for tenants that exist.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantResult {
    pub tenant: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    pub tenant: String,
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginOutcome {
    pub tenant: String,
    pub plugin: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantRule {
    pub tenant: String,
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandoverLabel {
    /// `main` or `probe`.
    pub listener: String,
    /// `gave` (to a successor) or `took` (from a predecessor).
    pub side: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The review outcomes and plugin step results (`chain::Outcome::class`, `StepResult::class`)
/// that [`Meters`] keeps a handle for; any other is counted through its family directly.
const OUTCOMES: [&str; 8] =
    ["authenticated", "refused", "denied", "plugin-failed", "unavailable", "deadline", "overloaded", "internal"];
const STEPS: [&str; 7] = ["skipped", "allow", "deny", "abstain", "unavailable", "failed", "refused"];

/// One plugin call of a review, as the metrics count it.
pub struct CallRecord<'a> {
    pub plugin: &'a str,
    /// `StepResult::class`.
    pub class: &'static str,
    pub warm: bool,
    /// Time to make a fresh instance (zero for a warm one, or none made).
    pub instantiate: std::time::Duration,
    pub duration: std::time::Duration,
}

/// One generation's metric handles, each resolved (label built, family locked) at its first use
/// and then only bumped: a review allocates no label. Kept beside the generation, so a reload
/// starts afresh; a series appears in `/metrics` only once used, as before.
#[derive(Default)]
pub struct Meters {
    reviews: [OnceLock<Counter>; OUTCOMES.len()],
    duration: OnceLock<Histogram>,
    plugins: Vec<(String, PluginMeters)>,
}

#[derive(Default)]
struct PluginMeters {
    calls: [OnceLock<Counter>; STEPS.len()],
    warm: OnceLock<Counter>,
    duration: OnceLock<Histogram>,
}

impl Meters {
    pub fn new(plugins: impl IntoIterator<Item = String>) -> Self {
        Self { plugins: plugins.into_iter().map(|p| (p, PluginMeters::default())).collect(), ..Self::default() }
    }
}

/// 10 µs to ~10 s in 21 doubling buckets: a compiled plugin answers in tens of µs, the review
/// deadline is at most 10 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 21))
}

pub struct Metrics {
    registry: Registry,
    pub reviews: Family<TenantResult, Counter>,
    pub review_duration: Histograms<TenantLabel>,
    pub plugin_calls: Family<PluginOutcome, Counter>,
    pub plugin_duration: Histograms<PluginLabel>,
    pub reloads: Family<TenantResult, Counter>,
    pub plugins_loaded: Family<TenantLabel, Gauge>,
    pub guardrail_violations: Family<TenantRule, Counter>,
    pub generation: Family<TenantLabel, Gauge>,
    /// Requests refused before they reached a tenant (bad body, unknown path...), by HTTP code.
    pub rejected: Family<CodeLabel, Counter>,
    pub queue_wait: Histogram,
    pub instantiation: Histogram,
    pub warm_calls: Family<PluginLabel, Counter>,
    /// By `tls::refusal_reason`.
    pub tls_handshake_failures: Family<ReasonLabel, Counter>,
    /// Listeners handed over to a successor or taken from a predecessor (`--handover`).
    pub handovers: Family<HandoverLabel, Counter>,
    /// Audit lines dropped because the audit log's queue was full (its sink too slow).
    pub audit_dropped: Counter,
    pub decision_cache: Family<LookupLabel, Counter>,
    pub decision_cache_entries: Gauge,
    pub in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            reviews: Family::default(),
            review_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            plugin_calls: Family::default(),
            plugin_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            reloads: Family::default(),
            plugins_loaded: Family::default(),
            guardrail_violations: Family::default(),
            generation: Family::default(),
            rejected: Family::default(),
            queue_wait: latency_histogram(),
            instantiation: latency_histogram(),
            warm_calls: Family::default(),
            tls_handshake_failures: Family::default(),
            handovers: Family::default(),
            audit_dropped: Counter::default(),
            decision_cache: Family::default(),
            decision_cache_entries: Gauge::default(),
            in_flight: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("tollgate_reviews", "TokenReviews answered, by tenant and result", m.reviews.clone());
        registry.register(
            "tollgate_review_duration_seconds",
            "Time to answer a TokenReview",
            m.review_duration.clone(),
        );
        registry.register("tollgate_plugin_calls", "Plugin calls, by outcome", m.plugin_calls.clone());
        registry.register(
            "tollgate_plugin_duration_seconds",
            "Time of one plugin call (instantiate + call)",
            m.plugin_duration.clone(),
        );
        registry.register("tollgate_reloads", "Tenant generation loads, by result", m.reloads.clone());
        registry.register("tollgate_plugins_loaded", "Plugins in the live generation", m.plugins_loaded.clone());
        registry.register(
            "tollgate_guardrail_violations",
            "Grants refused by a host check, by rule",
            m.guardrail_violations.clone(),
        );
        registry.register("tollgate_generation", "The live generation number of each tenant", m.generation.clone());
        registry.register(
            "tollgate_rejected_requests",
            "Requests refused before evaluation, by HTTP code",
            m.rejected.clone(),
        );
        registry.register(
            "tollgate_instantiation_seconds",
            "Time to make a fresh plugin instance (Store + instantiate)",
            m.instantiation.clone(),
        );
        registry.register(
            "tollgate_warm_calls",
            "Plugin calls served by a warm instance (reuse mode)",
            m.warm_calls.clone(),
        );
        registry.register(
            "tollgate_queue_wait_seconds",
            "Time a review waited for an evaluation slot",
            m.queue_wait.clone(),
        );
        registry.register(
            "tollgate_tls_handshake_failures",
            "TLS handshakes refused, by reason (no-client-certificate, untrusted-certificate, invalid-certificate, incompatible, alert-from-client, protocol, closed, timeout, io)",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "tollgate_handovers",
            "Listeners handed over to a successor (side=gave) or taken from a predecessor (side=took), by listener (main, probe)",
            m.handovers.clone(),
        );
        registry.register(
            "tollgate_audit_lines_dropped",
            "Audit lines dropped because the audit log could not keep up (its queue was full)",
            m.audit_dropped.clone(),
        );
        registry.register(
            "tollgate_decision_cache",
            "Reviews answered by the decision cache (hit), by an identical review in flight (coalesced), or evaluated (miss)",
            m.decision_cache.clone(),
        );
        registry.register(
            "tollgate_decision_cache_entries",
            "Decisions held by the cache",
            m.decision_cache_entries.clone(),
        );
        registry.register("tollgate_evaluations_in_flight", "Reviews being evaluated now", m.in_flight.clone());
        Metrics { registry, ..m }
    }

    /// Counts one evaluated review of `tenant`, through its generation's `meters`.
    /// One review: its outcome (and the host rule that refused it, if one did), each plugin
    /// call, and how long it took.
    pub fn record<'a>(
        &self,
        tenant: &str,
        meters: &Meters,
        outcome: &str,
        rule: Option<&str>,
        calls: impl Iterator<Item = CallRecord<'a>>,
        seconds: f64,
    ) {
        let t = || tenant.to_owned();
        let reviews = || self.reviews.get_or_create(&TenantResult { tenant: t(), result: outcome.into() }).clone();
        match OUTCOMES.iter().position(|c| *c == outcome) {
            Some(i) => meters.reviews[i].get_or_init(reviews).inc(),
            None => reviews().inc(),
        };
        meters
            .duration
            .get_or_init(|| self.review_duration.get_or_create(&TenantLabel { tenant: t() }).clone())
            .observe(seconds);
        for call in calls {
            let label = || PluginLabel { tenant: t(), plugin: call.plugin.to_owned() };
            let fresh = PluginMeters::default();
            let plugin = meters.plugins.iter().find(|(name, _)| *name == call.plugin).map_or(&fresh, |(_, m)| m);
            let calls = || {
                let label = PluginOutcome { tenant: t(), plugin: call.plugin.to_owned(), outcome: call.class.into() };
                self.plugin_calls.get_or_create(&label).clone()
            };
            match STEPS.iter().position(|c| *c == call.class) {
                Some(i) => plugin.calls[i].get_or_init(calls).inc(),
                None => calls().inc(),
            };
            if call.warm {
                plugin.warm.get_or_init(|| self.warm_calls.get_or_create(&label()).clone()).inc();
            } else if !call.instantiate.is_zero() {
                self.instantiation.observe(call.instantiate.as_secs_f64());
            }
            if !call.duration.is_zero() {
                plugin
                    .duration
                    .get_or_init(|| self.plugin_duration.get_or_create(&label()).clone())
                    .observe(call.duration.as_secs_f64());
            }
        }
        if let Some(rule) = rule {
            self.guardrail_violations.get_or_create(&TenantRule { tenant: t(), rule: rule.into() }).inc();
        }
    }

    pub fn rejected(&self, code: u16) {
        self.rejected.get_or_create(&CodeLabel { code: code.to_string() }).inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

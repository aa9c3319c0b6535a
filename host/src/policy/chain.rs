//! Chain semantics (SPEC §3): authenticators in order until one decides, then mappers, then the
//! host's checks on the final grant. Synchronous: it runs off the async runtime (see `evaluator`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tollgate_crypto::EcdsaTwin;

use crate::observe::metrics::{CallRecord, Meters};
use crate::observe::scrub::Scrubber;
use crate::plugins::manifest::Role;
use crate::plugins::plugin::{Plugin, unverified_issuer};
use crate::plugins::sandbox::{CallStats, Decision, Failure, Grant, Prior, Review, Sandbox, UserInfo};
use crate::policy::guardrails::{self, Guardrails, Violation};

/// One TokenReview as the chain needs it.
pub struct ReviewInput {
    /// The token as it arrived: what plugins get, byte for byte.
    pub token: String,
    /// For an ES256/ES384 JWS, the token with its signature's other encoding `(r, n - s)`
    /// ([`tollgate_crypto::ecdsa_twin`]): as valid a credential, computed once per review.
    pub twin: Option<EcdsaTwin>,
    pub audiences: Vec<String>,
    pub client: Option<String>,
    pub request_id: String,
}

impl ReviewInput {
    pub fn new(token: String, audiences: Vec<String>, client: Option<String>, request_id: String) -> Self {
        let twin = tollgate_crypto::ecdsa_twin(&token);
        Self { token, twin, audiences, client, request_id }
    }

    /// What the host identifies the token by (audit `token_id`, decision-cache key): the
    /// canonical form of the token and its twin (the low-s one), so the two are one token.
    pub fn identity(&self) -> &str {
        match &self.twin {
            Some(twin) if twin.canonical => &twin.token,
            _ => &self.token,
        }
    }

    /// A scrubber of the token and of its twin.
    pub fn scrubber(&self) -> Scrubber<'_> {
        Scrubber::new(&self.token).with_twin(self.twin.as_ref().map(|t| t.token.as_str()))
    }
}

/// How a review ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A grant that passed every check. `audiences` is `status.audiences` (None = omitted).
    Authenticated { user: UserInfo, audiences: Option<Vec<String>>, expires_at: Option<u64> },
    /// A clean, cacheable denial. `rule` names the host check that refused a grant, if one did.
    Denied { reason: String, rule: Option<&'static str> },
    /// A plugin failed: unauthenticated with `status.error`, so kube-apiserver does not cache it.
    Failed { plugin: String, class: &'static str, message: String },
    /// An issuer could not decide now (503).
    Unavailable { reason: String },
    /// The review's deadline passed (503).
    Deadline,
    /// No evaluation slot freed up within the review's deadline (503).
    Overloaded,
    /// A bug in tollgate itself: unauthenticated with `status.error`, never cached.
    Internal,
}

impl Outcome {
    /// The `result` label of `tollgate_reviews_total` and the audit line's class.
    pub fn class(&self) -> &'static str {
        match self {
            Outcome::Authenticated { .. } => "authenticated",
            Outcome::Denied { rule: Some(_), .. } => "refused",
            Outcome::Denied { .. } => "denied",
            Outcome::Failed { .. } => "plugin-failed",
            Outcome::Unavailable { .. } => "unavailable",
            Outcome::Deadline => "deadline",
            Outcome::Overloaded => "overloaded",
            Outcome::Internal => "internal",
        }
    }
}

/// One tenant's complete, checked set of plugins. Reviews run on one generation from start to
/// end; a reload swaps in a whole new one.
pub struct Generation {
    /// "" is the default tenant.
    pub tenant: String,
    pub number: u64,
    /// In file-name order.
    pub plugins: Vec<Arc<Plugin>>,
    /// The operator's rules it was loaded under (secrets, egress and folder bounds were decided
    /// by them). Reviews are checked against the rules in force, which may be newer.
    pub built_under: Guardrails,
    pub loaded_at: SystemTime,
    /// Its metric handles (resolved once, not per review).
    pub meters: Meters,
}

/// What one plugin did in this review (for `--explain`, metrics and the audit line).
#[derive(Debug, Clone)]
pub struct Step {
    pub plugin: String,
    pub role: Role,
    pub result: StepResult,
    pub duration: Duration,
    /// How the call got its instance (fresh or warm) and what a fresh one cost.
    pub stats: CallStats,
}

#[derive(Debug, Clone)]
pub enum StepResult {
    /// `[match]` did not claim the token.
    Skipped,
    Decided(Decision),
    Failed(Failure),
    /// The plugin decided, but its answer broke the contract or a host check.
    Refused(String),
}

impl StepResult {
    /// The `outcome` label of `tollgate_plugin_calls_total`.
    pub fn class(&self) -> &'static str {
        match self {
            StepResult::Skipped => "skipped",
            StepResult::Decided(Decision::Allow(_)) => "allow",
            StepResult::Decided(Decision::Deny(_)) => "deny",
            StepResult::Decided(Decision::Abstain) => "abstain",
            StepResult::Decided(Decision::Unavailable(_)) => "unavailable",
            StepResult::Failed(_) => "failed",
            StepResult::Refused(_) => "refused",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Verdict {
    pub outcome: Outcome,
    /// The plugin whose decision settled the review (name, digest), if one did.
    pub decided_by: Option<(String, String)>,
    pub steps: Vec<Step>,
}

impl Verdict {
    /// The host rule that refused the grant, if one did (a metric label).
    pub fn rule(&self) -> Option<&'static str> {
        match &self.outcome {
            Outcome::Denied { rule, .. } => *rule,
            _ => None,
        }
    }

    /// Each plugin call, as the metrics count it.
    pub fn calls(&self) -> impl Iterator<Item = CallRecord<'_>> {
        self.steps.iter().map(|s| CallRecord {
            plugin: &s.plugin,
            class: s.result.class(),
            warm: s.stats.warm,
            instantiate: s.stats.instantiate,
            duration: s.duration,
        })
    }
}

/// Runs `generation`'s chain on one review, under `deadline`; the final grant is checked against
/// `rules`, the operator's guardrails in force (which may be newer than the generation).
pub async fn evaluate(
    sandbox: &Sandbox,
    generation: &Generation,
    rules: &Guardrails,
    input: &ReviewInput,
    deadline: Instant,
) -> Verdict {
    let mut run = Run { sandbox, rules, input, deadline, steps: Vec::new(), decided_by: None };
    let outcome = run.chain(generation).await;
    Verdict { outcome, decided_by: run.decided_by, steps: run.steps }
}

struct Run<'a> {
    sandbox: &'a Sandbox,
    rules: &'a Guardrails,
    input: &'a ReviewInput,
    deadline: Instant,
    steps: Vec<Step>,
    decided_by: Option<(String, String)>,
}

impl Run<'_> {
    async fn chain(&mut self, generation: &Generation) -> Outcome {
        let scrubber = self.input.scrubber();
        if self.input.token.is_empty() {
            return denied("the review carries no token");
        }
        let mut review = Review {
            token: self.input.token.clone(),
            audiences: self.input.audiences.clone(),
            tenant: generation.tenant.clone(),
            current: None,
            request_id: self.input.request_id.clone(),
            client: self.input.client.clone(),
            attributes: Vec::new(),
        };

        // 1. Authenticators, in order, until one decides.
        let issuer = std::cell::OnceCell::new();
        let mut unavailable: Option<String> = None;
        let mut granted: Option<(Grant, &Plugin)> = None;
        for plugin in generation.plugins.iter().filter(|p| p.role == Role::Authenticator) {
            if let Some(m) = &plugin.matcher {
                let iss = issuer.get_or_init(|| unverified_issuer(&self.input.token));
                if !m.matches(&self.input.token, iss.as_deref()) {
                    self.record(plugin, StepResult::Skipped, Duration::ZERO, CallStats::default());
                    continue;
                }
            }
            match self.call(plugin, &review).await {
                Err(outcome) => return outcome,
                Ok(Decision::Allow(grant)) => {
                    self.decided_by = Some((plugin.name.clone(), plugin.digest().to_owned()));
                    if guardrails::carries_token(&grant, &scrubber) {
                        // Stop here: mappers must never be shown the token.
                        return refused(Violation {
                            rule: "token-in-grant",
                            detail: format!("{} put the token in its grant", plugin.name),
                        });
                    }
                    granted = Some((grant, plugin));
                    break;
                }
                Ok(Decision::Deny(reason)) => {
                    self.decided_by = Some((plugin.name.clone(), plugin.digest().to_owned()));
                    return Outcome::Denied { reason, rule: None };
                }
                Ok(Decision::Abstain) => {}
                Ok(Decision::Unavailable(reason)) => {
                    unavailable.get_or_insert(format!("{}: {reason}", plugin.name));
                }
            }
        }
        let Some((mut grant, mut by)) = granted else {
            return match unavailable {
                Some(reason) => Outcome::Unavailable { reason },
                None => denied("no authenticator accepted the token"),
            };
        };

        // 2. Mappers, in order, on the grant; they are never shown the token.
        review.token = String::new();
        for plugin in generation.plugins.iter().filter(|p| p.role == Role::Mapper) {
            review.current = Some(Prior { grant: grant.clone(), plugin: by.name.clone() });
            match self.call(plugin, &review).await {
                Err(outcome) => return outcome,
                Ok(Decision::Allow(mapped)) => match merge_mapped(&grant, mapped) {
                    Ok(merged) => {
                        grant = merged;
                        by = plugin;
                    }
                    Err(why) => {
                        if let Some(step) = self.steps.last_mut() {
                            step.result = StepResult::Refused(why.clone());
                        }
                        return failed(plugin, "contract", why);
                    }
                },
                Ok(Decision::Deny(reason)) => {
                    self.decided_by = Some((plugin.name.clone(), plugin.digest().to_owned()));
                    return Outcome::Denied { reason, rule: None };
                }
                Ok(Decision::Abstain) => {}
                Ok(Decision::Unavailable(reason)) => {
                    self.decided_by = Some((plugin.name.clone(), plugin.digest().to_owned()));
                    return Outcome::Unavailable { reason: format!("{}: {reason}", plugin.name) };
                }
            }
        }

        // 3. The host's checks on the final grant.
        let checked = guardrails::identity_checks(&grant, &scrubber)
            .and_then(|()| self.rules.check(&grant))
            .and_then(|()| not_expired(&grant))
            .and_then(|()| guardrails::audiences(&self.input.audiences, &grant));
        match checked {
            Ok(audiences) => Outcome::Authenticated { user: grant.user, audiences, expires_at: grant.expires_at },
            Err(v) => refused(v),
        }
    }

    /// Calls one plugin; `Err` is an outcome that ends the review (a failure or the deadline).
    #[allow(clippy::result_large_err, reason = "one per plugin call, never stored")]
    async fn call(&mut self, plugin: &Plugin, review: &Review) -> Result<Decision, Outcome> {
        let started = Instant::now();
        let (result, stats) = self
            .sandbox
            .call(&plugin.code, &plugin.env, &self.input.request_id, review, self.input.scrubber(), self.deadline)
            .await;
        let elapsed = started.elapsed();
        match result {
            Ok(decision) => {
                self.record(plugin, StepResult::Decided(decision.clone()), elapsed, stats);
                Ok(decision)
            }
            Err(failure) => {
                self.record(plugin, StepResult::Failed(failure.clone()), elapsed, stats);
                self.decided_by = Some((plugin.name.clone(), plugin.digest().to_owned()));
                // No instance slot free: the server is overloaded (503), not the plugin at fault.
                if failure == Failure::Exhausted {
                    return Err(Outcome::Overloaded);
                }
                // Stopped by the review's deadline rather than its own budget: 503, not the
                // plugin's fault.
                if failure == Failure::Deadline && self.deadline.saturating_duration_since(started) < plugin.env.timeout
                {
                    return Err(Outcome::Deadline);
                }
                Err(failed(plugin, failure.class(), failure.to_string()))
            }
        }
    }

    fn record(&mut self, plugin: &Plugin, result: StepResult, duration: Duration, stats: CallStats) {
        self.steps.push(Step { plugin: plugin.name.clone(), role: plugin.role, result, duration, stats });
    }
}

fn denied(reason: &str) -> Outcome {
    Outcome::Denied { reason: reason.to_owned(), rule: None }
}

fn refused(v: Violation) -> Outcome {
    Outcome::Denied { reason: v.detail, rule: Some(v.rule) }
}

fn failed(plugin: &Plugin, class: &'static str, message: String) -> Outcome {
    Outcome::Failed { plugin: plugin.name.clone(), class, message }
}

/// A mapper's grant replaces the current one, but may not widen its audiences (empty keeps the
/// current ones; non-empty must be a subset of the stated ones — and stating audiences where
/// none were stated would bypass kube-apiserver's implicit ones) and keeps the sooner expiry.
fn merge_mapped(current: &Grant, mapped: Grant) -> Result<Grant, String> {
    let audiences = if mapped.audiences.is_empty() {
        current.audiences.clone()
    } else if mapped.audiences.iter().all(|a| current.audiences.contains(a)) {
        mapped.audiences
    } else {
        return Err("the mapper widened the grant's audiences".into());
    };
    let expires_at = match (current.expires_at, mapped.expires_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(Grant { user: mapped.user, audiences, expires_at })
}

fn not_expired(grant: &Grant) -> Result<(), Violation> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    match grant.expires_at {
        Some(t) if t <= now => Err(Violation { rule: "expired", detail: format!("the grant expired at {t}") }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(aud: &[&str], exp: Option<u64>) -> Grant {
        Grant {
            user: UserInfo { username: "u".into(), uid: String::new(), groups: vec![], extra: vec![] },
            audiences: aud.iter().map(|a| a.to_string()).collect(),
            expires_at: exp,
        }
    }

    #[test]
    fn a_token_and_its_ecdsa_twin_have_one_identity_and_both_are_scrubbed() {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        // r || s under an ES256 header, s = n - 1 (high) and 1 (its twin): no key needed.
        let n_minus_1 = hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632550").unwrap();
        let one = [vec![0u8; 31], vec![1]].concat();
        let input = format!("{}.{}", b64(br#"{"alg":"ES256"}"#), b64(br#"{"sub":"alice"}"#));
        let jws = |s: &[u8]| format!("{input}.{}", b64(&[vec![7u8; 32], s.to_vec()].concat()));
        let (high, low) = (jws(&n_minus_1), jws(&one));
        let review = |t: &str| ReviewInput::new(t.to_owned(), vec![], None, "r".into());
        let (h, l) = (review(&high), review(&low));
        assert_eq!(h.twin.as_ref().map(|t| (t.token.as_str(), t.canonical)), Some((low.as_str(), true)));
        assert_eq!(l.twin.as_ref().map(|t| (t.token.as_str(), t.canonical)), Some((high.as_str(), false)));
        assert_eq!((l.identity(), h.identity()), (low.as_str(), low.as_str()));
        for (input, other) in [(&h, &low), (&l, &high)] {
            assert!(input.scrubber().contains_token(other), "either form's review scrubs the other");
            assert_eq!(input.scrubber().clean(&format!("a {other} b"), 1000), "a [token] b");
        }
        let opaque = review("team-qa-0123abcd");
        assert_eq!((opaque.identity(), opaque.twin.is_none()), ("team-qa-0123abcd", true));
    }

    #[test]
    fn mappers_cannot_widen_audiences() {
        assert_eq!(merge_mapped(&grant(&["a", "b"], None), grant(&[], None)).unwrap().audiences, vec!["a", "b"]);
        assert_eq!(merge_mapped(&grant(&["a", "b"], None), grant(&["b"], None)).unwrap().audiences, vec!["b"]);
        assert!(merge_mapped(&grant(&["a"], None), grant(&["a", "c"], None)).is_err());
        assert!(merge_mapped(&grant(&[], None), grant(&["a"], None)).is_err());
    }

    #[test]
    fn mappers_keep_the_sooner_expiry() {
        assert_eq!(merge_mapped(&grant(&[], Some(10)), grant(&[], Some(20))).unwrap().expires_at, Some(10));
        assert_eq!(merge_mapped(&grant(&[], Some(30)), grant(&[], Some(20))).unwrap().expires_at, Some(20));
        assert_eq!(merge_mapped(&grant(&[], None), grant(&[], Some(20))).unwrap().expires_at, Some(20));
        assert_eq!(merge_mapped(&grant(&[], Some(5)), grant(&[], None)).unwrap().expires_at, Some(5));
    }
}

//! A manifest's `[[test]]` vectors: the plugin alone (no guardrails, no chain) on fixed reviews.
//! They run at every load and reload, so a plugin that fails its own vectors never goes live.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::observe::scrub::Scrubber;
use crate::plugins::manifest::{Expect, GrantSpec, TestVector};
use crate::plugins::plugin::Plugin;
use crate::plugins::sandbox::crypto::KeyCache;
use crate::plugins::sandbox::kv::{KvLimits, KvStore};
use crate::plugins::sandbox::{ConfigUse, Decision, Grant, PluginEnv, Prior, Review, Sandbox, UserInfo};

/// What a plugin's vectors showed.
#[derive(Debug, Default)]
pub struct VectorRun {
    /// One line per failing vector.
    pub failures: Vec<String>,
    /// Every `[config]` key the plugin asked for in any vector (with the vector's overlay).
    pub config: ConfigUse,
}

/// Runs every vector. Each runs under the plugin's own deadline, whatever it waits for: a
/// vector can delay a load by at most its timeout.
pub fn run_all(sandbox: &Sandbox, plugin: &Plugin) -> VectorRun {
    crate::plugins::sandbox::block_on(async {
        let mut out = VectorRun::default();
        for (i, t) in plugin.tests.iter().enumerate() {
            let (got, config) = decide(sandbox, plugin, i, t, true).await;
            for (key, found) in config.reads {
                out.config.reads.retain(|(k, _)| *k != key);
                out.config.reads.push((key, found));
            }
            out.config.listed |= config.listed;
            if let Err(e) = got.and_then(|d| judge(t, &d)) {
                out.failures.push(format!("{}: {e}", t.label(i)));
            }
        }
        out
    })
}

/// What the vectors say about the live `[config]`, from what they set and what the plugin read:
/// - a key every vector sets and `[config]` lacks is one the live plugin never sees: most often
///   a typo in `[config]` (the vectors pass, and live every review abstains); a key only some
///   vectors set is an optional feature under test;
/// - a key the plugin reads that `[config]` lacks while holding a near miss: a typo again;
///   a key read and absent with nothing like it is an option left at its default
///   (`review --explain` shows it);
/// - a key `[config]` holds that the plugin never read.
pub fn config_warnings(plugin: &Plugin, used: &ConfigUse) -> Vec<String> {
    let live = &plugin.env.config;
    let mut warnings = Vec::new();
    let Some((first, rest)) = plugin.tests.split_first() else { return warnings };
    let all_set: Vec<&String> = first
        .config
        .keys()
        .filter(|k| !live.contains_key(*k) && rest.iter().all(|t| t.config.contains_key(*k)))
        .collect();
    for key in &all_set {
        warnings.push(format!(
            "every [[test]] vector sets config key {key:?}, which [config] lacks: live, the plugin never sees it{}",
            near(live.keys(), key, "[config] has")
        ));
    }
    for (key, _) in used.reads.iter().filter(|(k, _)| !live.contains_key(k) && !all_set.contains(&k)) {
        let hint = near(live.keys(), key, "[config] has");
        if !hint.is_empty() {
            warnings
                .push(format!("the plugin reads config key {key:?}, which [config] lacks: live it gets none{hint}"));
        }
    }
    if !used.listed {
        let read: Vec<&String> = used.reads.iter().map(|(k, _)| k).collect();
        for key in live.keys().filter(|k| !read.contains(k)) {
            warnings.push(format!(
                "[config] key {key:?} was never read in the {} [[test]] vectors{}",
                plugin.tests.len(),
                near(read.iter().copied(), key, "the plugin reads")
            ));
        }
    }
    warnings
}

/// ` (HAS "teams": a typo?)` when `key` is a near miss of one of `keys`.
fn near<'a>(mut keys: impl Iterator<Item = &'a String>, key: &str, has: &str) -> String {
    keys.find(|c| edit_distance(c, key) <= 2 && c.as_str() != key)
        .map_or(String::new(), |c| format!(" ({has} {c:?}: a typo?)"))
}

/// Levenshtein distance, for "did you mean" hints on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Vectors whose token the plugin accepts under its live `[config]` (without the vector's
/// overlay): most likely a real credential written into the manifest. A vector without an
/// overlay already ran under the live `[config]` (and passed), so only the others run again,
/// muted: their log lines were written the first time.
pub fn live_secret_warnings(sandbox: &Sandbox, plugin: &Plugin) -> Vec<String> {
    crate::plugins::sandbox::block_on(async {
        let mut warnings = Vec::new();
        for (i, t) in plugin.tests.iter().enumerate().filter(|(_, t)| !t.token.is_empty()) {
            let accepted = if t.config.is_empty() {
                t.expect == Expect::Allow
            } else {
                matches!(decide(sandbox, plugin, i, t, false).await.0, Ok(Decision::Allow(_)))
            };
            if accepted {
                warnings.push(format!(
                    "{}: its token is accepted under the live [config]; is a real credential in the manifest? \
                     (give the vector its own `config = {{ ... }}` overlay instead)",
                    t.label(i)
                ));
            }
        }
        warnings
    })
}

/// Whether the decision is what the vector expects.
fn judge(t: &TestVector, got: &Decision) -> Result<(), String> {
    let kind = match got {
        Decision::Allow(_) => Expect::Allow,
        Decision::Deny(_) => Expect::Deny,
        Decision::Abstain => Expect::Abstain,
        Decision::Unavailable(_) => Expect::Unavailable,
    };
    if kind != t.expect {
        return Err(format!("expected {}, got {}", t.expect.as_str(), describe(got)));
    }
    match got {
        Decision::Allow(g) => compare_grant(t, g),
        Decision::Deny(r) | Decision::Unavailable(r) => match &t.reason {
            Some(want) if !r.contains(want.as_str()) => Err(format!("reason {r:?} does not contain {want:?}")),
            _ => Ok(()),
        },
        Decision::Abstain => Ok(()),
    }
}

async fn decide(
    sandbox: &Sandbox,
    plugin: &Plugin,
    index: usize,
    t: &TestVector,
    overlay: bool,
) -> (Result<Decision, String>, ConfigUse) {
    let mut config = plugin.env.config.clone();
    if overlay {
        config.extend(t.config.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    // Vectors always run in fresh instances, never in (or into) a warm pool; with no outbound
    // HTTP (an issuer outage must not refuse a good plugin), a cache of their own (empty, so
    // vectors neither see nor fill the live one) and the vector's wall clock.
    let env = Arc::new(PluginEnv {
        config,
        warm: None,
        vector: true,
        clock: t.now,
        // The live-config pass runs vectors already run once.
        mute: !overlay,
        kv: Arc::new(KvStore::new(KvLimits::DEFAULT)),
        keys: KeyCache::new(),
        ..PluginEnv::clone(&plugin.env)
    });
    let review = Review {
        token: t.token.clone(),
        audiences: t.audiences.clone(),
        tenant: plugin.env.tenant.clone(),
        current: t.current.as_ref().map(prior),
        request_id: format!("test-{}", index + 1),
        client: t.client.clone(),
        attributes: vec![],
    };
    let deadline = Instant::now() + env.timeout;
    let twin = tollgate_crypto::ecdsa_twin(&t.token).map(|t| t.token);
    let scrub = Scrubber::new(&t.token).with_twin(twin.as_deref());
    let (decision, stats) = sandbox.call(&plugin.code, &env, &review.request_id, &review, scrub, deadline).await;
    (decision.map_err(|f| format!("the plugin {f}")), stats.config)
}

fn prior(spec: &GrantSpec) -> Prior {
    Prior {
        grant: Grant {
            user: UserInfo {
                username: spec.username.clone(),
                uid: spec.uid.clone(),
                groups: spec.groups.clone(),
                extra: spec.extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            },
            audiences: spec.audiences.clone(),
            expires_at: spec.expires_at,
        },
        plugin: spec.plugin.clone().unwrap_or_else(|| "test".into()),
    }
}

fn compare_grant(t: &TestVector, g: &Grant) -> Result<(), String> {
    let u = &g.user;
    let mut diffs = Vec::new();
    field(&mut diffs, "username", t.username.as_ref(), &u.username);
    field(&mut diffs, "uid", t.uid.as_ref(), &u.uid);
    field(&mut diffs, "groups", t.groups.as_ref(), &u.groups);
    field(&mut diffs, "extra", t.extra.as_ref(), &merged_extra(&u.extra));
    field(&mut diffs, "audiences", t.grant_audiences.as_ref(), &g.audiences);
    field(&mut diffs, "expires_at", t.expires_at.map(Some).as_ref(), &g.expires_at);
    if diffs.is_empty() { Ok(()) } else { Err(diffs.join(", ")) }
}

/// Notes a difference when the vector states `want` and the grant says otherwise.
fn field<T: PartialEq + std::fmt::Debug>(diffs: &mut Vec<String>, what: &str, want: Option<&T>, got: &T) {
    if let Some(want) = want
        && want != got
    {
        diffs.push(format!("{what} {got:?}, expected {want:?}"));
    }
}

/// Extra with duplicate keys merged, in order (SPEC §2).
pub fn merged_extra(extra: &[(String, Vec<String>)]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, vs) in extra {
        out.entry(k.clone()).or_default().extend(vs.iter().cloned());
    }
    out
}

/// A decision in one short line, for `check`, `review --explain` and vector failures.
pub fn describe(d: &Decision) -> String {
    match d {
        Decision::Allow(g) => format!("allow(username={:?}, groups={:?})", g.user.username, g.user.groups),
        Decision::Deny(r) => format!("deny({r:?})"),
        Decision::Abstain => "abstain".into(),
        Decision::Unavailable(r) => format!("unavailable({r:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("username", "usernme"), 1);
        assert_eq!(edit_distance("tokens", "tokns"), 1);
        assert_eq!(edit_distance("abc", "xyz"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
    }
}

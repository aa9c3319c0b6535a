//! A plugin's manifest: `NAME.toml` beside `NAME.wasm` (SPEC §4).
//!
//! Unknown keys are refused, not ignored: a misspelt `rol = "mapper"` silently running a mapper
//! as an authenticator is the kind of mistake a security component must catch at load.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Authenticator,
    Mapper,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Authenticator => "authenticator",
            Role::Mapper => "mapper",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub role: Role,
    #[serde(default, rename = "match")]
    pub matcher: Option<MatchSpec>,
    #[serde(default)]
    pub limits: LimitsSpec,
    #[serde(default)]
    pub instances: InstancesSpec,
    /// String values only: what `host.config` returns.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Secrets read from files at load (a mounted Kubernetes Secret), `host.config` key -> path
    /// relative to the tenant's folder (or absolute, inside a `secret_dirs` entry of the
    /// tenants file). Never in the manifest text, never logged, scrubbed from plugin output.
    #[serde(default)]
    pub secret_files: BTreeMap<String, String>,
    /// Where the plugin may send HTTP requests: `scheme://host[:port]`, exact. None: nowhere.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub outbound: OutboundSpec,
    #[serde(default)]
    pub kv: KvSpec,
    #[serde(default, rename = "test")]
    pub tests: Vec<TestVector>,
}

/// `[outbound]`: how the plugin's requests are made (with `allowed_outbound_hosts`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundSpec {
    /// A PEM file of CA certificates, then the only trust anchors for https (else the webpki
    /// roots). Resolved like `secret_files`.
    pub ca_file: Option<String>,
    /// Cap on one response body (default 1024 KiB, at most 16 MiB).
    pub max_response_kib: Option<u64>,
    /// Requests of this plugin in flight at once, across its reviews (default 8).
    pub max_concurrent_requests: Option<usize>,
}

/// `[kv]`: bounds of the plugin's cache (`tollgate:policy/kv`).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvSpec {
    /// Default 1024, at most 65536.
    pub max_entries: Option<usize>,
    /// Keys and values together; default 1024 KiB, at most 16 MiB.
    pub max_kib: Option<usize>,
}

/// Which tokens an authenticator is shown. A routing hint, never a verification.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(default)]
    pub token_prefix: Vec<String>,
    /// Compared with `iss` of the *unverified* JWT payload.
    #[serde(default)]
    pub jwt_issuer: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    pub timeout_ms: Option<u64>,
    pub memory_mib: Option<u64>,
}

/// `[instances]`: how a plugin gets its instances. A fresh one per review is the default; a heavy
/// runtime (Python, JavaScript) may opt into warm instances, accepting that its state persists
/// between the reviews of this one plugin.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancesSpec {
    #[serde(default)]
    pub reuse: bool,
    /// Reviews one warm instance serves before it is discarded (default 1000).
    pub max_uses: Option<u32>,
    /// Warm instances kept between reviews (default 4, at most 64).
    pub max_idle: Option<usize>,
    /// Seconds a warm instance may wait for its next review before it is discarded (default
    /// 60, at most 3600): an idle instance holds an instance slot and its memory.
    pub idle_seconds: Option<u64>,
}

/// What a vector expects the plugin to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
    Abstain,
    Unavailable,
}

impl Expect {
    pub fn as_str(self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
            Expect::Abstain => "abstain",
            Expect::Unavailable => "unavailable",
        }
    }
}

/// A `[[test]]` vector: the plugin alone (no guardrails, no other plugins) on one review.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestVector {
    pub name: Option<String>,
    // --- the review ---
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The grant so far (mappers only).
    pub current: Option<GrantSpec>,
    /// Overlaid on the manifest's `[config]`, so a vector need not hold a live secret.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    pub client: Option<String>,
    /// The wall clock the plugin sees (unix seconds), so that a vector with a real JWT never
    /// expires. Vectors never make outbound requests, whatever the manifest grants.
    pub now: Option<u64>,
    // --- the expectation ---
    pub expect: Expect,
    pub username: Option<String>,
    pub uid: Option<String>,
    pub groups: Option<Vec<String>>,
    pub extra: Option<BTreeMap<String, Vec<String>>>,
    /// The audiences the grant states.
    pub grant_audiences: Option<Vec<String>>,
    pub expires_at: Option<u64>,
    /// A substring of the deny or unavailable reason.
    pub reason: Option<String>,
}

/// A grant written in a manifest (a mapper vector's `current`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    pub username: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub expires_at: Option<u64>,
    /// The plugin that made it (default "test").
    pub plugin: Option<String>,
}

impl TestVector {
    /// How `check` and load errors name this vector.
    pub fn label(&self, index: usize) -> String {
        match &self.name {
            Some(n) => format!("test {} ({n})", index + 1),
            None => format!("test {}", index + 1),
        }
    }
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Self> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| {
            // The message and the line, not toml's snippet of the file: keep errors one line.
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(line) => anyhow::anyhow!("line {line}: {}", e.message().trim()),
                None => anyhow::anyhow!("{}", e.message().trim()),
            }
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<()> {
        if let Some(m) = &self.matcher {
            if self.role == Role::Mapper {
                bail!("[match] is for authenticators: a mapper sees no token");
            }
            if m.token_prefix.is_empty() && m.jwt_issuer.is_empty() {
                bail!("[match] names neither token_prefix nor jwt_issuer (leave it out to see every token)");
            }
            if m.token_prefix.iter().chain(&m.jwt_issuer).any(String::is_empty) {
                bail!("[match] holds an empty string, which would match every token");
            }
        }
        if self.limits.timeout_ms == Some(0) || self.limits.memory_mib == Some(0) {
            bail!("[limits] values must be positive");
        }
        if let Some(key) = self.secret_files.keys().find(|k| self.config.contains_key(*k)) {
            bail!("{key:?} is both in [config] and in secret_files");
        }
        if self.secret_files.values().any(String::is_empty) {
            bail!("secret_files: a path is empty");
        }
        for entry in &self.allowed_outbound_hosts {
            crate::plugins::sandbox::outbound::Destination::parse_allowed(entry)?;
        }
        let o = &self.outbound;
        if self.allowed_outbound_hosts.is_empty()
            && (o.ca_file.is_some() || o.max_response_kib.is_some() || o.max_concurrent_requests.is_some())
        {
            bail!("[outbound] applies with allowed_outbound_hosts");
        }
        if o.max_response_kib == Some(0) || o.max_concurrent_requests.is_some_and(|n| n == 0 || n > 256) {
            bail!("[outbound] max_response_kib must be positive and max_concurrent_requests between 1 and 256");
        }
        if o.max_response_kib.is_some_and(|k| k > crate::plugins::sandbox::outbound::MAX_RESPONSE_BYTES >> 10) {
            bail!(
                "[outbound] max_response_kib is at most {}",
                crate::plugins::sandbox::outbound::MAX_RESPONSE_BYTES >> 10
            );
        }
        let max = crate::plugins::sandbox::kv::KvLimits::MAX;
        if self.kv.max_entries.is_some_and(|n| n == 0 || n > max.max_entries)
            || self.kv.max_kib.is_some_and(|k| k == 0 || k > max.max_bytes >> 10)
        {
            bail!("[kv] max_entries must be 1 to {} and max_kib 1 to {}", max.max_entries, max.max_bytes >> 10);
        }
        let i = &self.instances;
        if !i.reuse && (i.max_uses.is_some() || i.max_idle.is_some() || i.idle_seconds.is_some()) {
            bail!("[instances] max_uses, max_idle and idle_seconds apply with reuse = true");
        }
        if i.max_uses == Some(0) || i.max_idle.is_some_and(|n| n == 0 || n > 64) {
            bail!("[instances] max_uses must be positive and max_idle between 1 and 64");
        }
        if i.idle_seconds.is_some_and(|s| s == 0 || s > 3600) {
            bail!("[instances] idle_seconds must be between 1 and 3600");
        }
        for (i, t) in self.tests.iter().enumerate() {
            let label = t.label(i);
            match self.role {
                Role::Mapper if t.current.is_none() => {
                    bail!("{label}: a mapper vector needs `current` (the grant to map)")
                }
                Role::Mapper if !t.token.is_empty() => {
                    bail!("{label}: mappers get no token; leave `token` out")
                }
                Role::Authenticator if t.current.is_some() => {
                    bail!("{label}: `current` is for mapper vectors")
                }
                _ => {}
            }
            let grant_fields = t.username.is_some()
                || t.uid.is_some()
                || t.groups.is_some()
                || t.extra.is_some()
                || t.grant_audiences.is_some()
                || t.expires_at.is_some();
            if t.expect != Expect::Allow && grant_fields {
                bail!("{label}: username/uid/groups/extra/grant_audiences/expires_at describe an allow");
            }
            if t.reason.is_some() && !matches!(t.expect, Expect::Deny | Expect::Unavailable) {
                bail!("{label}: `reason` describes a deny or unavailable");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::parse(
            r#"
            role = "authenticator"
            [match]
            token_prefix = ["tg_"]
            [limits]
            timeout_ms = 50
            [config]
            tokens = "abc alice"
            [[test]]
            token = "tg_x"
            config = { tokens = "def bob" }
            expect = "allow"
            username = "bob"
            groups = ["dev"]
            [[test]]
            token = "nope"
            expect = "abstain"
            "#,
        )
        .unwrap();
        assert_eq!(m.tests.len(), 2);
        assert_eq!(m.limits.timeout_ms, Some(50));
        assert_eq!(m.matcher.unwrap().token_prefix, vec!["tg_"]);
    }

    #[test]
    fn refuses_unknown_keys_and_wrong_shapes() {
        assert!(Manifest::parse("rol = \"mapper\"").is_err());
        assert!(Manifest::parse("role = \"judge\"").is_err());
        assert!(Manifest::parse("[config]\nport = 8080").is_err(), "config values are strings");
        assert!(Manifest::parse("role = \"mapper\"\n[match]\ntoken_prefix=[\"x\"]").is_err());
        assert!(Manifest::parse("[match]\ntoken_prefix=[]").is_err());
        assert!(Manifest::parse("[match]\ntoken_prefix=[\"\"]").is_err());
        assert!(Manifest::parse("[[test]]\nexpect = \"deny\"\nusername = \"x\"").is_err());
        assert!(Manifest::parse("role = \"mapper\"\n[[test]]\nexpect = \"abstain\"").is_err());
        assert!(Manifest::parse("[[test]]\nexpect = \"abstain\"\ncurrent = { username = \"x\" }").is_err());
        assert!(Manifest::parse("[instances]\nmax_uses = 5").is_err(), "max_uses without reuse");
        assert!(Manifest::parse("[instances]\nreuse = true\nmax_idle = 0").is_err());
        assert!(Manifest::parse("[instances]\nreuse = true\nmax_idle = 4\nmax_uses = 100").is_ok());
        assert!(Manifest::parse("allowed_outbound_hosts = [\"idp.example.com\"]").is_err(), "no scheme");
        assert!(Manifest::parse("allowed_outbound_hosts = [\"https://idp/x\"]").is_err(), "a path");
        assert!(Manifest::parse("[outbound]\nca_file = \"ca.pem\"").is_err(), "no host to trust it for");
        assert!(Manifest::parse("secret_files = { a = \"s\" }\n[config]\na = \"x\"").is_err());
        assert!(Manifest::parse("[kv]\nmax_entries = 0").is_err());
        let m = Manifest::parse(
            "allowed_outbound_hosts = [\"https://idp.example.com\", \"http://127.0.0.1:8080\"]\n\
             secret_files = { client_secret = \".secrets/client\" }\n[outbound]\nca_file = \"ca.pem\"\n\
             [[test]]\ntoken = \"t\"\nnow = 1700000000\nexpect = \"abstain\"",
        )
        .unwrap();
        assert_eq!(m.tests[0].now, Some(1_700_000_000));
    }
}

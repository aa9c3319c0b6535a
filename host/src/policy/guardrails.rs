//! What the host enforces on every grant, whatever the plugins say.
//!
//! Three layers: [`GrantLimits`] bound what a plugin may return at all (a breach is a plugin
//! failure); [`identity_checks`] refuse grants no webhook should ever make; [`Guardrails`] are the
//! operator's per-tenant rules from the tenants file. kube-apiserver passes user info through
//! unchecked, so these checks are the last line of defence.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::observe::scrub::Scrubber;
use crate::plugins::loader::LoadRules;
use crate::policy::values::{ClientIdentity, Dn, Grant, grant_strings};

/// A refused grant: the rule (audit line, metric label) and what broke it (audit line only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub detail: String,
}

impl Violation {
    fn new(rule: &'static str, detail: impl Into<String>) -> Self {
        Self { rule, detail: detail.into() }
    }
}

/// Identities kube-apiserver itself assigns to requests it could not authenticate.
const RESERVED_IDENTITIES: [&str; 2] = ["system:anonymous", "system:unauthenticated"];

/// Extra keys kube-apiserver sets itself (bound service-account token claims, credential ids).
const RESERVED_EXTRA_PREFIX: &str = "authentication.kubernetes.io/";

/// True when the grant carries the review's token anywhere (tokens of 8 bytes or more).
pub fn carries_token(grant: &Grant, scrubber: &Scrubber) -> bool {
    grant_strings(grant).any(|s| scrubber.contains_token(s))
}

/// Checks no tenant can opt out of.
pub fn identity_checks(grant: &Grant, scrubber: &Scrubber) -> Result<(), Violation> {
    let u = &grant.user;
    if u.username.is_empty() {
        return Err(Violation::new("empty-username", "the grant has an empty username"));
    }
    if carries_token(grant, scrubber) {
        return Err(Violation::new("token-in-grant", "the grant carries the token itself"));
    }
    if let Some(s) = grant_strings(grant).find(|s| s.chars().any(char::is_control)) {
        return Err(Violation::new("control-character", format!("{:?} holds a control character", s)));
    }
    for name in std::iter::once(&u.username).chain(&u.groups) {
        if RESERVED_IDENTITIES.contains(&name.as_str()) {
            return Err(Violation::new("reserved-identity", format!("{name} is kube-apiserver's own")));
        }
    }
    if let Some((key, _)) = u.extra.iter().find(|(k, _)| k.to_ascii_lowercase().starts_with(RESERVED_EXTRA_PREFIX)) {
        return Err(Violation::new("reserved-extra", format!("extra key {key} is kube-apiserver's own")));
    }
    Ok(())
}

/// The operator's rules for one tenant, from the tenants file (never from the tenant's folder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guardrails {
    /// Every username must start with it ("" = any).
    pub username_prefix: String,
    /// Glob patterns (`*` = any run of characters) every group must match; `None` = any group.
    pub allowed_groups: Option<Vec<String>>,
    /// Exact `system:` names a grant may carry anyway (logged loudly at load).
    pub allow_system: BTreeSet<String>,
    /// Verified mTLS subjects allowed to call this tenant ([`ClientIdentity::matches`]);
    /// `None` = any caller.
    pub clients: Option<Vec<Dn>>,
    /// Directories (besides the tenant's own folder) where its manifests' `secret_files` and
    /// `[outbound] ca_file` may point: e.g. a Kubernetes Secret mounted for this tenant.
    pub secret_dirs: Vec<std::path::PathBuf>,
    /// The only `allowed_outbound_hosts` this tenant's manifests may name (exact entries,
    /// compared as scheme, host and port). `None`: a named tenant may name none; the default
    /// tenant (the operator's own folder) any public host. An internal literal (loopback,
    /// private, link-local, metadata) is allowed only when this list names it.
    pub outbound_hosts: Option<Vec<String>>,
    /// What one scan of the tenant's folder may hold.
    pub folder: FolderLimits,
}

/// Bounds on a tenant's folder: a hostile folder cannot make a load take unbounded memory or
/// time. Overridable per tenant in the tenants file (`max_plugins`, `max_total_mib`,
/// `max_vectors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FolderLimits {
    /// Plugins in one generation.
    pub plugins: usize,
    /// Bytes of all its components and manifests together.
    pub total_bytes: u64,
    /// `[[test]]` vectors over all its manifests (each one is a sandbox call at every load).
    pub vectors: usize,
}

impl FolderLimits {
    /// A chain of 32 plugins is far longer than any policy needs (each one adds latency);
    /// 256 MiB holds a dozen Python components (~18 MB each); 1,024 vectors run in a few
    /// seconds even on the Python runtime.
    pub const DEFAULT: FolderLimits = FolderLimits { plugins: 32, total_bytes: 256 << 20, vectors: 1024 };
}

/// The prefix a tenant's usernames and groups get when the tenants file names none. Derived
/// from the folder's name, so it must never match a well-known name: kubeadm binds
/// `kubeadm:cluster-admins` to cluster-admin, and `system:`, `oidc:`, `eks:` are taken too.
pub fn default_prefix(tenant: &str) -> String {
    format!("tollgate:{tenant}:")
}

/// One tenant's entry in the tenants file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailSpec {
    pub username_prefix: Option<String>,
    pub allowed_groups: Option<Vec<String>>,
    #[serde(default)]
    pub allow_system: Vec<String>,
    pub clients: Option<Vec<String>>,
    #[serde(default)]
    pub secret_dirs: Vec<std::path::PathBuf>,
    pub outbound_hosts: Option<Vec<String>>,
    pub max_plugins: Option<usize>,
    pub max_total_mib: Option<u64>,
    pub max_vectors: Option<usize>,
    /// Plugins from OCI registries, beside the folder's (not a guardrail: where plugins come
    /// from; `tenants::remote` pulls and verifies them).
    #[serde(default)]
    pub oci: Vec<crate::plugins::oci::SourceSpec>,
}

impl Guardrails {
    /// What the plugin loader needs of these rules.
    pub fn load_rules(&self) -> LoadRules<'_> {
        LoadRules {
            secret_dirs: &self.secret_dirs,
            outbound_hosts: self.outbound_hosts.as_deref(),
            max_vectors: self.folder.vectors,
        }
    }

    /// The default tenant's rules when the tenants file says nothing: no `system:` identity.
    pub fn default_tenant() -> Self {
        Self::from_spec("", &GuardrailSpec::default())
    }

    /// Rules for `tenant` ("" = the default tenant) from its spec, defaults filled in: a named
    /// tenant's usernames start with `tollgate:<tenant>:` and its groups match
    /// `tollgate:<tenant>:*` ([`default_prefix`]).
    pub fn from_spec(tenant: &str, spec: &GuardrailSpec) -> Self {
        let (prefix, groups) = if tenant.is_empty() {
            (String::new(), None)
        } else {
            let prefix = default_prefix(tenant);
            (prefix.clone(), Some(vec![format!("{prefix}*")]))
        };
        let d = FolderLimits::DEFAULT;
        Self {
            username_prefix: spec.username_prefix.clone().unwrap_or(prefix),
            allowed_groups: spec.allowed_groups.clone().or(groups),
            allow_system: spec.allow_system.iter().cloned().collect(),
            // `TenantsFile::parse` refused every entry that is not a name; one that slipped
            // through would name nobody (the list only narrows).
            clients: spec.clients.as_ref().map(|list| list.iter().filter_map(|c| Dn::parse(c).ok()).collect()),
            secret_dirs: spec.secret_dirs.clone(),
            outbound_hosts: spec.outbound_hosts.clone(),
            folder: FolderLimits {
                plugins: spec.max_plugins.unwrap_or(d.plugins),
                total_bytes: spec.max_total_mib.map_or(d.total_bytes, |m| m.saturating_mul(1 << 20)),
                vectors: spec.max_vectors.unwrap_or(d.vectors),
            },
        }
    }

    /// Whether a generation loaded under `other` was loaded under these rules too: what a load
    /// decides (secrets, egress, folder bounds) is the same. When it is not, the generation's
    /// plugins hold grants the operator has since withdrawn, and must not run.
    pub fn same_load_rules(&self, other: &Guardrails) -> bool {
        self.secret_dirs == other.secret_dirs
            && self.outbound_hosts == other.outbound_hosts
            && self.folder == other.folder
    }

    pub fn check(&self, grant: &Grant) -> Result<(), Violation> {
        let u = &grant.user;
        for name in std::iter::once(&u.username).chain(&u.groups) {
            if name.starts_with("system:") && !self.allow_system.contains(name) {
                return Err(Violation::new(
                    "system-identity",
                    format!("{name} is a system: identity not listed in allow_system"),
                ));
            }
        }
        if !u.username.starts_with(&self.username_prefix) && !self.allow_system.contains(&u.username) {
            return Err(Violation::new(
                "username-prefix",
                format!("username {} lacks the prefix {:?}", u.username, self.username_prefix),
            ));
        }
        if let Some(patterns) = &self.allowed_groups {
            for g in &u.groups {
                if !self.allow_system.contains(g) && !patterns.iter().any(|p| glob_match(p, g)) {
                    return Err(Violation::new(
                        "group-not-allowed",
                        format!("group {g} matches no allowed_groups pattern"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether a caller (its verified client certificate, if any) may use this tenant.
    pub fn admits(&self, client: Option<&ClientIdentity>) -> bool {
        match (&self.clients, client) {
            (None, _) => true,
            (Some(list), Some(identity)) => list.iter().any(|c| identity.matches(c)),
            (Some(_), None) => false,
        }
    }
}

/// `status.audiences` for a grant (SPEC §3): the intersection in spec order when both sides
/// state audiences, `None` (omitted) otherwise; an empty intersection is a denial.
pub fn audiences(spec: &[String], grant: &Grant) -> Result<Option<Vec<String>>, Violation> {
    if spec.is_empty() || grant.audiences.is_empty() {
        return Ok(None);
    }
    let mut both: Vec<String> = Vec::new();
    for a in spec {
        if grant.audiences.contains(a) && !both.contains(a) {
            both.push(a.clone());
        }
    }
    if both.is_empty() {
        return Err(Violation::new("audience-mismatch", "the token is valid for none of the requested audiences"));
    }
    Ok(Some(both))
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::values::{GrantLimits, UserInfo};

    fn grant(username: &str, groups: &[&str]) -> Grant {
        Grant {
            user: UserInfo {
                username: username.into(),
                uid: String::new(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                extra: vec![],
            },
            audiences: vec![],
            expires_at: None,
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("acme:*", "acme:dev"));
        assert!(glob_match("acme:*", "acme:"));
        assert!(!glob_match("acme:*", "acmex:dev"));
        assert!(glob_match("*:admins", "acme:admins"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXbY"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("ab*ab", "ab"));
    }

    #[test]
    fn default_tenant_refuses_system_identities_unless_listed() {
        let g = Guardrails::default_tenant();
        assert_eq!(g.check(&grant("alice", &["system:masters"])).unwrap_err().rule, "system-identity");
        assert_eq!(g.check(&grant("system:admin", &[])).unwrap_err().rule, "system-identity");
        assert!(g.check(&grant("alice", &["dev"])).is_ok());
        let spec = GuardrailSpec { allow_system: vec!["system:masters".into()], ..Default::default() };
        assert!(Guardrails::from_spec("", &spec).check(&grant("alice", &["system:masters"])).is_ok());
    }

    #[test]
    fn named_tenant_defaults_cannot_collide_with_well_known_names() {
        let g = Guardrails::from_spec("acme", &GuardrailSpec::default());
        assert!(g.check(&grant("tollgate:acme:alice", &["tollgate:acme:dev"])).is_ok());
        assert_eq!(g.check(&grant("acme:alice", &["tollgate:acme:dev"])).unwrap_err().rule, "username-prefix");
        assert_eq!(g.check(&grant("tollgate:acme:alice", &["acme:dev"])).unwrap_err().rule, "group-not-allowed");
        let kubeadm = Guardrails::from_spec("kubeadm", &GuardrailSpec::default());
        let admin = grant("tollgate:kubeadm:x", &["kubeadm:cluster-admins"]);
        assert_eq!(kubeadm.check(&admin).unwrap_err().rule, "group-not-allowed");
        assert_eq!(kubeadm.check(&grant("kubeadm:x", &[])).unwrap_err().rule, "username-prefix");
    }

    #[test]
    fn identity_checks_refuse_reserved_and_empty() {
        let s = Scrubber::new("a-long-bearer-token");
        assert_eq!(identity_checks(&grant("", &[]), &s).unwrap_err().rule, "empty-username");
        assert_eq!(identity_checks(&grant("system:anonymous", &[]), &s).unwrap_err().rule, "reserved-identity");
        assert_eq!(
            identity_checks(&grant("bob", &["system:unauthenticated"]), &s).unwrap_err().rule,
            "reserved-identity"
        );
        assert_eq!(identity_checks(&grant("a-long-bearer-token", &[]), &s).unwrap_err().rule, "token-in-grant");
        assert_eq!(identity_checks(&grant("bob\n", &[]), &s).unwrap_err().rule, "control-character");
        let mut g = grant("bob", &[]);
        g.user.extra.push(("Authentication.kubernetes.io/pod-name".into(), vec!["x".into()]));
        assert_eq!(identity_checks(&g, &s).unwrap_err().rule, "reserved-extra");
    }

    #[test]
    fn audience_intersection_in_spec_order() {
        let mut g = grant("bob", &[]);
        assert_eq!(audiences(&["a".into()], &g).unwrap(), None);
        g.audiences = vec!["b".into(), "a".into()];
        assert_eq!(audiences(&[], &g).unwrap(), None);
        assert_eq!(audiences(&["a".into(), "c".into(), "b".into()], &g).unwrap(), Some(vec!["a".into(), "b".into()]));
        assert_eq!(audiences(&["c".into()], &g).unwrap_err().rule, "audience-mismatch");
    }

    #[test]
    fn limits() {
        let mut g = grant("bob", &[]);
        g.user.groups = vec!["g".into(); 1025];
        assert!(GrantLimits::DEFAULT.check(&g).is_err());
        let mut g = grant("bob", &[]);
        g.user.username = "x".repeat(5000);
        assert!(GrantLimits::DEFAULT.check(&g).is_err());
    }

    #[test]
    fn clients() {
        let id = |subject: &str| ClientIdentity::new(Dn::parse(subject).unwrap());
        let mut g = Guardrails::default_tenant();
        assert!(g.admits(None));
        let spec =
            GuardrailSpec { clients: Some(vec!["CN=apiserver".into(), "CN=b,O=acme".into()]), ..Default::default() };
        g.clients = Guardrails::from_spec("", &spec).clients;
        assert!(!g.admits(None));
        assert!(!g.admits(Some(&id("CN=other"))));
        assert!(g.admits(Some(&id("CN=apiserver,O=system"))), "a bare CN= matches the one CN");
        assert!(g.admits(Some(&id("O=system+CN=apiserver"))), "wherever it is");
        assert!(!g.admits(Some(&id("CN=apiserver,CN=x"))), "not one of several");
        assert!(!g.admits(Some(&id("CN=Apiserver"))), "exactly");
        assert!(g.admits(Some(&id("CN=b,O=acme"))), "the full subject matches");
        assert!(g.admits(Some(&id("cn=b,2.5.4.10=acme"))), "however its types are written");
        assert!(!g.admits(Some(&id("CN=b,O=other"))));
        assert!(!g.admits(Some(&id("O=acme,CN=b"))), "in order");
        assert!(!g.admits(Some(&id("CN=b,O=acme,DC=x"))), "all of it");
        assert!(!g.admits(Some(&id("CN=b+O=acme"))), "RDN by RDN");
        // A CN that spells out the entry is one attribute: neither the subject nor the CN.
        assert!(!g.admits(Some(&id(r"CN=b\,O=acme"))));
        assert!(!g.admits(Some(&id(r"CN=apiserver\,O=system"))));
    }
}

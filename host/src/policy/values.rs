//! The contract's values: what a plugin is asked (`Review`), what it answers (`Decision`,
//! `Grant`, `UserInfo`), the bounds on any answer (`GrantLimits`), and who is asking
//! (`ClientIdentity`, its subject a [`dn::Dn`]). Every layer imports this module; it imports
//! nothing of tollgate.
//!
//! Written out rather than generated (`tollgate:policy/types`): bindgen gives every record a
//! `Debug` that prints each field, and a review carries the token. Each type is checked against
//! the component's own types when a plugin is prepared, so a field named or typed differently
//! from the WIT refuses every plugin, in every test.

use wasmtime::component::{ComponentType, Lift, Lower};

pub mod dn;
pub use dn::Dn;

#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(record)]
pub struct UserInfo {
    #[component(name = "username")]
    pub username: String,
    #[component(name = "uid")]
    pub uid: String,
    #[component(name = "groups")]
    pub groups: Vec<String>,
    #[component(name = "extra")]
    pub extra: Vec<(String, Vec<String>)>,
}

#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(record)]
pub struct Grant {
    #[component(name = "user")]
    pub user: UserInfo,
    #[component(name = "audiences")]
    pub audiences: Vec<String>,
    #[component(name = "expires-at")]
    pub expires_at: Option<u64>,
}

#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(record)]
pub struct Prior {
    #[component(name = "grant")]
    pub grant: Grant,
    #[component(name = "plugin")]
    pub plugin: String,
}

/// What a plugin is asked. Its `Debug` leaves the token out.
#[derive(ComponentType, Lift, Lower, Clone)]
#[component(record)]
pub struct Review {
    #[component(name = "token")]
    pub token: String,
    #[component(name = "audiences")]
    pub audiences: Vec<String>,
    #[component(name = "tenant")]
    pub tenant: String,
    #[component(name = "current")]
    pub current: Option<Prior>,
    #[component(name = "request-id")]
    pub request_id: String,
    #[component(name = "client")]
    pub client: Option<String>,
    #[component(name = "attributes")]
    pub attributes: Vec<(String, String)>,
}

impl std::fmt::Debug for Review {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Review")
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .field("audiences", &self.audiences)
            .field("tenant", &self.tenant)
            .field("current", &self.current)
            .field("request_id", &self.request_id)
            .field("client", &self.client)
            .field("attributes", &self.attributes)
            .finish()
    }
}

#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(variant)]
pub enum Decision {
    #[component(name = "allow")]
    Allow(Grant),
    #[component(name = "deny")]
    Deny(String),
    #[component(name = "abstain")]
    Abstain,
    #[component(name = "unavailable")]
    Unavailable(String),
}

/// Bounds on one grant. Defaults are far above real identities (an Azure AD user in 200 groups,
/// a long LDAP DN) and far below what would hurt kube-apiserver or its audit log.
#[derive(Clone, Copy, Debug)]
pub struct GrantLimits {
    /// Any one string: username, uid, a group, an extra key or value, an audience.
    pub string_bytes: usize,
    pub groups: usize,
    pub extra_keys: usize,
    /// Values over all extra keys together.
    pub extra_values: usize,
    pub audiences: usize,
    /// All strings of the grant together.
    pub total_bytes: usize,
}

impl GrantLimits {
    pub const DEFAULT: GrantLimits = GrantLimits {
        string_bytes: 4 * 1024,
        groups: 1024,
        extra_keys: 64,
        extra_values: 1024,
        audiences: 64,
        total_bytes: 64 * 1024,
    };

    /// Checks an `allow` decision; reasons are capped elsewhere, not refused.
    pub fn check_decision(&self, decision: &Decision) -> Result<(), String> {
        match decision {
            Decision::Allow(grant) => self.check(grant),
            _ => Ok(()),
        }
    }

    pub fn check(&self, grant: &Grant) -> Result<(), String> {
        let u = &grant.user;
        let count = |what: &str, n: usize, max: usize| {
            if n > max { Err(format!("{n} {what} (at most {max})")) } else { Ok(()) }
        };
        count("groups", u.groups.len(), self.groups)?;
        count("extra keys", u.extra.len(), self.extra_keys)?;
        count("extra values", u.extra.iter().map(|(_, v)| v.len()).sum(), self.extra_values)?;
        count("audiences", grant.audiences.len(), self.audiences)?;
        let mut total = 0usize;
        for s in grant_strings(grant) {
            if s.len() > self.string_bytes {
                return Err(format!("a {}-byte string (at most {})", s.len(), self.string_bytes));
            }
            total += s.len();
        }
        count("bytes in all", total, self.total_bytes)
    }
}

/// Every string a grant carries.
pub fn grant_strings(grant: &Grant) -> impl Iterator<Item = &str> {
    let u = &grant.user;
    [u.username.as_str(), u.uid.as_str()]
        .into_iter()
        .chain(u.groups.iter().map(String::as_str))
        .chain(u.extra.iter().flat_map(|(k, vs)| std::iter::once(k.as_str()).chain(vs.iter().map(String::as_str))))
        .chain(grant.audiences.iter().map(String::as_str))
}

/// A verified client certificate's identity: its subject as encoded ([`Dn`]), and that subject
/// written in RFC 4514 form, escaped (`CN=kube-apiserver,O=system`): what plugins, the audit
/// log and the decision cache see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub subject: String,
    pub name: Dn,
}

impl ClientIdentity {
    pub fn new(name: Dn) -> Self {
        Self { subject: name.to_string(), name }
    }

    pub fn from_der(cert: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
        Dn::from_x509(cert.subject()).map(Self::new)
    }

    /// Whether a `clients` entry names this caller: the same RDNs in the same order, attribute
    /// by attribute (never the rendered text, where a CN of `a,O=b` would read as two
    /// attributes); or, for an entry that is exactly `CN=<value>`, a subject whose one CN
    /// attribute has exactly that value (a subject with several CNs matches only in full).
    pub fn matches(&self, entry: &Dn) -> bool {
        *entry == self.name || entry.bare_common_name().is_some_and(|cn| self.name.only_common_name() == Some(cn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reviews_debug_leaves_the_token_out() {
        let review = Review {
            token: "secret-token-value".into(),
            audiences: vec!["api".into()],
            tenant: "acme".into(),
            current: None,
            request_id: "r1".into(),
            client: None,
            attributes: vec![],
        };
        let shown = format!("{review:?} {review:#?}");
        assert!(!shown.contains("secret-token-value"), "{shown}");
        assert!(shown.contains("<18 bytes>") && shown.contains("acme"), "{shown}");
    }
}

//! A plugin ready to run: its compiled component, the environment of its calls (config,
//! limits, caches, grants), its vectors, and which tokens it is shown (`[match]`).

use std::sync::Arc;

use base64::Engine as _;

use crate::plugins::manifest::{Role, TestVector};
use crate::plugins::sandbox::{Code, PluginEnv};
use crate::plugins::secrets::FileRef;

/// A plugin ready to run.
pub struct Plugin {
    pub name: String,
    pub role: Role,
    pub matcher: Option<Matcher>,
    pub env: Arc<PluginEnv>,
    pub code: Arc<Code>,
    pub tests: Vec<TestVector>,
    /// Manifest limits above the server's maxima, which were capped.
    pub warnings: Vec<String>,
    /// The files it read at load (`secret_files`, `ca_file`): a change reloads the tenant.
    pub files: Vec<FileRef>,
}

impl Plugin {
    pub fn digest(&self) -> &str {
        &self.code.digest
    }
}

/// `[match]`: which tokens an authenticator is shown.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub token_prefix: Vec<String>,
    pub jwt_issuer: Vec<String>,
}

impl Matcher {
    /// `issuer` is the token's unverified `iss`, computed once per review.
    pub fn matches(&self, token: &str, issuer: Option<&str>) -> bool {
        self.token_prefix.iter().any(|p| token.starts_with(p.as_str()))
            || issuer.is_some_and(|iss| self.jwt_issuer.iter().any(|i| i == iss))
    }
}

/// The `iss` claim of a JWS compact token's payload, read without verifying anything: a routing
/// hint for `[match] jwt_issuer`, never a reason to trust the token.
pub fn unverified_issuer(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 64 * 1024 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: Option<String>,
    }
    serde_json::from_slice::<Claims>(&bytes).ok()?.iss
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b(r#"{"alg":"RS256"}"#), b(payload))
    }

    #[test]
    fn reads_the_unverified_issuer() {
        assert_eq!(unverified_issuer(&jwt(r#"{"iss":"https://idp","sub":"x"}"#)).as_deref(), Some("https://idp"));
        assert_eq!(unverified_issuer(&jwt(r#"{"iss":5}"#)), None);
        assert_eq!(unverified_issuer("not-a-jwt"), None);
        assert_eq!(unverified_issuer("a.b.c.d.e"), None);
    }

    #[test]
    fn matcher_routes_by_prefix_or_issuer() {
        let m = Matcher { token_prefix: vec!["tg_".into()], jwt_issuer: vec!["https://idp".into()] };
        assert!(m.matches("tg_abc", None));
        assert!(m.matches("eyJ...", Some("https://idp")));
        assert!(!m.matches("xyz", Some("https://other")));
    }
}

//! The TokenReview wire format, in (`authentication.k8s.io/v1` or `v1beta1`) and out.
//!
//! The answer carries the apiVersion and kind of the request (kube-apiserver refuses another
//! version with "unknown conversion") and only `status`: `spec` — the token — is never echoed.

use serde::{Deserialize, Serialize, Serializer};

use crate::plugins::sandbox::UserInfo;

pub const V1: &str = "authentication.k8s.io/v1";
pub const V1BETA1: &str = "authentication.k8s.io/v1beta1";

/// The API versions tollgate answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    V1beta1,
}

impl ApiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1 => V1,
            ApiVersion::V1beta1 => V1BETA1,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            V1 | "v1" => Some(ApiVersion::V1),
            V1BETA1 | "v1beta1" => Some(ApiVersion::V1beta1),
            _ => None,
        }
    }
}

/// A request body that is not a TokenReview tollgate can answer (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReview(pub String);

/// What tollgate reads of a TokenReview. Everything else (metadata, status, unknown fields) is
/// tolerated and ignored. Its `Debug` never shows the token.
pub struct TokenReview {
    pub api_version: ApiVersion,
    /// `spec.token`; "" when missing (kube-apiserver sends `"spec":{}` for an empty token).
    pub token: String,
    pub audiences: Vec<String>,
}

impl std::fmt::Debug for TokenReview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReview")
            .field("api_version", &self.api_version)
            .field("token", &format_args!("[{} bytes]", self.token.len()))
            .field("audiences", &self.audiences)
            .finish()
    }
}

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    spec: Option<WireSpec>,
}

#[derive(Deserialize)]
struct WireSpec {
    token: Option<String>,
    audiences: Option<Vec<String>>,
}

impl TokenReview {
    pub fn parse(body: &[u8]) -> Result<Self, BadReview> {
        let wire: Wire = serde_json::from_slice(body).map_err(json_error)?;
        match wire.kind.as_deref() {
            Some("TokenReview") => {}
            Some(_) => return Err(BadReview("kind must be TokenReview".into())),
            None => {
                return Err(BadReview("the body has no kind (expected TokenReview)".into()));
            }
        }
        let api_version = match wire.api_version.as_deref() {
            Some(v) => ApiVersion::parse(v)
                .filter(|_| v.contains('/'))
                .ok_or_else(|| BadReview(format!("apiVersion must be {V1} or {V1BETA1}")))?,
            None => {
                return Err(BadReview(format!("the body has no apiVersion (expected {V1} or {V1BETA1})")));
            }
        };
        let spec = wire.spec.unwrap_or(WireSpec { token: None, audiences: None });
        Ok(TokenReview {
            api_version,
            token: spec.token.unwrap_or_default(),
            audiences: spec.audiences.unwrap_or_default(),
        })
    }
}

/// serde_json's messages can quote what they choke on, and what a client sent may be a token:
/// keep only the kind of error and its position.
fn json_error(e: serde_json::Error) -> BadReview {
    use serde_json::error::Category;
    let at = format!("line {} column {}", e.line(), e.column());
    BadReview(match e.classify() {
        Category::Syntax => format!("malformed JSON at {at}"),
        Category::Eof => "truncated JSON".to_string(),
        Category::Data => {
            format!("a field of the TokenReview has the wrong type or is duplicated ({at})")
        }
        Category::Io => "unreadable body".to_string(),
    })
}

/// `status` of the answer.
#[derive(Debug, Default, Serialize)]
pub struct Status {
    pub authenticated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audiences: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `status.user`: extra as a map of string lists, duplicate keys merged in order.
#[derive(Debug, Serialize)]
pub struct User {
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "extra_map")]
    pub extra: Vec<(String, Vec<String>)>,
}

impl From<UserInfo> for User {
    fn from(u: UserInfo) -> Self {
        let mut extra: Vec<(String, Vec<String>)> = Vec::with_capacity(u.extra.len());
        for (k, vs) in u.extra {
            match extra.iter_mut().find(|(ek, _)| *ek == k) {
                Some((_, existing)) => existing.extend(vs),
                None => extra.push((k, vs)),
            }
        }
        User { username: u.username, uid: u.uid, groups: u.groups, extra }
    }
}

fn extra_map<S: Serializer>(extra: &[(String, Vec<String>)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(extra.iter().map(|(k, v)| (k, v)))
}

#[derive(Serialize)]
struct Answer<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    status: &'a Status,
}

/// The answer body: a TokenReview of the request's apiVersion carrying only `status`.
pub fn answer(api_version: ApiVersion, status: &Status) -> Vec<u8> {
    let answer = Answer { api_version: api_version.as_str(), kind: "TokenReview", status };
    // Serializing strings and lists into a Vec cannot fail.
    serde_json::to_vec(&answer).unwrap_or_default()
}

/// A Kubernetes `Status` object, as kube-apiserver answers a bad request.
pub fn status_object(code: u16, reason: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_kube_apiserver_sends() {
        let body = br#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1beta1","metadata":{"creationTimestamp":null},"spec":{"token":"abc","audiences":["https://kubernetes.default.svc"]},"status":{"user":{}}}"#;
        let r = TokenReview::parse(body).unwrap();
        assert_eq!(r.api_version, ApiVersion::V1beta1);
        assert_eq!(r.token, "abc");
        assert_eq!(r.audiences, vec!["https://kubernetes.default.svc"]);
    }

    #[test]
    fn tolerates_missing_spec_metadata_and_unknown_fields() {
        let r =
            TokenReview::parse(br#"{"spec":{},"zzz":1,"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview"}"#)
                .unwrap();
        assert_eq!(r.token, "");
        let r = TokenReview::parse(br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview"}"#).unwrap();
        assert!(r.audiences.is_empty());
    }

    #[test]
    fn refuses_other_kinds_versions_and_malformed_json() {
        assert!(
            TokenReview::parse(br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SubjectAccessReview"}"#).is_err()
        );
        assert!(TokenReview::parse(br#"{"apiVersion":"authentication.k8s.io/v2","kind":"TokenReview"}"#).is_err());
        assert!(TokenReview::parse(br#"{"apiVersion":"v1","kind":"TokenReview"}"#).is_err());
        assert!(TokenReview::parse(b"{").is_err());
    }

    #[test]
    fn error_messages_never_quote_the_body() {
        let body = br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":"secret-token-value"}"#;
        let BadReview(msg) = TokenReview::parse(body).unwrap_err();
        assert!(!msg.contains("secret-token-value"), "{msg}");
        let body = br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"a","token":"secret-token-value"}}"#;
        let BadReview(msg) = TokenReview::parse(body).unwrap_err();
        assert!(!msg.contains("secret-token-value"), "{msg}");
    }

    #[test]
    fn answers_merge_extra_and_omit_empty_fields() {
        let user = User::from(UserInfo {
            username: "alice".into(),
            uid: String::new(),
            groups: vec![],
            extra: vec![("k".into(), vec!["1".into()]), ("k".into(), vec!["2".into()])],
        });
        let status = Status { authenticated: true, user: Some(user), ..Default::default() };
        let v: serde_json::Value = serde_json::from_slice(&answer(ApiVersion::V1, &status)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": V1, "kind": "TokenReview",
                "status": {"authenticated": true, "user": {"username": "alice", "extra": {"k": ["1", "2"]}}}})
        );
    }
}

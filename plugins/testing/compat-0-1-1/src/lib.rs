//! A policy built against the contract as released in 0.1.1 (`wit/0.1.1/`, frozen), with its own
//! bindings rather than the SDK (which follows the newest contract). It uses what 0.1.1 added,
//! `tollgate:policy/kv`; the host links 0.1.2, and the end-to-end tests prove such a component
//! still loads and answers.

wit_bindgen::generate!({ path: "../../../wit/0.1.1", world: "policy" });

use exports::tollgate::policy::authenticator::Guest;
use tollgate::policy::host::config;
use tollgate::policy::kv;
use tollgate::policy::types::{Decision, Grant, Review, UserInfo};

struct Compat;

impl Guest for Compat {
    /// Allows the configured token, counting its reviews in the kv cache (`seen-N`).
    fn authenticate(review: Review) -> Decision {
        if config("token").is_none_or(|t| t != review.token) {
            return Decision::Abstain;
        }
        let seen = kv::get("seen").and_then(|v| String::from_utf8(v).ok()).and_then(|s| s.parse::<u32>().ok());
        let seen = seen.unwrap_or(0) + 1;
        if let Err(e) = kv::set("seen", seen.to_string().as_bytes(), 60) {
            return Decision::Unavailable(e);
        }
        Decision::Allow(Grant {
            user: UserInfo {
                username: config("username").unwrap_or_default(),
                uid: String::new(),
                groups: vec!["built-against-0.1.1".into(), format!("seen-{seen}")],
                extra: vec![],
            },
            audiences: vec![],
            expires_at: None,
        })
    }
}

export!(Compat);

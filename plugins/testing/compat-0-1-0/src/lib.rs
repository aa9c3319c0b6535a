//! A policy built against the contract as released in 0.1.0 (`wit/0.1.0/`, frozen), with its own
//! bindings rather than the SDK (which follows the newest contract). It imports
//! `tollgate:policy/host@0.1.0` and exports `tollgate:policy/authenticator@0.1.0`; the host
//! links 0.1.1, and the end-to-end tests prove such a component still loads and answers.

wit_bindgen::generate!({ path: "../../../wit/0.1.0", world: "policy" });

use exports::tollgate::policy::authenticator::Guest;
use tollgate::policy::host::{Level, config, log};
use tollgate::policy::types::{Decision, Grant, Review, UserInfo};

struct Compat;

impl Guest for Compat {
    fn authenticate(review: Review) -> Decision {
        let Some(token) = config("token") else {
            return Decision::Deny("no token configured".into());
        };
        if review.token != token {
            return Decision::Abstain;
        }
        log(Level::Info, "a 0.1.0 component answering");
        Decision::Allow(Grant {
            user: UserInfo {
                username: config("username").unwrap_or_default(),
                uid: String::new(),
                groups: vec!["built-against-0.1.0".into()],
                extra: vec![],
            },
            audiences: vec![],
            expires_at: None,
        })
    }
}

export!(Compat);

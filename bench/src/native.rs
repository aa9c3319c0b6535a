//! The example chain — `static-tokens`, then `group-mapper` — as native Rust: the very same
//! policy sources as the Wasm guests (`plugins/static-tokens`, `plugins/group-mapper`), compiled
//! for this machine, with the SDK's `testing` module standing in for the host's `config`.
//!
//! This is what "the same logic as a native function" means in BENCHMARKS.md: it parses the
//! same config on every review, hashes the token and builds the same grant, without a sandbox.

use std::cell::Cell;

use group_mapper::GroupMapper;
use static_tokens::StaticTokens;
use tollgate_sdk::{Decision, Policy, Prior, Review, UserInfo};

thread_local! {
    /// Which config this thread's SDK stand-in holds (a pointer identity, set once per thread).
    static INSTALLED: Cell<usize> = const { Cell::new(0) };
}

/// The merged `[config]` of both plugins; built once, installed once per thread.
pub struct NativeChain {
    config: Vec<(String, String)>,
}

impl NativeChain {
    pub fn new(config: Vec<(String, String)>) -> Self {
        Self { config }
    }

    fn install(&self) {
        let me = self as *const Self as usize;
        if INSTALLED.get() != me {
            tollgate_sdk::testing::set_config(self.config.iter().cloned());
            INSTALLED.set(me);
        }
    }

    /// static-tokens alone: the authenticator's decision for `token`.
    pub fn static_tokens(&self, token: &str, audiences: &[String]) -> Decision {
        self.install();
        StaticTokens::authenticate(review(token, audiences, None))
    }

    /// The chain: static-tokens, then group-mapper on its grant. `None` = not authenticated.
    pub fn review(&self, token: &str, audiences: &[String]) -> Option<UserInfo> {
        let Decision::Allow(grant) = self.static_tokens(token, audiences) else { return None };
        let prior = Prior { grant, plugin: "10-static-tokens".into() };
        match GroupMapper::authenticate(review("", audiences, Some(prior))) {
            Decision::Allow(mapped) => Some(mapped.user),
            _ => None,
        }
    }
}

/// A review as the host hands it to a plugin (default tenant, no mTLS caller).
fn review(token: &str, audiences: &[String], current: Option<Prior>) -> Review {
    Review {
        token: token.to_owned(),
        audiences: audiences.to_vec(),
        tenant: String::new(),
        current,
        request_id: "0123456789abcdef".into(),
        client: None,
        attributes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn grants_the_bench_user_like_the_guests() {
        let chain = NativeChain::new(fixtures::native_config().unwrap());
        let user = chain.review(fixtures::BENCH_TOKEN, &[]).expect("the bench token is known");
        assert_eq!(user.username, fixtures::BENCH_USER);
        assert_eq!(user.groups, fixtures::BENCH_GROUPS);
        assert!(chain.review("some-other-token-1234", &[]).is_none());
    }
}

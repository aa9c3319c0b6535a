//! Write tollgate policies in Rust.
//!
//! A policy is one function from a [`Review`] to a [`Decision`]:
//!
//! ```ignore
//! use tollgate_sdk::{Decision, Grant, Policy, Review};
//!
//! struct Hello;
//!
//! impl Policy for Hello {
//!     fn authenticate(review: Review) -> Decision {
//!         match review.token.strip_prefix("hello-") {
//!             Some(name) => Decision::Allow(Grant::user(name).groups(["greeted"])),
//!             None => Decision::Abstain,
//!         }
//!     }
//! }
//!
//! tollgate_sdk::export_policy!(Hello);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` is the plugin. On the
//! machine itself (not wasm), [`testing`] stands in for the host so a policy can be unit-tested
//! with plain `cargo test`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
    pub_export_macro: true,
    export_macro_name: "__export_policy_bindings",
    default_bindings_module: "tollgate_sdk",
});

pub use tollgate::policy::host::Level;
pub use tollgate::policy::types::{Decision, Grant, Prior, Review, UserInfo};

/// A policy: what tollgate calls for each review.
pub trait Policy {
    fn authenticate(review: Review) -> Decision;
}

/// Exports a [`Policy`] as the plugin's `tollgate:policy/authenticator`.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        pub struct __TollgateExport;

        #[cfg(target_arch = "wasm32")]
        impl $crate::exports::tollgate::policy::authenticator::Guest for __TollgateExport {
            fn authenticate(review: $crate::Review) -> $crate::Decision {
                <$policy as $crate::Policy>::authenticate(review)
            }
        }

        #[cfg(target_arch = "wasm32")]
        $crate::__export_policy_bindings!(__TollgateExport with_types_in $crate);
    };
}

/// A value of the plugin's manifest `[config]` table.
pub fn config(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    {
        tollgate::policy::host::config(key)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        testing::config(key)
    }
}

/// The keys of the plugin's `[config]` table, sorted.
pub fn config_keys() -> Vec<String> {
    #[cfg(target_arch = "wasm32")]
    {
        tollgate::policy::host::config_keys()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        testing::config_keys()
    }
}

/// Writes a log line; the host tags it with tenant, plugin and request id, removes the token
/// from it and caps its length.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        tollgate::policy::host::log(level, message)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        testing::log(level, message)
    }
}

pub fn debug(message: &str) {
    log(Level::Debug, message)
}

pub fn info(message: &str) {
    log(Level::Info, message)
}

pub fn warn(message: &str) {
    log(Level::Warn, message)
}

impl Grant {
    /// A grant for `username`, with no uid, groups, extra, audiences or expiry.
    pub fn user(username: impl Into<String>) -> Self {
        Grant {
            user: UserInfo { username: username.into(), uid: String::new(), groups: Vec::new(), extra: Vec::new() },
            audiences: Vec::new(),
            expires_at: None,
        }
    }

    pub fn uid(mut self, uid: impl Into<String>) -> Self {
        self.user.uid = uid.into();
        self
    }

    pub fn groups<S: Into<String>>(mut self, groups: impl IntoIterator<Item = S>) -> Self {
        self.user.groups.extend(groups.into_iter().map(Into::into));
        self
    }

    pub fn extra<S: Into<String>>(mut self, key: impl Into<String>, values: impl IntoIterator<Item = S>) -> Self {
        self.user.extra.push((key.into(), values.into_iter().map(Into::into).collect()));
        self
    }

    /// The audiences the token is valid for (none stated = kube-apiserver's implicit ones).
    pub fn audiences<S: Into<String>>(mut self, audiences: impl IntoIterator<Item = S>) -> Self {
        self.audiences.extend(audiences.into_iter().map(Into::into));
        self
    }

    /// When the token stops being valid (unix seconds).
    pub fn expires_at(mut self, unix_seconds: u64) -> Self {
        self.expires_at = Some(unix_seconds);
        self
    }
}

impl Decision {
    pub fn deny(reason: impl Into<String>) -> Self {
        Decision::Deny(reason.into())
    }

    pub fn unavailable(reason: impl Into<String>) -> Self {
        Decision::Unavailable(reason.into())
    }
}

/// Stand-ins for the host, for unit tests on the machine itself (not wasm).
#[cfg(not(target_arch = "wasm32"))]
pub mod testing {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::{Level, Review};

    thread_local! {
        static CONFIG: RefCell<BTreeMap<String, String>> = RefCell::default();
        static LOGS: RefCell<Vec<(Level, String)>> = RefCell::default();
    }

    /// Sets this thread's `[config]` table, as a manifest would.
    pub fn set_config<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) {
        CONFIG.with(|c| *c.borrow_mut() = pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect());
    }

    /// The log lines written on this thread so far (and clears them).
    pub fn take_logs() -> Vec<(Level, String)> {
        LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }

    /// A review of `token` as an authenticator sees it.
    pub fn review(token: &str) -> Review {
        Review {
            token: token.into(),
            audiences: Vec::new(),
            tenant: String::new(),
            current: None,
            request_id: "test".into(),
            client: None,
            attributes: Vec::new(),
        }
    }

    /// A review as a mapper sees it: no token, `grant` as the current grant.
    pub fn mapper_review(grant: super::Grant) -> Review {
        Review { current: Some(super::Prior { grant, plugin: "test".into() }), ..review("") }
    }

    pub(crate) fn config(key: &str) -> Option<String> {
        CONFIG.with(|c| c.borrow().get(key).cloned())
    }

    pub(crate) fn config_keys() -> Vec<String> {
        CONFIG.with(|c| c.borrow().keys().cloned().collect())
    }

    pub(crate) fn log(level: Level, message: &str) {
        LOGS.with(|l| l.borrow_mut().push((level, message.to_owned())));
    }
}

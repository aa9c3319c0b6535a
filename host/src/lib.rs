//! tollgate: a Kubernetes webhook token authenticator whose rules are WebAssembly components.
//!
//! kube-apiserver POSTs a TokenReview; [`http`] hands it to the tenant's live generation
//! ([`tenants`]), whose chain of plugins [`policy`] runs in the sandbox of [`plugins`], and the
//! host's guardrails have the last word; [`observe`] counts and audits it.
//!
//! Dependencies point one way: [`cli`] → [`http`] → [`tenants`] → [`policy`] → [`plugins`] →
//! [`observe`]; the contract's values ([`policy::values`]) are a leaf every layer imports.
//! host/tests/layering.rs checks that no module imports one that imports it back, and the order.

pub mod cli;
pub mod http;
pub mod observe;
pub mod plugins;
pub mod policy;
pub mod tenants;

//! tollgate: a Kubernetes webhook token authenticator whose rules are WebAssembly components.
//!
//! kube-apiserver POSTs a TokenReview; [`server`] hands it to a tenant's [`chain`] of sandboxed
//! plugins ([`sandbox`]), loaded by [`plugin`] from a directory ([`tenant`]), and the host's
//! [`guardrails`] have the last word.

pub mod audit;
pub mod chain;
pub mod cli;
pub mod compile_cache;
pub mod confine;
pub mod decision_cache;
pub mod evaluator;
pub mod guardrails;
pub mod listener;
pub mod manifest;
pub mod metrics;
pub mod plugin;
pub mod registry;
pub mod reload;
pub mod review;
pub mod sandbox;
pub mod scrub;
pub mod secrets;
pub mod server;
pub mod tenant;
pub mod tls;
pub mod vectors;

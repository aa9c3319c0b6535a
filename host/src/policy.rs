//! What a review means: the contract's values, the chain's semantics, the host's guardrails,
//! the decision cache and the evaluator that runs a generation under a deadline. Knows nothing
//! of HTTP, files or reloads; calls plugins only through `plugins::sandbox`.

pub mod chain;
pub mod decision_cache;
pub mod evaluator;
pub mod guardrails;
pub mod values;

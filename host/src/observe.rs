//! What the server tells its operator: Prometheus metrics, the audit log, and the scrubber that
//! keeps the token (and secrets) out of everything written. Depends on nothing else of tollgate.

pub mod audit;
pub mod metrics;
pub mod scrub;

//! The seed blog's Flask webhook as a plugin: every token is `testUser` in `system:masters`.
//!
//! It exists to show what the host does with it: with the default guardrails the grant is
//! refused (`system-identity`), because no plugin may mint `system:masters` unless the operator
//! lists it in the tenants file's `allow_system`.

use tollgate_sdk::{Decision, Grant, Policy, Review};

pub struct SeedDemo;

impl Policy for SeedDemo {
    fn authenticate(_review: Review) -> Decision {
        Decision::Allow(Grant::user("testUser").uid("testUser").groups(["system:masters"]))
    }
}

tollgate_sdk::export_policy!(SeedDemo);

//! The smallest policy there is: no config read, no allocation, no host call. What a review
//! costs with it is the runtime's own floor (`cargo bench -p tollgate --bench ladder`, rung a).

use tollgate_sdk::{Decision, Policy, Review};

pub struct Abstain;

impl Policy for Abstain {
    fn authenticate(_review: Review) -> Decision {
        Decision::Abstain
    }
}

tollgate_sdk::export_policy!(Abstain);

//! Runs a chain off the async runtime, under the server-wide concurrency bound and the review
//! deadline, so a slow plugin never stalls the HTTP server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::chain::{self, Outcome, ReviewInput, Verdict};
use crate::metrics::Metrics;
use crate::sandbox::Sandbox;
use crate::tenant::Generation;

pub struct Evaluator {
    sandbox: Arc<Sandbox>,
    permits: Arc<Semaphore>,
    review_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Evaluator {
    /// `concurrency` reviews are evaluated at once; the rest wait, within their deadline.
    pub fn new(sandbox: Arc<Sandbox>, concurrency: usize, review_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self { sandbox, permits: Arc::new(Semaphore::new(concurrency)), review_timeout, metrics }
    }

    pub async fn evaluate(&self, generation: Arc<Generation>, input: ReviewInput) -> Verdict {
        let started = Instant::now();
        let deadline = started + self.review_timeout;
        let verdict = |outcome| Verdict { outcome, decided_by: None, steps: Vec::new() };

        let permit = match tokio::time::timeout_at(deadline.into(), self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            // Closed never happens (the semaphore is never closed); time out = overloaded.
            Ok(Err(_)) | Err(_) => return verdict(Outcome::Overloaded),
        };
        self.metrics.queue_wait.observe(started.elapsed().as_secs_f64());

        let sandbox = self.sandbox.clone();
        let metrics = self.metrics.clone();
        let task = tokio::task::spawn_blocking(move || {
            metrics.in_flight.inc();
            let verdict = chain::evaluate(&sandbox, &generation, &input, deadline);
            metrics.in_flight.dec();
            // The slot is held until the guest is done, even if the answer went out already.
            drop(permit);
            verdict
        });
        // The chain stops itself at the deadline (epoch interruption); this is the backstop
        // for anything that does not, with one epoch tick of grace.
        match tokio::time::timeout_at((deadline + crate::sandbox::EPOCH_TICK * 2).into(), task).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(join_error)) => {
                tracing::error!(panicked = join_error.is_panic(), "a review evaluation did not finish");
                verdict(Outcome::Internal)
            }
            Err(_) => verdict(Outcome::Deadline),
        }
    }
}

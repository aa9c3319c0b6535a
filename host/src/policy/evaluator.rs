//! Runs a chain under the server-wide and per-tenant concurrency bounds and the review
//! deadline. Guests run as futures on the server's runtime (they yield every epoch tick), so a
//! slow plugin never stalls the HTTP server and no review is handed to another thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::observe::metrics::Metrics;
use crate::plugins::sandbox::Sandbox;
use crate::policy::chain::Generation;
use crate::policy::chain::{self, Outcome, ReviewInput, Verdict};
use crate::policy::guardrails::Guardrails;

/// One tenant's share of the evaluation slots, kept across its generations: so a tenant whose
/// plugins loop or crawl cannot take every slot and starve the others.
pub struct TenantSlots {
    /// Reviews running or waiting; beyond it a review is refused at once (no unbounded queue).
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
}

impl TenantSlots {
    pub fn new(concurrency: usize, queue: usize) -> Arc<Self> {
        Arc::new(Self {
            admitted: Arc::new(Semaphore::new(concurrency + queue)),
            running: Arc::new(Semaphore::new(concurrency)),
        })
    }
}

/// How many reviews of one tenant may run at once, and wait beyond those.
#[derive(Clone, Copy, Debug)]
pub struct TenantLimits {
    pub concurrency: usize,
    pub queue: usize,
}

impl TenantLimits {
    pub fn slots(self) -> Arc<TenantSlots> {
        TenantSlots::new(self.concurrency, self.queue)
    }
}

pub struct Evaluator {
    sandbox: Arc<Sandbox>,
    permits: Arc<Semaphore>,
    review_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Evaluator {
    /// `concurrency` reviews are evaluated at once, server-wide; the rest wait, within their
    /// deadline.
    pub fn new(sandbox: Arc<Sandbox>, concurrency: usize, review_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self { sandbox, permits: Arc::new(Semaphore::new(concurrency)), review_timeout, metrics }
    }

    /// Runs `generation`'s chain, its grant checked against `rules` (the operator's, in force).
    pub async fn evaluate(
        &self,
        slots: &TenantSlots,
        generation: Arc<Generation>,
        rules: Arc<Guardrails>,
        input: ReviewInput,
    ) -> Verdict {
        let started = Instant::now();
        let deadline = started + self.review_timeout;
        let verdict = |outcome| Verdict { outcome, decided_by: None, steps: Vec::new() };

        // The tenant's queue is full: refuse now rather than pile up.
        let Ok(admitted) = slots.admitted.clone().try_acquire_owned() else {
            return verdict(Outcome::Overloaded);
        };
        let waited = async {
            let running = slots.running.clone().acquire_owned().await.ok()?;
            let global = self.permits.clone().acquire_owned().await.ok()?;
            Some((running, global))
        };
        let Ok(Some(permits)) = tokio::time::timeout_at(deadline.into(), waited).await else {
            return verdict(Outcome::Overloaded);
        };
        self.metrics.queue_wait.observe(started.elapsed().as_secs_f64());

        // The guests run right here, as this future: no hand-off to another thread. Every call
        // ends by its deadline (see `Sandbox::call`); this is the backstop for the chain as a
        // whole, with two epoch ticks of grace. Dropping the chain drops whatever guest it was
        // running, and the slots are freed with it.
        let _held = (admitted, permits);
        let _in_flight = InFlight::new(&self.metrics);
        let chain = CatchPanic(chain::evaluate(&self.sandbox, &generation, &rules, &input, deadline));
        match tokio::time::timeout_at((deadline + crate::plugins::sandbox::EPOCH_TICK * 2).into(), chain).await {
            Ok(Some(verdict)) => verdict,
            Ok(None) => {
                tracing::error!("a review evaluation panicked");
                verdict(Outcome::Internal)
            }
            Err(_) => verdict(Outcome::Deadline),
        }
    }
}

/// A future whose panic becomes `None`: a bug in one review's evaluation answers that review
/// with an internal error and leaves the connection and the server whole.
struct CatchPanic<F>(F);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Option<F::Output>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        // SAFETY: the inner future is never moved out of the pinned wrapper.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.0) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Some(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(None),
        }
    }
}

/// Counts an evaluation in `tollgate_evaluations_in_flight` for as long as it lives.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

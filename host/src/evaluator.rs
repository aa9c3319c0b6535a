//! Runs a chain off the async runtime, under the server-wide concurrency bound and the review
//! deadline, so a slow plugin never stalls the HTTP server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::chain::{self, Outcome, ReviewInput, Verdict};
use crate::guardrails::Guardrails;
use crate::metrics::Metrics;
use crate::sandbox::Sandbox;
use crate::tenant::Generation;

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
    pool: EvalPool,
}

/// The threads guests run on: off the async runtime, so a slow plugin never stalls it. One per
/// evaluation slot, fed by a shared queue whose workers spin briefly before they sleep: under
/// load the next review is taken without a futex wake-up and a context switch. tokio's blocking
/// pool (`spawn_blocking`) spent a third of the server's CPU per review on exactly that
/// hand-off (BENCHMARKS.md).
struct EvalPool {
    jobs: crossbeam_channel::Sender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

impl EvalPool {
    fn new(threads: usize) -> Self {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name(format!("tollgate-eval-{i}")).spawn(move || {
                while let Ok(job) = queue.recv() {
                    job();
                }
            });
            if let Err(e) = spawned {
                // Fewer threads only lowers concurrency; none at all is caught below.
                tracing::error!(error = %e, "cannot start an evaluation thread");
            }
        }
        Self { jobs }
    }

    /// Runs `f` on a pool thread. `None` if it panicked (the thread survives).
    async fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if let Ok(r) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let _ = tx.send(r);
            }
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }
}

impl Evaluator {
    /// `concurrency` reviews are evaluated at once, server-wide; the rest wait, within their
    /// deadline.
    pub fn new(sandbox: Arc<Sandbox>, concurrency: usize, review_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            sandbox,
            permits: Arc::new(Semaphore::new(concurrency)),
            review_timeout,
            metrics,
            pool: EvalPool::new(concurrency),
        }
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

        let sandbox = self.sandbox.clone();
        let metrics = self.metrics.clone();
        let task = self.pool.run(move || {
            // The slots are held until the guest is done, even if the answer went out already.
            let _held = (admitted, permits);
            let _in_flight = InFlight::new(&metrics);
            chain::evaluate(&sandbox, &generation, &rules, &input, deadline)
        });
        // The chain stops itself at the deadline (epoch interruption); this is the backstop
        // for anything that does not, with two epoch ticks of grace.
        match tokio::time::timeout_at((deadline + crate::sandbox::EPOCH_TICK * 2).into(), task).await {
            Ok(Some(verdict)) => verdict,
            Ok(None) => {
                tracing::error!("a review evaluation panicked");
                verdict(Outcome::Internal)
            }
            Err(_) => verdict(Outcome::Deadline),
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

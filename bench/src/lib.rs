//! Benchmarks of tollgate (`make bench`; see BENCHMARKS.md).
//!
//! - [`fixtures`]: the plugin directory, token and TokenReview every benchmark uses, so the
//!   in-process, end-to-end and ceiling figures all answer the same review with the same policy.
//! - [`native`]: the example policies' own Rust sources compiled for the machine itself — the
//!   "same logic as a native function" the Wasm chain is compared with, and what the ceiling
//!   server runs.
//! - [`stats`]: percentiles and medians.
//!
//! The binaries: `ceiling` (a bare axum server, the end-to-end ceiling) and `tollgate-bench`
//! (runs the load, reload and restart benchmarks against the real `tollgate` binary and writes
//! the report).

pub mod e2e;
pub mod fixtures;
pub mod native;
pub mod procs;
pub mod recompile;
pub mod reload;
pub mod report;
pub mod restart;
pub mod stats;

/// Runs a future on this thread's current-thread runtime: how the in-process benches call the
/// sandbox (its calls are futures) without a thread hand-off distorting what they time.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime");
    }
    RUNTIME.with(|runtime| runtime.block_on(future))
}

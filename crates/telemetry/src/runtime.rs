//! The async runtime of a Sluice process.
//!
//! `TOKIO_WORKER_THREADS` sets the number of runtime threads, as tokio reads it. At `1` the
//! process runs tokio's current-thread scheduler rather than a work-stealing pool of one:
//! the same single thread without the pool's cross-thread queues and wake-ups. On the shared
//! two-core benchmark machine that took a worker from 63 to 54 µs of CPU per job
//! (`scripts/bench.sh`, alternated runs).

use tokio::runtime::{Builder, Runtime};

/// Builds the runtime `main` runs on (I/O and timers enabled).
pub fn build() -> std::io::Result<Runtime> {
    let mut builder = if single_threaded(std::env::var("TOKIO_WORKER_THREADS").ok().as_deref()) {
        Builder::new_current_thread()
    } else {
        Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

fn single_threaded(threads: Option<&str>) -> bool {
    threads.is_some_and(|v| v.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_thread_asks_for_the_current_thread_scheduler() {
        assert!(single_threaded(Some("1")));
        assert!(single_threaded(Some(" 1 ")));
        assert!(!single_threaded(Some("2")));
        assert!(!single_threaded(Some("")));
        assert!(!single_threaded(None));
    }
}

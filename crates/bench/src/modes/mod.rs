//! The three workloads, each turning [`Settings`] into a [`Report`]:
//!
//! - [`submit`]: open-loop `POST /v1/jobs`, then the end-to-end drain of a sample of jobs;
//! - [`sync`]: closed-loop synchronous chat completions (`--concurrency` workers);
//! - [`rate`]: open-loop synchronous chat completions at `--rate`.

pub mod rate;
pub mod submit;
pub mod sync;

use std::time::Duration;

use crate::report::LoadFigures;
use crate::stats::PhaseStats;

/// Extra time, past the per-request timeout, to wait for outstanding requests at the end.
const FINISH_GRACE: Duration = Duration::from_secs(5);

/// Load throughput over the measured phase. A phase that overran (slow answers, a lagging
/// generator) is divided by the time it really took, never by less than `duration`.
fn load_figures(
    offered_rps: Option<f64>,
    stats: &PhaseStats,
    duration: Duration,
    issue_span: Duration,
) -> LoadFigures {
    let d = duration.as_secs_f64();
    let send_window = d.max(issue_span.as_secs_f64());
    let window = d.max(stats.last_answer.map_or(0.0, |t| t.as_secs_f64()));
    LoadFigures {
        offered_rps,
        sent_rps: stats.counts.sent as f64 / send_window,
        ok_rps: stats.counts.ok as f64 / window,
        window_seconds: window,
        counts: stats.counts.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Outcome;

    #[test]
    fn rates_divide_by_the_longer_of_duration_and_actual_span() {
        let mut stats = PhaseStats::default();
        for _ in 0..100 {
            stats.record(
                &Outcome::Ok { job_id: None },
                Duration::from_millis(1),
                None,
            );
        }
        stats.counts.sent = 100;
        stats.answered_at(Duration::from_secs(20));
        let f = load_figures(
            Some(10.0),
            &stats,
            Duration::from_secs(10),
            Duration::from_secs(5),
        );
        assert_eq!(f.sent_rps, 10.0);
        assert_eq!(f.ok_rps, 5.0);
        assert_eq!(f.window_seconds, 20.0);
    }
}

//! The end-to-end phase of `submit`: poll a sample of the accepted jobs until they are
//! terminal, then derive submit-to-completed latency and the completion throughput.
//!
//! Latency is `timings_ms.completed_at` (the service's wall clock) minus the time the
//! submission was *due* (the generator's wall clock); both run on one machine in the intended
//! set-up, so the clocks agree. Polling is bounded: `--poll-concurrency` requests at once, a
//! pause between rounds, and `--drain-timeout` overall; jobs still not terminal then are
//! counted by the last state seen.

use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::http::{Poll, Target, poll_job};
use crate::open_loop::SampledJob;
use crate::stats::Latency;

/// A last completion within this long of the last submission counts as having kept up.
pub const KEEP_UP_SLACK_MS: f64 = 5000.0;

#[derive(Debug, Clone)]
pub struct DrainOptions {
    pub concurrency: usize,
    pub timeout: Duration,
    pub pause: Duration,
    pub quiet: bool,
}

/// What the submit phase contributes to the end-to-end figures.
#[derive(Debug, Clone)]
pub struct SubmitWindow {
    /// Accepted measured jobs, of which the sample was drawn.
    pub accepted: u64,
    /// Wall clock (ms since epoch) the measured phase started and its last request was due.
    pub measure_start_wall_ms: f64,
    pub last_due_wall_ms: f64,
    pub duration: Duration,
}

/// Counts of the end-to-end phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct E2eCounts {
    pub accepted: u64,
    pub sampled: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Not terminal when the drain timed out, by last state seen.
    pub not_terminal: u64,
    pub not_terminal_queued: u64,
    pub not_terminal_in_progress: u64,
    /// Answered 404 on the last poll: an accepted job the service does not know.
    pub not_found: u64,
    /// The last poll failed (transport error, non-2xx other than 404, unreadable body).
    pub poll_failed: u64,
    /// Completed jobs without a `completed_at` timestamp (no latency recorded).
    pub missing_timestamps: u64,
    pub polls: u64,
    pub poll_errors: u64,
    pub drain_seconds: f64,
}

impl E2eCounts {
    pub fn terminal(&self) -> u64 {
        self.completed + self.failed + self.cancelled + self.expired
    }
}

/// Sustained completion rate, from the sampled jobs' `completed_at`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletionThroughput {
    /// Completions per second between the first and last sampled completion, scaled from the
    /// sample to all accepted jobs.
    pub completed_rps: f64,
    pub first_completion_ms: f64,
    pub last_completion_ms: f64,
    pub span_seconds: f64,
    /// Last completion minus the last measured submission's due time.
    pub last_completion_lag_ms: f64,
    /// Measured duration over the time from the measured start to the last completion (at
    /// most 1): 1 means completions kept pace with submissions; 0.5 means draining took as
    /// long again as submitting.
    pub keep_up_fraction: f64,
    /// Whether the last completion came within [`KEEP_UP_SLACK_MS`] of the last submission.
    pub kept_up: bool,
}

/// Everything the end-to-end phase measured.
#[derive(Debug, Clone)]
pub struct E2eRun {
    pub counts: E2eCounts,
    /// Due-to-completed, completed jobs only.
    pub e2e: Latency,
    /// Due-to-in-progress (waiting in the gateway and the queue), completed jobs only.
    pub started: Latency,
    pub throughput: Option<CompletionThroughput>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastSeen {
    NotPolled,
    Queued,
    InProgress,
    NotFound,
    PollFailed,
}

struct Pending {
    job: SampledJob,
    last: LastSeen,
}

/// Polls `sample` until every job is terminal or the drain times out.
pub async fn drain(
    target: &Target,
    sample: Vec<SampledJob>,
    window: &SubmitWindow,
    opts: &DrainOptions,
) -> E2eRun {
    let started_at = Instant::now();
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let mut counts = E2eCounts {
        accepted: window.accepted,
        sampled: sample.len() as u64,
        ..E2eCounts::default()
    };
    let mut e2e = Latency::new();
    let mut started = Latency::new();
    let mut completions = Vec::with_capacity(sample.len());
    let mut pending: Vec<Pending> = sample
        .into_iter()
        .map(|job| Pending {
            job,
            last: LastSeen::NotPolled,
        })
        .collect();
    let mut round = 0u32;

    while !pending.is_empty() && tokio::time::Instant::now() < deadline {
        round += 1;
        let polled: Vec<(Pending, Option<Poll>)> = stream::iter(pending)
            .map(|p| async move {
                let poll = tokio::time::timeout_at(deadline, poll_job(target, &p.job.id))
                    .await
                    .ok();
                (p, poll)
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        pending = Vec::new();
        for (mut p, poll) in polled {
            let Some(poll) = poll else {
                pending.push(p); // cut short by the deadline; keep what was last seen
                continue;
            };
            counts.polls += 1;
            p.last = match poll {
                Poll::Job(view) => match view.status.as_str() {
                    "completed" => {
                        counts.completed += 1;
                        match view.timings_ms.completed_at {
                            Some(done) => {
                                e2e.record_us(ms_to_us(done - p.job.due_wall_ms));
                                completions.push(done);
                            }
                            None => counts.missing_timestamps += 1,
                        }
                        if let Some(began) = view.timings_ms.in_progress_at {
                            started.record_us(ms_to_us(began - p.job.due_wall_ms));
                        }
                        continue;
                    }
                    "failed" => {
                        counts.failed += 1;
                        continue;
                    }
                    "cancelled" => {
                        counts.cancelled += 1;
                        continue;
                    }
                    "expired" => {
                        counts.expired += 1;
                        continue;
                    }
                    "in_progress" => LastSeen::InProgress,
                    _ => LastSeen::Queued,
                },
                Poll::NotFound => {
                    counts.poll_errors += 1;
                    LastSeen::NotFound
                }
                Poll::Failed => {
                    counts.poll_errors += 1;
                    LastSeen::PollFailed
                }
            };
            pending.push(p);
        }
        if !opts.quiet {
            eprintln!(
                "  drain round {round}: {} of {} sampled jobs terminal",
                counts.terminal(),
                counts.sampled
            );
        }
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep_until((tokio::time::Instant::now() + opts.pause).min(deadline)).await;
    }

    for p in &pending {
        counts.not_terminal += 1;
        match p.last {
            LastSeen::NotPolled | LastSeen::Queued => counts.not_terminal_queued += 1,
            LastSeen::InProgress => counts.not_terminal_in_progress += 1,
            LastSeen::NotFound => counts.not_found += 1,
            LastSeen::PollFailed => counts.poll_failed += 1,
        }
    }
    counts.drain_seconds = started_at.elapsed().as_secs_f64();
    let scale = if counts.sampled > 0 {
        window.accepted as f64 / counts.sampled as f64
    } else {
        1.0
    };
    let throughput = completion_throughput(&completions, scale, window);
    E2eRun {
        counts,
        e2e,
        started,
        throughput,
    }
}

/// Milliseconds (possibly negative from clock skew) to whole microseconds, at least 0.
fn ms_to_us(ms: f64) -> u64 {
    if ms.is_finite() && ms > 0.0 {
        (ms * 1000.0).round() as u64
    } else {
        0
    }
}

/// Completion rate between the first and last completion, scaled by `scale` (accepted jobs
/// per sampled job); `None` with fewer than two completions or a zero span.
pub fn completion_throughput(
    completed_at_ms: &[f64],
    scale: f64,
    window: &SubmitWindow,
) -> Option<CompletionThroughput> {
    let first = completed_at_ms
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let last = completed_at_ms
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let span_seconds = (last - first) / 1000.0;
    if completed_at_ms.len() < 2 || span_seconds.is_nan() || span_seconds <= 0.0 {
        return None;
    }
    let completed_rps = (completed_at_ms.len() - 1) as f64 / span_seconds * scale;
    let last_completion_lag_ms = last - window.last_due_wall_ms;
    let to_last = (last - window.measure_start_wall_ms) / 1000.0;
    let keep_up_fraction = if to_last > 0.0 {
        (window.duration.as_secs_f64() / to_last).min(1.0)
    } else {
        1.0
    };
    Some(CompletionThroughput {
        completed_rps,
        first_completion_ms: first,
        last_completion_ms: last,
        span_seconds,
        last_completion_lag_ms,
        keep_up_fraction,
        kept_up: last_completion_lag_ms <= KEEP_UP_SLACK_MS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> SubmitWindow {
        SubmitWindow {
            accepted: 1000,
            measure_start_wall_ms: 1_000_000.0,
            last_due_wall_ms: 1_010_000.0,
            duration: Duration::from_secs(10),
        }
    }

    #[test]
    fn throughput_is_scaled_from_the_sample() {
        // 11 sampled completions one second apart, 10 accepted jobs per sampled one.
        let done: Vec<f64> = (0..11)
            .map(|i| 1_000_500.0 + f64::from(i) * 1000.0)
            .collect();
        let t = completion_throughput(&done, 10.0, &window());
        let t = t.as_ref();
        assert_eq!(t.map(|t| t.completed_rps), Some(10.0));
        assert_eq!(t.map(|t| t.span_seconds), Some(10.0));
        assert_eq!(t.map(|t| t.last_completion_lag_ms), Some(500.0));
        assert_eq!(t.map(|t| t.kept_up), Some(true));
        assert_eq!(t.map(|t| t.keep_up_fraction), Some(10.0 / 10.5));
    }

    #[test]
    fn a_slow_drain_shows_as_not_keeping_up() {
        // Last completion 20 s after the measured start of a 10 s run.
        let t = completion_throughput(&[1_001_000.0, 1_020_000.0], 1.0, &window());
        assert_eq!(t.as_ref().map(|t| t.kept_up), Some(false));
        assert_eq!(t.as_ref().map(|t| t.keep_up_fraction), Some(0.5));
    }

    #[test]
    fn too_few_completions_give_no_rate() {
        assert_eq!(completion_throughput(&[], 1.0, &window()), None);
        assert_eq!(completion_throughput(&[5.0], 1.0, &window()), None);
        assert_eq!(completion_throughput(&[5.0, 5.0], 1.0, &window()), None);
    }

    #[test]
    fn negative_skew_clamps_to_zero() {
        assert_eq!(ms_to_us(-3.0), 0);
        assert_eq!(ms_to_us(f64::NAN), 0);
        assert_eq!(ms_to_us(1.5), 1500);
    }
}

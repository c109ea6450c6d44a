//! `sync`: a closed loop of `--concurrency` workers, each sending its next request as soon
//! as the previous one is answered. Throughput is what the service sustains at that
//! concurrency; latency is timed from the send (a closed loop has no schedule to lag).
//!
//! Series: `sync` (send to answer).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::Settings;
use crate::http::{self, BodyTemplate, ChatCompletion, Operation, Target};
use crate::report::{Report, Series};
use crate::stats::PhaseStats;

use super::{FINISH_GRACE, load_figures};

pub async fn run(settings: &Settings) -> anyhow::Result<Report> {
    let workers = settings.concurrency as usize;
    let target = Target::new(http::client(settings, workers)?, settings).await?;
    let body = BodyTemplate::new(settings, settings.priority.clone());
    let op = Arc::new(ChatCompletion::new(target.clone(), &settings.path, body));
    if !settings.quiet {
        eprintln!(
            "calling {} with {workers} workers for {:.1} s (+{:.1} s warm-up)",
            target.url(&settings.path),
            settings.duration.as_secs_f64(),
            settings.warmup.as_secs_f64()
        );
    }
    let stats = closed_loop(
        op,
        workers,
        settings.warmup,
        settings.duration,
        settings.timeout + FINISH_GRACE,
    )
    .await;
    Ok(Report {
        mode: settings.mode,
        target: target.url(&settings.path),
        settings: settings.clone(),
        load: load_figures(None, &stats, settings.duration, settings.duration),
        latency: vec![Series::new("sync", "sent -> answer", &stats.latency)],
        end_to_end: None,
    })
}

/// Runs `workers` closed-loop workers; requests sent during `warmup` are not recorded, and no
/// request starts after `warmup + duration`.
pub async fn closed_loop<O: Operation>(
    op: Arc<O>,
    workers: usize,
    warmup: Duration,
    duration: Duration,
    finish_timeout: Duration,
) -> PhaseStats {
    let start = Instant::now();
    let measure_start = start + warmup;
    let end = measure_start + duration;
    let seq = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let op = op.clone();
        let seq = seq.clone();
        set.spawn(async move {
            let mut stats = PhaseStats::default();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let outcome = op.call(seq.fetch_add(1, Ordering::Relaxed)).await;
                let done = Instant::now();
                if sent >= measure_start {
                    stats.counts.sent += 1;
                    stats.record(&outcome, done - sent, None);
                    stats.answered_at(done - measure_start);
                }
            }
            stats
        });
    }

    let mut total = PhaseStats::default();
    let deadline = end + finish_timeout;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, set.join_next()).await {
        if let Ok(stats) = joined {
            total.merge(&stats);
        }
    }
    // Workers still running past the deadline are abandoned; their figures are lost.
    set.abort_all();
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Outcome;

    struct Alternating;

    impl Operation for Alternating {
        async fn call(&self, seq: u64) -> Outcome {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if seq.is_multiple_of(2) {
                Outcome::Ok { job_id: None }
            } else {
                Outcome::Rejected { status: 503 }
            }
        }
    }

    #[tokio::test]
    async fn workers_record_every_measured_answer() {
        let stats = closed_loop(
            Arc::new(Alternating),
            4,
            Duration::from_millis(50),
            Duration::from_millis(200),
            Duration::from_secs(5),
        )
        .await;
        let c = &stats.counts;
        assert!(c.sent > 0);
        assert_eq!(c.finished(), c.sent);
        assert_eq!(c.ok + c.rejected_503, c.sent);
        assert_eq!(stats.latency.len(), c.ok);
    }
}

//! The open-loop driver: issues requests on a fixed schedule whatever the answers do.
//!
//! One ticker task walks the [`Schedule`]: it sleeps until the next request is due on a
//! [`PreciseTimer`] (tokio's own timer has millisecond ticks and would release requests in
//! bursts up to ~1 ms late) and spawns the request as its own task on the same runtime, so
//! issuing a request costs one timer wake-up and no hand-over between threads. Whatever
//! delay remains counts as latency, and the `service` series (timed from the actual send)
//! shows how much of the latency was the generator's.
//!
//! At most `max_in_flight` requests are outstanding. A request that falls due while the cap is
//! reached is **not sent**: it counts as `dropped_by_generator` and records no latency, so a
//! large drop count means the latency figures describe only the requests that went out.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::http::Operation;
use crate::sample::Reservoir;
use crate::schedule::Schedule;
use crate::stats::{Outcome, PhaseStats};
use crate::timer::PreciseTimer;

/// How often the ticker prints a progress line (when not quiet).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// An accepted job picked for the end-to-end phase.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledJob {
    pub id: String,
    /// When the submission was due, in milliseconds since the Unix epoch.
    pub due_wall_ms: f64,
}

/// How the driver runs.
#[derive(Debug, Clone)]
pub struct OpenLoopOptions {
    pub max_in_flight: usize,
    /// Accepted job ids to keep for the end-to-end phase (0: none).
    pub sample: usize,
    /// Longest wait for outstanding requests after the last one was issued.
    pub finish_timeout: Duration,
    pub quiet: bool,
}

/// What one open-loop run measured.
#[derive(Debug)]
pub struct OpenLoopRun {
    pub stats: PhaseStats,
    /// Accepted measured jobs seen, and the uniform sample of them.
    pub accepted_jobs: u64,
    pub sample: Vec<SampledJob>,
    /// Wall clock of the run's start (schedule offset zero), ms since the Unix epoch.
    pub wall_start_ms: f64,
    /// From the measured phase's start until its last request was issued (or dropped).
    pub issue_span: Duration,
}

struct Shared {
    stats: Mutex<PhaseStats>,
    sample: Mutex<Reservoir<SampledJob>>,
}

fn now_wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Runs `op` on `schedule` and returns the measured phase's figures.
pub async fn run<O: Operation>(
    op: Arc<O>,
    schedule: &Schedule,
    opts: &OpenLoopOptions,
) -> anyhow::Result<OpenLoopRun> {
    let shared = Arc::new(Shared {
        stats: Mutex::new(PhaseStats::default()),
        sample: Mutex::new(Reservoir::new(opts.sample, seed())),
    });
    let tracker = TaskTracker::new();
    let start = Instant::now();
    let wall_start_ms = now_wall_ms();
    let ticker = Ticker {
        op,
        schedule: schedule.clone(),
        shared: shared.clone(),
        permits: Arc::new(Semaphore::new(
            opts.max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
        )),
        tracker: tracker.clone(),
        max_in_flight: opts.max_in_flight,
        quiet: opts.quiet,
        start,
        wall_start_ms,
    };
    let issued = ticker.run().await?;

    tracker.close();
    if tokio::time::timeout(opts.finish_timeout, tracker.wait())
        .await
        .is_err()
        && !opts.quiet
    {
        eprintln!(
            "  some requests were still outstanding after {:?}",
            opts.finish_timeout
        );
    }

    let mut stats = shared
        .stats
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    stats.counts.scheduled = schedule.measured_count();
    stats.counts.sent = issued.sent;
    stats.counts.dropped_by_generator = issued.dropped;
    stats.counts.unfinished = stats.counts.sent.saturating_sub(stats.counts.finished());
    let reservoir = std::mem::replace(
        &mut *shared.sample.lock().unwrap_or_else(PoisonError::into_inner),
        Reservoir::new(0, 0),
    );
    let measure_start = start + schedule.measure_start();
    Ok(OpenLoopRun {
        stats,
        accepted_jobs: reservoir.seen(),
        sample: reservoir.into_items(),
        wall_start_ms,
        issue_span: issued.last_measured.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(measure_start)
        }),
    })
}

/// What the ticker did in the measured phase.
struct Issued {
    sent: u64,
    dropped: u64,
    /// When the last measured request was issued or dropped.
    last_measured: Option<Instant>,
}

/// The schedule walker: sleeps with the OS timer's precision (tens of microseconds) and
/// spawns each request as a task.
struct Ticker<O> {
    op: Arc<O>,
    schedule: Schedule,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    max_in_flight: usize,
    quiet: bool,
    start: Instant,
    wall_start_ms: f64,
}

impl<O: Operation> Ticker<O> {
    async fn run(self) -> anyhow::Result<Issued> {
        let mut timer = PreciseTimer::new().context("creating the schedule timer")?;
        let mut issued = Issued {
            sent: 0,
            dropped: 0,
            last_measured: None,
        };
        let mut last_progress = self.start;
        for seq in 0..self.schedule.total() {
            let offset = self.schedule.offset(seq);
            timer
                .sleep_until(self.start + offset)
                .await
                .context("waiting for the next request")?;
            let measured = self.schedule.is_measured(seq);
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    self.tracker
                        .spawn(self.request(seq, offset, measured, permit));
                    issued.sent += u64::from(measured);
                }
                Err(_) => issued.dropped += u64::from(measured),
            }
            if measured {
                issued.last_measured = Some(Instant::now());
            }
            if !self.quiet && last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                eprintln!(
                    "  t={:>6.1}s issued {seq}/{}  in flight {}  dropped {}",
                    self.start.elapsed().as_secs_f64(),
                    self.schedule.total(),
                    self.max_in_flight
                        .saturating_sub(self.permits.available_permits()),
                    issued.dropped,
                );
            }
        }
        Ok(issued)
    }

    /// The task sending request `seq`, due at `offset`, and recording how it went.
    fn request(
        &self,
        seq: u64,
        offset: Duration,
        measured: bool,
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send + 'static {
        let op = self.op.clone();
        let shared = self.shared.clone();
        let due = self.start + offset;
        let measure_start = self.start + self.schedule.measure_start();
        let due_wall_ms = self.wall_start_ms + offset.as_secs_f64() * 1000.0;
        async move {
            let sent_at = Instant::now();
            let mut outcome = op.call(seq).await;
            let done = Instant::now();
            drop(permit);
            if !measured {
                return;
            }
            let job = match &mut outcome {
                Outcome::Ok { job_id } => job_id.take(),
                _ => None,
            };
            {
                let mut stats = shared.stats.lock().unwrap_or_else(PoisonError::into_inner);
                stats.record(
                    &outcome,
                    done.saturating_duration_since(due),
                    Some(done.saturating_duration_since(sent_at)),
                );
                stats.answered_at(done.saturating_duration_since(measure_start));
            }
            if let Some(id) = job {
                let mut sample = shared.sample.lock().unwrap_or_else(PoisonError::into_inner);
                sample.offer(SampledJob { id, due_wall_ms });
            }
        }
    }
}

fn seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x5eed, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Canned;

    impl Operation for Canned {
        async fn call(&self, seq: u64) -> Outcome {
            match seq % 4 {
                0 => Outcome::Rejected { status: 429 },
                1 => Outcome::HttpError { status: 500 },
                _ => Outcome::Ok {
                    job_id: Some(format!("job-{seq}")),
                },
            }
        }
    }

    #[tokio::test]
    async fn every_scheduled_request_is_accounted_for() -> anyhow::Result<()> {
        let schedule = Schedule::new(
            200.0,
            Duration::from_millis(100),
            Duration::from_millis(500),
        )?;
        // No cap the canned answers could reach on a busy machine: every request is sent.
        let opts = OpenLoopOptions {
            max_in_flight: 10_000,
            sample: 1000,
            finish_timeout: Duration::from_secs(1),
            quiet: true,
        };
        let run = run(Arc::new(Canned), &schedule, &opts).await?;
        let c = &run.stats.counts;
        assert_eq!(c.scheduled, 100);
        assert_eq!(c.sent + c.dropped_by_generator, c.scheduled);
        assert_eq!(c.finished() + c.unfinished, c.sent);
        // Warm-up is sequences 0..20; measured 20..120: 25 each of the four residues.
        assert_eq!(c.rejected_429, 25);
        assert_eq!(c.http_error_total(), 25);
        assert_eq!(c.ok, 50);
        assert_eq!(run.accepted_jobs, 50);
        assert_eq!(run.sample.len(), 50);
        assert!(run.sample.iter().all(|j| j.id.starts_with("job-")));
        Ok(())
    }
}

//! Workers: bounded, priority-aware JetStream consumers.
//!
//! A worker replica holds `worker.concurrency` slots (a semaphore). Its fetch loop asks the
//! broker for exactly as many messages as it has free slots — `high` first, then `normal`,
//! then `low`, with a guaranteed share for the lower classes ([`schedule`]) — so nothing
//! waits unacknowledged on the client. Each job runs in its own task ([`job`]), and its
//! delivery is settled in one place ([`apply`]) only after the outcome is in Redis.
//!
//! On shutdown the loop stops fetching; in-flight jobs get `worker.shutdown_grace_s` to
//! finish, then are released to the broker for another replica.
//!
//! # Layout
//! - [`job`]: one delivery — decode, in-flight slot, start, upstream call with heartbeats.
//! - [`attempt`]: the pure `decide` from what the delivery came to, to a decision.
//! - [`apply`]: performs a decision — records the end, settles, acks/NAKs/dead-letters.
//! - [`call`]: the upstream call of one attempt (routing, then the model pools);
//!   [`streamed`]: the same for `stream: true`, forwarding chunks as job events.
//! - [`hold`]: keeping a message through a store outage instead of spending attempts.
//! - [`governance`]: the per-tenant in-flight cap (deferrals) and settling reservations.
//! - [`backoff`]: redelivery delays; [`schedule`]: the fetch order between priorities.
//! - [`cancel`]: cancelling running jobs; [`advisory`]: dead-lettering what the server
//!   stopped delivering.
//! - [`observe`]: each delivery's CONSUMER span and the job, token and cost metrics.
//! - [`semantic`]: publishing a semantic-cache insertion once an answer is stored.
//! - [`summary`]: the worker's part of the live dashboard, written to Redis periodically.
//!
//! The worker is given its [`WorkerSettings`] (built once from the file's `Config`), not
//! the whole configuration.

pub mod advisory;
pub mod apply;
pub mod attempt;
pub mod backoff;
pub mod call;
pub mod cancel;
pub mod governance;
pub mod hold;
pub mod job;
pub mod observe;
pub mod schedule;
pub mod semantic;
pub mod streamed;
pub mod summary;

use std::{sync::Arc, time::Duration};

use futures_util::{FutureExt, StreamExt};
use sluice_config::WorkerSettings;
use sluice_protocol::Priority;
use sluice_providers::Pools;
use sluice_queue::{
    Delivery, Queue,
    consumer::{Releaser, releaser},
    puller::Puller,
    setup::ConsumerSettings,
};
use sluice_store::Store;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

/// What every job task shares.
pub struct Shared {
    pub cfg: WorkerSettings,
    pub queue: Queue,
    pub store: Store,
    pub pools: Pools,
    pub gov: sluice_governance::Governor,
    /// Running jobs' cancellation tokens ([`cancel`]).
    pub running: Arc<cancel::Running>,
    /// What the dashboard is told ([`summary`]).
    pub summary: summary::Summary,
    /// The tenants' kill switches as last read ([`governance::disabled`]).
    pub kill_switches: governance::KillSwitches,
}

/// A running worker replica.
pub struct Worker {
    stop_fetching: CancellationToken,
    stop_jobs: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
}

impl Worker {
    /// Connects, makes sure streams and consumers exist (retrying while the broker is away),
    /// and starts the fetch loop.
    pub async fn start(cfg: WorkerSettings) -> anyhow::Result<Worker> {
        let queue = Queue::connect(&cfg.nats, "sluice-worker").await?;
        let store = Store::new(&cfg.redis)?;
        let pools = Pools::new(&cfg.providers)?;
        let grace = cfg.worker.shutdown_grace;
        let gov = sluice_governance::Governor::new(store.clone(), cfg.governance.clone());
        let running = cancel::Running::new(cfg.delivery.max_tracked_jobs);
        let shared = Arc::new(Shared {
            cfg,
            queue,
            store,
            pools,
            gov,
            running,
            summary: summary::Summary::new(),
            kill_switches: Default::default(),
        });
        let worker = Worker {
            stop_fetching: CancellationToken::new(),
            stop_jobs: CancellationToken::new(),
            tasks: TaskTracker::new(),
            grace,
        };
        if let Some(sub) = advisory::subscribe(&shared.queue).await {
            worker.tasks.spawn(advisory::run(
                sub,
                shared.queue.clone(),
                shared.store.clone(),
                worker.stop_fetching.clone(),
            ));
        }
        let (release, release_task) = releaser(4096);
        worker.tasks.spawn(release_task);
        if shared.cfg.webhooks.dispatcher {
            worker.tasks.spawn(sluice_webhooks::dispatcher::run(
                shared.cfg.webhooks.clone(),
                shared.queue.clone(),
                shared.store.clone(),
                worker.stop_fetching.clone(),
            ));
        }
        worker.tasks.spawn(observe::poll_queues(
            shared.queue.clone(),
            Duration::from_secs(5),
            worker.stop_fetching.clone(),
        ));
        worker.tasks.spawn(summary::report(
            shared.clone(),
            worker.stop_fetching.clone(),
        ));
        worker.tasks.spawn(cancel::listen(
            shared.queue.clone(),
            shared.running.clone(),
            worker.stop_fetching.clone(),
        ));
        let fetcher = Fetcher {
            shared,
            slots: Arc::new(Semaphore::new(0)),
            release,
            tasks: worker.tasks.clone(),
            stop_fetching: worker.stop_fetching.clone(),
            stop_jobs: worker.stop_jobs.clone(),
        };
        worker.tasks.spawn(fetcher.run());
        Ok(worker)
    }

    /// Stops fetching, waits up to the grace period for in-flight jobs, then releases the
    /// rest to the broker and waits for them to be handed back.
    pub async fn shutdown(self) {
        self.stop_fetching.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::info!("grace period over; releasing in-flight jobs");
            self.stop_jobs.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await;
        }
    }
}

struct Fetcher {
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    release: Releaser,
    tasks: TaskTracker,
    stop_fetching: CancellationToken,
    stop_jobs: CancellationToken,
}

impl Fetcher {
    /// Rounds ask the classes that may have work, in priority order, for as many messages as
    /// there are free slots. Which classes may have work is known from the doorbell: ingest
    /// rings `ring.<priority>` after every publish, and a fetch that comes back short marks
    /// its class empty until the next ring. So an idle worker fetches the moment a job is
    /// published, and a busy one does not ask empty classes over and over. A periodic
    /// re-check covers rings lost to a reconnect.
    async fn run(self) {
        let Some(mut pullers) = self.pullers().await else {
            return;
        };
        let queue = &self.shared.queue;
        let mut doorbell = match queue
            .client()
            .subscribe(queue.subjects().ring_wildcard())
            .await
        {
            Ok(sub) => Some(sub),
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to the doorbell; polling instead");
                None
            }
        };
        let w = &self.shared.cfg.worker;
        self.slots.add_permits(w.concurrency);
        let recheck = w.idle_poll.max(Duration::from_millis(10));
        let batch_target = (w.concurrency / 8).clamp(1, 64);
        let mut maybe = [true; 3];
        let mut round: u64 = 0;
        let mut failures: u32 = 0;
        let mut backlog = false;
        let mut last_recheck = tokio::time::Instant::now();
        loop {
            self.drain_rings(&mut doorbell, &mut maybe);
            if last_recheck.elapsed() >= recheck {
                maybe = [true; 3];
                last_recheck = tokio::time::Instant::now();
            }
            if !maybe.iter().any(|m| *m) {
                // Nothing to do until a ring (or the periodic re-check).
                let rang = async {
                    match doorbell.as_mut() {
                        Some(sub) => sub.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    msg = rang => match msg {
                        Some(m) => self.mark(&m.subject, &mut maybe),
                        None => doorbell = None,
                    },
                    _ = tokio::time::sleep_until(last_recheck + recheck) => {}
                    _ = self.stop_fetching.cancelled() => break,
                }
                continue;
            }
            let first = tokio::select! {
                p = self.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = self.stop_fetching.cancelled() => break,
            };
            let mut free = first;
            if backlog {
                // The last round found more work than it had room for: gather a few more free
                // slots before asking, so a busy worker fetches in batches rather than one
                // round trip per finished job.
                let deadline = tokio::time::Instant::now() + BATCH_GATHER;
                while free.num_permits() < batch_target {
                    match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned())
                        .await
                    {
                        Ok(Ok(p)) => free.merge(p),
                        _ => break,
                    }
                }
            }
            let more = self.slots.available_permits();
            if more > 0
                && let Ok(p) = self.slots.clone().try_acquire_many_owned(more as u32)
            {
                free.merge(p);
            }
            let asked = free.num_permits();
            round += 1;
            let (got, errored) = self.round(&mut pullers, &mut maybe, free, round).await;
            if errored {
                failures = failures.saturating_add(1);
                let pause = Duration::from_millis(100 * u64::from(failures.min(20)));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = self.stop_fetching.cancelled() => break,
                }
                maybe = [true; 3];
                continue;
            }
            failures = 0;
            backlog = got == asked;
        }
    }

    /// Applies every ring already received, without waiting.
    fn drain_rings(&self, doorbell: &mut Option<async_nats::Subscriber>, maybe: &mut [bool; 3]) {
        let Some(sub) = doorbell.as_mut() else { return };
        for _ in 0..100_000 {
            match sub.next().now_or_never() {
                Some(Some(m)) => self.mark(&m.subject, maybe),
                Some(None) => {
                    *doorbell = None;
                    return;
                }
                None => return,
            }
        }
    }

    fn mark(&self, subject: &str, maybe: &mut [bool; 3]) {
        match self.shared.queue.subjects().priority_of(subject) {
            Some(p) => maybe[p.index()] = true,
            None => *maybe = [true; 3],
        }
    }

    /// One round: each class that may have work, in this round's order, as many as the free
    /// slots allow. Returns how many messages were dispatched and whether a fetch failed.
    async fn round(
        &self,
        pullers: &mut [Puller; 3],
        maybe: &mut [bool; 3],
        mut free: OwnedSemaphorePermit,
        round: u64,
    ) -> (usize, bool) {
        let mut got = 0usize;
        let mut errored = false;
        for p in schedule::fetch_order(round, self.shared.cfg.worker.low_share_every) {
            let i = p.index();
            let want = free.num_permits();
            if want == 0 {
                break;
            }
            if !maybe[i] {
                continue;
            }
            match pullers[i].fetch(want, FETCH_LIMIT).await {
                Ok(msgs) => {
                    maybe[i] = msgs.len() == want;
                    got += msgs.len();
                    for m in msgs {
                        if let Some(slot) = free.split(1) {
                            self.dispatch(m, slot);
                        }
                    }
                }
                Err(e) => {
                    errored = true;
                    tracing::warn!(class = %p, error = %e, "fetch failed");
                }
            }
        }
        (got, errored)
    }

    fn dispatch(&self, msg: async_nats::jetstream::Message, permit: OwnedSemaphorePermit) {
        if self.stop_jobs.is_cancelled() {
            drop(Delivery::new(msg, Some(self.release.clone())));
            return;
        }
        let observed = observe::delivered(&self.shared, &msg);
        let delivery = Delivery::new(msg, Some(self.release.clone()));
        let shared = self.shared.clone();
        let stop = self.stop_jobs.clone();
        let span = observed.span.clone();
        self.tasks.spawn(
            async move {
                let _permit = permit;
                let ended = job::run(&shared, delivery, &stop).await;
                observe::ended(&observed, ended);
                observe::settled(&shared);
            }
            .instrument(span),
        );
    }

    async fn pullers(&self) -> Option<[Puller; 3]> {
        let w = &self.shared.cfg.worker;
        let settings = ConsumerSettings {
            ack_wait: w.ack_wait,
            max_attempts: w.max_attempts,
        };
        let queue = &self.shared.queue;
        let stream = queue.subjects().jobs_stream();
        let mut delay = Duration::from_millis(200);
        loop {
            let attempt = async {
                queue.ensure_streams().await?;
                let mut out = Vec::with_capacity(3);
                for p in Priority::ALL {
                    queue.ensure_consumer(p, settings).await?;
                    out.push(Puller::new(queue, &stream, &queue.subjects().consumer(p)).await?);
                }
                Ok::<_, sluice_queue::QueueError>(out)
            };
            match attempt.await {
                Ok(v) => {
                    if let Ok(arr) = <[Puller; 3]>::try_from(v) {
                        return Some(arr);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot set up consumers yet; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop_fetching.cancelled() => return None,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Longest wait for the answer to a no-wait fetch.
const FETCH_LIMIT: Duration = Duration::from_secs(2);

/// How long a busy fetch loop may wait to gather a batch of free slots.
const BATCH_GATHER: Duration = Duration::from_millis(2);

//! Workers: bounded, priority-aware JetStream consumers.
//!
//! A worker replica holds `worker.concurrency` slots (a semaphore). Its fetch loop asks the
//! broker for exactly as many messages as it has free slots — `high` first, then `normal`,
//! then `low`, with a guaranteed share for the lower classes ([`schedule`]) — so nothing
//! waits unacknowledged on the client. Each job runs in its own task ([`job`]), and its
//! delivery is settled in one place ([`settle`]) only after the outcome is in Redis.
//!
//! On shutdown the loop stops fetching; in-flight jobs get `worker.shutdown_grace_s` to
//! finish, then are released to the broker for another replica.

pub mod backoff;
pub mod governance;
pub mod job;
pub mod schedule;
pub mod settle;

use std::{sync::Arc, time::Duration};

use futures_util::{FutureExt, StreamExt};
use sluice_config::Config;
use sluice_protocol::Priority;
use sluice_providers::OpenAiProvider;
use sluice_queue::{
    Delivery, Queue,
    consumer::{Releaser, releaser},
    puller::Puller,
    setup::ConsumerSettings,
};
use sluice_store::Store;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// What every job task shares.
pub struct Shared {
    pub cfg: Config,
    pub queue: Queue,
    pub store: Store,
    pub provider: OpenAiProvider,
    pub gov: sluice_governance::Governor,
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
    pub async fn start(cfg: Config) -> anyhow::Result<Worker> {
        let queue = Queue::connect(&cfg.nats, "sluice-worker").await?;
        let store = Store::new(&cfg.redis)?;
        let api_key = match &cfg.upstream.api_key {
            Some(r) => Some(r.resolve()?),
            None => None,
        };
        let provider = OpenAiProvider::new(&cfg.upstream, api_key)?;
        let grace = Duration::from_secs(cfg.worker.shutdown_grace_s);
        let gov = sluice_governance::Governor::new(store.clone(), cfg.governance.clone());
        let shared = Arc::new(Shared {
            cfg,
            queue,
            store,
            provider,
            gov,
        });
        let worker = Worker {
            stop_fetching: CancellationToken::new(),
            stop_jobs: CancellationToken::new(),
            tasks: TaskTracker::new(),
            grace,
        };
        let (release, release_task) = releaser(4096);
        worker.tasks.spawn(release_task);
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
    /// Rounds ask every class in priority order for as many messages as there are free
    /// slots. When a round finds nothing the loop goes idle: it listens on a core-NATS
    /// subscription to the job subjects (the doorbell), so a new job is fetched the moment it
    /// is published, without holding slots or polling. The doorbell is dropped again after
    /// a while of continuous work, so a busy worker does not receive a copy of every job.
    async fn run(self) {
        let Some(mut pullers) = self.pullers().await else {
            return;
        };
        let w = &self.shared.cfg.worker;
        self.slots.add_permits(w.concurrency);
        let recheck = Duration::from_millis(w.idle_poll_ms.max(10));
        let batch_target = (w.concurrency / 8).clamp(1, 64);
        let mut round: u64 = 0;
        let mut failures: u32 = 0;
        let mut backlog = false;
        let mut doorbell: Option<async_nats::Subscriber> = None;
        let mut busy_since: Option<tokio::time::Instant> = None;
        loop {
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
            let (got, errored) = self.round(&mut pullers, free, round).await;
            if errored {
                failures = failures.saturating_add(1);
                let pause = Duration::from_millis(100 * u64::from(failures.min(20)));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = self.stop_fetching.cancelled() => break,
                }
                continue;
            }
            failures = 0;
            backlog = got == asked;
            if got > 0 {
                let since = *busy_since.get_or_insert_with(tokio::time::Instant::now);
                if doorbell.is_some() && since.elapsed() > DOORBELL_LINGER {
                    doorbell = None;
                }
                continue;
            }
            busy_since = None;
            // Idle. Listen first, then look once more, so a job published in between is not
            // missed; then wait for the doorbell (or a periodic re-check).
            if doorbell.is_none() {
                match self
                    .shared
                    .queue
                    .client()
                    .subscribe(self.shared.queue.subjects().jobs_wildcard())
                    .await
                {
                    Ok(sub) => {
                        doorbell = Some(sub);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot subscribe to the job subjects; polling")
                    }
                }
            }
            if let Some(sub) = doorbell.as_mut() {
                // Rings buffered while busy may be for jobs published after the last round:
                // if there were any, look again instead of waiting.
                let mut buffered = 0usize;
                while buffered < 100_000 && matches!(sub.next().now_or_never(), Some(Some(_))) {
                    buffered += 1;
                }
                if buffered > 0 {
                    continue;
                }
            }
            let rang = async {
                match doorbell.as_mut() {
                    Some(sub) => sub.next().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                open = rang => if !open { doorbell = None },
                _ = tokio::time::sleep(recheck) => {}
                _ = self.stop_fetching.cancelled() => break,
            }
        }
    }

    /// One round: each class in this round's order, as many as the free slots allow.
    /// Returns how many messages were dispatched and whether a fetch failed.
    async fn round(
        &self,
        pullers: &mut [Puller; 3],
        mut free: OwnedSemaphorePermit,
        round: u64,
    ) -> (usize, bool) {
        let mut got = 0usize;
        let mut errored = false;
        for p in schedule::fetch_order(round, self.shared.cfg.worker.low_share_every) {
            let want = free.num_permits();
            if want == 0 {
                break;
            }
            match pullers[index(p)].fetch(want, FETCH_LIMIT).await {
                Ok(msgs) => {
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
        let delivery = Delivery::new(msg, Some(self.release.clone()));
        if self.stop_jobs.is_cancelled() {
            drop(delivery);
            return;
        }
        let shared = self.shared.clone();
        let stop = self.stop_jobs.clone();
        self.tasks.spawn(async move {
            let _permit = permit;
            metrics::gauge!("sluice_worker_in_flight").increment(1.0);
            let outcome = job::run(&shared, &delivery, &stop).await;
            settle::settle(&shared, delivery, outcome).await;
            metrics::gauge!("sluice_worker_in_flight").decrement(1.0);
        });
    }

    async fn pullers(&self) -> Option<[Puller; 3]> {
        let w = &self.shared.cfg.worker;
        let settings = ConsumerSettings {
            ack_wait: Duration::from_secs(w.ack_wait_s),
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

/// How long a worker keeps its doorbell subscription through continuous work.
const DOORBELL_LINGER: Duration = Duration::from_millis(200);

/// How long a busy fetch loop may wait to gather a batch of free slots.
const BATCH_GATHER: Duration = Duration::from_millis(2);

fn index(p: Priority) -> usize {
    match p {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

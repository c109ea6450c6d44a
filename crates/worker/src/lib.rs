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
pub mod cancel;
pub mod job;
pub mod schedule;
pub mod settle;
pub mod streamed;

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use sluice_config::Config;
use sluice_protocol::Priority;
use sluice_providers::OpenAiProvider;
use sluice_queue::{
    Delivery, Queue,
    consumer::{PullConsumer, Releaser, fetch_now, fetch_wait, releaser},
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
    /// Running jobs' cancellation tokens ([`cancel`]).
    pub running: Arc<cancel::Running>,
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
        let running = cancel::Running::new(cfg.delivery.max_tracked_jobs);
        let shared = Arc::new(Shared { cfg, queue, store, provider, running });
        let worker = Worker {
            stop_fetching: CancellationToken::new(),
            stop_jobs: CancellationToken::new(),
            tasks: TaskTracker::new(),
            grace,
        };
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
        if tokio::time::timeout(self.grace, self.tasks.wait()).await.is_err() {
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
    async fn run(self) {
        let Some(consumers) = self.consumers().await else { return };
        self.slots.add_permits(self.shared.cfg.worker.concurrency);
        let every = self.shared.cfg.worker.low_share_every;
        let idle_poll = Duration::from_millis(self.shared.cfg.worker.idle_poll_ms.max(10));
        let mut round: u64 = 0;
        let mut failures: u32 = 0;
        loop {
            let first = tokio::select! {
                p = self.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = self.stop_fetching.cancelled() => return,
            };
            let mut free = first;
            let more = self.slots.available_permits();
            if more > 0 && let Ok(p) = self.slots.clone().try_acquire_many_owned(more as u32) {
                free.merge(p);
            }
            round += 1;
            let mut got = 0usize;
            let mut errored = false;
            for class in schedule::fetch_order(round, every) {
                let want = free.num_permits();
                if want == 0 {
                    break;
                }
                match fetch_now(&consumers[index(class)], want).await {
                    Ok(msgs) => {
                        got += msgs.len();
                        for m in msgs {
                            self.dispatch(m, &mut free);
                        }
                    }
                    Err(e) => {
                        errored = true;
                        tracing::warn!(class = %class, error = %e, "fetch failed");
                    }
                }
            }
            if errored {
                failures = failures.saturating_add(1);
                drop(free);
                let pause = Duration::from_millis(100 * u64::from(failures.min(20)));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = self.stop_fetching.cancelled() => return,
                }
                continue;
            }
            failures = 0;
            if got == 0 {
                self.idle_poll(&consumers, free, idle_poll).await;
            }
        }
    }

    /// Everything is empty: one long-poll pull per class, sized to the free slots, taking
    /// messages as they arrive until the polls expire.
    async fn idle_poll(&self, consumers: &[PullConsumer; 3], mut free: OwnedSemaphorePermit, expires: Duration) {
        let split = schedule::idle_split(free.num_permits());
        let mut streams = Vec::new();
        for (i, want) in split.into_iter().enumerate() {
            if want == 0 {
                continue;
            }
            match fetch_wait(&consumers[i], want, expires).await {
                Ok(s) => streams.push(s),
                Err(e) => tracing::warn!(error = %e, "long-poll failed"),
            }
        }
        if streams.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(expires) => {}
                _ = self.stop_fetching.cancelled() => {}
            }
            return;
        }
        let mut merged = futures_util::stream::select_all(streams);
        // Pull requests already sent must be drained even during shutdown, or the messages
        // they deliver would wait for ack_wait; they end by themselves at `expires`.
        while let Some(item) = merged.next().await {
            match item {
                Ok(m) => self.dispatch(m, &mut free),
                Err(e) => tracing::debug!(error = %e, "long-poll ended with an error"),
            }
        }
    }

    fn dispatch(&self, msg: async_nats::jetstream::Message, free: &mut OwnedSemaphorePermit) {
        let delivery = Delivery::new(msg, Some(self.release.clone()));
        let Some(permit) = free.split(1) else {
            // Cannot happen (we never ask for more than we hold); hand it back regardless.
            drop(delivery);
            return;
        };
        if self.stop_fetching.is_cancelled() && self.stop_jobs.is_cancelled() {
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

    async fn consumers(&self) -> Option<[PullConsumer; 3]> {
        let w = &self.shared.cfg.worker;
        let settings = ConsumerSettings {
            ack_wait: Duration::from_secs(w.ack_wait_s),
            max_attempts: w.max_attempts,
        };
        let mut delay = Duration::from_millis(200);
        loop {
            let attempt = async {
                self.shared.queue.ensure_streams().await?;
                let mut out = Vec::with_capacity(3);
                for p in Priority::ALL {
                    out.push(self.shared.queue.ensure_consumer(p, settings).await?);
                }
                Ok::<_, sluice_queue::QueueError>(out)
            };
            match attempt.await {
                Ok(v) => {
                    if let Ok(arr) = <[PullConsumer; 3]>::try_from(v) {
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

fn index(p: Priority) -> usize {
    match p {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

//! Cancelling running jobs.
//!
//! Ingest records `cancelled` in Redis (so a queued job never starts: the state machine
//! refuses `in_progress` afterwards) and broadcasts the job id on the core NATS subject
//! `{ns.}cancel`. Every worker listens; the one running the job finds its token in
//! [`Running`] and fires it, which drops the upstream call (the connection closes, the
//! provider stops generating). The map is bounded; a job is registered before its start is
//! recorded, so a cancel that lands between the two is not missed.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use futures_util::StreamExt;
use sluice_queue::Queue;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Tokens of the jobs this worker is running, by job id.
pub struct Running {
    jobs: Mutex<HashMap<Uuid, (u64, CancellationToken)>>,
    next: AtomicU64,
    cap: usize,
}

/// A registration; dropping it forgets the job.
pub struct Tracked {
    running: Arc<Running>,
    id: Uuid,
    serial: u64,
    pub token: CancellationToken,
}

impl Running {
    pub fn new(cap: usize) -> Arc<Running> {
        Arc::new(Running {
            jobs: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            cap,
        })
    }

    /// Registers job `id`. When the map is full the job still runs, just not cancellably
    /// mid-call (its `cancelled` record still wins over a late result).
    pub fn track(self: &Arc<Self>, id: Uuid) -> Tracked {
        let token = CancellationToken::new();
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut jobs) = self.jobs.lock() {
            if jobs.len() < self.cap || jobs.contains_key(&id) {
                jobs.insert(id, (serial, token.clone()));
            } else {
                tracing::warn!("cancellation map full; job not cancellable mid-call");
            }
        }
        Tracked {
            running: self.clone(),
            id,
            serial,
            token,
        }
    }

    /// Fires the token of job `id` if it runs here.
    pub fn cancel(&self, id: Uuid) -> bool {
        let token = self
            .jobs
            .lock()
            .ok()
            .and_then(|jobs| jobs.get(&id).map(|(_, t)| t.clone()));
        token.map(|t| t.cancel()).is_some()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.running.jobs.lock()
            && jobs.get(&self.id).is_some_and(|(s, _)| *s == self.serial)
        {
            jobs.remove(&self.id);
        }
    }
}

/// Listens on the cancellation subject until `stop`, resubscribing after errors.
pub async fn listen(queue: Queue, running: Arc<Running>, stop: CancellationToken) {
    let subject = queue.subjects().cancellations();
    loop {
        let sub = tokio::select! {
            s = queue.client().subscribe(subject.clone()) => s,
            _ = stop.cancelled() => return,
        };
        let mut sub = match sub {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to cancellations; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        loop {
            let msg = tokio::select! {
                m = sub.next() => m,
                _ = stop.cancelled() => return,
            };
            let Some(msg) = msg else { break };
            if let Some(id) = std::str::from_utf8(&msg.payload)
                .ok()
                .and_then(|s| Uuid::parse_str(s).ok())
                && running.cancel(id)
            {
                metrics::counter!("sluice_worker_cancelled_total").increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancels_only_registered_jobs_and_forgets_them_on_drop() {
        let running = Running::new(2);
        let a = Uuid::now_v7();
        let t = running.track(a);
        assert!(running.cancel(a));
        assert!(t.token.is_cancelled());
        drop(t);
        assert!(!running.cancel(a), "dropped registrations are forgotten");
        let _x = running.track(Uuid::now_v7());
        let _y = running.track(Uuid::now_v7());
        let z = running.track(Uuid::now_v7());
        assert!(!running.cancel(z.id), "over the bound a job is not tracked");
    }

    #[test]
    fn a_stale_registration_does_not_remove_a_newer_one() {
        let running = Running::new(8);
        let id = Uuid::now_v7();
        let old = running.track(id);
        let new = running.track(id);
        drop(old);
        assert!(running.cancel(id));
        assert!(new.token.is_cancelled());
    }
}

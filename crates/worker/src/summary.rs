//! The worker's part of the live dashboard: what it saw since its last report (jobs ended,
//! failures, submission-to-end durations) and what it holds now (slots, breaker states,
//! token use per tenant since it started), written to Redis every [`EVERY`] as a
//! [`WorkerSummary`] that expires after [`TTL`] (see `sluice_store::dashboard`). Bounded:
//! the latency samples and the tenant table have fixed caps.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use sluice_protocol::Outcome;
use sluice_store::{
    dashboard::{BreakerSummary, MAX_SAMPLES, MAX_TENANTS, TenantUsage, WorkerSummary},
    now_ms,
};
use tokio_util::sync::CancellationToken;

use crate::attempt::Broker;

/// How often a worker reports.
pub const EVERY: Duration = Duration::from_secs(2);
/// How long a report stays readable: a few missed reports, then the worker drops out.
pub const TTL: Duration = Duration::from_secs(10);
/// Tenants tracked at most; usage of further tenants is not shown.
const MAX_TRACKED_TENANTS: usize = 1024;

/// What a worker gathers between reports.
pub struct Summary {
    id: String,
    inner: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    since_ms: u64,
    jobs: u64,
    failed: u64,
    latency_ms: VecDeque<u32>,
    tenants: HashMap<String, TenantUsage>,
}

impl Summary {
    pub fn new() -> Summary {
        Summary {
            id: uuid::Uuid::now_v7().simple().to_string(),
            inner: Mutex::new(Window {
                since_ms: now_ms(),
                ..Window::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A delivery was settled with `broker`; `created_at_ms`: the job's submission time.
    /// Counts jobs that ended (not redeliveries of finished ones).
    pub fn settled(&self, broker: &Broker, created_at_ms: Option<u64>) {
        let failed = match broker {
            Broker::Ack(Outcome::Completed | Outcome::Cancelled) => false,
            Broker::Ack(Outcome::Failed | Outcome::Expired) | Broker::DeadLetter { .. } => true,
            Broker::Ack(Outcome::AlreadyDone | Outcome::RejectedPublish)
            | Broker::Retry { .. }
            | Broker::Wait(_)
            | Broker::Defer(_)
            | Broker::Release => return,
        };
        let mut w = self.lock();
        w.jobs += 1;
        w.failed += u64::from(failed);
        if let Some(at) = created_at_ms {
            if w.latency_ms.len() == MAX_SAMPLES {
                w.latency_ms.pop_front();
            }
            let ms = now_ms().saturating_sub(at);
            w.latency_ms
                .push_back(u32::try_from(ms).unwrap_or(u32::MAX));
        }
    }

    /// A job's answer used these tokens, costing `cost_usd`.
    pub fn usage(&self, tenant: &str, input: u64, output: u64, cost_usd: f64) {
        let mut w = self.lock();
        if !w.tenants.contains_key(tenant) && w.tenants.len() >= MAX_TRACKED_TENANTS {
            return;
        }
        let t = w
            .tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| TenantUsage {
                tenant: tenant.to_owned(),
                ..TenantUsage::default()
            });
        t.input_tokens += input;
        t.output_tokens += output;
        t.cost_usd += cost_usd;
    }

    /// The report of the interval that ends now; starts the next one.
    pub fn take(&self, shared: &crate::Shared) -> WorkerSummary {
        let now = now_ms();
        let (jobs, failed, latency_ms, since, mut tenants) = {
            let mut w = self.lock();
            let since = std::mem::replace(&mut w.since_ms, now);
            let tenants: Vec<TenantUsage> = w.tenants.values().cloned().collect();
            (
                std::mem::take(&mut w.jobs),
                std::mem::take(&mut w.failed),
                std::mem::take(&mut w.latency_ms),
                since,
                tenants,
            )
        };
        tenants.sort_by_key(|t| std::cmp::Reverse(t.input_tokens + t.output_tokens));
        tenants.truncate(MAX_TENANTS);
        let in_flight = crate::observe::in_flight();
        WorkerSummary {
            worker: self.id.clone(),
            at_ms: now,
            window_ms: now.saturating_sub(since).max(1),
            jobs,
            failed,
            latency_ms: latency_ms.into(),
            in_flight,
            free_slots: (shared.cfg.worker.concurrency as u64).saturating_sub(in_flight),
            breakers: shared
                .pools
                .breakers()
                .into_iter()
                .map(|(deployment, state)| BreakerSummary {
                    deployment,
                    state: state.into(),
                })
                .collect(),
            tenants,
        }
    }
}

impl Default for Summary {
    fn default() -> Self {
        Summary::new()
    }
}

/// Writes the worker's summary every [`EVERY`] until `stop`.
pub async fn report(shared: Arc<crate::Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let summary = shared.summary.take(&shared);
        if let Err(e) = shared
            .store
            .put_worker_summary(&summary, TTL.as_millis() as u64)
            .await
        {
            tracing::debug!(error = %e, "cannot write the dashboard summary");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ended_jobs_and_keeps_a_bounded_sample() {
        let s = Summary::new();
        let created = now_ms().saturating_sub(50);
        for _ in 0..MAX_SAMPLES + 10 {
            s.settled(&Broker::Ack(Outcome::Completed), Some(created));
        }
        s.settled(&Broker::Ack(Outcome::Failed), None);
        s.settled(&Broker::Ack(Outcome::AlreadyDone), Some(created));
        s.settled(&Broker::Release, Some(created));
        let w = s.lock();
        assert_eq!(w.jobs, MAX_SAMPLES as u64 + 11);
        assert_eq!(w.failed, 1);
        assert_eq!(w.latency_ms.len(), MAX_SAMPLES);
        assert!(w.latency_ms.iter().all(|&ms| ms >= 50));
    }

    #[test]
    fn tracks_tenants_up_to_its_cap() {
        let s = Summary::new();
        for i in 0..MAX_TRACKED_TENANTS + 5 {
            s.usage(&format!("t{i}"), 1, 2, 0.5);
        }
        s.usage("t0", 10, 0, 0.0);
        let w = s.lock();
        assert_eq!(w.tenants.len(), MAX_TRACKED_TENANTS);
        assert_eq!(w.tenants["t0"].input_tokens, 11);
        assert_eq!(w.tenants["t0"].output_tokens, 2);
    }
}

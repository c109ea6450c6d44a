//! When `HOOKS` refuses an event (the stream is full, the broker does not answer), the job's
//! outcome does not change: the event waits in the store's outbox (`{p}hookoutbox`) and the
//! dispatcher enqueues it again later ([`run`]). The job's message is acknowledged as usual,
//! so a full hook stream never holds or fails jobs.
//!
//! The outbox is bounded (`webhooks.outbox_max` events, each kept `webhooks.outbox_max_age_s`);
//! an event past either is dropped where the operator sees it: counted in
//! `sluice_webhook_dropped_total{reason}` and written to each of its endpoints' delivery logs
//! (`outcome: "dropped"`). Only when the store cannot be written either does the caller get
//! an error (the worker then keeps the job's message and tries again).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_config::{WebhooksConfig, duration::millis_u64};
use sluice_protocol::JobStatus;
use sluice_queue::Queue;
use sluice_store::{HookTargets, Store, now_ms};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{HookError, emit};

/// Events enqueued again per sweep, at most.
const SWEEP_BATCH: usize = 64;
/// Pause between sweeps.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// An event waiting in the outbox (the sorted set's member).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pending {
    job: Uuid,
    tenant: String,
    status: JobStatus,
    /// When `HOOKS` first refused it (ms).
    since_ms: u64,
}

/// What became of a job's terminal event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emitted {
    /// On `HOOKS`, one message per target.
    Enqueued(usize),
    /// `HOOKS` refused it: in the outbox, or dropped (counted and logged) if that is full.
    Deferred,
}

/// [`emit::emit_to`], falling back to the outbox when `HOOKS` refuses the event.
pub async fn emit_or_defer(
    queue: &Queue,
    store: &Store,
    cfg: &WebhooksConfig,
    targets: HookTargets,
    job: Uuid,
    tenant: &str,
    status: JobStatus,
) -> Result<Emitted, HookError> {
    let tenant = targets.tenant.clone().unwrap_or_else(|| tenant.to_string());
    match emit::emit_to(queue, cfg, targets, job, &tenant, status).await {
        Ok(n) => Ok(Emitted::Enqueued(n)),
        Err(HookError::Queue(e)) => {
            tracing::warn!(job = %job, error = %e, "HOOKS refused a job's event; it waits in the outbox");
            let p = Pending {
                job,
                tenant,
                status,
                since_ms: now_ms(),
            };
            let member = serde_json::to_string(&p)?;
            metrics::counter!("sluice_webhook_outbox_total").increment(1);
            if !store
                .outbox_add(&member, now_ms() + 1_000, cfg.outbox_max)
                .await?
            {
                dropped(store, cfg, &p, "outbox_full").await;
            }
            Ok(Emitted::Deferred)
        }
        Err(e) => Err(e),
    }
}

/// Enqueues outbox events again until `stop` (run beside the dispatcher).
pub async fn run(cfg: WebhooksConfig, queue: Queue, store: Store, stop: CancellationToken) {
    while !stop.is_cancelled() {
        if let Err(e) = sweep(&cfg, &queue, &store).await {
            tracing::debug!(error = %e, "webhook outbox sweep failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = stop.cancelled() => break,
        }
    }
}

/// One pass over the due events; stops at the first one `HOOKS` still refuses.
async fn sweep(cfg: &WebhooksConfig, queue: &Queue, store: &Store) -> Result<(), HookError> {
    let now = now_ms();
    for member in store.outbox_due(now, SWEEP_BATCH).await? {
        let Ok(p) = serde_json::from_str::<Pending>(&member) else {
            store.outbox_remove(&member).await?;
            continue;
        };
        let age = now.saturating_sub(p.since_ms);
        if age > millis_u64(cfg.outbox_max_age) {
            dropped(store, cfg, &p, "expired").await;
            store.outbox_remove(&member).await?;
            continue;
        }
        match emit::emit(queue, store, cfg, p.job, &p.tenant, p.status).await {
            Ok(_) => {
                store.outbox_remove(&member).await?;
                metrics::counter!("sluice_webhook_outbox_enqueued_total").increment(1);
            }
            Err(HookError::Queue(e)) => {
                // Tried again later, the longer it has waited the later (1 s to a minute).
                let delay = (age / 4).clamp(1_000, 60_000);
                store.outbox_reschedule(&member, now + delay).await?;
                return Err(HookError::Queue(e));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Gives up on an event: counted, and written to its endpoints' logs.
async fn dropped(store: &Store, cfg: &WebhooksConfig, p: &Pending, reason: &'static str) {
    metrics::counter!("sluice_webhook_dropped_total", "reason" => reason).increment(1);
    tracing::warn!(job = %p.job, reason, "a job's webhook event was dropped");
    let Some(kind) = emit::event_type(p.status) else {
        return;
    };
    let endpoints = match store.hook_targets(p.job, &p.tenant).await {
        Ok(t) => t.endpoints,
        Err(e) => {
            tracing::debug!(error = %e, "the dropped event's endpoints are unknown");
            return;
        }
    };
    let entry = json!({
        "object": "webhook.delivery",
        "webhook_id": emit::event_id(p.job, kind),
        "type": kind,
        "job_id": p.job,
        "attempt": 0,
        "at": now_ms(),
        "status_code": null,
        "outcome": "dropped",
        "error": reason,
        "next_attempt_in_ms": null,
    })
    .to_string();
    for ep in endpoints {
        if let Err(e) = store.log_delivery(&ep, &entry, cfg.log_len).await {
            tracing::debug!(error = %e, "delivery log not written");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_event_reads_back() {
        let p = Pending {
            job: Uuid::nil(),
            tenant: "acme".into(),
            status: JobStatus::Completed,
            since_ms: 7,
        };
        let s = serde_json::to_string(&p).unwrap_or_default();
        assert_eq!(serde_json::from_str::<Pending>(&s).ok(), Some(p));
    }
}

//! The worker's side of traffic governance: the per-tenant in-flight cap and settling each
//! job's token/cost reservation (see `sluice_governance`).
//!
//! Fair share: before a job starts, it takes one of its tenant's in-flight slots (a lease in
//! Redis shared by every worker replica). A tenant at its cap has the job *deferred*: the
//! message is re-published at the tail of its subject (message id derived from the original
//! stream sequence, so a retried re-publish is stored once) and the original acknowledged.
//! The consumer thereby moves past a flooding tenant's backlog to the other tenants'
//! messages instead of waiting for its slots, and a deferral does not count as an attempt.
//!
//! Settlement: a job that completed settles against the `usage` in its response (plain or
//! streamed); any other terminal outcome settles with zero usage, returning the reservation.
//! Settling is exactly once per job id whatever the number of deliveries.

use std::time::Duration;

use async_nats::HeaderMap;
use sluice_governance::{estimate::Usage, settle::usage_from_response};
use sluice_protocol::JobEnvelope;
use sluice_queue::Delivery;
use sluice_store::now_ms;

use crate::{Shared, job::Outcome};

/// Takes an in-flight slot for the job; `false` when its tenant is at the cap. When Redis
/// cannot be asked the job runs (the cap is a fairness device; limits and budgets were
/// enforced at admission).
pub async fn acquire(shared: &Shared, env: &JobEnvelope) -> bool {
    let lease_ms = (shared.cfg.upstream.timeout_s + shared.cfg.worker.ack_wait_s) * 1000 * 2;
    match shared.gov.acquire_in_flight(&env.tenant, env.id, lease_ms, now_ms()).await {
        Ok(ok) => {
            if !ok {
                metrics::counter!("sluice_worker_deferred_total").increment(1);
            }
            ok
        }
        Err(e) => {
            tracing::warn!(job = %env.id, error = %e, "cannot check the tenant's in-flight cap; running the job");
            true
        }
    }
}

/// After the job's outcome is known: settle a terminal job and free its slot.
pub async fn finish(shared: &Shared, env: &JobEnvelope, outcome: &Outcome) {
    let terminal = matches!(outcome, Outcome::Done { .. } | Outcome::DeadLetter { .. });
    if terminal {
        let usage = match outcome {
            // A redelivery of a finished job: its usage is in the stored result.
            Outcome::Done { label: "already_done" } => recorded_usage(shared, env).await,
            _ => Usage::default(),
        };
        settle(shared, env, usage).await;
    }
    if let Err(e) = shared.gov.release_in_flight(&env.tenant, env.id).await {
        tracing::debug!(job = %env.id, error = %e, "cannot release the in-flight slot; its lease expires");
    }
}

/// The job completed with `response`: settle its actual usage.
pub async fn completed(shared: &Shared, env: &JobEnvelope, response: &[u8]) {
    settle(shared, env, usage_from_response(response).unwrap_or_default()).await;
}

async fn settle(shared: &Shared, env: &JobEnvelope, usage: Usage) {
    if let Err(e) = shared.gov.settle(env.id, &env.model, usage, now_ms()).await {
        tracing::warn!(job = %env.id, error = %e, "cannot settle the job's reservation");
    }
}

async fn recorded_usage(shared: &Shared, env: &JobEnvelope) -> Usage {
    match shared.store.get(env.id).await {
        Ok(Some(r)) => r
            .result
            .and_then(|v| serde_json::to_vec(&v).ok())
            .and_then(|b| usage_from_response(&b))
            .unwrap_or_default(),
        _ => Usage::default(),
    }
}

/// Re-publishes a deferred message at the tail of its subject, then acknowledges it.
pub async fn defer(shared: &Shared, delivery: Delivery) -> Result<(), sluice_queue::QueueError> {
    let mut h = HeaderMap::new();
    let id = format!("defer-{}-{}", shared.queue.subjects().jobs_stream(), delivery.stream_sequence());
    h.insert("Nats-Msg-Id", id.as_str());
    let publish = async {
        let ack = shared
            .queue
            .jetstream()
            .publish_with_headers(delivery.subject().to_string(), h, delivery.payload().to_vec().into())
            .await
            .map_err(|e| sluice_queue::QueueError::Refused(e.to_string()))?;
        ack.await.map_err(|e| sluice_queue::QueueError::Refused(e.to_string()))
    };
    let timeout = Duration::from_millis(shared.cfg.nats.publish_timeout_ms);
    match tokio::time::timeout(timeout, publish).await {
        Ok(Ok(_)) => delivery.ack().await,
        Ok(Err(e)) => {
            delivery.nak(Duration::from_millis(shared.cfg.governance.defer_ms)).await?;
            Err(e)
        }
        Err(_) => {
            delivery.nak(Duration::from_millis(shared.cfg.governance.defer_ms)).await?;
            Err(sluice_queue::QueueError::Timeout)
        }
    }
}

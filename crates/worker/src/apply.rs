//! Performing a [`Decision`] against the store and the broker: the one place that records a
//! job's end, settles its reservation, frees its in-flight slot and acks, NAKs or
//! terminates its message — in that order, so a message is acknowledged only after its
//! outcome is durably written. A write that fails turns the decision into the retry
//! [`decide`] gives for it; nothing is settled then.

use std::time::Duration;

use sluice_governance::settle::usage_from_response;
use sluice_protocol::JobEnvelope;
use sluice_queue::{DeadLetter, Delivery};
use sluice_store::{HookTargets, JobError, StoreError, Transition};

use crate::{
    Shared,
    attempt::{Broker, Decision, Ran, Record, RetryReason, Settle, decide},
    backoff::redelivery_delay,
    governance,
    hold::Hold,
};

/// The job a delivery carried, once it held an in-flight slot, and its attempt number.
pub struct Running<'a> {
    pub env: &'a JobEnvelope,
    pub attempt: u64,
}

/// Performs `decision` for `delivery`; `job` is `None` when the delivery never held a slot
/// (undecodable, or deferred). Returns how the job ended when this delivery ended it
/// (`done`, `dead_letter`: the `outcome` label of `sluice_job_duration_seconds`).
pub async fn apply(
    shared: &Shared,
    delivery: Delivery,
    job: Option<Running<'_>>,
    decision: Decision,
    hold: &mut Hold<'_>,
) -> Option<&'static str> {
    let broker = match &job {
        Some(job) => {
            // Whether a settlement freed the in-flight slot already (with the tenant's
            // deferred jobs then).
            let mut freed = None;
            let broker = loop {
                // A write that failed is tried again while the message is held.
                let (broker, settled) = record_and_settle(shared, job, &decision).await;
                freed = settled.or(freed);
                if let Some(broker) = hold.wait(&delivery, broker).await {
                    break broker;
                }
            };
            governance::release(shared, job.env, freed).await;
            broker
        }
        None => decision.broker,
    };
    shared
        .summary
        .settled(&broker, job.as_ref().map(|j| j.env.created_at_ms));
    let ended = match &broker {
        Broker::Ack(_) => Some("done"),
        Broker::DeadLetter { .. } => Some("dead_letter"),
        Broker::Retry { .. } | Broker::Wait(_) | Broker::Defer(_) | Broker::Release => None,
    };
    tell_broker(shared, delivery, job.as_ref(), broker).await;
    ended
}

/// Records the decision's outcome and settles the job; `Some` if the settlement freed the
/// job's in-flight slot too (see [`governance::settle`]).
async fn record_and_settle(
    shared: &Shared,
    job: &Running<'_>,
    d: &Decision,
) -> (Broker, Option<u64>) {
    let env = job.env;
    let mut freed = None;
    let written = match &d.record {
        Record::Nothing => Ok(()),
        Record::Completed(body) => completed(shared, env, body, &mut freed).await,
        Record::Ended(status, err) => ended(shared, env, *status, err).await,
        Record::Emit(status) => finished(shared, env, *status).await,
        Record::AttemptFailed => failed_attempt(shared, job).await,
    };
    if let Err(ran) = written {
        let max = u64::from(shared.cfg.worker.max_attempts);
        return (decide(job.attempt, max, ran).broker, freed);
    }
    let settled = match d.settle {
        Settle::Nothing => None,
        Settle::Zero => governance::settle(shared, env, Default::default()).await,
        Settle::Reservation => {
            let usage = governance::reserved_usage(env);
            governance::settle(shared, env, usage).await
        }
        Settle::Used(usage) => governance::settle(shared, env, usage).await,
        Settle::Recorded => {
            let usage = governance::recorded_usage(shared, env).await;
            governance::settle(shared, env, usage).await
        }
    };
    (d.broker.clone(), settled.or(freed))
}

/// Recording the result, settling the usage (and freeing the in-flight slot: `freed`) and
/// reading the webhook targets are independent, so they go to Redis together: one round
/// trip instead of three. The usage is settled even if the result could not be recorded:
/// the tokens were spent, and the retry's settlement finds the reservation gone and changes
/// nothing.
async fn completed(
    shared: &Shared,
    env: &JobEnvelope,
    body: &[u8],
    freed: &mut Option<u64>,
) -> Result<(), Ran> {
    let (recorded, settled, targets) = tokio::join!(
        shared.store.record_completed(env, body),
        governance::settle(shared, env, usage_from_response(body).unwrap_or_default()),
        shared.store.hook_targets(env.id, &env.tenant),
    );
    *freed = settled;
    match recorded {
        Ok(Transition::Applied) => {
            crate::semantic::publish(shared, env).await;
            finished_with(shared, env, sluice_protocol::JobStatus::Completed, targets).await
        }
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(job = %env.id, error = %e, "cannot record the result; retrying later");
            Err(Ran::StoreUnavailable)
        }
    }
}

async fn failed_attempt(shared: &Shared, job: &Running<'_>) -> Result<(), Ran> {
    match shared
        .store
        .record_failed_attempt(job.env.id, job.attempt)
        .await
    {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::warn!(job = %job.env.id, error = %e, "cannot record the failed attempt; retrying later");
            Err(Ran::StoreUnavailable)
        }
    }
}

async fn ended(
    shared: &Shared,
    env: &JobEnvelope,
    status: sluice_protocol::JobStatus,
    err: &JobError,
) -> Result<(), Ran> {
    match shared.store.record_ended(env, status, err).await {
        Ok(Transition::Applied) => finished(shared, env, status).await,
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(job = %env.id, error = %e, "cannot record the job's end; retrying later");
            Err(Ran::StoreUnavailable)
        }
    }
}

/// After a terminal transition: tells SSE and synchronous waiters, and enqueues the
/// webhooks (idempotent: a retry enqueues them again, deduplicated by id).
async fn finished(
    shared: &Shared,
    env: &JobEnvelope,
    status: sluice_protocol::JobStatus,
) -> Result<(), Ran> {
    let targets = shared.store.hook_targets(env.id, &env.tenant).await;
    finished_with(shared, env, status, targets).await
}

/// [`finished`] with the webhook targets already read.
async fn finished_with(
    shared: &Shared,
    env: &JobEnvelope,
    status: sluice_protocol::JobStatus,
    targets: Result<HookTargets, StoreError>,
) -> Result<(), Ran> {
    shared.queue.notify_job_event(env.id, status.as_str()).await;
    let emitted = match targets {
        Ok(targets) => {
            // A full or unreachable HOOKS puts the event in the outbox: the job is done.
            sluice_webhooks::outbox::emit_or_defer(
                &shared.queue,
                &shared.store,
                &shared.cfg.webhooks,
                targets,
                env.id,
                &env.tenant,
                status,
            )
            .await
            .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    emitted.map(drop).map_err(|e| {
        tracing::warn!(job = %env.id, error = %e, "cannot enqueue the job's webhooks; retrying later");
        Ran::WebhooksNotEnqueued
    })
}

/// Acks, NAKs or terminates the delivery.
async fn tell_broker(
    shared: &Shared,
    delivery: Delivery,
    job: Option<&Running<'_>>,
    broker: Broker,
) {
    let env = job.map(|j| j.env);
    let result = match broker {
        Broker::Ack(outcome) => {
            metrics::counter!("sluice_worker_jobs_total", "outcome" => outcome.as_str())
                .increment(1);
            delivery.ack().await
        }
        Broker::Retry { reason, at_least } => {
            metrics::counter!("sluice_worker_retries_total", "reason" => reason.as_str())
                .increment(1);
            let w = &shared.cfg.worker;
            // A refused or held attempt keeps its number: its delay grows with the
            // deliveries instead.
            let attempt = match (reason, job) {
                (RetryReason::UpstreamRetry, Some(j)) => j.attempt,
                _ => delivery.delivered(),
            };
            let delay = redelivery_delay(attempt, w.backoff_base, w.backoff_max, at_least);
            delivery.nak(delay).await
        }
        // Holding ends in `Retry` or `Release` (see `Hold::wait`); never reached.
        Broker::Release | Broker::Wait(_) => delivery.nak(Duration::ZERO).await,
        Broker::Defer(delay) => delivery.nak(delay).await,
        Broker::DeadLetter { reason, error } => {
            let tenant = env.map_or("unknown", |e| e.tenant.as_str());
            let dl = DeadLetter {
                reason: reason.as_str(),
                tenant,
                job_id: env.map(|e| e.id.to_string()),
                original_subject: delivery.subject(),
                stream_sequence: delivery.stream_sequence(),
                attempts: delivery.delivered(),
                error: &error,
                payload: delivery.payload(),
            };
            match shared.queue.dead_letter(&dl).await {
                Ok(()) => {
                    metrics::counter!("sluice_worker_dead_letters_total", "reason" => reason.as_str())
                        .increment(1);
                    tracing::warn!(reason = reason.as_str(), tenant, "message dead-lettered");
                    delivery.term().await
                }
                Err(e) => {
                    // Keep the message: it comes back and the move is tried again.
                    tracing::warn!(error = %e, "dead-lettering failed; the message will be redelivered");
                    delivery.nak(Duration::from_secs(1)).await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "settling a delivery failed; the broker redelivers it after ack_wait");
    }
}

//! Running one delivery: decode, record the start, call the provider with heartbeats, and
//! return an [`Outcome`]. Nothing here touches the broker's ack state; [`crate::settle`]
//! does, in one place.

use std::time::Duration;

use sluice_protocol::{JobEnvelope, JobStatus};
use sluice_providers::{CallError, ErrorClass};
use sluice_queue::Delivery;
use sluice_store::{HookTargets, JobError, StoreError, Transition, now_ms};
use tokio_util::sync::CancellationToken;

use crate::{Shared, backoff::redelivery_delay, streamed::StreamError};

/// What to do with the delivery once the job's fate is decided.
#[derive(Debug)]
pub enum Outcome {
    /// The outcome is durably recorded (or was already): acknowledge.
    Done { label: &'static str },
    /// Try again later.
    Retry {
        delay: Duration,
        label: &'static str,
    },
    /// Give up on the message: dead-letter it, then terminate it.
    DeadLetter {
        reason: &'static str,
        error: String,
        tenant: String,
        job_id: Option<String>,
    },
    /// Shutting down: hand it back to the broker at once.
    Release,
    /// The tenant is at its in-flight cap: redeliver after `delay` (see [`crate::governance`]).
    Defer { delay: Duration },
}

pub async fn run(shared: &Shared, delivery: &Delivery, stop: &CancellationToken) -> Outcome {
    let env = match JobEnvelope::decode(delivery.payload()) {
        Ok(env) => env,
        Err(e) => {
            return Outcome::DeadLetter {
                reason: "undecodable",
                error: e.to_string(),
                tenant: "unknown".into(),
                job_id: None,
            };
        }
    };
    // Deliveries that were deferrals at the tenant's in-flight cap are not attempts.
    let deferrals = match crate::governance::acquire(shared, &env).await {
        crate::governance::Gate::Run { deferrals } => deferrals,
        crate::governance::Gate::Defer { delay } => return Outcome::Defer { delay },
    };
    let attempt = delivery.delivered().saturating_sub(deferrals).max(1);
    let max_attempts = u64::from(shared.cfg.worker.max_attempts);
    let outcome = if attempt > max_attempts {
        exhausted(shared, &env, attempt, "the job failed on every attempt").await
    } else {
        started(shared, delivery, stop, &env, attempt).await
    };
    crate::governance::finish(shared, &env, &outcome).await;
    outcome
}

async fn started(
    shared: &Shared,
    delivery: &Delivery,
    stop: &CancellationToken,
    env: &JobEnvelope,
    attempt: u64,
) -> Outcome {
    // Registered before the start is recorded, so a cancel landing in between is seen.
    let tracked = shared.running.track(env.id);
    match shared.store.record_started(env, attempt).await {
        Ok(Transition::Applied) => shared.queue.notify_job_event(env.id, "in_progress").await,
        Ok(Transition::Refused { current }) if current.is_terminal() => {
            // A redelivery of a job whose outcome is already recorded (the earlier ack was lost,
            // or the webhook emission failed): emit again (deduplicated by id), then ack.
            // A job cancelled through ingest was emitted there.
            if current != JobStatus::Cancelled && !finished(shared, env, current).await {
                return retry_later(shared, attempt, None, "webhook_emit");
            }
            return Outcome::Done {
                label: "already_done",
            };
        }
        Ok(Transition::Refused { .. }) => {}
        Ok(Transition::Rejected) => {
            tracing::warn!(job = %env.id, tenant = %env.tenant, "dropping a job whose publish was answered 503");
            return Outcome::Done {
                label: "rejected_publish",
            };
        }
        Err(e) => {
            tracing::warn!(job = %env.id, error = %e, "cannot record the job start; retrying later");
            return retry_later(shared, attempt, None, "store_unavailable");
        }
    }
    if env.deadline_ms.is_some_and(|d| now_ms() > d) {
        let err = JobError {
            message: "The job's deadline passed before it could run.".into(),
            kind: "expired".into(),
            code: "deadline_exceeded".into(),
        };
        return record_end(shared, env, attempt, JobStatus::Expired, &err, "expired").await;
    }

    let call = crate::call::upstream(shared, env, attempt);
    let heartbeat_every =
        Duration::from_secs(shared.cfg.worker.ack_wait_s).max(Duration::from_secs(1)) / 3;
    // Dropping the call on cancellation closes the upstream connection mid-generation.
    let result = tokio::select! {
        r = with_heartbeats(call, delivery, heartbeat_every) => r,
        _ = tracked.token.cancelled() => return Outcome::Done { label: "cancelled" },
        _ = stop.cancelled() => return Outcome::Release,
    };
    let result = match result {
        Ok(r) => Ok(r),
        Err(StreamError::Upstream(e)) => Err(e),
        Err(StreamError::Store(e)) => {
            tracing::warn!(job = %env.id, error = %e, "cannot record streamed chunks; retrying later");
            return retry_later(shared, attempt, None, "store_unavailable");
        }
    };
    match result {
        Ok(response) => completed(shared, env, attempt, &response).await,
        Err(e) => upstream_failed(shared, env, attempt, e).await,
    }
}

/// The upstream answered. Recording the result, settling the usage and reading the webhook
/// targets are independent, so they go to Redis together: one round trip instead of three.
/// The usage is settled even if the result could not be recorded: the tokens were spent, and
/// the retry's settlement finds the reservation gone and changes nothing.
async fn completed(shared: &Shared, env: &JobEnvelope, attempt: u64, response: &[u8]) -> Outcome {
    crate::observe::completed(shared, env, response);
    let (recorded, (), targets) = tokio::join!(
        shared.store.record_completed(env, response),
        crate::governance::completed(shared, env, response),
        shared.store.hook_targets(env.id, &env.tenant),
    );
    match recorded {
        Ok(Transition::Applied) => {
            if !finished_with(shared, env, JobStatus::Completed, targets).await {
                return retry_later(shared, attempt, None, "webhook_emit");
            }
            Outcome::Done { label: "completed" }
        }
        Ok(_) => Outcome::Done { label: "completed" },
        Err(e) => {
            tracing::warn!(job = %env.id, error = %e, "cannot record the result; retrying later");
            retry_later(shared, attempt, None, "store_unavailable")
        }
    }
}

async fn with_heartbeats<F, T>(call: F, delivery: &Delivery, every: Duration) -> T
where
    F: std::future::Future<Output = T>,
{
    tokio::pin!(call);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            r = &mut call => return r,
            _ = tick.tick() => {
                if let Err(e) = delivery.progress().await {
                    tracing::debug!(error = %e, "heartbeat failed");
                }
            }
        }
    }
}

async fn upstream_failed(
    shared: &Shared,
    env: &JobEnvelope,
    attempt: u64,
    e: CallError,
) -> Outcome {
    metrics::counter!("sluice_worker_upstream_errors_total", "code" => e.code()).increment(1);
    tracing::info!(job = %env.id, tenant = %env.tenant, model = %env.model, attempt, code = e.code(), "upstream call failed");
    match e.class() {
        ErrorClass::Permanent => {
            let err = JobError {
                message: format!("The upstream provider rejected the request ({}).", e.code()),
                kind: "upstream_error".into(),
                code: e.code().into(),
            };
            record_end(shared, env, attempt, JobStatus::Failed, &err, "failed").await
        }
        ErrorClass::Retryable if attempt >= u64::from(shared.cfg.worker.max_attempts) => {
            exhausted(shared, env, attempt, e.code()).await
        }
        ErrorClass::Retryable => retry_later(shared, attempt, e.retry_after(), "upstream_retry"),
    }
}

/// Records `failed` after the last attempt, then dead-letters the message.
async fn exhausted(shared: &Shared, env: &JobEnvelope, attempt: u64, last: &str) -> Outcome {
    let err = JobError {
        message: format!(
            "The job failed after {} attempts (last error: {last}).",
            attempt.min(u64::from(shared.cfg.worker.max_attempts))
        ),
        kind: "upstream_error".into(),
        // A provider that kept rate limiting is reported as such, so a synchronous client
        // gets a 429 it knows how to handle.
        code: if last == "upstream_rate_limited" {
            last
        } else {
            "max_attempts_exceeded"
        }
        .into(),
    };
    match shared
        .store
        .record_ended(env, JobStatus::Failed, &err)
        .await
    {
        Ok(t) => {
            if t == Transition::Applied && !finished(shared, env, JobStatus::Failed).await {
                return retry_later(shared, attempt, None, "webhook_emit");
            }
            Outcome::DeadLetter {
                reason: "max_attempts",
                error: err.message,
                tenant: env.tenant.clone(),
                job_id: Some(env.id.to_string()),
            }
        }
        Err(e) => {
            tracing::warn!(job = %env.id, error = %e, "cannot record the failure; retrying later");
            retry_later(shared, attempt, None, "store_unavailable")
        }
    }
}

async fn record_end(
    shared: &Shared,
    env: &JobEnvelope,
    attempt: u64,
    status: JobStatus,
    err: &JobError,
    label: &'static str,
) -> Outcome {
    match shared.store.record_ended(env, status, err).await {
        Ok(t) => {
            if t == Transition::Applied && !finished(shared, env, status).await {
                return retry_later(shared, attempt, None, "webhook_emit");
            }
            Outcome::Done { label }
        }
        Err(e) => {
            tracing::warn!(job = %env.id, error = %e, "cannot record the job's end; retrying later");
            retry_later(shared, attempt, None, "store_unavailable")
        }
    }
}

/// After a terminal transition: tells SSE and synchronous waiters, and enqueues the
/// webhooks. `false` when the webhooks could not be enqueued (the caller retries; the
/// emission is idempotent).
async fn finished(shared: &Shared, env: &JobEnvelope, status: JobStatus) -> bool {
    let targets = shared.store.hook_targets(env.id, &env.tenant).await;
    finished_with(shared, env, status, targets).await
}

/// [`finished`] with the webhook targets already read.
async fn finished_with(
    shared: &Shared,
    env: &JobEnvelope,
    status: JobStatus,
    targets: Result<HookTargets, StoreError>,
) -> bool {
    shared.queue.notify_job_event(env.id, status.as_str()).await;
    let emitted = match targets {
        Ok(targets) => {
            sluice_webhooks::emit::emit_to(&shared.queue, targets, env.id, &env.tenant, status)
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    match emitted {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(job = %env.id, error = %e, "cannot enqueue the job's webhooks; retrying later");
            false
        }
    }
}

fn retry_later(
    shared: &Shared,
    attempt: u64,
    retry_after: Option<Duration>,
    label: &'static str,
) -> Outcome {
    let w = &shared.cfg.worker;
    let delay = redelivery_delay(
        attempt,
        Duration::from_millis(w.backoff_base_ms),
        Duration::from_millis(w.backoff_max_ms),
        retry_after,
    );
    Outcome::Retry { delay, label }
}

//! Running one delivery: decode, take the tenant's in-flight slot, record the start, call
//! the provider with heartbeats. What that came to ([`Ran`]) is turned into a decision by
//! [`crate::attempt::decide`] and performed by [`crate::apply`]; nothing here acks, NAKs or
//! records an outcome.

use std::time::Duration;

use sluice_protocol::JobEnvelope;
use sluice_queue::Delivery;
use sluice_store::{Transition, now_ms};
use tokio_util::sync::CancellationToken;

use crate::{
    Shared,
    apply::{Running, apply},
    attempt::{Ran, decide},
    governance::{self, Gate},
    streamed::StreamError,
};

/// Runs the delivery to its end: decided, recorded, settled and answered to the broker.
pub async fn run(shared: &Shared, delivery: Delivery, stop: &CancellationToken) {
    let max = u64::from(shared.cfg.worker.max_attempts);
    let env = match JobEnvelope::decode(delivery.payload()) {
        Ok(env) => env,
        Err(e) => {
            let decision = decide(0, max, Ran::Undecodable(e.to_string()));
            return apply(shared, delivery, None, decision).await;
        }
    };
    // Deliveries that were deferrals at the tenant's in-flight cap are not attempts.
    let deferrals = match governance::acquire(shared, &env).await {
        Gate::Run { deferrals } => deferrals,
        Gate::Defer { delay } => {
            return apply(shared, delivery, None, decide(0, max, Ran::Deferred(delay))).await;
        }
    };
    let attempt = delivery.delivered().saturating_sub(deferrals).max(1);
    let ran = if attempt > max {
        Ran::OutOfAttempts
    } else {
        started(shared, &delivery, stop, &env, attempt).await
    };
    let decision = decide(attempt, max, ran);
    let job = Running { env: &env, attempt };
    apply(shared, delivery, Some(job), decision).await;
}

async fn started(
    shared: &Shared,
    delivery: &Delivery,
    stop: &CancellationToken,
    env: &JobEnvelope,
    attempt: u64,
) -> Ran {
    // Registered before the start is recorded, so a cancel landing in between is seen.
    let tracked = shared.running.track(env.id);
    match shared.store.record_started(env, attempt).await {
        Ok(Transition::Applied) => shared.queue.notify_job_event(env.id, "in_progress").await,
        // A redelivery of a job whose outcome is already recorded (the earlier ack was lost,
        // or the webhook emission failed).
        Ok(Transition::Refused { current }) if current.is_terminal() => {
            return Ran::AlreadyEnded(current);
        }
        Ok(Transition::Refused { .. }) => {}
        Ok(Transition::Rejected) => {
            tracing::warn!(job = %env.id, tenant = %env.tenant, "dropping a job whose publish was answered 503");
            return Ran::RejectedPublish;
        }
        Err(e) => {
            tracing::warn!(job = %env.id, error = %e, "cannot record the job start; retrying later");
            return Ran::StoreUnavailable;
        }
    }
    if env.deadline_ms.is_some_and(|d| now_ms() > d) {
        return Ran::DeadlinePassed;
    }

    let call = crate::call::upstream(shared, env, attempt);
    let heartbeat_every =
        Duration::from_secs(shared.cfg.worker.ack_wait_s).max(Duration::from_secs(1)) / 3;
    // Dropping the call on cancellation closes the upstream connection mid-generation.
    let result = tokio::select! {
        r = with_heartbeats(call, delivery, heartbeat_every) => r,
        _ = tracked.token.cancelled() => return Ran::Cancelled,
        _ = stop.cancelled() => return Ran::Released,
    };
    match result {
        Ok(body) => Ran::Answered(body),
        Err(StreamError::Upstream(e)) => {
            let code = e.code().as_str();
            metrics::counter!("sluice_worker_upstream_errors_total", "code" => code).increment(1);
            tracing::info!(job = %env.id, tenant = %env.tenant, model = %env.model, attempt, code, "upstream call failed");
            Ran::Upstream(e)
        }
        Err(StreamError::Store(e)) => {
            tracing::warn!(job = %env.id, error = %e, "cannot record streamed chunks; retrying later");
            Ran::StoreUnavailable
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

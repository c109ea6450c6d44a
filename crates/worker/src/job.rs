//! Running one delivery: decode, take the tenant's in-flight slot, record the start, call
//! the provider with heartbeats. What that came to ([`Ran`]) is turned into a decision by
//! [`crate::attempt::decide`] and performed by [`crate::apply`]; nothing here acks, NAKs or
//! records an outcome.

use std::time::Duration;

use sluice_protocol::JobEnvelope;
use sluice_providers::CallError;
use sluice_queue::Delivery;
use sluice_store::{Transition, now_ms};
use tokio_util::sync::CancellationToken;

use crate::{
    Shared,
    apply::{Running, apply},
    attempt::{Ran, decide},
    governance::{self, Gate},
    hold::Hold,
    streamed::StreamError,
};

/// Runs the delivery to its end: decided, recorded, settled and answered to the broker.
/// Returns how the job ended (`done`, `dead_letter`) when this delivery ended it.
pub async fn run(
    shared: &Shared,
    delivery: Delivery,
    stop: &CancellationToken,
) -> Option<&'static str> {
    let max = u64::from(shared.cfg.worker.max_attempts);
    let mut hold = Hold::new(shared, stop);
    let env = match JobEnvelope::decode(delivery.payload()) {
        Ok(env) => env,
        Err(e) => {
            let decision = decide(0, max, Ran::Undecodable(e.to_string()));
            return apply(shared, delivery, None, decision, &mut hold).await;
        }
    };
    // Deliveries that were deferrals at the tenant's in-flight cap are not attempts.
    let deferrals = match governance::acquire(shared, &env).await {
        Gate::Run { deferrals } => deferrals,
        Gate::Defer { delay } => {
            let decision = decide(0, max, Ran::Deferred(delay));
            return apply(shared, delivery, None, decision, &mut hold).await;
        }
    };
    let attempt = delivery.delivered().saturating_sub(deferrals).max(1);
    let decision = loop {
        let ran = if attempt > max {
            Ran::OutOfAttempts
        } else {
            started(shared, &delivery, stop, &env, attempt).await
        };
        // An infrastructure error keeps the message and tries the attempt again.
        let mut decision = decide(attempt, max, ran);
        match hold.wait(&delivery, decision.broker.clone()).await {
            None => continue,
            Some(broker) => {
                decision.broker = broker;
                break decision;
            }
        }
    };
    let job = Running { env: &env, attempt };
    apply(shared, delivery, Some(job), decision, &mut hold).await
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
    let heartbeat_every = shared.cfg.worker.ack_wait.max(Duration::from_secs(1)) / 3;
    // Dropping the call on cancellation closes the upstream connection mid-generation.
    let result = tokio::select! {
        r = with_heartbeats(call, delivery, heartbeat_every) => r,
        _ = tracked.token.cancelled() => return Ran::Cancelled,
        _ = stop.cancelled() => return Ran::Released,
    };
    match result {
        Ok(body) => {
            crate::observe::completed(shared, env, &body);
            Ran::Answered(body)
        }
        Err(StreamError::Upstream(CallError::BudgetExhausted)) => {
            // No call was made: not an upstream failure.
            tracing::info!(job = %env.id, tenant = %env.tenant, attempt, "the retry budget refused the call");
            Ran::Upstream(CallError::BudgetExhausted)
        }
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

pub(crate) async fn with_heartbeats<F, T>(call: F, delivery: &Delivery, every: Duration) -> T
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

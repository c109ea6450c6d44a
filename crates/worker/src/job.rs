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
    attempt::{Broker, Decision, Ran, Record, RetryReason, Settle, decide},
    governance::{self, Gate},
    hold::Hold,
    streamed::{Progress, StreamError},
};

/// Deliveries per allowed attempt (deferrals not counted) after which a job that never
/// reached an outcome is given up ([`Ran::TooManyDeliveries`]). Crash redeliveries, budget
/// refusals and holds past [`crate::hold::HOLD_LIMIT`] are not attempts, so the broker's
/// delivery count bounds them instead (the consumer itself sets no `max_deliver`).
pub const DELIVERIES_PER_ATTEMPT: u64 = 5;

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
    // Deliveries that were deferrals at the tenant's in-flight cap are not attempts. While
    // the store cannot be asked, the message is held (the job could not start anyway).
    let deferrals = loop {
        match governance::acquire(shared, &env).await {
            Gate::Run { deferrals } => break deferrals,
            Gate::Defer { delay } => {
                let decision = decide(0, max, Ran::Deferred(delay));
                return apply(shared, delivery, None, decision, &mut hold).await;
            }
            Gate::Unknown => {
                let wait = Broker::Wait(RetryReason::StoreUnavailable);
                if let Some(broker) = hold.wait(&delivery, wait).await {
                    let decision = Decision {
                        record: Record::Nothing,
                        settle: Settle::Nothing,
                        broker,
                    };
                    return apply(shared, delivery, None, decision, &mut hold).await;
                }
            }
        }
    };
    let deliveries = delivery.delivered().saturating_sub(deferrals).max(1);
    // The attempt number comes from the store (failed attempts recorded), not from the
    // delivery count: see `lua/start.lua`.
    let mut attempt = 1;
    let decision = loop {
        let ran = if deliveries > max.saturating_mul(DELIVERIES_PER_ATTEMPT) {
            Ran::TooManyDeliveries(deliveries)
        } else {
            let (n, ran) = started(shared, &delivery, stop, &env).await;
            attempt = n.unwrap_or(attempt);
            ran
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

/// Records the start and runs the attempt; returns the attempt number once the start is
/// recorded, and what the attempt came to.
async fn started(
    shared: &Shared,
    delivery: &Delivery,
    stop: &CancellationToken,
    env: &JobEnvelope,
) -> (Option<u64>, Ran) {
    // A queued job of a tenant disabled since admission does not start.
    match governance::disabled(shared, &env.tenant).await {
        Ok(false) => {}
        Ok(true) => return (None, Ran::TenantDisabled),
        Err(()) => return (None, Ran::StoreUnavailable),
    }
    // Registered before the start is recorded, so a cancel landing in between is seen.
    let tracked = shared.running.track(env.id);
    let attempt = match shared.store.start_attempt(env).await {
        Ok((Transition::Applied, n)) => {
            shared.queue.notify_job_event(env.id, "in_progress").await;
            n
        }
        // A redelivery of a job whose outcome is already recorded (the earlier ack was lost,
        // or the webhook emission failed).
        Ok((Transition::Refused { current }, _)) if current.is_terminal() => {
            return (None, Ran::AlreadyEnded(current));
        }
        // Not reached: `queued` and `in_progress` may become `in_progress`.
        Ok((Transition::Refused { .. }, _)) => 1,
        Ok((Transition::Rejected, _)) => {
            tracing::warn!(job = %env.id, tenant = %env.tenant, "dropping a job whose publish was answered 503");
            return (None, Ran::RejectedPublish);
        }
        Err(e) => {
            tracing::warn!(job = %env.id, error = %e, "cannot record the job start; retrying later");
            return (None, Ran::StoreUnavailable);
        }
    };
    if attempt > u64::from(shared.cfg.worker.max_attempts) {
        return (Some(attempt), Ran::OutOfAttempts);
    }
    (
        Some(attempt),
        attempt_call(shared, delivery, stop, env, attempt, &tracked).await,
    )
}

/// The upstream call of a started attempt (the deadline first).
async fn attempt_call(
    shared: &Shared,
    delivery: &Delivery,
    stop: &CancellationToken,
    env: &JobEnvelope,
    attempt: u64,
    tracked: &crate::cancel::Tracked,
) -> Ran {
    if env.deadline_ms.is_some_and(|d| now_ms() > d) {
        return Ran::DeadlinePassed;
    }

    let progress = Progress::default();
    let call = crate::call::upstream(shared, env, attempt, &progress);
    let heartbeat_every = shared.cfg.worker.ack_wait.max(Duration::from_secs(1)) / 3;
    // Dropping the call on cancellation closes the upstream connection mid-generation.
    let result = tokio::select! {
        r = with_heartbeats(call, delivery, heartbeat_every) => Some(r),
        _ = tracked.token.cancelled() => None,
        _ = stop.cancelled() => return Ran::Released,
    };
    let Some(result) = result else {
        return Ran::Cancelled(progress.used(env));
    };
    match result {
        Ok(body) => {
            crate::observe::completed(shared, env, &body);
            Ran::Answered(body)
        }
        Err(StreamError::Upstream(CallError::BudgetExhausted)) => {
            // No call was made: not an upstream failure.
            tracing::info!(job = %env.id, tenant = %env.tenant, attempt, "the retry budget refused the call; the attempt is delayed, not spent");
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

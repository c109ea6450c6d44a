//! The worker's side of traffic governance: the per-tenant in-flight cap and settling each
//! job's token/cost reservation (see `sluice_governance`).
//!
//! Fair share: before a job starts, it takes one of its tenant's in-flight slots (a lease in
//! Redis shared by every worker replica). A tenant at its cap has the job *deferred*: NAKed
//! with a delay of about its expected wait — `governance.defer_ms` (a typical job's time)
//! times the tenant's deferred jobs per slot, at most [`MAX_DEFER`], spread randomly over
//! its upper half. JetStream skips a NAKed message until its delay passes, so the consumer
//! moves on past a flooding tenant's backlog to the other tenants' messages instead of
//! waiting for its slots, and a large backlog comes back at about the rate its slots free
//! rather than all the time (redeliveries go before new messages, so too short a delay
//! would crowd out the other tenants again). Deferrals are counted in Redis and are not
//! attempts (attempts are numbered from the failures recorded on the job, and the backstop
//! on deliveries, [`crate::job::DELIVERIES_PER_ATTEMPT`], leaves deferrals out).
//!
//! Settlement (what to settle is decided in [`crate::attempt`]): a job that completed
//! settles against the `usage` in its response (plain or streamed); a job cancelled while it
//! ran is charged what it used — the upstream's usage if a streamed chunk carried it, else
//! the prompt estimate plus the tokens that streamed to the client, and its reservation for a
//! plain call (tokens were generated, nobody knows how many); any other terminal outcome
//! (the kill switch included) settles with zero usage, returning the reservation. Settling is exactly once per
//! job id whatever the number of deliveries. A job whose envelope says admission reserved
//! nothing (no budget or token limit applied) skips it. Settling frees the job's in-flight
//! slot in the same Redis call; a job with nothing to settle frees it on its own.

use std::time::Duration;

use sluice_governance::{estimate::Usage, inflight::Slot, settle::usage_from_response};
use sluice_protocol::JobEnvelope;
use sluice_store::now_ms;

use crate::Shared;

/// Longest deferral delay.
pub const MAX_DEFER: Duration = Duration::from_secs(30);

/// Whether the job may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Run it; it was deferred `deferrals` times before.
    Run { deferrals: u64 },
    /// Its tenant is at the in-flight cap: redeliver after `delay`.
    Defer { delay: Duration },
    /// The store cannot be asked (the job could not start anyway: keep the message).
    Unknown,
}

/// Takes an in-flight slot for the job. When Redis cannot be asked the answer is
/// [`Gate::Unknown`]: running the job would fail at recording its start, and its deferral
/// count, which attempts are told apart from deferrals by, would be lost.
pub async fn acquire(shared: &Shared, env: &JobEnvelope) -> Gate {
    let lease_ms = u64::try_from(shared.cfg.worker.in_flight_lease.as_millis()).unwrap_or(u64::MAX);
    match shared
        .gov
        .acquire_in_flight(&env.tenant, env.id, lease_ms, now_ms())
        .await
    {
        Ok(Slot::Acquired { deferrals }) => Gate::Run { deferrals },
        Ok(Slot::Full { waiting, cap, .. }) => {
            metrics::counter!("sluice_worker_deferred_total").increment(1);
            Gate::Defer {
                delay: defer_delay(shared.cfg.governance.defer, waiting, cap),
            }
        }
        Err(e) => {
            tracing::warn!(job = %env.id, error = %e, "cannot check the tenant's in-flight cap; holding the job");
            Gate::Unknown
        }
    }
}

/// About the wait for a slot: `job_ms` per round, `waiting / cap` rounds, between `job_ms`
/// and [`MAX_DEFER`], scaled by a random factor in [0.5, 1] so that jobs deferred together
/// do not come back together.
pub fn defer_delay(job: Duration, waiting: u64, cap: u64) -> Duration {
    let rounds = u32::try_from(waiting.div_ceil(cap.max(1)).max(1)).unwrap_or(u32::MAX);
    let full = job
        .max(Duration::from_millis(1))
        .saturating_mul(rounds)
        .min(MAX_DEFER);
    full.mul_f64(1.0 - rand::random::<f64>() * 0.5)
}

/// How long a tenant's kill switch, once read, is trusted.
const KILL_SWITCH_TTL: Duration = Duration::from_secs(1);
/// Most tenants whose kill switch is remembered (the map is cleared when full).
const KILL_SWITCH_CAP: usize = 10_000;

/// The tenants' kill switches as last read, so the worker asks Redis at most once a second
/// per tenant rather than once per job.
#[derive(Default)]
pub struct KillSwitches {
    seen: std::sync::Mutex<std::collections::HashMap<String, (tokio::time::Instant, bool)>>,
}

/// Whether `tenant`'s kill switch is on (the config's or the one set at run time); `Err`
/// when the store cannot say.
pub async fn disabled(shared: &Shared, tenant: &str) -> Result<bool, ()> {
    let now = tokio::time::Instant::now();
    let cached = shared.kill_switches.seen.lock().ok().and_then(|m| {
        m.get(tenant)
            .filter(|(at, _)| now.duration_since(*at) < KILL_SWITCH_TTL)
            .map(|(_, on)| *on)
    });
    if let Some(on) = cached {
        return Ok(on);
    }
    match shared.gov.is_disabled(tenant).await {
        Ok(on) => {
            if let Ok(mut m) = shared.kill_switches.seen.lock() {
                if m.len() >= KILL_SWITCH_CAP {
                    m.clear();
                }
                m.insert(tenant.to_string(), (now, on));
            }
            Ok(on)
        }
        Err(e) => {
            tracing::warn!(tenant, error = %e, "cannot read the tenant's kill switch; retrying later");
            Err(())
        }
    }
}

/// After the job's outcome is known: frees its in-flight slot, unless its settlement already
/// did (`freed`, from [`settle`]), and wakes the workers when a job of the tenant was
/// deferred and waits for a slot.
pub async fn release(shared: &Shared, env: &JobEnvelope, freed: Option<u64>) {
    let waiting = match freed {
        Some(waiting) => waiting,
        None => match shared.gov.release_in_flight(&env.tenant, env.id).await {
            Ok(waiting) => waiting,
            Err(e) => {
                tracing::debug!(job = %env.id, error = %e, "cannot release the in-flight slot; its lease expires");
                // Whether a job waits is not known: wake them as if one did.
                1
            }
        },
    };
    if waiting > 0 && shared.gov.in_flight_cap(&env.tenant) > 0 {
        // A slot of this tenant is free: its deferred jobs that are due may run now, so wake
        // the workers that found the class empty (they would otherwise wait for a re-check).
        // Only then: a ring makes every idle worker ask the broker, and a tenant under its
        // cap has no job waiting for this slot.
        shared.queue.ring(env.priority).await;
    }
}

/// Settles the job's reservation and, in the same call, frees its in-flight slot; a job
/// admission reserved nothing for has nothing to settle. `Some(waiting)`: the slot is freed
/// (a cap applies and the call succeeded), so [`release`] need not ask again, and `waiting`
/// of the tenant's jobs are deferred.
pub async fn settle(shared: &Shared, env: &JobEnvelope, usage: Usage) -> Option<u64> {
    if !env.reserved {
        return None;
    }
    match shared
        .gov
        .settle_and_release(
            &env.tenant,
            env.id,
            &env.model,
            usage,
            now_ms(),
            env.reservation.as_ref(),
        )
        .await
    {
        Ok(s) => s.freed,
        Err(e) => {
            tracing::warn!(job = %env.id, error = %e, "cannot settle the job's reservation");
            None
        }
    }
}

/// What admission reserved for the job's request (its estimate: prompt plus the output
/// allowance).
pub fn reserved_usage(env: &JobEnvelope) -> Usage {
    serde_json::from_slice(&env.request)
        .map(|r| sluice_governance::estimate::request(&r))
        .unwrap_or_default()
}

/// The usage in the job's stored result (a redelivery of a finished job).
pub async fn recorded_usage(shared: &Shared, env: &JobEnvelope) -> Usage {
    match shared.store.get(env.id).await {
        Ok(Some(r)) => r
            .result
            .and_then(|v| serde_json::to_vec(&v).ok())
            .and_then(|b| usage_from_response(&b))
            .unwrap_or_default(),
        _ => Usage::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferral_delay_follows_the_expected_wait() {
        let within = |d: Duration, full: Duration| d <= full && d >= full.mul_f64(0.5);
        let job = Duration::from_millis(100);
        assert!(within(defer_delay(job, 1, 8), Duration::from_millis(100)));
        assert!(within(defer_delay(job, 92, 8), Duration::from_millis(1200)));
        assert!(within(defer_delay(job, 10_000, 8), MAX_DEFER));
    }
}

//! Settlement: replacing a job's reservation with what it actually used.
//!
//! Admission reserved the estimate in the budget and in every token rate limit. When the job
//! ends, the script takes the reservation (and deletes it, atomically), adds
//! `actual - reserved` to the budget counters (the tenant's and the key's) and moves each token limit's arrival time by
//! the same difference. A job whose reservation is already gone — a redelivered message, a
//! second worker — changes nothing, so each job settles exactly once. A failed job settles
//! with zero usage, returning its reservation. A worker's settlement also frees the job's
//! in-flight slot in the same call ([`Governor::settle_and_release`]).
//!
//! The counters to correct are passed as the script's keys (every key a script touches must
//! be, for a Redis Cluster): [`crate::Decision::reservation`] names them at admission and
//! travels with the job (the envelope's `reservation`). A job published before that field
//! passes none, and its reservation's own record of them is used (admission then wrote them
//! into it; it now writes only `[tokens, cost]`, so a caller must pass the counters of a
//! reservation made now: settled without them, only the reservation is removed). Either
//! way round a rolling upgrade settles right: the previous worker's script reads the short
//! reservation, and this one reads the long.
//!
//! Usage is read from the upstream response: the `usage` object of a plain response, or of
//! the last chunk of a streamed one (ingest asks for it with `stream_options.include_usage`),
//! so a streamed job settles exactly what the same job unstreamed would.

use serde_json::Value;
use sluice_protocol::Reservation;
use sluice_store::Lua;
use uuid::Uuid;

use crate::{GovernanceError, Governor, estimate::Usage};

pub(crate) static SETTLE: Lua = Lua::new("settle", include_str!("../lua/settle.lua"));

impl Governor {
    /// Settles job `job` of `tenant` and `model` against `usage`; `reservation`: where
    /// admission reserved it (`None` for a job published without it). `Ok(true)` if this
    /// call settled it, `Ok(false)` if it was already settled (or never reserved).
    pub async fn settle(
        &self,
        tenant: &str,
        job: Uuid,
        model: &str,
        usage: Usage,
        now_ms: u64,
        reservation: Option<&Reservation>,
    ) -> Result<bool, GovernanceError> {
        let (settled, _) = self
            .settle_with(tenant, job, model, usage, now_ms, reservation, false)
            .await?;
        Ok(settled)
    }

    /// [`Governor::settle`] at the end of a job that held an in-flight slot: the same call
    /// frees the slot (when the tenant has a cap), so a worker's settlement is one round trip.
    pub async fn settle_and_release(
        &self,
        tenant: &str,
        job: Uuid,
        model: &str,
        usage: Usage,
        now_ms: u64,
        reservation: Option<&Reservation>,
    ) -> Result<Settlement, GovernanceError> {
        let release = self.in_flight_cap(tenant) > 0;
        let (settled, deferred) = self
            .settle_with(tenant, job, model, usage, now_ms, reservation, release)
            .await?;
        Ok(Settlement {
            settled,
            freed: release.then_some(deferred),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn settle_with(
        &self,
        tenant: &str,
        job: Uuid,
        model: &str,
        usage: Usage,
        now_ms: u64,
        reservation: Option<&Reservation>,
        release: bool,
    ) -> Result<(bool, u64), GovernanceError> {
        let cost = crate::estimate::cost_micro_usd(self.config(), model, usage);
        let mut inv = SETTLE.key(self.keys().reservation(tenant, job));
        inv.key(self.keys().leases(tenant))
            .key(self.keys().deferred(tenant))
            .arg(usage.total())
            .arg(cost)
            .arg(now_ms)
            .arg(job.to_string())
            .arg(if release { "1" } else { "0" })
            .arg(reservation.map_or(0, |r| r.budgets.len()));
        if let Some(r) = reservation {
            for b in &r.budgets {
                inv.key(b);
            }
            for (key, t_ms) in &r.token_limits {
                inv.key(key).arg(t_ms);
            }
        }
        let (settled, deferred): (i64, u64) = self.store().invoke(&inv).await?;
        if settled == 1 {
            metrics::counter!("sluice_governance_settled_tokens_total").increment(usage.total());
        }
        Ok((settled == 1, deferred))
    }
}

/// What [`Governor::settle_and_release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// This call settled the job (`false`: already settled, or never reserved).
    pub settled: bool,
    /// The job's in-flight slot was freed (its tenant has a cap), with how many of the
    /// tenant's jobs are deferred, waiting for a slot; `None`: no cap, no slot.
    pub freed: Option<u64>,
}

/// The `usage` of an OpenAI response body: a JSON object, or a server-sent event stream
/// whose chunks may carry it (the last one does with `include_usage`).
pub fn usage_from_response(body: &[u8]) -> Option<Usage> {
    // Only `usage` is decoded; the rest of the body (the completion) is skipped.
    #[derive(serde::Deserialize)]
    struct Body {
        usage: Option<Value>,
    }
    if let Ok(b) = serde_json::from_slice::<Body>(body) {
        return b.usage.and_then(|u| usage_of_usage(&u));
    }
    let text = std::str::from_utf8(body).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| usage_of(&v))
}

fn usage_of(v: &Value) -> Option<Usage> {
    usage_of_usage(v.get("usage")?)
}

/// The token counts of a `usage` object.
fn usage_of_usage(u: &Value) -> Option<Usage> {
    let prompt = u.get("prompt_tokens").and_then(Value::as_u64)?;
    let completion = u
        .get("completion_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Some(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_usage_from_plain_and_streamed_bodies() {
        let plain =
            br#"{"id":"x","usage":{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}"#;
        assert_eq!(
            usage_from_response(plain),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 5
            })
        );
        let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n\
                   data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5}}\n\n\
                   data: [DONE]\n\n";
        assert_eq!(
            usage_from_response(sse.as_bytes()),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 5
            })
        );
        assert_eq!(usage_from_response(b"data: [DONE]\n\n"), None);
    }
}

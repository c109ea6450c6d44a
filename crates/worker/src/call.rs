//! The upstream call of one job attempt: route `model: "auto"` to a tier (recorded on the
//! job), then run the call through the model pools (balancing, retries on other
//! deployments under the retry budget, hedging, fallbacks; see `sluice_providers::pool`).

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use sluice_protocol::{JobEnvelope, JobKind};
use sluice_providers::{CallKind, CallRequest};
use sluice_store::now_ms;
use tokio::time::Instant;

use crate::{
    Shared,
    streamed::{Progress, StreamError},
};

/// The job's response body: the upstream's JSON, or for a streamed job the completion
/// assembled from its chunks (which are recorded as job events as they arrive, and counted
/// in `progress` for a cancellation's settlement).
pub async fn upstream(
    shared: &Shared,
    env: &JobEnvelope,
    attempt: u64,
    progress: &Progress,
) -> Result<Bytes, StreamError> {
    let route = shared.pools.router().route(&env.model, &env.request).await;
    if let Some(d) = &route {
        let rec = json!({ "requested": env.model, "model": d.model, "tier": d.tier.as_str(), "rule": d.rule });
        if let Err(e) = shared.store.record_route(env.id, &rec).await {
            tracing::debug!(job = %env.id, error = %e, "cannot record the routing decision");
        }
    }
    let model = route
        .as_ref()
        .map_or(env.model.as_str(), |d| d.model.as_str());
    let deadline = env
        .deadline_ms
        .map(|d| Instant::now() + Duration::from_millis(d.saturating_sub(now_ms())));
    let req = CallRequest {
        kind: match env.kind {
            JobKind::ChatCompletion => CallKind::Chat,
            JobKind::Embedding => CallKind::Embeddings,
        },
        model,
        body: &env.request,
        redelivery: attempt > 1,
        final_attempt: attempt >= u64::from(shared.cfg.worker.max_attempts),
        deadline,
    };
    if env.stream && env.kind == JobKind::ChatCompletion {
        return crate::streamed::run(shared, env, &req, progress).await;
    }
    let answer = shared.pools.call(&req).await?;
    if answer.served.is_degraded() {
        metrics::counter!("sluice_worker_degraded_answers_total", "served" => answer.served.as_str()).increment(1);
        tracing::info!(job = %env.id, served = answer.served.as_str(), "answered with a degraded result");
    }
    Ok(answer.body)
}

//! The upstream call of one job attempt: route `model: "auto"` to a tier (recorded on the
//! job), then run the call through the model pools (balancing, retries on other
//! deployments under the retry budget, hedging, fallbacks; see `sluice_providers::pool`).

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde_json::json;
use sluice_protocol::{JobEnvelope, JobKind};
use sluice_providers::{
    CallKind, CallRequest,
    fallback::{SharedStale, SharedStaleError},
};
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
    // The chain's stale answer comes from the job's response-cache entry when it has one.
    let entry = env
        .cache
        .as_ref()
        .and_then(|c| sluice_cache::CacheKey::from_hex(&c.key))
        .map(|key| CachedAnswer {
            store: &shared.store,
            key,
        });
    let answer = shared
        .pools
        .call_with(&req, entry.as_ref().map(|e| e as &dyn SharedStale))
        .await?;
    if answer.served.is_degraded() {
        metrics::counter!("sluice_worker_degraded_answers_total", "served" => answer.served.as_str()).increment(1);
        tracing::info!(job = %env.id, served = answer.served.as_str(), "answered with a degraded result");
    }
    Ok(answer.body)
}

/// A job's entry in the shared response cache, as the fallback chain's stale answer: a fresh
/// or expired-but-kept answer, never a negative entry.
struct CachedAnswer<'a> {
    store: &'a sluice_store::Store,
    key: sluice_cache::CacheKey,
}

impl SharedStale for CachedAnswer<'_> {
    fn stale_answer(&self) -> BoxFuture<'_, Result<Option<Bytes>, SharedStaleError>> {
        Box::pin(async move {
            match self.store.cache_get(&self.key).await {
                Ok(e) => Ok(e.filter(|e| !e.negative).map(|e| Bytes::from(e.body))),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the response cache for a stale answer");
                    Err(SharedStaleError)
                }
            }
        })
    }
}

//! Health, readiness and metrics: the open routes.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header::CONTENT_TYPE},
    response::IntoResponse,
};
use serde_json::json;

use crate::{AppState, error::ApiError};

pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready when the broker is connected with its streams in place and the store answers.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let nats = state.queue.is_connected()
        && state
            .streams_ready
            .load(std::sync::atomic::Ordering::Acquire);
    let (ping, policy) = tokio::join!(state.store.ping(), state.store.maxmemory_policy());
    let redis = ping.is_ok();
    // Reported, not judged: with eviction Redis may drop records and counters under memory
    // pressure, which breaks Sluice's guarantees (see SECURITY.md).
    let eviction = match policy {
        Ok(Some(p)) => p,
        Ok(None) => "unknown".into(),
        Err(_) => "unreachable".into(),
    };
    // A replica whose semantic index is still replaying the insertion stream would miss
    // what the others hit: it takes traffic once it caught up.
    let semantic = state.cache.semantic().map(|s| s.replayed());
    let status = if nats && redis && semantic != Some(false) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if status == StatusCode::OK {
        "ready"
    } else {
        "not_ready"
    };
    // Whether limits are being enforced, or which policy applies while Redis is away.
    let limits = match (redis, state.cfg.governance.on_store_error) {
        (true, _) => "enforced",
        (false, sluice_config::FailPolicy::FailClosed) => "fail_closed",
        (false, sluice_config::FailPolicy::FailOpen) => "fail_open",
    };
    metrics::gauge!("sluice_governance_degraded").set(if redis { 0.0 } else { 1.0 });
    (
        status,
        Json(json!({
            "status": word,
            "nats": nats,
            "redis": redis,
            "limits": limits,
            "redis_maxmemory_policy": eviction,
            "semantic_index": match semantic {
                None => "off",
                Some(true) => "ready",
                Some(false) => "replaying",
            },
        })),
    )
}

pub async fn metrics() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        sluice_telemetry::render_metrics(),
    )
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("Unknown URL. See the API reference in the README.".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

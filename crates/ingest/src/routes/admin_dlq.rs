//! The dead-letter part of the admin API (admin key only), over the same library as
//! `sluice dlq`: list with filters, show one entry, and replay — rate-limited, with a dry
//! run. Entries never include the request body, so prompts stay out of operators' screens.

use axum::{
    Json, Router,
    extract::{Path, Query, State, rejection::QueryRejection},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_queue::dlq::{DlqEntry, DlqFilter, ReplayOptions};

use crate::{AppState, error::ApiError};

/// Most entries one HTTP listing or replay touches (the CLI can do more).
pub const HTTP_LIMIT: usize = 1_000;
/// Fastest replay rate accepted over HTTP, and the default.
const MAX_RATE: f64 = 200.0;
const DEFAULT_RATE: f64 = 50.0;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/dlq", get(list))
        .route("/v1/admin/dlq/replay", post(replay))
        .route("/v1/admin/dlq/{seq}", get(show))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterParams {
    pub tenant: Option<String>,
    pub reason: Option<String>,
    pub model: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub limit: Option<usize>,
}

impl FilterParams {
    /// The broker's filter; a tenant or reason that is not one subject token is a 400 (it
    /// could only ever match nothing, and the broker would refuse the subject).
    fn filter(&self, sequences: Vec<u64>) -> Result<DlqFilter, ApiError> {
        for (name, value) in [("tenant", &self.tenant), ("reason", &self.reason)] {
            if value
                .as_deref()
                .is_some_and(|v| !sluice_protocol::subjects::is_token(v))
            {
                return Err(ApiError::invalid(
                    format!("Invalid '{name}': 1-64 letters, digits, '-' or '_'."),
                    Some(name),
                    "invalid_value",
                ));
            }
        }
        Ok(DlqFilter {
            tenant: self.tenant.clone(),
            reason: self.reason.clone(),
            model: self.model.clone(),
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            sequences,
            limit: self.limit.unwrap_or(100).clamp(1, HTTP_LIMIT),
        })
    }
}

fn broker(e: sluice_queue::QueueError) -> ApiError {
    ApiError::QueueUnavailable {
        retry_after_s: 1,
        reason: e.to_string(),
    }
}

fn page(entries: Vec<DlqEntry>) -> Json<Value> {
    Json(json!({ "object": "list", "data": entries }))
}

async fn list(
    State(state): State<AppState>,
    params: Result<Query<FilterParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::invalid(
            format!(
                "Invalid query: {}.",
                crate::validate::truncate(&e.body_text(), 200)
            ),
            None,
            "invalid_value",
        )
    })?;
    let entries = state
        .queue
        .dlq_list(&params.filter(Vec::new())?)
        .await
        .map_err(broker)?;
    Ok(page(entries))
}

async fn show(
    State(state): State<AppState>,
    Path(seq): Path<String>,
) -> Result<Json<DlqEntry>, ApiError> {
    let not_found = || {
        ApiError::NotFound(format!(
            "No dead letter with sequence '{}'.",
            seq.chars().take(24).collect::<String>()
        ))
    };
    // Stream sequences start at 1; anything else names no entry.
    let Some(n) = seq.parse::<u64>().ok().filter(|n| *n > 0) else {
        return Err(not_found());
    };
    match state.queue.dlq_show(n).await.map_err(broker)? {
        Some(e) => Ok(Json(e)),
        None => Err(not_found()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    pub tenant: Option<String>,
    pub reason: Option<String>,
    pub model: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub limit: Option<usize>,
    #[serde(default)]
    pub sequences: Vec<u64>,
    pub rate_per_s: Option<f64>,
    #[serde(default)]
    pub dry_run: bool,
}

async fn replay(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: ReplayBody = if body.is_empty() {
        ReplayBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid(
                format!("Invalid replay request: {e}."),
                None,
                "invalid_json",
            )
        })?
    };
    let rate = body.rate_per_s.unwrap_or(DEFAULT_RATE);
    if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
        return Err(ApiError::invalid(
            format!("Invalid value for 'rate_per_s': must be above 0 and at most {MAX_RATE}."),
            Some("rate_per_s"),
            "invalid_value",
        ));
    }
    let params = FilterParams {
        tenant: body.tenant,
        reason: body.reason,
        model: body.model,
        since_ms: body.since_ms,
        until_ms: body.until_ms,
        limit: body.limit,
    };
    let filter = params.filter(body.sequences)?;
    let opts = ReplayOptions {
        rate_per_s: rate,
        dry_run: body.dry_run,
        actor: "admin-api".into(),
    };
    let report = state
        .queue
        .dlq_replay(&state.store, &filter, &opts)
        .await
        .map_err(broker)?;
    Ok(Json(json!(report)))
}

//! `POST /v1/jobs` and `GET /v1/jobs/{id}`, and the job view and publish step the
//! OpenAI-compatible endpoints share with them (the path itself is [`crate::submission`]).

use std::collections::BTreeMap;

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header::LOCATION},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use sluice_protocol::JobEnvelope;
use sluice_queue::QueueError;
use sluice_store::JobRecord;
use uuid::Uuid;

use crate::{
    AppState,
    auth::Tenant,
    error::ApiError,
    submission::{self, Follow, Submission, Submitted},
    validate,
};

/// The job as the API shows it. Timestamps are Unix seconds like OpenAI's objects, with
/// millisecond precision in `timings_ms`.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: Uuid,
    pub object: &'static str,
    pub status: &'static str,
    pub priority: &'static str,
    pub model: String,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub attempts: u64,
    pub metadata: BTreeMap<String, String>,
    pub result: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    /// The model router's decision (`model: "auto"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<serde_json::Value>,
    pub timings_ms: Timings,
    /// Answered from the response cache, without a provider call.
    pub cached: bool,
    /// The job whose answer a cached job carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<Uuid>,
    /// The job's own webhook and its secret: only in the `202` that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct Timings {
    pub queued_at: u64,
    pub in_progress_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub expired_at: Option<u64>,
}

impl From<JobRecord> for JobView {
    fn from(r: JobRecord) -> JobView {
        let s = |ms: Option<u64>| ms.map(|v| v / 1000);
        JobView {
            id: r.id,
            object: "job",
            status: r.status.as_str(),
            priority: r.priority.as_str(),
            model: r.model,
            created_at: r.created_at_ms / 1000,
            in_progress_at: s(r.in_progress_at_ms),
            completed_at: s(r.completed_at_ms),
            failed_at: s(r.failed_at_ms),
            cancelled_at: s(r.cancelled_at_ms),
            expired_at: s(r.expired_at_ms),
            attempts: r.attempts,
            metadata: r.metadata,
            result: r.result,
            error: r.error,
            route: r.route,
            cached: r.cached_from.is_some(),
            cached_from: r.cached_from,
            webhook: None,
            timings_ms: Timings {
                queued_at: r.queued_at_ms.unwrap_or(r.created_at_ms),
                in_progress_at: r.in_progress_at_ms,
                completed_at: r.completed_at_ms,
                failed_at: r.failed_at_ms,
                cancelled_at: r.cancelled_at_ms,
                expired_at: r.expired_at_ms,
            },
        }
    }
}

pub(crate) fn body_or_error(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::invalid("The request body could not be read.", None, "invalid_body")
        }
    })
}

pub async fn submit(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body, state.cfg.ingest.max_body_bytes)?;
    let sub = validated(&state, &tenant, &headers, &body).await?;
    let job = match submission::submit(&state, &tenant, &headers, &body, sub, Follow::No).await? {
        Submitted::Replay(first) => return replayed(&state, first).await,
        Submitted::Fresh(job) => job,
        // Only a synchronous submission is answered with a bare result or waits for another.
        Submitted::Cached(_) | Submitted::Waiting(_) => {
            return Err(ApiError::Internal(
                "a job submission answered synchronously".into(),
            ));
        }
    };
    let location = format!("/v1/jobs/{}", job.view.id);
    let mut resp = (StatusCode::ACCEPTED, [(LOCATION, location)], Json(job.view)).into_response();
    for (name, value) in job.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    if let Some(how) = job.cache {
        resp.headers_mut()
            .insert(crate::cache::CACHE_HEADER, HeaderValue::from_static(how));
    }
    Ok(resp)
}

/// `POST /v1/jobs`'s validator: a chat request with Sluice's fields, whose own webhook URL
/// is input like the rest, checked (SSRF) before admission.
async fn validated(
    state: &AppState,
    tenant: &Tenant,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Submission, ApiError> {
    let limits = validate::Limits {
        max_output_tokens: state.cfg.ingest.max_output_tokens,
    };
    let chat = validate::chat_submission(body, limits)?;
    crate::screening::check(&state.cfg.screening, tenant, &chat.request)?;
    let mut sub = Submission::chat(chat, headers);
    if let Some(url) = sub.webhook_url.take() {
        let policy = sluice_webhooks::ssrf::Policy::new(&state.cfg.webhooks.allow_private);
        sub.webhook_url = Some(policy.check_url(&url).await?.to_string());
    }
    Ok(sub)
}

/// Publishes an admitted job, whose `queued` record is already written: after `Ok` the job
/// is durable. If the broker does not acknowledge it, the caller's [`crate::middleware::admission::Admitted`]
/// guard removes the record and leaves a tombstone that keeps any worker from running it
/// (the broker may store it after all, e.g. a publish buffered across a reconnect).
pub(crate) async fn enqueue(state: &AppState, env: &JobEnvelope) -> Result<(), ApiError> {
    state
        .queue
        .publish_job(env)
        .await
        .map_err(|e| queue_error(state, e))?;
    metrics::counter!("sluice_jobs_accepted_total", "priority" => env.priority.as_str())
        .increment(1);
    Ok(())
}

/// The view of a job that was just queued (without reading it back).
pub(crate) fn queued_view(env: JobEnvelope) -> JobView {
    JobView {
        id: env.id,
        object: "job",
        status: "queued",
        priority: env.priority.as_str(),
        model: env.model,
        created_at: env.created_at_ms / 1000,
        in_progress_at: None,
        completed_at: None,
        failed_at: None,
        cancelled_at: None,
        expired_at: None,
        attempts: 0,
        metadata: env.metadata,
        result: None,
        error: None,
        route: None,
        cached: false,
        cached_from: None,
        webhook: None,
        timings_ms: Timings {
            queued_at: env.created_at_ms,
            in_progress_at: None,
            completed_at: None,
            failed_at: None,
            cancelled_at: None,
            expired_at: None,
        },
    }
}

/// The caller's job `id`; another tenant's job is indistinguishable from a missing one.
pub(crate) async fn owned_job(
    state: &AppState,
    tenant: &Tenant,
    id: &str,
) -> Result<(Uuid, JobRecord), ApiError> {
    let not_found = || {
        ApiError::NotFound(format!(
            "No job with id '{}'.",
            id.chars().take(64).collect::<String>()
        ))
    };
    let uuid = Uuid::parse_str(id).map_err(|_| not_found())?;
    match state.store.get(uuid).await.map_err(store_unavailable)? {
        Some(r) if r.tenant == *tenant.id => Ok((uuid, r)),
        _ => Err(not_found()),
    }
}

/// An idempotent retry: the first request's job as it is now, marked as a replay.
async fn replayed(state: &AppState, id: Uuid) -> Result<Response, ApiError> {
    let record = state.store.get(id).await.map_err(store_unavailable)?;
    let view = match record {
        Some(r) => {
            serde_json::to_value(JobView::from(r)).map_err(|e| ApiError::Internal(e.to_string()))?
        }
        // The broker took the first request's job (admission waited for that), so its
        // record expired or was lost: its id is all there is.
        None => serde_json::json!({"id": id, "object": "job", "status": "queued"}),
    };
    let headers = [
        (
            LOCATION,
            HeaderValue::try_from(format!("/v1/jobs/{id}"))
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        ),
        (
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        ),
    ];
    Ok((StatusCode::ACCEPTED, headers, Json(view)).into_response())
}

pub(crate) fn store_unavailable(e: sluice_store::StoreError) -> ApiError {
    ApiError::StoreUnavailable {
        retry_after_s: 1,
        reason: e.to_string(),
    }
}

fn queue_error(state: &AppState, e: QueueError) -> ApiError {
    ApiError::QueueUnavailable {
        retry_after_s: state.cfg.ingest.retry_after_s,
        reason: e.to_string(),
    }
}

pub async fn get(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let (_, record) = owned_job(&state, &tenant, &id).await?;
    Ok(Json(JobView::from(record)))
}

//! `POST /v1/jobs` and `GET /v1/jobs/{id}`, and the submission steps the OpenAI-compatible
//! endpoints share with them.

use std::collections::BTreeMap;

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header::LOCATION},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use sluice_protocol::{JobEnvelope, JobKind, SCHEMA_VERSION};
use sluice_queue::QueueError;
use sluice_store::{JobRecord, now_ms};
use uuid::Uuid;

use crate::{AppState, auth::Tenant, error::ApiError, validate};

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
    pub timings_ms: Timings,
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

pub(crate) fn body_or_error(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::invalid("The request body could not be read.", None, "invalid_body")
        }
    })
}

fn traceparent(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    (v.len() <= 128 && v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then(|| v.to_string())
}

pub async fn submit(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut sub = read_chat(&state, body)?;
    let hook_url = sub.webhook_url.take();
    let env = chat_envelope(&tenant, sub, &headers);
    // The job's own webhook: checked (SSRF) and stored with a fresh secret before the job
    // exists, so the dispatcher always finds it; the secret is shown once, here.
    let hook = match hook_url {
        Some(url) => {
            let policy = sluice_webhooks::ssrf::Policy::new(&state.cfg.webhooks.allow_private);
            let url = policy.check_url(&url).await?.to_string();
            let secret = sluice_webhooks::sign::new_secret();
            state.store.set_job_hook(env.id, &url, &secret).await.map_err(store_error)?;
            Some(serde_json::json!({ "url": url, "secret": secret }))
        }
        None => None,
    };
    enqueue(&state, &env).await?;
    let location = format!("/v1/jobs/{}", env.id);
    let mut view = serde_json::to_value(queued_view(env)).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let (Some(hook), Some(obj)) = (hook, view.as_object_mut()) {
        obj.insert("webhook".into(), hook);
    }
    Ok((StatusCode::ACCEPTED, [(LOCATION, location)], Json(view)).into_response())
}

/// Reads and validates a chat-completions body (with Sluice's fields).
pub(crate) fn read_chat(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<validate::ChatSubmission, ApiError> {
    let body = body_or_error(body, state.cfg.ingest.max_body_bytes)?;
    let limits = validate::Limits { max_output_tokens: state.cfg.ingest.max_output_tokens };
    validate::chat_submission(&body, limits)
}

/// The envelope of a validated chat submission.
pub(crate) fn chat_envelope(tenant: &Tenant, sub: validate::ChatSubmission, headers: &HeaderMap) -> JobEnvelope {
    let created_at_ms = now_ms();
    JobEnvelope {
        schema: SCHEMA_VERSION,
        id: Uuid::now_v7(),
        tenant: tenant.id.to_string(),
        priority: sub.priority,
        kind: JobKind::ChatCompletion,
        model: sub.model,
        request: sub.request,
        created_at_ms,
        deadline_ms: sub.deadline_s.map(|s| created_at_ms.saturating_add(s.saturating_mul(1000))),
        replays: 0,
        traceparent: traceparent(headers),
        metadata: sub.metadata,
        stream: sub.stream,
    }
}

/// Publishes the job and records it as queued: after `Ok` the job is durable.
pub(crate) async fn enqueue(state: &AppState, env: &JobEnvelope) -> Result<(), ApiError> {
    state.queue.publish_job(env).await.map_err(|e| queue_error(state, e))?;
    metrics::counter!("sluice_jobs_accepted_total", "priority" => env.priority.as_str()).increment(1);
    // The job is durable from here on. If the record cannot be written, the worker writes
    // it when it starts the job; the client already has the truth: 202.
    if let Err(e) = state.store.record_queued(env).await {
        tracing::warn!(job = %env.id, error = %e, "job accepted but its queued record was not written");
    }
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

fn queue_error(state: &AppState, e: QueueError) -> ApiError {
    ApiError::QueueUnavailable { retry_after_s: state.cfg.ingest.retry_after_s, reason: e.to_string() }
}

pub async fn get(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let (_, record) = owned_job(&state, &tenant, &id).await?;
    Ok(Json(JobView::from(record)))
}

/// The caller's job `id`; another tenant's job is indistinguishable from a missing one.
pub(crate) async fn owned_job(state: &AppState, tenant: &Tenant, id: &str) -> Result<(Uuid, JobRecord), ApiError> {
    let not_found = || ApiError::NotFound(format!("No job with id '{}'.", id.chars().take(64).collect::<String>()));
    let uuid = Uuid::parse_str(id).map_err(|_| not_found())?;
    let record = state.store.get(uuid).await.map_err(store_error)?;
    match record {
        Some(r) if r.tenant == *tenant.id => Ok((uuid, r)),
        _ => Err(not_found()),
    }
}

pub(crate) fn store_error(e: sluice_store::StoreError) -> ApiError {
    ApiError::StoreUnavailable { retry_after_s: 1, reason: e.to_string() }
}

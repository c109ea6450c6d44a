//! `POST /v1/jobs` and `GET /v1/jobs/{id}`, and the submission steps the OpenAI-compatible
//! endpoints share with them.

use std::collections::BTreeMap;

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header::LOCATION},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use sluice_protocol::{JobEnvelope, JobKind, SCHEMA_VERSION};
use sluice_queue::QueueError;
use sluice_store::JobRecord;
use uuid::Uuid;

use crate::{AppState, auth::Tenant, error::ApiError, middleware::admission, validate};

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
    let body = body_or_error(body, state.cfg.ingest.max_body_bytes)?;
    let limits = validate::Limits {
        max_output_tokens: state.cfg.ingest.max_output_tokens,
    };
    let mut sub = validate::chat_submission(&body, limits)?;
    // The job's own webhook URL is input like the rest: checked (SSRF) before admission.
    let hook_url = match sub.webhook_url.take() {
        Some(url) => {
            let policy = sluice_webhooks::ssrf::Policy::new(&state.cfg.webhooks.allow_private);
            Some(policy.check_url(&url).await?.to_string())
        }
        None => None,
    };
    let job = admission::NewJob::now(JobKind::ChatCompletion);
    let admitted =
        admission::admit_and_record(&state, &tenant, &headers, &body, &mut sub, job).await?;
    if let Some(first) = admitted.replay {
        return replayed(&state, first).await;
    }
    let env = chat_envelope(&tenant, sub, &headers, job, admitted.reserved)?;
    // Stored with a fresh secret before the job is published, so the dispatcher always
    // finds it; the secret is shown once, here.
    let hook = match hook_url {
        Some(url) => {
            let secret = sluice_webhooks::sign::new_secret();
            if let Err(e) = state.store.set_job_hook(env.id, &url, &secret).await {
                if let Err(de) = state.store.discard(env.id).await {
                    tracing::warn!(job = %env.id, error = %de, "cannot remove the record of an unpublished job");
                }
                admission::undo(&state, &tenant, &admitted, env.id, &env.model).await;
                return Err(store_unavailable(e));
            }
            Some(serde_json::json!({ "url": url, "secret": secret }))
        }
        None => None,
    };
    if let Err(e) = enqueue(&state, &env).await {
        admission::undo(&state, &tenant, &admitted, env.id, &env.model).await;
        return Err(e);
    }
    let location = format!("/v1/jobs/{}", env.id);
    let mut view = queued_view(env);
    view.webhook = hook;
    let mut resp = (StatusCode::ACCEPTED, [(LOCATION, location)], Json(view)).into_response();
    for (name, value) in admitted.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    Ok(resp)
}

/// The envelope of a validated chat submission admitted as `job`; `reserved`: whether
/// admission recorded a reservation to settle.
pub(crate) fn chat_envelope(
    tenant: &Tenant,
    sub: validate::ChatSubmission,
    headers: &HeaderMap,
    job: admission::NewJob,
    reserved: bool,
) -> Result<JobEnvelope, ApiError> {
    let created_at_ms = job.created_at_ms;
    crate::observe::admitted(tenant, job.id, sub.priority);
    Ok(JobEnvelope {
        schema: SCHEMA_VERSION,
        id: job.id,
        tenant: tenant.id.to_string(),
        priority: sub.priority,
        kind: job.kind,
        model: sub.model,
        request: validate::encode_request(&sub.request)?,
        created_at_ms,
        deadline_ms: sub
            .deadline_s
            .map(|s| created_at_ms.saturating_add(s.saturating_mul(1000))),
        replays: 0,
        traceparent: sluice_telemetry::trace::current_traceparent()
            .or_else(|| traceparent(headers)),
        metadata: sub.metadata,
        stream: sub.stream,
        reserved,
    })
}

/// Publishes an admitted job, whose `queued` record is already written: after `Ok` the job
/// is durable. If the broker does not acknowledge it, the record goes and a tombstone keeps
/// any worker from running it (the broker may store it after all, e.g. a publish buffered
/// across a reconnect); the caller gives the admission back.
pub(crate) async fn enqueue(state: &AppState, env: &JobEnvelope) -> Result<(), ApiError> {
    if let Err(e) = state.queue.publish_job(env).await {
        if let Err(se) = state.store.record_rejected(env.id).await {
            tracing::warn!(job = %env.id, error = %se, "cannot record a rejected publish");
        }
        return Err(queue_error(state, e));
    }
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
        // The first request is still being admitted, or its record expired: its id is all
        // there is.
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

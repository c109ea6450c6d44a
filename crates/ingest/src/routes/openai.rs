//! The OpenAI-compatible endpoints: `POST /v1/chat/completions` (plain and `stream: true`),
//! `POST /v1/embeddings` and `GET /v1/models`.
//!
//! A request becomes a job exactly like `POST /v1/jobs` (same auth, validation, queue;
//! priority from the `X-Priority` header), and the handler waits for it: it subscribes to the
//! job's notifications before publishing, so the answer cannot slip by. The answer is the
//! upstream's own JSON (or, streamed, its own chunks followed by `data: [DONE]`), so the
//! format is OpenAI's exactly. A wait longer than `delivery.sync_wait_s` is answered `202`
//! with the job so the client can poll instead of losing the work. A client that goes away
//! first cancels the job ([`CancelOnDrop`]): a queued job never runs, a running one's
//! upstream call is dropped.

use std::{convert::Infallible, time::Duration};

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header::LOCATION},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::stream;
use serde_json::{Value, json};
use sluice_protocol::{JobEnvelope, JobKind, JobStatus, Priority, SCHEMA_VERSION};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    AppState,
    auth::Tenant,
    cancel::CancelOnDrop,
    embeddings::embedding_submission,
    error::ApiError,
    middleware::admission,
    routes::jobs::{
        JobView, body_or_error, chat_envelope, enqueue, queued_view, store_unavailable,
    },
    watch::{JobEvent, JobWatch, Outcome},
};

pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body, state.cfg.ingest.max_body_bytes)?;
    let limits = crate::validate::Limits {
        max_output_tokens: state.cfg.ingest.max_output_tokens,
    };
    let mut sub = crate::validate::chat_submission(&body, limits)?;
    if sub.webhook_url.is_some() {
        // The answer comes back on this connection; a job webhook belongs to POST /v1/jobs.
        return Err(ApiError::invalid(
            "'webhook' is only accepted by POST /v1/jobs.",
            Some("webhook"),
            "unknown_parameter",
        ));
    }
    if let Some(p) = header_priority(&headers)? {
        sub.priority = p;
    }
    // The same admission as POST /v1/jobs: shedding, idempotency, rate limits, budgets. An
    // idempotent retry waits for the first request's job instead of queueing another.
    let job = admission::NewJob::now(JobKind::ChatCompletion);
    let admitted =
        admission::admit_and_record(&state, &tenant, &headers, &body, &mut sub, job).await?;
    let mut env = chat_envelope(&tenant, sub, &headers, job, admitted.reserved)?;
    env.id = admitted.replay.unwrap_or(job.id);
    let admission = Admission {
        fresh: admitted.replay.is_none(),
        undo: Some((tenant, admitted)),
    };
    if env.stream {
        run_streamed(state, env, admission).await
    } else {
        run_plain(state, env, admission).await
    }
}

pub async fn embeddings(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body, state.cfg.ingest.max_body_bytes)?;
    let emb = embedding_submission(&body)?;
    // The same admission as chat: limits, budgets (the estimate counts the input) and
    // idempotency apply to embeddings too.
    let mut sub = crate::validate::ChatSubmission {
        model: emb.model,
        priority: header_priority(&headers)?.unwrap_or_default(),
        metadata: Default::default(),
        deadline_s: None,
        stream: false,
        webhook_url: None,
        request: emb.request,
    };
    let job = admission::NewJob::now(JobKind::Embedding);
    let admitted =
        admission::admit_and_record(&state, &tenant, &headers, &body, &mut sub, job).await?;
    let env = JobEnvelope {
        schema: SCHEMA_VERSION,
        id: admitted.replay.unwrap_or(job.id),
        tenant: tenant.id.to_string(),
        priority: sub.priority,
        kind: JobKind::Embedding,
        model: sub.model,
        request: crate::validate::encode_request(&sub.request)?,
        created_at_ms: job.created_at_ms,
        deadline_ms: None,
        replays: 0,
        traceparent: sluice_telemetry::trace::current_traceparent(),
        metadata: Default::default(),
        stream: false,
        reserved: admitted.reserved,
    };
    let admission = Admission {
        fresh: admitted.replay.is_none(),
        undo: Some((tenant, admitted)),
    };
    run_plain(state, env, admission).await
}

/// How the job was admitted: whether it still has to be queued (not an idempotent replay),
/// and what to give back if publishing fails.
struct Admission {
    fresh: bool,
    undo: Option<(Tenant, admission::Admitted)>,
}

/// `GET /v1/models`: the configured model ids in OpenAI's list format.
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .cfg
        .delivery
        .models
        .iter()
        .map(|id| json!({ "id": id, "object": "model", "created": 0, "owned_by": "sluice" }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

fn header_priority(headers: &HeaderMap) -> Result<Option<Priority>, ApiError> {
    match headers.get("x-priority") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| Priority::parse(s.trim()))
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(
                    "Invalid 'X-Priority' header: expected 'high', 'normal' or 'low'.",
                    None,
                    "invalid_value",
                )
            }),
    }
}

/// Enqueues the job with a watch opened first, and a guard that cancels it if the client
/// leaves.
async fn submit(
    state: &AppState,
    env: &JobEnvelope,
    adm: Admission,
) -> Result<(JobWatch, CancelOnDrop), ApiError> {
    let watch = JobWatch::open(state, env.id, 0).await?;
    if adm.fresh
        && let Err(e) = enqueue(state, env).await
    {
        if let Some((tenant, admitted)) = &adm.undo {
            admission::undo(state, tenant, admitted, env.id, &env.model).await;
        }
        return Err(e);
    }
    Ok((watch, CancelOnDrop::new(state.clone(), env.id)))
}

async fn run_plain(
    state: AppState,
    env: JobEnvelope,
    adm: Admission,
) -> Result<Response, ApiError> {
    let (mut watch, mut guard) = submit(&state, &env, adm).await?;
    let limit = Duration::from_secs(state.cfg.delivery.sync_wait_s);
    let outcome = tokio::time::timeout(limit, watch.wait_terminal()).await;
    guard.disarm();
    match outcome {
        Err(_) => still_running(&state, env).await,
        Ok(Err(e)) => Err(e),
        Ok(Ok(o)) if o.status == JobStatus::Completed => {
            let body = o
                .result
                .ok_or_else(|| ApiError::Internal("completed job without a result".into()))?;
            Ok((
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response())
        }
        Ok(Ok(o)) => Err(o.failure()),
    }
}

/// `202` with the job: the wait limit passed, the job goes on; poll `Location`.
async fn still_running(state: &AppState, env: JobEnvelope) -> Result<Response, ApiError> {
    metrics::counter!("sluice_sync_wait_exceeded_total").increment(1);
    let location = format!("/v1/jobs/{}", env.id);
    let view = match state.store.get(env.id).await.map_err(store_unavailable)? {
        Some(r) => JobView::from(r),
        None => queued_view(env),
    };
    Ok((StatusCode::ACCEPTED, [(LOCATION, location)], Json(view)).into_response())
}

async fn run_streamed(
    state: AppState,
    env: JobEnvelope,
    adm: Admission,
) -> Result<Response, ApiError> {
    let (mut watch, mut guard) = submit(&state, &env, adm).await?;
    let limit = Duration::from_secs(state.cfg.delivery.sync_wait_s);
    // Wait for the first chunks (or the end) before answering, so a job that fails before
    // streaming anything gets a proper HTTP error the SDK can raise.
    let first = tokio::time::timeout(limit, async {
        let mut seen = Vec::new();
        loop {
            let events = watch.next_events().await?;
            let decisive = events
                .iter()
                .any(|e| e.kind() == "chunks" || e.status().is_some_and(JobStatus::is_terminal));
            seen.extend(events);
            if decisive {
                return Ok::<_, ApiError>(seen);
            }
        }
    })
    .await;
    let seen = match first {
        Err(_) => {
            guard.disarm();
            return still_running(&state, env).await;
        }
        Ok(r) => r?,
    };
    if let Some(end) = seen
        .iter()
        .find_map(JobEvent::status)
        .filter(|s| s.is_terminal() && *s != JobStatus::Completed)
    {
        guard.disarm();
        let o = watch_outcome(&state, env.id, end).await?;
        return Err(o.failure());
    }
    let deadline = Instant::now() + Duration::from_secs(state.cfg.delivery.sse_max_s);
    let keepalive = Duration::from_secs(state.cfg.delivery.keepalive_s);
    let relay = Relay {
        state,
        id: env.id,
        watch,
        guard,
        out: Vec::new().into_iter(),
        pending: seen.into_iter(),
        done: false,
        deadline,
    };
    let events = stream::unfold(relay, |mut r| async move {
        r.next().await.map(|e| (Ok::<_, Infallible>(e), r))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response())
}

async fn watch_outcome(state: &AppState, id: Uuid, status: JobStatus) -> Result<Outcome, ApiError> {
    let (status, result, error) = state
        .store
        .outcome(id)
        .await
        .map_err(store_unavailable)?
        .unwrap_or((status, None, None));
    Ok(Outcome {
        status,
        result,
        error,
    })
}

/// Turns job events into OpenAI stream lines: each upstream chunk as `data: {…}`, then
/// `data: [DONE]` (or, if the job failed mid-stream, an `error` object).
struct Relay {
    state: AppState,
    id: Uuid,
    watch: JobWatch,
    guard: CancelOnDrop,
    out: std::vec::IntoIter<Event>,
    pending: std::vec::IntoIter<JobEvent>,
    done: bool,
    deadline: Instant,
}

impl Relay {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.out.next() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            if let Some(ev) = self.pending.next() {
                self.translate(ev).await;
                continue;
            }
            match tokio::time::timeout_at(self.deadline, self.watch.next_events()).await {
                Ok(Ok(events)) => self.pending = events.into_iter(),
                // Dropping the relay (and its armed guard) cancels the job.
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    async fn translate(&mut self, ev: JobEvent) {
        if ev.kind() == "chunks" {
            let chunks = ev
                .value
                .get("chunks")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            self.out = chunks
                .iter()
                .map(|c| Event::default().data(c.to_string()))
                .collect::<Vec<_>>()
                .into_iter();
            return;
        }
        let Some(status) = ev.status().filter(|s| s.is_terminal()) else {
            return;
        };
        self.done = true;
        self.guard.disarm();
        let mut out = Vec::new();
        if status != JobStatus::Completed {
            let failure = match watch_outcome(&self.state, self.id, status).await {
                Ok(o) => o.failure(),
                Err(e) => e,
            };
            let body = json!({ "error": { "message": failure.to_string(), "type": "server_error", "param": null, "code": failure.label() } });
            out.push(Event::default().data(body.to_string()));
        } else {
            out.push(Event::default().data("[DONE]"));
        }
        self.out = out.into_iter();
    }
}

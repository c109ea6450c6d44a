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
//! upstream call is dropped. An idempotent retry follows the first request's job without
//! that guard: it did not create the job, so leaving does not cancel it.

use std::convert::Infallible;

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
use sluice_protocol::{ErrorCode, JobKind, JobStatus, Priority};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    AppState,
    auth::Tenant,
    cancel::CancelOnDrop,
    embeddings::{self, EncodingFormat, embedding_submission},
    error::ApiError,
    middleware::slots::Slot,
    routes::jobs::{JobView, body_or_error, store_unavailable},
    submission::{self, Follow, Submission, Submitted},
    watch::{JobEvent, JobWatch, Outcome},
};

pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let slot = sync_slot(&state, &tenant)?;
    let body = body_or_error(body, state.cfg.ingest.max_body_bytes)?;
    let limits = crate::validate::Limits {
        max_output_tokens: state.cfg.ingest.max_output_tokens,
    };
    let chat = crate::validate::chat_submission(&body, limits)?;
    crate::screening::check(&state.cfg.screening, &tenant, &chat.request)?;
    if chat.webhook_url.is_some() {
        // The answer comes back on this connection; a job webhook belongs to POST /v1/jobs.
        return Err(ApiError::invalid(
            "'webhook' is only accepted by POST /v1/jobs.",
            Some("webhook"),
            "unknown_parameter",
        ));
    }
    let include_usage = chat
        .request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let mut sub = Submission::chat(chat, &headers);
    if let Some(p) = header_priority(&headers)? {
        sub.priority = p;
    }
    answer(
        state,
        tenant,
        headers,
        body,
        sub,
        slot,
        Shape::Chat { include_usage },
    )
    .await
}

pub async fn embeddings(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let slot = sync_slot(&state, &tenant)?;
    let body = body_or_error(body, state.cfg.ingest.max_body_bytes)?;
    let emb = embedding_submission(&body)?;
    let format = emb.format;
    let sub = Submission {
        kind: JobKind::Embedding,
        model: emb.model,
        priority: header_priority(&headers)?.unwrap_or_default(),
        metadata: Default::default(),
        deadline_s: None,
        stream: false,
        webhook_url: None,
        traceparent: None,
        request: emb.request,
    };
    answer(
        state,
        tenant,
        headers,
        body,
        sub,
        slot,
        Shape::Embeddings(format),
    )
    .await
}

/// How a completed job's stored result becomes the response body.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// The upstream's JSON as it is; `include_usage`: the client asked for usage on a
    /// stream's last chunk.
    Chat { include_usage: bool },
    /// An embeddings list, its vectors in the format the client asked for.
    Embeddings(EncodingFormat),
}

impl Shape {
    fn apply(self, result: String) -> Result<String, ApiError> {
        match self {
            Shape::Chat { .. } => Ok(result),
            Shape::Embeddings(format) => embeddings::shape_answer(result, format),
        }
    }
}

/// The tenant's place among the synchronous waits of this replica
/// (`delivery.sync_waits_per_tenant`), so one tenant cannot hold every request permit.
fn sync_slot(state: &AppState, tenant: &Tenant) -> Result<Slot, ApiError> {
    state
        .sync_waits
        .try_acquire(&tenant.id)
        .map_err(|_| ApiError::TooManySyncWaits { retry_after_s: 1 })
}

/// The same submission as `POST /v1/jobs` (shedding, idempotency, rate limits, budgets),
/// then the wait. An idempotent retry waits for the first request's job instead of queueing
/// another.
async fn answer(
    state: AppState,
    tenant: Tenant,
    headers: HeaderMap,
    body: Bytes,
    sub: Submission,
    slot: Slot,
    shape: Shape,
) -> Result<Response, ApiError> {
    let stream = sub.stream;
    // A stream answered from the cache has usage on its last chunk only if the client
    // asked for it.
    let cached_stream = match shape {
        Shape::Chat { include_usage } if stream => Some(include_usage),
        Shape::Chat { .. } | Shape::Embeddings(_) => None,
    };
    let mut how = None;
    let (watch, guard, view) =
        match submission::submit(&state, &tenant, &headers, &body, sub, Follow::Wait).await? {
            Submitted::Cached(c) if c.negative => {
                let resp = crate::cache::negative_answer(&c.body, c.how, c.headers);
                return Ok(with_request_id(resp, c.source));
            }
            Submitted::Cached(c) => {
                let body = match shape {
                    Shape::Chat { .. } => c.body,
                    Shape::Embeddings(_) => shape
                        .apply(String::from_utf8_lossy(&c.body).into_owned())?
                        .into_bytes(),
                };
                let resp = crate::cache::answer(&body, cached_stream, c.how, c.headers)?;
                return Ok(with_request_id(resp, c.source));
            }
            Submitted::Waiting(leader) => {
                metrics::counter!("sluice_sync_wait_exceeded_total").increment(1);
                return still_running(&state, leader, None).await;
            }
            Submitted::Fresh(job) => match (job.wait, job.cache) {
                (Some((watch, guard)), cache) => {
                    how = cache;
                    (watch, guard, Some(job.view))
                }
                // (`Follow::Wait` always opens one; this only keeps the match whole.)
                (None, _) => {
                    let watch = JobWatch::open(&state, job.view.id, 0).await?;
                    (
                        watch,
                        CancelOnDrop::new(state.clone(), job.view.id),
                        Some(job.view),
                    )
                }
            },
            Submitted::Replay(first) => {
                // Not this request's job: leaving does not cancel it.
                let watch = JobWatch::open(&state, first, 0).await?;
                (watch, CancelOnDrop::disarmed(state.clone(), first), None)
            }
        };
    drop(body);
    let mut resp = if stream {
        let stream_shape = match shape {
            Shape::Chat { include_usage } => StreamShape { include_usage },
            Shape::Embeddings(_) => StreamShape {
                include_usage: false,
            },
        };
        run_streamed(state, watch, guard, view, slot, stream_shape).await
    } else {
        run_plain(state, watch, guard, view, shape).await
    }?;
    if let Some(how) = how {
        resp.headers_mut().insert(
            crate::cache::CACHE_HEADER,
            axum::http::HeaderValue::from_static(how),
        );
    }
    Ok(resp)
}

/// `GET /v1/models`: the configured models (`Config::model_ids`) in OpenAI's list format.
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .cfg
        .models
        .iter()
        .map(|id| json!({ "id": id, "object": "model", "created": 0, "owned_by": "sluice" }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

/// `GET /v1/models/{id}`: one configured model, or `404 model_not_found`.
pub async fn model(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state.cfg.models.contains(&id) {
        Ok(Json(
            json!({ "id": id, "object": "model", "created": 0, "owned_by": "sluice" }),
        ))
    } else {
        Err(ApiError::ModelNotFound(id))
    }
}

/// The `x-request-id` of an answer about a job: the job's id, which `GET /v1/jobs/{id}` reads.
fn with_request_id(mut resp: Response, id: Uuid) -> Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(&id.to_string()) {
        resp.headers_mut().insert(crate::REQUEST_ID, v);
    }
    resp
}

/// The stream the client asked for: with or without `stream_options.include_usage`.
#[derive(Clone, Copy, Debug)]
struct StreamShape {
    include_usage: bool,
}

impl StreamShape {
    /// The chunk as the client's stream carries it, or `None` when it does not carry it:
    /// without `include_usage`, no `usage` member and no final usage-only chunk (OpenAI sends
    /// neither, and code reading `choices[0]` breaks on an empty `choices`).
    fn chunk(self, mut chunk: Value) -> Option<Value> {
        if self.include_usage {
            return Some(chunk);
        }
        let obj = chunk.as_object_mut()?;
        let usage = obj.remove("usage");
        let no_choices = obj
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty);
        if no_choices && usage.is_some_and(|u| !u.is_null()) {
            return None;
        }
        Some(chunk)
    }
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

/// Waits for the job's outcome; `view`: the job as queued, if this request created it.
async fn run_plain(
    state: AppState,
    mut watch: JobWatch,
    mut guard: CancelOnDrop,
    view: Option<JobView>,
    shape: Shape,
) -> Result<Response, ApiError> {
    let limit = state.cfg.delivery.sync_wait;
    let outcome = tokio::time::timeout(limit, watch.wait_terminal()).await;
    guard.disarm();
    match outcome {
        Err(_) => still_running(&state, watch.job_id(), view).await,
        Ok(Err(e)) => Err(e),
        Ok(Ok(o)) if o.status == JobStatus::Completed => {
            let body = o
                .result
                .ok_or_else(|| ApiError::Internal("completed job without a result".into()))?;
            let body = shape.apply(body)?;
            let resp = (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
            Ok(with_request_id(resp, watch.job_id()))
        }
        Ok(Ok(o)) => Err(o.failure()),
    }
}

/// `202` with the job: the wait limit passed, the job goes on; poll `Location`.
/// `queued`: the job as queued, if this request created it (shown when its record is gone).
async fn still_running(
    state: &AppState,
    id: Uuid,
    queued: Option<JobView>,
) -> Result<Response, ApiError> {
    metrics::counter!("sluice_sync_wait_exceeded_total").increment(1);
    let location = format!("/v1/jobs/{id}");
    let view = match (
        state.store.get(id).await.map_err(store_unavailable)?,
        queued,
    ) {
        (Some(r), _) => JobView::from(r),
        (None, Some(v)) => v,
        (None, None) => {
            return Ok((
                StatusCode::ACCEPTED,
                [(LOCATION, location)],
                Json(json!({"id": id, "object": "job", "status": "queued"})),
            )
                .into_response());
        }
    };
    Ok((StatusCode::ACCEPTED, [(LOCATION, location)], Json(view)).into_response())
}

/// Relays the job's stream; `view`: the job as queued, if this request created it.
async fn run_streamed(
    state: AppState,
    mut watch: JobWatch,
    mut guard: CancelOnDrop,
    view: Option<JobView>,
    slot: Slot,
    shape: StreamShape,
) -> Result<Response, ApiError> {
    let id = watch.job_id();
    let limit = state.cfg.delivery.sync_wait;
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
            return still_running(&state, id, view).await;
        }
        Ok(r) => r?,
    };
    // The job's end before any chunk (the history starts with `queued`, so look past the
    // statuses that are not terminal): answered as an HTTP error, not as a stream.
    if let Some(end) = seen
        .iter()
        .take_while(|e| e.kind() != "chunks")
        .filter_map(JobEvent::status)
        .find(|s| s.is_terminal() && *s != JobStatus::Completed)
    {
        guard.disarm();
        let o = watch_outcome(&state, id, end).await?;
        return Err(o.failure());
    }
    let deadline = Instant::now() + state.cfg.delivery.sse_max;
    let keepalive = state.cfg.delivery.keepalive;
    let relay = Relay {
        state,
        id,
        watch,
        guard,
        out: Vec::new().into_iter(),
        pending: seen.into_iter(),
        relayed: false,
        done: false,
        deadline,
        shape,
        _slot: slot,
    };
    let events = stream::unfold(relay, |mut r| async move {
        r.next().await.map(|e| (Ok::<_, Infallible>(e), r))
    });
    let resp = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response();
    Ok(with_request_id(resp, id))
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
    /// Some chunk went out: a later attempt's stream cannot be spliced onto it.
    relayed: bool,
    done: bool,
    deadline: Instant,
    /// The tenant's synchronous-wait place, held while the answer streams.
    shape: StreamShape,
    _slot: Slot,
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
            let mut value = ev.value;
            let chunks = match value.get_mut("chunks").map(Value::take) {
                Some(Value::Array(chunks)) => chunks,
                _ => Vec::new(),
            };
            let shape = self.shape;
            self.out = chunks
                .into_iter()
                .filter_map(|c| shape.chunk(c))
                .map(|c| Event::default().data(c.to_string()))
                .collect::<Vec<_>>()
                .into_iter();
            self.relayed |= self.out.len() > 0;
            return;
        }
        if self.relayed && ev.status() == Some(JobStatus::InProgress) {
            // The attempt that streamed to this client failed and the worker retries: its
            // new stream would repeat what the client already has. End this one as OpenAI
            // ends a failed stream; dropping the armed guard cancels the retry nobody reads.
            self.done = true;
            let failure = ApiError::JobFailed {
                code: ErrorCode::UpstreamError,
                message: "The upstream stream failed after it started.".into(),
                retry_after_s: None,
            };
            self.out = vec![Event::default().data(failure.body().to_string())].into_iter();
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
            // OpenAI's framing of a failure after the stream started: one `data:` event
            // holding the error object, then the end of the stream (no `[DONE]`). The SDKs
            // raise it as an API error.
            out.push(Event::default().data(failure.body().to_string()));
        } else {
            out.push(Event::default().data("[DONE]"));
        }
        self.out = out.into_iter();
    }
}

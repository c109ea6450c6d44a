//! `GET /v1/jobs/{id}/events`: the job's life as server-sent events.
//!
//! Every history entry is one event whose `id` is its position: `event: status` (data
//! `{"type":"status","status":…,"at":…}`) and, for a job submitted with `stream: true`,
//! `event: chunks` (data `{"type":"chunks","chunks":[chat.completion.chunk, …]}`). After the
//! terminal status comes `event: result` with the job object, and the stream ends. A client
//! that reconnects with `Last-Event-ID: n` gets the events after `n`, exactly once; one that
//! arrives after the end gets the history and the end. Comments keep idle connections open.
//! Streams are bounded per tenant and per replica (`delivery.streams_per_tenant`,
//! `delivery.max_streams`): past either, `429 too_many_streams` with `Retry-After`.

use std::convert::Infallible;

use axum::{
    Extension,
    extract::{Path, State},
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::{Stream, stream};
use tokio::time::Instant;

use crate::{
    AppState,
    auth::Tenant,
    error::ApiError,
    middleware::slots::Slot,
    routes::jobs::{JobView, owned_job},
    watch::{JobEvent, JobWatch},
};

pub async fn events(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let after = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v.to_str().ok().and_then(last_event_id).ok_or_else(|| {
            ApiError::invalid(
                format!("Last-Event-ID must be an event id (a number up to {MAX_EVENT_ID})."),
                None,
                "invalid_value",
            )
        })?,
    };
    // A place among this replica's streams, held until the stream ends.
    let slot = state
        .streams
        .try_acquire(&tenant.id)
        .map_err(|_| ApiError::TooManyStreams { retry_after_s: 1 })?;
    let (uuid, _) = owned_job(&state, &tenant, &id).await?;
    // A disabled tenant's keys open no new streams (admission already refuses its jobs).
    match state.gov.is_disabled(&tenant.id).await {
        Ok(false) => {}
        Ok(true) => return Err(ApiError::TenantDisabled),
        Err(e) => {
            return Err(ApiError::StoreUnavailable {
                retry_after_s: 1,
                reason: e.to_string(),
            });
        }
    }
    let watch = JobWatch::open(&state, uuid, after).await?;
    let deadline = Instant::now() + state.cfg.delivery.sse_max;
    let keepalive = state.cfg.delivery.keepalive;
    metrics::counter!("sluice_sse_streams_total").increment(1);
    let feed = Feed {
        state,
        tenant,
        id,
        watch,
        pending: Vec::new().into_iter(),
        tail: None,
        done: false,
        deadline,
        _slot: slot,
    };
    let events = stream::unfold(
        feed,
        |mut f| async move { f.next().await.map(|e| (Ok(e), f)) },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(keepalive)))
}

struct Feed {
    state: AppState,
    tenant: Tenant,
    id: String,
    watch: JobWatch,
    pending: std::vec::IntoIter<JobEvent>,
    /// The `result` event, sent after the terminal status.
    tail: Option<Event>,
    done: bool,
    deadline: Instant,
    _slot: Slot,
}

/// Far beyond any job's history (bounded by its duration over `delivery.stream_flush_ms`),
/// and small enough that no cursor arithmetic overflows.
pub const MAX_EVENT_ID: u64 = u32::MAX as u64;

/// A `Last-Event-ID` value: a decimal event id up to [`MAX_EVENT_ID`].
pub fn last_event_id(v: &str) -> Option<u64> {
    v.trim().parse::<u64>().ok().filter(|&n| n <= MAX_EVENT_ID)
}

impl Feed {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(tail) = self.tail.take() {
                return Some(tail);
            }
            if self.done {
                return None;
            }
            if let Some(ev) = self.pending.next() {
                if ev.status().is_some_and(|s| s.is_terminal()) {
                    // Nothing follows a terminal status; the result closes the stream.
                    self.pending = Vec::new().into_iter();
                    self.done = true;
                    return Some(self.result_event(ev).await);
                }
                return Some(
                    Event::default()
                        .id(ev.id.to_string())
                        .event(ev.kind())
                        .data(ev.raw),
                );
            }
            let read = tokio::time::timeout_at(self.deadline, self.watch.next_events()).await;
            match read {
                Ok(Ok(events)) if events.is_empty() => {
                    // A reader resuming after the terminal event has nothing left but the end.
                    if self
                        .state
                        .store
                        .status(self.watch.job_id())
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|s| s.is_terminal())
                    {
                        self.done = true;
                        self.tail = Some(self.result().await);
                    }
                }
                Ok(Ok(events)) => self.pending = events.into_iter(),
                // Redis trouble or the connection's age limit: end; the client resumes.
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// The terminal status event; the job object follows as `result`.
    async fn result_event(&mut self, ev: JobEvent) -> Event {
        let status = Event::default()
            .id(ev.id.to_string())
            .event("status")
            .data(ev.raw);
        self.tail = Some(self.result().await);
        status
    }

    async fn result(&self) -> Event {
        let job = owned_job(&self.state, &self.tenant, &self.id)
            .await
            .ok()
            .map(|(_, r)| JobView::from(r));
        let body = job
            .and_then(|j| serde_json::to_string(&j).ok())
            .unwrap_or_else(|| "null".into());
        Event::default().event("result").data(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_is_a_bounded_number() {
        assert_eq!(last_event_id(" 42 "), Some(42));
        assert_eq!(last_event_id("4294967295"), Some(MAX_EVENT_ID));
        assert_eq!(last_event_id("4294967296"), None);
        assert_eq!(last_event_id("18446744073709551615"), None);
        assert_eq!(last_event_id("-1"), None);
        assert_eq!(last_event_id("x"), None);
    }
}

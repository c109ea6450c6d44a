//! Following a job's event history: the primitive behind SSE and the synchronous endpoints.
//!
//! A [`JobWatch`] subscribes to the job's core NATS notification subject first and reads the
//! Redis history from its cursor after, so no event written in between is lost; every
//! notification (or, failing one, the `delivery.recheck_ms` timer) triggers another read
//! from the cursor. A follower with nothing new backs its timer off, doubling up to
//! `delivery.idle_recheck_max_ms`, so an idle stream costs a Redis read every few seconds
//! rather than every second; a notification resets it. Event ids are positions in the history, so a resumed reader
//! (`Last-Event-ID`) continues exactly where it left off.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use serde_json::Value;
use sluice_protocol::{ErrorCode, JobStatus};
use uuid::Uuid;

use crate::{AppState, error::ApiError, routes::jobs::store_unavailable};

/// Most history entries read at once.
const PAGE: u64 = 256;

pub struct JobWatch {
    state: AppState,
    sub: async_nats::Subscriber,
    id: Uuid,
    cursor: u64,
    recheck: Duration,
    /// The current interval of [`JobWatch::next_events`]: `recheck`, doubled while idle.
    idle_recheck: Duration,
    idle_recheck_max: Duration,
    fresh: bool,
}

/// How a job ended: its terminal status and the stored result or error (raw JSON).
#[derive(Debug)]
pub struct Outcome {
    pub status: JobStatus,
    pub result: Option<String>,
    pub error: Option<String>,
}

impl Outcome {
    /// The error a synchronous client gets for a job that ended without a result.
    pub fn failure(&self) -> ApiError {
        failure(self.status, self.error.as_deref())
    }
}

/// The error a synchronous client gets for a job that ended `status` with the stored error
/// `error` (JSON): the job's own outcome, or a negative cache entry of one.
pub fn failure(status: JobStatus, error: Option<&str>) -> ApiError {
    let err: Value = error
        .and_then(|e| serde_json::from_str(e).ok())
        .unwrap_or(Value::Null);
    let field = |k: &str| err.get(k).and_then(Value::as_str);
    // Every terminal record Sluice writes carries a code; without one, the status says.
    let code = field("code")
        .and_then(ErrorCode::parse)
        .unwrap_or(match status {
            JobStatus::Cancelled => ErrorCode::Cancelled,
            JobStatus::Expired => ErrorCode::DeadlineExceeded,
            JobStatus::Queued
            | JobStatus::InProgress
            | JobStatus::Completed
            | JobStatus::Failed => ErrorCode::UpstreamError,
        });
    ApiError::JobFailed {
        code,
        message: field("message")
            .map_or_else(|| format!("The job ended {status}."), str::to_string),
        retry_after_s: err.get("retry_after_s").and_then(Value::as_u64),
    }
}

/// One history entry.
#[derive(Debug)]
pub struct JobEvent {
    /// 1-based position in the history.
    pub id: u64,
    pub raw: String,
    pub value: Value,
}

impl JobEvent {
    pub fn kind(&self) -> &str {
        self.value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
    }

    /// The status of a status event.
    pub fn status(&self) -> Option<JobStatus> {
        (self.kind() == "status").then(|| {
            self.value
                .get("status")
                .and_then(Value::as_str)
                .and_then(JobStatus::parse)
        })?
    }
}

impl JobWatch {
    /// Subscribes to job `id`'s notifications; the first [`JobWatch::next_events`] returns
    /// the history after event `after` at once.
    pub async fn open(state: &AppState, id: Uuid, after: u64) -> Result<JobWatch, ApiError> {
        let sub =
            state
                .queue
                .subscribe_job_events(id)
                .await
                .map_err(|e| ApiError::QueueUnavailable {
                    retry_after_s: state.cfg.ingest.retry_after_s,
                    reason: e.to_string(),
                })?;
        let recheck = state.cfg.delivery.recheck;
        Ok(JobWatch {
            state: state.clone(),
            sub,
            id,
            cursor: after,
            recheck,
            idle_recheck: recheck,
            idle_recheck_max: state.cfg.delivery.idle_recheck_max,
            fresh: true,
        })
    }

    pub fn job_id(&self) -> Uuid {
        self.id
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Waits for a notification (at most the recheck interval), then returns the events
    /// after the cursor, possibly none.
    pub async fn next_events(&mut self) -> Result<Vec<JobEvent>, ApiError> {
        if !self.fresh {
            self.wait().await;
        }
        self.fresh = false;
        self.read().await
    }

    /// Waits until the job is in a terminal state; returns it with the raw result and error.
    pub async fn wait_terminal(&mut self) -> Result<Outcome, ApiError> {
        loop {
            if !self.fresh {
                let woke = tokio::time::timeout(self.recheck, self.sub.next()).await;
                if let Ok(Some(msg)) = &woke
                    && !std::str::from_utf8(&msg.payload)
                        .ok()
                        .and_then(JobStatus::parse)
                        .is_some_and(JobStatus::is_terminal)
                {
                    continue;
                }
            }
            self.fresh = false;
            if let Some((status, result, error)) = self
                .state
                .store
                .outcome(self.id)
                .await
                .map_err(store_unavailable)?
                && status.is_terminal()
            {
                return Ok(Outcome {
                    status,
                    result,
                    error,
                });
            }
        }
    }

    async fn wait(&mut self) {
        if let Ok(Some(_)) = tokio::time::timeout(self.idle_recheck, self.sub.next()).await {
            // Coalesce a burst of notifications into one read.
            while let Some(Some(_)) = self.sub.next().now_or_never() {}
            self.idle_recheck = self.recheck;
        } else {
            self.idle_recheck = (self.idle_recheck * 2).min(self.idle_recheck_max);
        }
    }

    async fn read(&mut self) -> Result<Vec<JobEvent>, ApiError> {
        let raw = self
            .state
            .store
            .events_page(self.id, self.cursor, PAGE)
            .await
            .map_err(store_unavailable)?;
        // A full page means more may be waiting: the next call reads again without waiting.
        self.fresh = raw.len() as u64 == PAGE;
        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            self.cursor += 1;
            let value = serde_json::from_str(&r).unwrap_or(Value::Null);
            out.push(JobEvent {
                id: self.cursor,
                raw: r,
                value,
            });
        }
        Ok(out)
    }
}

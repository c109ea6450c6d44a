//! Cancelling a job, on request (`POST /v1/jobs/{id}/cancel`) or because a synchronous
//! client went away ([`CancelOnDrop`]).
//!
//! The `cancelled` record is written first: from then on the store's state machine refuses
//! `in_progress`, so a queued job never runs and a late result is not recorded. Then the
//! job's SSE subscribers are notified and every worker is told, so the one running it drops
//! the upstream call.

use sluice_protocol::{ErrorCode, JobStatus};
use sluice_store::{JobError, StoreError, Transition};
use uuid::Uuid;

use crate::AppState;

/// Records `cancelled` and tells the workers. `None` when the job does not exist.
pub async fn cancel_job(
    state: &AppState,
    id: Uuid,
    why: &str,
) -> Result<Option<Transition>, StoreError> {
    let err = JobError::new(ErrorCode::Cancelled, why);
    let t = state.store.record_cancelled(id, &err).await?;
    if t == Some(Transition::Applied) {
        metrics::counter!("sluice_jobs_cancelled_total").increment(1);
        state.queue.notify_job_event(id, "cancelled").await;
        if let Some(tenant) = state.store.get(id).await.ok().flatten().map(|r| r.tenant)
            && let Err(e) = cancelled_hooks(state, id, &tenant).await
        {
            tracing::warn!(job = %id, error = %e, "job.cancelled webhooks not enqueued");
        }
        if let Err(e) = state.queue.broadcast_cancel(id).await {
            // The record already says cancelled: a worker that starts it acks without running
            // it, one already running it finishes and its result is refused.
            tracing::warn!(job = %id, error = %e, "cancellation not broadcast to workers");
        }
    }
    Ok(t)
}

/// Enqueues the `job.cancelled` webhooks (or puts them in the outbox when `HOOKS` refuses).
async fn cancelled_hooks(
    state: &AppState,
    id: Uuid,
    tenant: &str,
) -> Result<sluice_webhooks::outbox::Emitted, sluice_webhooks::HookError> {
    let targets = state.store.hook_targets(id, tenant).await?;
    sluice_webhooks::outbox::emit_or_defer(
        &state.queue,
        &state.store,
        &state.cfg.webhooks,
        targets,
        id,
        tenant,
        JobStatus::Cancelled,
    )
    .await
}

/// Cancels the job when dropped while armed: axum drops a handler's future (and a streaming
/// body) when the client disconnects, and an abandoned synchronous job should not spend
/// tokens. The cancel runs as a task tracked by the server.
pub struct CancelOnDrop {
    state: AppState,
    id: Uuid,
    armed: bool,
}

impl CancelOnDrop {
    pub fn new(state: AppState, id: Uuid) -> CancelOnDrop {
        CancelOnDrop {
            state,
            id,
            armed: true,
        }
    }

    /// A guard that never cancels: for a client following a job it did not create (an
    /// idempotent retry), whose leaving must not cancel the first request's job.
    pub fn disarmed(state: AppState, id: Uuid) -> CancelOnDrop {
        CancelOnDrop {
            state,
            id,
            armed: false,
        }
    }

    /// The client got its answer (or the job id to poll): leave the job alone.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let state = self.state.clone();
        let id = self.id;
        metrics::counter!("sluice_sync_disconnects_total").increment(1);
        self.state.background.spawn(async move {
            if let Err(e) = cancel_job(
                &state,
                id,
                "The client disconnected before the job finished.",
            )
            .await
            {
                tracing::warn!(job = %id, error = %e, "cannot cancel an abandoned job");
            }
        });
    }
}

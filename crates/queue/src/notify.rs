//! Core NATS notifications beside the durable streams.
//!
//! - Job events: Redis holds each job's event history (written with every transition and
//!   every streamed batch); after each write the writer publishes a small notification on
//!   `{ns.}events.<job id>`. Any ingest replica serving that job's SSE stream or synchronous
//!   wait is subscribed and re-reads Redis from its cursor, so the broker only says "look
//!   now": a lost notification costs latency (waiters also re-check on a timer), never an
//!   event. The payload is the new status (`in_progress`, `completed`, …) or `chunks`.
//! - Cancellations: the id of a cancelled job on `{ns.}cancel`, for whichever worker runs it.

use uuid::Uuid;

use crate::{Queue, QueueError, broker};

impl Queue {
    /// Announces a new event of job `id` (fire and forget, see the module docs).
    pub async fn notify_job_event(&self, id: Uuid, what: &'static str) {
        let subject = self.subjects.job_events(&id);
        if let Err(e) = self.client.publish(subject, what.into()).await {
            tracing::debug!(error = %e, "event notification not sent");
        }
    }

    /// Subscribes to job `id`'s notifications. Subscribe before reading the history, so
    /// nothing written in between is missed.
    pub async fn subscribe_job_events(
        &self,
        id: Uuid,
    ) -> Result<async_nats::Subscriber, QueueError> {
        self.client
            .subscribe(self.subjects.job_events(&id))
            .await
            .map_err(broker)
    }

    /// Tells every worker that job `id` was cancelled.
    pub async fn broadcast_cancel(&self, id: Uuid) -> Result<(), QueueError> {
        self.client
            .publish(self.subjects.cancellations(), id.to_string().into())
            .await
            .map_err(broker)?;
        // Flush so the cancel leaves now rather than with the next batch of writes.
        tokio::time::timeout(std::time::Duration::from_secs(2), self.client.flush())
            .await
            .map_err(|_| QueueError::Timeout)?
            .map_err(broker)
    }
}

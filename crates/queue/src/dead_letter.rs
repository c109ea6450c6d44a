//! The dead-letter stream: where a job goes when it cannot or must not be retried, with its
//! reason, so that operators can see and replay it. Nothing is dropped silently.

use async_nats::HeaderMap;

use crate::{Queue, QueueError};

/// Why and what to dead-letter. `error` must be Sluice's own sanitised text.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// A subject token: `undecodable`, `max_attempts`, `permanent`, …
    pub reason: &'a str,
    /// The tenant, or `unknown` for an undecodable message.
    pub tenant: &'a str,
    pub job_id: Option<String>,
    pub original_subject: &'a str,
    pub stream_sequence: u64,
    pub attempts: u64,
    pub error: &'a str,
    pub payload: &'a [u8],
}

impl Queue {
    /// Publishes the dead letter and waits for the ack. The message id is derived from the
    /// original stream sequence, so a retried move is stored once.
    pub async fn dead_letter(&self, dl: &DeadLetter<'_>) -> Result<(), QueueError> {
        let tenant = if sluice_protocol::subjects::is_token(dl.tenant) {
            dl.tenant
        } else {
            "unknown"
        };
        let subject = self.subjects.dlq(dl.reason, tenant);
        let mut h = HeaderMap::new();
        h.insert(
            "Nats-Msg-Id",
            format!("dlq-{}-{}", self.subjects.jobs_stream(), dl.stream_sequence).as_str(),
        );
        h.insert("Sluice-Reason", dl.reason);
        h.insert("Sluice-Original-Subject", dl.original_subject);
        h.insert("Sluice-Attempts", dl.attempts.to_string().as_str());
        h.insert("Sluice-Error", dl.error);
        if let Some(id) = &dl.job_id {
            h.insert("Sluice-Job-Id", id.as_str());
        }
        let ack = self
            .js
            .publish_with_headers(subject, h, dl.payload.to_vec().into())
            .await
            .map_err(|e| QueueError::Refused(e.to_string()))?;
        ack.await.map_err(|e| QueueError::Refused(e.to_string()))?;
        Ok(())
    }
}

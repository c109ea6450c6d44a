//! The `[delivery]` section: how results reach clients (synchronous OpenAI-compatible wait,
//! server-sent events) and how the worker forwards a streamed upstream answer.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// How long `POST /v1/chat/completions` and `/v1/embeddings` wait for the job. Past it
    /// the client gets `202` with the job id to poll, and the job keeps running.
    pub sync_wait_s: u64,
    /// Interval of SSE keep-alive comments.
    pub keepalive_s: u64,
    /// How long an SSE connection stays open at most (the client resumes with
    /// `Last-Event-ID`).
    pub sse_max_s: u64,
    /// Waiters re-read Redis this often even without a broker notification (core NATS
    /// notifications are at-most-once).
    pub recheck_ms: u64,
    /// The worker batches streamed upstream chunks into one history event per this interval,
    /// which bounds a job's event history by its duration, not its token count.
    pub stream_flush_ms: u64,
    /// The models `[upstream]` serves without a pool. `GET /v1/models` lists them, every
    /// pool alias and the routing alias (`Config::model_ids`).
    pub models: Vec<String>,
    /// Running jobs one worker tracks for cancellation (its concurrency fits easily).
    pub max_tracked_jobs: usize,
    /// Synchronous waits (`/v1/chat/completions`, `/v1/embeddings`) one tenant may have
    /// open on one ingest replica; past it `429 too_many_sync_waits`.
    pub sync_waits_per_tenant: usize,
    /// SSE streams (`/v1/jobs/{id}/events`) open on one ingest replica, in total and per
    /// tenant; past either `429 too_many_streams`.
    pub max_streams: usize,
    pub streams_per_tenant: usize,
    /// A stream with nothing new re-reads Redis less and less often, up to this (a broker
    /// notification still wakes it at once).
    pub idle_recheck_max_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            sync_wait_s: 120,
            keepalive_s: 5,
            sse_max_s: 3600,
            recheck_ms: 1000,
            stream_flush_ms: 50,
            models: vec!["sim-small".into(), "sim-large".into(), "sim-embed".into()],
            max_tracked_jobs: 100_000,
            sync_waits_per_tenant: 1024,
            max_streams: 5_000,
            streams_per_tenant: 1_000,
            idle_recheck_max_ms: 15_000,
        }
    }
}

impl DeliveryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sync_wait_s == 0
            || self.keepalive_s == 0
            || self.sse_max_s == 0
            || self.recheck_ms == 0
        {
            return Err(ConfigError::Invalid(
                "delivery.sync_wait_s, keepalive_s, sse_max_s and recheck_ms must be positive"
                    .into(),
            ));
        }
        if self.max_tracked_jobs == 0
            || self.sync_waits_per_tenant == 0
            || self.max_streams == 0
            || self.streams_per_tenant == 0
        {
            return Err(ConfigError::Invalid(
                "delivery.max_tracked_jobs, sync_waits_per_tenant, max_streams and streams_per_tenant must be positive"
                    .into(),
            ));
        }
        if self.idle_recheck_max_ms < self.recheck_ms {
            return Err(ConfigError::Invalid(
                "delivery.idle_recheck_max_ms must be at least recheck_ms".into(),
            ));
        }
        Ok(())
    }
}

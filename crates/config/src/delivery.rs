//! The `[delivery]` section: how results reach clients (synchronous OpenAI-compatible wait,
//! server-sent events) and how the worker forwards a streamed upstream answer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// How long `POST /v1/chat/completions` and `/v1/embeddings` wait for the job. Past it
    /// the client gets `202` with the job id to poll, and the job keeps running.
    #[serde(rename = "sync_wait_s", with = "crate::duration::secs")]
    pub sync_wait: Duration,
    /// Interval of SSE keep-alive comments.
    #[serde(rename = "keepalive_s", with = "crate::duration::secs")]
    pub keepalive: Duration,
    /// How long an SSE connection stays open at most (the client resumes with
    /// `Last-Event-ID`).
    #[serde(rename = "sse_max_s", with = "crate::duration::secs")]
    pub sse_max: Duration,
    /// Waiters re-read Redis this often even without a broker notification (core NATS
    /// notifications are at-most-once).
    #[serde(rename = "recheck_ms", with = "crate::duration::millis")]
    pub recheck: Duration,
    /// The worker batches streamed upstream chunks into one history event per this interval,
    /// which bounds a job's event history by its duration, not its token count.
    #[serde(rename = "stream_flush_ms", with = "crate::duration::millis")]
    pub stream_flush: Duration,
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
    #[serde(rename = "idle_recheck_max_ms", with = "crate::duration::millis")]
    pub idle_recheck_max: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            sync_wait: Duration::from_secs(120),
            keepalive: Duration::from_secs(5),
            sse_max: Duration::from_secs(3600),
            recheck: Duration::from_millis(1000),
            stream_flush: Duration::from_millis(50),
            models: vec!["sim-small".into(), "sim-large".into(), "sim-embed".into()],
            max_tracked_jobs: 100_000,
            sync_waits_per_tenant: 1024,
            max_streams: 5_000,
            streams_per_tenant: 1_000,
            idle_recheck_max: Duration::from_millis(15_000),
        }
    }
}

impl DeliveryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sync_wait.is_zero()
            || self.keepalive.is_zero()
            || self.sse_max.is_zero()
            || self.recheck.is_zero()
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
        if self.idle_recheck_max < self.recheck {
            return Err(ConfigError::Invalid(
                "delivery.idle_recheck_max_ms must be at least recheck_ms".into(),
            ));
        }
        Ok(())
    }
}

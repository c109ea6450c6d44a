//! Worker summaries for the live dashboard.
//!
//! Breaker states and job latencies live in the workers. Every few seconds each worker
//! writes a small JSON [`WorkerSummary`] of its last interval to `{p}dash:worker:{id}`
//! (expiring after a few intervals, so a dead worker drops out) and scores its id by the
//! time in `{p}dash:workers`; ingest's dashboard endpoint reads the live ones. Everything is
//! bounded: at most [`MAX_WORKERS`] summaries are read, [`MAX_SAMPLES`] latency samples and
//! [`MAX_TENANTS`] tenants per summary.

use serde::{Deserialize, Serialize};

use crate::{Store, StoreError};

/// Summaries read at most (the most recent).
pub const MAX_WORKERS: usize = 64;
/// Job durations a summary carries at most (the interval's most recent).
pub const MAX_SAMPLES: usize = 256;
/// Tenants a summary carries at most (the top ones by tokens).
pub const MAX_TENANTS: usize = 20;

/// What one worker saw in its last interval (jobs, latencies) and holds now (slots,
/// breakers, usage since it started).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerSummary {
    pub worker: String,
    pub at_ms: u64,
    /// The interval the counts cover.
    pub window_ms: u64,
    /// Jobs that ended in the interval, and how many of them failed (failed, expired or
    /// dead-lettered).
    pub jobs: u64,
    pub failed: u64,
    /// Submission-to-end durations of jobs that ended in the interval, milliseconds.
    pub latency_ms: Vec<u32>,
    pub in_flight: u64,
    pub free_slots: u64,
    pub breakers: Vec<BreakerSummary>,
    /// Since the worker started, top tenants by tokens.
    pub tenants: Vec<TenantUsage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerSummary {
    pub deployment: String,
    /// `closed`, `open` or `half_open`.
    pub state: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantUsage {
    pub tenant: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

impl Store {
    /// Writes `summary`, live for `ttl_ms`.
    pub async fn put_worker_summary(
        &self,
        summary: &WorkerSummary,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let json =
            serde_json::to_string(summary).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let index = self.keys.dash_workers();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.dash_worker(&summary.worker))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("ZADD")
            .arg(&index)
            .arg(summary.at_ms)
            .arg(&summary.worker)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(summary.at_ms.saturating_sub(ttl_ms))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&index)
            .arg(ttl_ms)
            .ignore();
        let mut conn = self.conn().await?;
        let () = self.timed(pipe.query_async(&mut conn)).await?;
        Ok(())
    }

    /// The summaries written within the last `ttl_ms`, newest first (at most
    /// [`MAX_WORKERS`]); unreadable ones are skipped.
    pub async fn worker_summaries(
        &self,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Vec<WorkerSummary>, StoreError> {
        let mut conn = self.conn().await?;
        let ids: Vec<String> = self
            .timed(
                redis::cmd("ZREVRANGEBYSCORE")
                    .arg(self.keys.dash_workers())
                    .arg("+inf")
                    .arg(now_ms.saturating_sub(ttl_ms))
                    .arg("LIMIT")
                    .arg(0)
                    .arg(MAX_WORKERS)
                    .query_async(&mut conn),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("GET").arg(self.keys.dash_worker(id));
        }
        let raw: Vec<Option<String>> = self.timed(pipe.query_async(&mut conn)).await?;
        Ok(raw
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect())
    }
}

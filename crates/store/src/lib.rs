//! Redis: job records, their monotonic state machine, and each job's event history.
//!
//! # Layout
//! - [`keys`]: the whole key schema, under one configurable prefix.
//! - [`jobs`]: reading and transitioning job records (one Lua script does every transition
//!   atomically, so ingest and any number of workers can race safely).
//! - [`record`]: the typed job record read back from Redis.
//! - [`replay`]: the audited operator replay (failed → queued) and the routing record.
//! - [`webhooks`]: webhook endpoints, per-job webhook targets and delivery logs.

pub mod jobs;
pub mod keys;
pub mod record;
pub mod replay;
pub mod webhooks;

use std::time::Duration;

use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use sluice_config::RedisConfig;

pub use jobs::{JobError, Transition};
pub use keys::Keys;
pub use record::JobRecord;
pub use replay::Replay;
pub use webhooks::{Endpoint, HookTargets};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    #[error("redis command timed out")]
    Timeout,
    #[error("redis returned something unexpected: {0}")]
    Protocol(String),
}

impl From<deadpool_redis::PoolError> for StoreError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Protocol(e.to_string())
        }
    }
}

/// Handle to the job store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keys: Keys,
    ttl_s: u64,
    timeout: Duration,
    scripts: std::sync::Arc<jobs::Scripts>,
}

impl Store {
    /// Builds the pool (connections are opened lazily) and checks nothing; call
    /// [`Store::ping`] to find out whether Redis answers.
    pub fn new(cfg: &RedisConfig) -> Result<Store, StoreError> {
        let timeout = Duration::from_millis(cfg.command_timeout_ms.max(1));
        let mut pcfg = deadpool_redis::Config::from_url(cfg.url.clone());
        pcfg.pool = Some(PoolConfig {
            max_size: cfg.pool_size,
            timeouts: Timeouts {
                wait: Some(timeout),
                create: Some(timeout),
                recycle: Some(timeout),
            },
            ..PoolConfig::default()
        });
        let pool = pcfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Store {
            pool,
            keys: Keys::new(&cfg.prefix),
            ttl_s: cfg.result_ttl_s,
            timeout,
            scripts: std::sync::Arc::new(jobs::Scripts::new()),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let pong: String = self
            .timed(redis::cmd("PING").query_async(&mut conn))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Protocol(pong))
        }
    }

    pub async fn conn(&self) -> Result<deadpool_redis::Connection, StoreError> {
        Ok(self.pool.get().await?)
    }

    pub async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StoreError::Timeout),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

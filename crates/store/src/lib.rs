//! Redis: job records, their monotonic state machine, and each job's event history.
//!
//! # Layout
//! - [`keys`]: the whole key schema, under one configurable prefix.
//! - [`cache`]: response cache entries and their single-flight leases.
//! - [`dashboard`]: the workers' small summaries (latency, breakers, usage) the dashboard
//!   reads.
//! - [`jobs`]: creating, reading and transitioning job records (Lua scripts do every
//!   transition atomically, so ingest and any number of workers can race safely).
//! - [`record`]: the typed job record read back from Redis.
//! - [`replay`]: the audited operator replay (failed → queued) and the routing record.
//! - [`scripts`]: the one loader of every Redis script (the store's `lua/*.lua` and the
//!   governance crate's), each a file that opens with its KEYS/ARGV contract.
//! - [`upgrade`]: carrying kill switches and budgets over to the hash-tagged key names.
//! - [`webhooks`]: webhook endpoints, per-job webhook targets and delivery logs.

pub mod cache;
pub mod dashboard;
pub mod jobs;
pub mod keys;
pub mod record;
pub mod replay;
pub mod scripts;
pub mod upgrade;
pub mod webhooks;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use sluice_config::RedisConfig;

pub use cache::Lead;
pub use jobs::{JobError, RecordBase, Transition};
pub use keys::Keys;
pub use record::JobRecord;
pub use replay::Replay;
pub use scripts::Lua;
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

/// How long the record of a job that has not ended yet (queued or running) is kept, and the
/// tombstone of a rejected publish: a week, or `redis.result_ttl_s` if that is longer. The
/// JOBS stream keeps a message until a worker takes it, however long the backlog, so no
/// configured time bounds how long a job waits; no process sees queued jobs to renew their
/// records either. A week covers any backlog an operator would let stand (it is how long an
/// unsettled budget reservation is kept) and still bounds what a message that is never
/// delivered leaves in Redis. When the job ends, its record is kept for `result_ttl_s`.
pub const PENDING_TTL_S: u64 = 7 * 24 * 3600;

/// Handle to the job store; cheap to clone.
///
/// Every clone shares a few multiplexed connections: concurrent commands from any number of
/// tasks are pipelined onto them (one write and one read per batch instead of one round trip
/// each), and a dropped connection is re-established in the background. Against a Redis
/// Cluster, one cluster connection routes each command (and each script, by its first key)
/// to the shard that owns the slot, following the cluster's redirections.
#[derive(Clone)]
pub struct Store {
    redis: Redis,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    keys: Keys,
    /// How long an ended job's record, result and history are kept (`redis.result_ttl_s`).
    ttl_s: u64,
    /// How long the record of a job that has not ended is kept: see [`PENDING_TTL_S`].
    pending_ttl_s: u64,
    timeout: Duration,
}

/// Where the store's commands go.
#[derive(Clone)]
enum Redis {
    Single(std::sync::Arc<[ConnectionManager]>),
    /// Built on first use (it starts its background task on the runtime).
    Cluster(std::sync::Arc<(ClusterClient, tokio::sync::OnceCell<ClusterConnection>)>),
}

/// A connection to the store: one Redis or a Redis Cluster. Commands and scripts run on it
/// as on any redis-rs connection.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Store {
    /// Prepares the connections (opened lazily, on the first command) and checks nothing;
    /// call [`Store::ping`] to find out whether Redis answers.
    pub fn new(cfg: &RedisConfig) -> Result<Store, StoreError> {
        let timeout = cfg.command_timeout.max(Duration::from_millis(1));
        // redis-rs leaves Nagle's algorithm on by default: a command written while an earlier
        // one is unacknowledged would wait for that ACK.
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let unavailable = |e: redis::RedisError| StoreError::Unavailable(e.to_string());
        let redis = if cfg.is_cluster() {
            let client = ClusterClientBuilder::new(cfg.urls())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .tcp_settings(tcp)
                .build()
                .map_err(unavailable)?;
            Redis::Cluster(std::sync::Arc::new((client, Default::default())))
        } else {
            let info = redis::IntoConnectionInfo::into_connection_info(cfg.url.trim())
                .map_err(unavailable)?
                .set_tcp_settings(tcp);
            let client = redis::Client::open(info).map_err(unavailable)?;
            let manager_cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_max_delay(Duration::from_secs(2))
                .set_pipeline_buffer_size(4096);
            let conns = (0..cfg.connections.max(1))
                .map(|_| {
                    ConnectionManager::new_lazy_with_config(client.clone(), manager_cfg.clone())
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            Redis::Single(conns.into())
        };
        Ok(Store {
            redis,
            next: Default::default(),
            keys: Keys::new(&cfg.prefix),
            ttl_s: cfg.result_ttl.as_secs(),
            pending_ttl_s: cfg.result_ttl.as_secs().max(PENDING_TTL_S),
            timeout,
        })
    }

    /// Whether the store is a Redis Cluster (keys of different slots cannot share a script,
    /// a transaction or a pipeline).
    pub fn is_cluster(&self) -> bool {
        matches!(self.redis, Redis::Cluster(_))
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

    /// Redis's `maxmemory-policy` (`None` where `CONFIG GET` is not allowed, as on some
    /// managed services). Anything but `noeviction` may drop job records and counters.
    pub async fn maxmemory_policy(&self) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn().await?;
        let reply: Result<Vec<String>, StoreError> = self
            .timed(
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async(&mut conn),
            )
            .await;
        match reply {
            Ok(pair) => Ok(pair.into_iter().nth(1)),
            // A refused command (CONFIG disabled or renamed).
            Err(StoreError::Protocol(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A handle on one of the shared connections (round robin). Never blocks: commands sent
    /// on it are queued onto the connection and pipelined with everyone else's.
    pub async fn conn(&self) -> Result<Conn, StoreError> {
        match &self.redis {
            Redis::Single(conns) => {
                let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % conns.len();
                Ok(Conn::Single(conns[i].clone()))
            }
            Redis::Cluster(cluster) => {
                let (client, conn) = &**cluster;
                let conn = conn.get_or_init(|| async {
                    client.get_pending_async_connection_with_config(Default::default())
                });
                Ok(Conn::Cluster(conn.await.clone()))
            }
        }
    }

    /// Runs a transaction (`MULTI` pipeline) on one Redis; on a cluster, where a
    /// transaction must stay on one slot, runs its commands one after the other, in order,
    /// stopping at the first error. Callers order the commands so that a prefix of them leaves
    /// nothing wrong behind.
    pub async fn apply_in_order(&self, pipe: redis::Pipeline) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        if !self.is_cluster() {
            let _: redis::Value = self.timed(pipe.query_async(&mut conn)).await?;
            return Ok(());
        }
        for cmd in pipe.cmd_iter() {
            let _: redis::Value = self.timed(cmd.query_async(&mut conn)).await?;
        }
        Ok(())
    }

    /// Runs `cmds` and returns their replies in order: pipelined on one Redis; on a cluster,
    /// where a pipeline must stay on one slot, as concurrent commands routed each to its
    /// shard. For reads and writes that do not need to be atomic together.
    pub async fn query_each<T: redis::FromRedisValue>(
        &self,
        cmds: Vec<redis::Cmd>,
    ) -> Result<Vec<T>, StoreError> {
        let conn = self.conn().await?;
        if !self.is_cluster() {
            let mut pipe = redis::pipe();
            for c in cmds {
                pipe.add_command(c);
            }
            let mut conn = conn;
            return self.timed(pipe.query_async(&mut conn)).await;
        }
        let calls = cmds.into_iter().map(|c| {
            let mut conn = conn.clone();
            async move { c.query_async::<T>(&mut conn).await }
        });
        self.timed(async { futures_util::future::try_join_all(calls).await })
            .await
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

//! The configuration sections and their defaults.

use std::{collections::HashSet, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{ConfigError, SecretRef};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub nats: NatsConfig,
    pub redis: RedisConfig,
    pub ingest: IngestConfig,
    pub worker: WorkerConfig,
    pub upstream: UpstreamConfig,
    pub models: crate::ModelsConfig,
    pub tenants: Vec<TenantConfig>,
    pub delivery: crate::DeliveryConfig,
    pub webhooks: crate::WebhooksConfig,
    pub governance: crate::GovernanceConfig,
    pub cache: crate::CacheConfig,
    pub screening: crate::ScreeningConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// One server or a comma-separated list of a cluster's servers; the client also learns
    /// the cluster's other servers from the one it reaches.
    pub url: String,
    /// Prefix for stream, consumer and subject names (empty: the documented names).
    pub namespace: String,
    /// How long ingest waits for JetStream to acknowledge a publish before answering 503.
    #[serde(rename = "publish_timeout_ms", with = "crate::duration::millis")]
    pub publish_timeout: Duration,
    /// Shortest interval between two doorbell rings of one priority class (see
    /// `Queue::ring`). Longer gaps let each ring and the fetches it causes cover more jobs:
    /// less broker and worker CPU under moderate load, at the cost of up to this much queue
    /// latency for a job that arrives right after a ring.
    #[serde(rename = "ring_gap_ms", with = "crate::duration::millis")]
    pub ring_gap: Duration,
    /// Bounds of the JOBS stream; past them publishes are refused (and answered 503).
    pub max_queued_jobs: i64,
    pub max_queue_bytes: i64,
    /// Replicas of every stream Sluice creates (1–5; 3 on a production cluster). Applied
    /// at start: streams are created or updated, so raising it on a running cluster
    /// replicates the existing streams.
    pub replicas: usize,
    /// Window in which a re-published job id is recognised as a duplicate.
    #[serde(rename = "duplicate_window_s", with = "crate::duration::secs")]
    pub duplicate_window: Duration,
    /// Retention of the dead-letter stream.
    #[serde(rename = "dlq_max_age_s", with = "crate::duration::secs")]
    pub dlq_max_age: Duration,
    pub dlq_max_msgs: i64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            namespace: String::new(),
            publish_timeout: Duration::from_millis(2_000),
            ring_gap: Duration::from_millis(1),
            max_queued_jobs: 1_000_000,
            max_queue_bytes: 2 * 1024 * 1024 * 1024,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            dlq_max_age: Duration::from_secs(14 * 24 * 3600),
            dlq_max_msgs: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// One Redis, or the seed nodes of a Redis Cluster separated by commas.
    pub url: String,
    /// A Redis Cluster even when `url` names one seed node (several always mean a cluster).
    pub cluster: bool,
    /// Every key lives under this prefix (see `sluice_store::keys`).
    pub prefix: String,
    /// Multiplexed connections per process; concurrent commands are pipelined onto them.
    pub connections: usize,
    /// How long a job record, its result and its event history are kept after the job
    /// ended (until then: `sluice_store::PENDING_TTL_S`, a week, or this if longer).
    #[serde(rename = "result_ttl_s", with = "crate::duration::secs")]
    pub result_ttl: Duration,
    #[serde(rename = "command_timeout_ms", with = "crate::duration::millis")]
    pub command_timeout: Duration,
}

impl RedisConfig {
    /// The URLs of `url`: one Redis, or a cluster's seed nodes.
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// Whether Sluice talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster || self.urls().len() > 1
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            prefix: "sluice:".into(),
            connections: 2,
            result_ttl: Duration::from_secs(24 * 3600),
            command_timeout: Duration::from_millis(2_000),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub listen: String,
    /// Largest accepted request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest accepted `max_tokens`.
    pub max_output_tokens: u64,
    /// Seconds a client is told to wait (`Retry-After`) when the broker refuses work.
    #[serde(rename = "retry_after_s", with = "crate::duration::secs")]
    pub retry_after: Duration,
    /// Requests processed at once; past it requests get 503. Probes do not count.
    pub max_concurrent_requests: usize,
    /// Open connections at most; past it the listener stops accepting until one closes.
    pub max_connections: usize,
    /// A new connection must send its first request head within this.
    #[serde(rename = "header_read_timeout_ms", with = "crate::duration::millis")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection must send its next request head within this of the last
    /// response, or it is closed.
    #[serde(rename = "idle_timeout_ms", with = "crate::duration::millis")]
    pub idle_timeout: Duration,
    /// A request body must arrive whole within this, else `408`.
    #[serde(rename = "body_read_timeout_ms", with = "crate::duration::millis")]
    pub body_read_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1024 * 1024,
            max_output_tokens: 1_000_000,
            retry_after: Duration::from_secs(2),
            max_concurrent_requests: 4096,
            max_connections: 10_000,
            header_read_timeout: Duration::from_millis(10_000),
            idle_timeout: Duration::from_millis(75_000),
            body_read_timeout: Duration::from_millis(30_000),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs one worker replica runs at once.
    pub concurrency: usize,
    /// How long the broker waits for an ack before redelivering; heartbeats extend it.
    #[serde(rename = "ack_wait_s", with = "crate::duration::secs")]
    pub ack_wait: Duration,
    /// Deliveries before a job is failed and dead-lettered.
    pub max_attempts: u32,
    #[serde(rename = "backoff_base_ms", with = "crate::duration::millis")]
    pub backoff_base: Duration,
    #[serde(rename = "backoff_max_ms", with = "crate::duration::millis")]
    pub backoff_max: Duration,
    /// On SIGTERM, how long in-flight jobs may run before they are released to the broker.
    #[serde(rename = "shutdown_grace_s", with = "crate::duration::secs")]
    pub shutdown_grace: Duration,
    /// Every Nth fetch round starts with `low` (and every other Nth/2 with `normal`), so lower
    /// classes keep a small guaranteed share under a flood of higher ones.
    pub low_share_every: u32,
    /// Where the worker serves `/metrics` and `/healthz` (empty: not served).
    pub metrics_listen: String,
    /// Expiry of the one-message long-poll each idle class keeps open (re-armed when it ends).
    #[serde(rename = "idle_poll_ms", with = "crate::duration::millis")]
    pub idle_poll: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 64,
            ack_wait: Duration::from_secs(30),
            max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_millis(30_000),
            shutdown_grace: Duration::from_secs(20),
            low_share_every: 10,
            metrics_listen: String::new(),
            idle_poll: Duration::from_millis(2_000),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Base URL of an OpenAI-compatible API, up to and including `/v1`.
    pub base_url: String,
    pub api_key: Option<SecretRef>,
    #[serde(rename = "timeout_s", with = "crate::duration::secs")]
    pub timeout: Duration,
    #[serde(rename = "connect_timeout_ms", with = "crate::duration::millis")]
    pub connect_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            base_url: "http://127.0.0.1:9100/v1".into(),
            api_key: None,
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_millis(2_000),
            pool_max_idle_per_host: 512,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// One NATS subject token: letters, digits, `-`, `_`.
    pub id: String,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// A name for the key (shown in logs and metrics instead of the key).
    pub id: String,
    /// Hex SHA-256 of the key (`sluice keys hash` prints it).
    pub sha256: String,
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        self.cache.validate()?;
        if !sluice_protocol::Subjects::valid_namespace(&self.nats.namespace) {
            return bad("nats.namespace must contain only letters, digits, '-' and '_'");
        }
        let n = &self.nats;
        if n.publish_timeout.is_zero() || n.duplicate_window.is_zero() || n.dlq_max_age.is_zero() {
            return bad(
                "nats.publish_timeout_ms, duplicate_window_s and dlq_max_age_s must be positive",
            );
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(1)).contains(&n.ring_gap) {
            return bad("nats.ring_gap_ms must be between 1 and 1000");
        }
        // JetStream replicates a stream on at most five servers.
        if !(1..=5).contains(&self.nats.replicas) {
            return bad("nats.replicas must be between 1 and 5 (3 on a 3-node cluster)");
        }
        // A brace would become part of every key's Redis Cluster hash tag.
        if self.redis.prefix.contains(['{', '}']) {
            return bad("redis.prefix must not contain '{' or '}' (they mark hash tags)");
        }
        if self.redis.urls().is_empty() {
            return bad("redis.url must name a Redis (or a cluster's seed nodes, comma-separated)");
        }
        if self.redis.connections == 0 || self.redis.result_ttl.is_zero() {
            return bad("redis.connections and redis.result_ttl_s must be positive");
        }
        if self.ingest.max_body_bytes < 1024 || self.ingest.max_concurrent_requests == 0 {
            return bad(
                "ingest.max_body_bytes must be at least 1024 and max_concurrent_requests positive",
            );
        }
        let i = &self.ingest;
        if i.max_connections == 0
            || i.header_read_timeout.is_zero()
            || i.idle_timeout.is_zero()
            || i.body_read_timeout.is_zero()
        {
            return bad(
                "ingest.max_connections, header_read_timeout_ms, idle_timeout_ms and body_read_timeout_ms must be positive",
            );
        }
        if self.worker.concurrency == 0 || self.worker.concurrency > 100_000 {
            return bad("worker.concurrency must be between 1 and 100000");
        }
        if self.worker.max_attempts == 0 || self.worker.ack_wait.is_zero() {
            return bad("worker.max_attempts and worker.ack_wait_s must be positive");
        }
        if self.worker.low_share_every < 2 {
            return bad("worker.low_share_every must be at least 2");
        }
        if !(self.upstream.base_url.starts_with("http://")
            || self.upstream.base_url.starts_with("https://"))
        {
            return bad("upstream.base_url must be an http(s) URL");
        }
        self.delivery.validate()?;
        self.webhooks.validate()?;
        self.governance.validate()?;
        let global = self.governance.global;
        if self.redis.is_cluster() && (global.requests > 0 || global.tokens > 0) {
            return bad(
                "governance.global limits cannot be used with a Redis Cluster: a limit shared by every tenant would need every admission on one shard",
            );
        }
        self.models.validate()?;
        self.check_model_references()?;
        let mut tenants = HashSet::new();
        let mut keys = HashSet::new();
        for t in &self.tenants {
            if !sluice_protocol::subjects::is_token(&t.id) {
                return Err(ConfigError::Invalid(format!(
                    "tenant id {:?} must be 1-64 letters, digits, '-' or '_'",
                    t.id
                )));
            }
            if !tenants.insert(t.id.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "tenant {:?} is listed twice",
                    t.id
                )));
            }
            for k in &t.keys {
                let ok = k.sha256.len() == 64 && k.sha256.bytes().all(|b| b.is_ascii_hexdigit());
                if !ok {
                    return Err(ConfigError::Invalid(format!(
                        "key {:?} of tenant {:?}: sha256 must be 64 hex digits",
                        k.id, t.id
                    )));
                }
                if !keys.insert(k.sha256.to_ascii_lowercase()) {
                    return Err(ConfigError::Invalid(format!(
                        "key {:?} is configured twice",
                        k.id
                    )));
                }
            }
        }
        Ok(())
    }
}

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
    pub publish_timeout_ms: u64,
    /// Shortest interval between two doorbell rings of one priority class (see
    /// `Queue::ring`). Longer gaps let each ring and the fetches it causes cover more jobs:
    /// less broker and worker CPU under moderate load, at the cost of up to this much queue
    /// latency for a job that arrives right after a ring.
    pub ring_gap_ms: u64,
    /// Bounds of the JOBS stream; past them publishes are refused (and answered 503).
    pub max_queued_jobs: i64,
    pub max_queue_bytes: i64,
    /// Replicas of every stream Sluice creates (1–5; 3 on a production cluster). Applied
    /// at start: streams are created or updated, so raising it on a running cluster
    /// replicates the existing streams.
    pub replicas: usize,
    /// Window in which a re-published job id is recognised as a duplicate.
    pub duplicate_window_s: u64,
    /// Retention of the dead-letter stream.
    pub dlq_max_age_s: u64,
    pub dlq_max_msgs: i64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            namespace: String::new(),
            publish_timeout_ms: 2_000,
            ring_gap_ms: 1,
            max_queued_jobs: 1_000_000,
            max_queue_bytes: 2 * 1024 * 1024 * 1024,
            replicas: 1,
            duplicate_window_s: 120,
            dlq_max_age_s: 14 * 24 * 3600,
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
    pub result_ttl_s: u64,
    pub command_timeout_ms: u64,
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
            result_ttl_s: 24 * 3600,
            command_timeout_ms: 2_000,
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
    pub retry_after_s: u64,
    /// Requests processed at once; past it requests get 503. Probes do not count.
    pub max_concurrent_requests: usize,
    /// Open connections at most; past it the listener stops accepting until one closes.
    pub max_connections: usize,
    /// A new connection must send its first request head within this.
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection must send its next request head within this of the last
    /// response, or it is closed.
    pub idle_timeout_ms: u64,
    /// A request body must arrive whole within this, else `408`.
    pub body_read_timeout_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1024 * 1024,
            max_output_tokens: 1_000_000,
            retry_after_s: 2,
            max_concurrent_requests: 4096,
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 75_000,
            body_read_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs one worker replica runs at once.
    pub concurrency: usize,
    /// How long the broker waits for an ack before redelivering; heartbeats extend it.
    pub ack_wait_s: u64,
    /// Deliveries before a job is failed and dead-lettered.
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// On SIGTERM, how long in-flight jobs may run before they are released to the broker.
    pub shutdown_grace_s: u64,
    /// Every Nth fetch round starts with `low` (and every other Nth/2 with `normal`), so lower
    /// classes keep a small guaranteed share under a flood of higher ones.
    pub low_share_every: u32,
    /// Where the worker serves `/metrics` and `/healthz` (empty: not served).
    pub metrics_listen: String,
    /// Expiry of the one-message long-poll each idle class keeps open (re-armed when it ends).
    pub idle_poll_ms: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 64,
            ack_wait_s: 30,
            max_attempts: 5,
            backoff_base_ms: 500,
            backoff_max_ms: 30_000,
            shutdown_grace_s: 20,
            low_share_every: 10,
            metrics_listen: String::new(),
            idle_poll_ms: 2_000,
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
        if self.nats.publish_timeout_ms == 0 {
            return bad("nats.publish_timeout_ms must be positive");
        }
        if !(1..=1_000).contains(&self.nats.ring_gap_ms) {
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
        if self.redis.connections == 0 || self.redis.result_ttl_s == 0 {
            return bad("redis.connections and redis.result_ttl_s must be positive");
        }
        if self.ingest.max_body_bytes < 1024 || self.ingest.max_concurrent_requests == 0 {
            return bad(
                "ingest.max_body_bytes must be at least 1024 and max_concurrent_requests positive",
            );
        }
        let i = &self.ingest;
        if i.max_connections == 0
            || i.header_read_timeout_ms == 0
            || i.idle_timeout_ms == 0
            || i.body_read_timeout_ms == 0
        {
            return bad(
                "ingest.max_connections, header_read_timeout_ms, idle_timeout_ms and body_read_timeout_ms must be positive",
            );
        }
        if self.worker.concurrency == 0 || self.worker.concurrency > 100_000 {
            return bad("worker.concurrency must be between 1 and 100000");
        }
        if self.worker.max_attempts == 0 || self.worker.ack_wait_s == 0 {
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

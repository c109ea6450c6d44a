//! The second phase of configuration: runtime settings per service.
//!
//! [`Config`] is the file as read (durations written as integers named `_ms` / `_s` and
//! held as [`Duration`]s from then on, see `crate::duration`; secrets as `env::NAME`
//! references), checked by [`Config::validate`], cross-references included (see
//! `catalog.rs`). Each service then builds its settings once, at start-up:
//! [`IngestSettings::new`] and [`WorkerSettings::new`] resolve the secrets it needs from the
//! environment (a missing one is an error naming the field), and keep the sections other
//! crates take as they are (`redis`, `governance`, …). A service is given its settings,
//! never the whole `Config`.

use std::{collections::HashMap, time::Duration};

use secrecy::SecretString;

use crate::{
    CacheConfig, Config, ConfigError, GovernanceConfig, ModelsConfig, NatsConfig, RedisConfig,
    ScreeningConfig, SecretRef, TenantConfig, UpstreamConfig, WebhooksConfig,
};

fn secret(field: &str, r: &SecretRef) -> Result<SecretString, ConfigError> {
    r.resolve().map_err(|_| {
        ConfigError::field(
            field,
            &format!("environment variable {} is not set", r.variable()),
        )
    })
}

/// `[nats]`: the broker connection and the bounds of the streams Sluice creates.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub url: String,
    pub namespace: String,
    /// How long a publish waits for JetStream's acknowledgement.
    pub publish_timeout: Duration,
    /// Shortest interval between two doorbell rings of one class.
    pub ring_gap: Duration,
    pub max_queued_jobs: i64,
    pub max_queue_bytes: i64,
    pub replicas: usize,
    pub duplicate_window: Duration,
    pub dlq_max_age: Duration,
    pub dlq_max_msgs: i64,
}

impl NatsSettings {
    pub fn new(n: &NatsConfig) -> Result<NatsSettings, ConfigError> {
        Ok(NatsSettings {
            url: n.url.clone(),
            namespace: n.namespace.clone(),
            publish_timeout: n.publish_timeout,
            ring_gap: n.ring_gap,
            max_queued_jobs: n.max_queued_jobs,
            max_queue_bytes: n.max_queue_bytes,
            replicas: n.replicas,
            duplicate_window: n.duplicate_window,
            dlq_max_age: n.dlq_max_age,
            dlq_max_msgs: n.dlq_max_msgs,
        })
    }
}

/// `[ingest]`: the HTTP front door's limits and timeouts.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub listen: String,
    pub max_body_bytes: usize,
    pub max_output_tokens: u64,
    /// Whole seconds, as the `Retry-After` header carries them.
    pub retry_after_s: u64,
    pub max_concurrent_requests: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
}

impl HttpSettings {
    fn new(cfg: &Config) -> Result<HttpSettings, ConfigError> {
        let i = &cfg.ingest;
        Ok(HttpSettings {
            listen: i.listen.clone(),
            max_body_bytes: i.max_body_bytes,
            max_output_tokens: i.max_output_tokens,
            retry_after_s: i.retry_after.as_secs(),
            max_concurrent_requests: i.max_concurrent_requests,
            max_connections: i.max_connections,
            header_read_timeout: i.header_read_timeout,
            idle_timeout: i.idle_timeout,
            body_read_timeout: i.body_read_timeout,
        })
    }
}

/// `[delivery]`: how results reach clients, and how the worker forwards a stream.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub sync_wait: Duration,
    pub keepalive: Duration,
    pub sse_max: Duration,
    pub recheck: Duration,
    pub idle_recheck_max: Duration,
    pub stream_flush: Duration,
    pub max_tracked_jobs: usize,
    pub sync_waits_per_tenant: usize,
    pub max_streams: usize,
    pub streams_per_tenant: usize,
}

impl DeliverySettings {
    fn new(cfg: &Config) -> Result<DeliverySettings, ConfigError> {
        let d = &cfg.delivery;
        Ok(DeliverySettings {
            sync_wait: d.sync_wait,
            keepalive: d.keepalive,
            sse_max: d.sse_max,
            recheck: d.recheck,
            idle_recheck_max: d.idle_recheck_max,
            stream_flush: d.stream_flush,
            max_tracked_jobs: d.max_tracked_jobs,
            sync_waits_per_tenant: d.sync_waits_per_tenant,
            max_streams: d.max_streams,
            streams_per_tenant: d.streams_per_tenant,
        })
    }
}

/// Everything ingest reads.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub ingest: HttpSettings,
    pub delivery: DeliverySettings,
    /// Every model a client may name, in `GET /v1/models` order ([`Config::model_ids`]).
    pub models: Vec<String>,
    pub nats: NatsSettings,
    pub redis: RedisConfig,
    pub tenants: Vec<TenantConfig>,
    pub governance: GovernanceConfig,
    pub cache: CacheConfig,
    pub screening: ScreeningConfig,
    pub webhooks: WebhooksConfig,
    /// The pools and upstream, when a model has the semantic cache (ingest then embeds
    /// prompts with `cache.semantic.embedding_model`); `None` otherwise, so ingest needs no
    /// provider key.
    pub providers: Option<std::sync::Arc<ProviderSettings>>,
}

impl IngestSettings {
    pub fn new(cfg: &Config) -> Result<IngestSettings, ConfigError> {
        cfg.validate()?;
        Ok(IngestSettings {
            ingest: HttpSettings::new(cfg)?,
            delivery: DeliverySettings::new(cfg)?,
            models: cfg.model_ids().into_iter().map(String::from).collect(),
            nats: NatsSettings::new(&cfg.nats)?,
            redis: cfg.redis.clone(),
            tenants: cfg.tenants.clone(),
            governance: cfg.governance.clone(),
            cache: cfg.cache.clone(),
            screening: cfg.screening.clone(),
            webhooks: cfg.webhooks.clone(),
            providers: if cfg.cache.semantic_enabled() {
                Some(std::sync::Arc::new(ProviderSettings::new(cfg)?))
            } else {
                None
            },
        })
    }
}

/// `[worker]`: one replica's slots, redelivery and shutdown.
#[derive(Debug, Clone)]
pub struct WorkerRuntime {
    pub concurrency: usize,
    pub ack_wait: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub shutdown_grace: Duration,
    pub low_share_every: u32,
    /// Where the worker serves `/metrics` and `/healthz` (empty: not served).
    pub metrics_listen: String,
    pub idle_poll: Duration,
    /// How long a job holds its tenant's in-flight slot at most: twice the longest a call
    /// and its acknowledgement may take (`upstream.timeout_s + worker.ack_wait_s`).
    pub in_flight_lease: Duration,
}

impl WorkerRuntime {
    fn new(cfg: &Config) -> Result<WorkerRuntime, ConfigError> {
        let w = &cfg.worker;
        Ok(WorkerRuntime {
            concurrency: w.concurrency,
            ack_wait: w.ack_wait,
            max_attempts: w.max_attempts,
            backoff_base: w.backoff_base,
            backoff_max: w.backoff_max,
            shutdown_grace: w.shutdown_grace,
            low_share_every: w.low_share_every,
            metrics_listen: w.metrics_listen.clone(),
            idle_poll: w.idle_poll,
            in_flight_lease: (cfg.upstream.timeout + w.ack_wait) * 2,
        })
    }
}

/// `[models]` and `[upstream]` with their API keys resolved from the environment.
#[derive(Debug)]
pub struct ProviderSettings {
    pub models: ModelsConfig,
    pub upstream: UpstreamConfig,
    /// `upstream.api_key`, resolved.
    pub upstream_key: Option<SecretString>,
    /// Each pool deployment's `api_key`, resolved, by (pool alias, deployment name).
    deployment_keys: HashMap<(String, String), SecretString>,
}

impl ProviderSettings {
    /// Resolves every key the pools use; a referenced variable that is not set is an error
    /// naming the field that references it.
    pub fn new(cfg: &Config) -> Result<ProviderSettings, ConfigError> {
        let upstream_key = cfg
            .upstream
            .api_key
            .as_ref()
            .map(|r| secret("upstream.api_key", r))
            .transpose()?;
        let mut deployment_keys = HashMap::new();
        for p in &cfg.models.pools {
            for d in &p.deployments {
                if let Some(r) = &d.api_key {
                    let field = format!(
                        "models.pools[{:?}].deployments[{:?}].api_key",
                        p.alias, d.name
                    );
                    deployment_keys.insert((p.alias.clone(), d.name.clone()), secret(&field, r)?);
                }
            }
        }
        Ok(ProviderSettings {
            models: cfg.models.clone(),
            upstream: cfg.upstream.clone(),
            upstream_key,
            deployment_keys,
        })
    }

    /// The resolved key of deployment `name` in pool `alias` (`None`: it has no key).
    pub fn deployment_key(&self, alias: &str, name: &str) -> Option<SecretString> {
        self.deployment_keys
            .get(&(alias.to_string(), name.to_string()))
            .cloned()
    }
}

/// Everything a worker reads.
#[derive(Debug)]
pub struct WorkerSettings {
    pub worker: WorkerRuntime,
    pub delivery: DeliverySettings,
    pub providers: ProviderSettings,
    pub nats: NatsSettings,
    pub redis: RedisConfig,
    pub governance: GovernanceConfig,
    pub webhooks: WebhooksConfig,
}

impl WorkerSettings {
    pub fn new(cfg: &Config) -> Result<WorkerSettings, ConfigError> {
        cfg.validate()?;
        Ok(WorkerSettings {
            worker: WorkerRuntime::new(cfg)?,
            delivery: DeliverySettings::new(cfg)?,
            providers: ProviderSettings::new(cfg)?,
            nats: NatsSettings::new(&cfg.nats)?,
            redis: cfg.redis.clone(),
            governance: cfg.governance.clone(),
            webhooks: cfg.webhooks.clone(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        Config::from_toml_with_env(toml, &[]).unwrap()
    }

    #[test]
    fn every_duration_is_converted_in_the_unit_its_name_says() {
        type Pick = fn(&IngestSettings, &WorkerSettings) -> Duration;
        let cases: &[(&str, Pick, Duration)] = &[
            (
                "[delivery]\nsync_wait_s = 7",
                |i, _| i.delivery.sync_wait,
                Duration::from_secs(7),
            ),
            (
                "[delivery]\nkeepalive_s = 3",
                |i, _| i.delivery.keepalive,
                Duration::from_secs(3),
            ),
            (
                "[delivery]\nsse_max_s = 60",
                |i, _| i.delivery.sse_max,
                Duration::from_secs(60),
            ),
            (
                "[delivery]\nrecheck_ms = 250",
                |i, _| i.delivery.recheck,
                Duration::from_millis(250),
            ),
            (
                "[delivery]\nidle_recheck_max_ms = 9000",
                |i, _| i.delivery.idle_recheck_max,
                Duration::from_millis(9000),
            ),
            (
                "[delivery]\nstream_flush_ms = 10",
                |_, w| w.delivery.stream_flush,
                Duration::from_millis(10),
            ),
            (
                "[ingest]\nheader_read_timeout_ms = 1500",
                |i, _| i.ingest.header_read_timeout,
                Duration::from_millis(1500),
            ),
            (
                "[ingest]\nidle_timeout_ms = 5000",
                |i, _| i.ingest.idle_timeout,
                Duration::from_millis(5000),
            ),
            (
                "[ingest]\nbody_read_timeout_ms = 700",
                |i, _| i.ingest.body_read_timeout,
                Duration::from_millis(700),
            ),
            (
                "[worker]\nack_wait_s = 45",
                |_, w| w.worker.ack_wait,
                Duration::from_secs(45),
            ),
            (
                "[worker]\nbackoff_base_ms = 50",
                |_, w| w.worker.backoff_base,
                Duration::from_millis(50),
            ),
            (
                "[worker]\nbackoff_max_ms = 200",
                |_, w| w.worker.backoff_max,
                Duration::from_millis(200),
            ),
            (
                "[worker]\nshutdown_grace_s = 1",
                |_, w| w.worker.shutdown_grace,
                Duration::from_secs(1),
            ),
            (
                "[worker]\nidle_poll_ms = 100",
                |_, w| w.worker.idle_poll,
                Duration::from_millis(100),
            ),
            (
                "[nats]\npublish_timeout_ms = 750",
                |i, _| i.nats.publish_timeout,
                Duration::from_millis(750),
            ),
            (
                "[nats]\nring_gap_ms = 5",
                |_, w| w.nats.ring_gap,
                Duration::from_millis(5),
            ),
            (
                "[nats]\nduplicate_window_s = 30",
                |_, w| w.nats.duplicate_window,
                Duration::from_secs(30),
            ),
            (
                "[nats]\ndlq_max_age_s = 3600",
                |i, _| i.nats.dlq_max_age,
                Duration::from_secs(3600),
            ),
            (
                "[worker]\nack_wait_s = 10\n[upstream]\ntimeout_s = 20",
                |_, w| w.worker.in_flight_lease,
                Duration::from_secs(60),
            ),
        ];
        for (toml, pick, want) in cases {
            let cfg = config(toml);
            let ingest = IngestSettings::new(&cfg).unwrap();
            let worker = WorkerSettings::new(&cfg).unwrap();
            assert_eq!(pick(&ingest, &worker), *want, "{toml}");
        }
        let ingest = IngestSettings::new(&config("[ingest]\nretry_after_s = 4")).unwrap();
        assert_eq!(ingest.ingest.retry_after_s, 4);
    }

    #[test]
    fn an_invalid_duration_is_refused_naming_its_field() {
        // Refused while the file is read, or while a service's settings are built.
        let err = |toml: &str| match Config::from_toml_with_env(toml, &[]) {
            Err(e) => e.to_string(),
            Ok(cfg) => WorkerSettings::new(&cfg)
                .err()
                .or_else(|| IngestSettings::new(&cfg).err())
                .map(|e| e.to_string())
                .unwrap_or_default(),
        };
        let e = err("[delivery]\nstream_flush_ms = 9223372036854775807");
        assert!(e.contains("delivery.stream_flush_ms"), "{e}");
        let e = err("[worker]\nshutdown_grace_s = 400000000");
        assert!(
            e.contains("worker.shutdown_grace_s") && e.contains("longer than ten years"),
            "{e}"
        );
        let e = err("[ingest]\nretry_after_s = 9999999999");
        assert!(e.contains("ingest.retry_after_s"), "{e}");
        // Phase one already refuses a zero where a positive duration is needed, naming it.
        let e = Config::from_toml_with_env("[delivery]\nsync_wait_s = 0", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sync_wait_s"), "{e}");
    }

    #[test]
    fn durations_read_from_the_file_are_durations_in_the_unit_of_their_name() {
        let cfg = config(
            "[upstream]\ntimeout_s = 9\nconnect_timeout_ms = 1500\n[models]\nretry_base_ms = 40\n\
             retry_budget_window_s = 30\n[models.breaker]\nopen_s = 7\nwindow_s = 20\n\
             [models.routing]\nclassifier_timeout_ms = 250\n",
        );
        assert_eq!(cfg.upstream.timeout, Duration::from_secs(9));
        assert_eq!(cfg.upstream.connect_timeout, Duration::from_millis(1500));
        assert_eq!(cfg.models.retry_base, Duration::from_millis(40));
        assert_eq!(cfg.models.retry_budget_window, Duration::from_secs(30));
        assert_eq!(cfg.models.breaker.open_for, Duration::from_secs(7));
        assert_eq!(cfg.models.breaker.window, Duration::from_secs(20));
        assert_eq!(
            cfg.models.routing.classifier_timeout,
            Duration::from_millis(250)
        );
        let e = Config::from_toml_with_env("[models.breaker]\nopen_s = 400000000", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("open_s") && e.contains("ten years"), "{e}");
    }

    #[test]
    fn a_missing_secret_names_the_field_that_references_it() {
        let cfg = config(
            "[[models.pools]]\nalias = \"big\"\n[[models.pools.deployments]]\nname = \"a\"\n\
             base_url = \"http://x\"\napi_key = \"env::SLUICE_TEST_SURELY_UNSET_KEY\"\n",
        );
        let e = WorkerSettings::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("SLUICE_TEST_SURELY_UNSET_KEY"), "{e}");
        assert!(
            e.contains("models.pools[\"big\"].deployments[\"a\"].api_key"),
            "{e}"
        );
        // Ingest calls no provider, so it does not need the key.
        assert!(IngestSettings::new(&cfg).is_ok());
    }
}

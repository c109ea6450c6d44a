//! The `[webhooks]` section: signed webhook delivery (Standard Webhooks).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Run the dispatcher in the worker process.
    pub dispatcher: bool,
    /// Addresses (`IP` or `IP/prefix`) that webhook URLs may resolve to even though they
    /// are loopback, private, link-local or otherwise internal. Empty in production; tests
    /// allow their local receiver.
    pub allow_private: Vec<String>,
    /// One delivery attempt's time limit (connect + response).
    #[serde(rename = "timeout_ms", with = "crate::duration::millis")]
    pub timeout: Duration,
    /// Delay before each retry, in milliseconds (a jitter of up to `jitter` is added).
    /// After the last one the delivery is dead-lettered. The default follows the Standard
    /// Webhooks schedule, stretched to about three days.
    #[serde(rename = "schedule_ms", with = "crate::duration::millis_vec")]
    pub schedule: Vec<Duration>,
    /// Fraction of a retry delay added as random jitter.
    pub jitter: f64,
    /// How long a rotated-out secret still signs deliveries (both signatures are sent).
    #[serde(rename = "rotation_grace_s", with = "crate::duration::secs")]
    pub rotation_grace: Duration,
    /// Endpoints one tenant may register.
    pub max_endpoints_per_tenant: usize,
    /// Delivery attempts kept in each endpoint's log.
    pub log_len: usize,
    /// Deliveries the dispatcher runs at once.
    pub concurrency: usize,
    /// Deliveries to one endpoint (a registered endpoint, or one host of per-job webhook
    /// URLs) at once; more wait in `HOOKS` (not an attempt).
    pub endpoint_concurrency: usize,
    /// The part of `concurrency` one tenant's deliveries may hold at once (at least one
    /// delivery), so a tenant whose receivers hang cannot delay the others.
    pub tenant_share: f64,
    /// Consecutive failed attempts that open an endpoint's circuit breaker: its deliveries
    /// then wait in `HOOKS` (not an attempt) for `breaker_cooldown_ms`, after which one
    /// probe is let through (success closes it, failure opens it again). `0` disables it.
    pub breaker_failures: u32,
    #[serde(rename = "breaker_cooldown_ms", with = "crate::duration::millis")]
    pub breaker_cooldown: Duration,
    /// Limits of the `HOOKS` stream (`0`: those of the jobs stream, `nats.max_queued_jobs`
    /// and at most 256 MiB of `nats.max_queue_bytes`). A full stream does not hold or fail
    /// jobs: their events wait in the store's outbox and are enqueued again later.
    pub stream_max_msgs: i64,
    pub stream_max_bytes: i64,
    /// Events the outbox keeps for a full or unreachable `HOOKS`, and for how long; an
    /// event past either is dropped, counted (`sluice_webhook_dropped_total`) and written
    /// to its endpoints' delivery logs.
    pub outbox_max: usize,
    #[serde(rename = "outbox_max_age_s", with = "crate::duration::secs")]
    pub outbox_max_age: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let s = Duration::from_secs(1);
        let h = 3600 * s;
        WebhooksConfig {
            dispatcher: true,
            allow_private: Vec::new(),
            timeout: Duration::from_millis(15_000),
            schedule: vec![
                5 * s,
                300 * s,
                1800 * s,
                2 * h,
                5 * h,
                10 * h,
                10 * h,
                10 * h,
                10 * h,
                10 * h,
                10 * h,
            ],
            jitter: 0.2,
            rotation_grace: Duration::from_secs(24 * 3600),
            max_endpoints_per_tenant: 16,
            log_len: 100,
            concurrency: 32,
            endpoint_concurrency: 8,
            tenant_share: 0.5,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_millis(30_000),
            stream_max_msgs: 0,
            stream_max_bytes: 0,
            outbox_max: 100_000,
            outbox_max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl WebhooksConfig {
    /// Deliveries one tenant may have in flight: its share of `concurrency`, at least one.
    pub fn tenant_slots(&self) -> usize {
        ((self.concurrency as f64 * self.tenant_share).floor() as usize).clamp(1, self.concurrency)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.timeout.is_zero()
            || self.concurrency == 0
            || self.log_len == 0
            || self.endpoint_concurrency == 0
        {
            return bad(
                "webhooks.timeout_ms, concurrency, endpoint_concurrency and log_len must be positive",
            );
        }
        if !(self.tenant_share > 0.0 && self.tenant_share <= 1.0) {
            return bad("webhooks.tenant_share must be above 0 and at most 1");
        }
        if self.stream_max_msgs < 0 || self.stream_max_bytes < 0 {
            return bad("webhooks.stream_max_msgs and stream_max_bytes must not be negative");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad("webhooks.jitter must be between 0 and 1");
        }
        if self.schedule.len() > 50 {
            return bad("webhooks.schedule_ms may have at most 50 retries");
        }
        for a in &self.allow_private {
            let ip = a.split('/').next().unwrap_or_default();
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "webhooks.allow_private: {a:?} is not an IP or IP/prefix"
                )));
            }
        }
        Ok(())
    }
}

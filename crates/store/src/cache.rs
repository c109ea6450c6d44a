//! The response cache's entries and single-flight leases in Redis.
//!
//! An entry is one string key per cache key (`{p}cache:{<hex>}`, MessagePack, with the
//! entry's TTL), written by the worker that completed the job ([`Store::record_completed`]
//! with the envelope's `cache`), so only an answer that completed is ever stored: an
//! upstream error, a cancelled or a failed job writes nothing. The lease
//! (`{p}cache:{<hex>}:lead`) names the job that is computing an entry, so identical
//! requests arriving meanwhile, on any ingest replica, wait for that job instead of calling
//! upstream again. The hex digest is the hash tag of both keys: in a Redis Cluster the
//! entries spread over the shards by key, and an entry and its lease share one.

use sluice_cache::{CacheKey, Entry};
use uuid::Uuid;

use crate::{Store, StoreError};

/// Who computes the entry a request is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lead {
    /// This request's job took the lease: it computes the entry.
    Leader,
    /// Job `0` is already computing it: wait for that job.
    Follower(Uuid),
}

impl Store {
    /// The entry under `key`, if any. An entry that does not decode (written by another
    /// version) is a miss.
    pub async fn cache_get(&self, key: &CacheKey) -> Result<Option<Entry>, StoreError> {
        let mut conn = self.conn().await?;
        let raw: Option<Vec<u8>> = self
            .timed(
                redis::cmd("GET")
                    .arg(self.keys.cache_entry(key))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(raw.and_then(|b| match Entry::decode(&b) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::debug!(error = %e, "ignoring a cache entry that does not decode");
                None
            }
        }))
    }

    /// Stores `entry` under `key` for `ttl_s` seconds and frees the key's lease.
    pub async fn cache_put(
        &self,
        key: &CacheKey,
        entry: &Entry,
        ttl_s: u64,
    ) -> Result<(), StoreError> {
        let bytes = entry
            .encode()
            .map_err(|e| StoreError::Protocol(e.to_string()))?;
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.cache_entry(key))
            .arg(bytes)
            .arg("EX")
            .arg(ttl_s.max(1))
            .ignore()
            .cmd("DEL")
            .arg(self.keys.cache_lead(key))
            .ignore();
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Takes the lease of `key` for job `job` for `lease_ms`, or names the job holding it.
    /// One command (`SET NX GET`), so two replicas can never both lead.
    pub async fn cache_lead(
        &self,
        key: &CacheKey,
        job: Uuid,
        lease_ms: u64,
    ) -> Result<Lead, StoreError> {
        let mut conn = self.conn().await?;
        let previous: Option<String> = self
            .timed(
                redis::cmd("SET")
                    .arg(self.keys.cache_lead(key))
                    .arg(job.to_string())
                    .arg("NX")
                    .arg("GET")
                    .arg("PX")
                    .arg(lease_ms.max(1))
                    .query_async(&mut conn),
            )
            .await?;
        match previous {
            None => Ok(Lead::Leader),
            Some(s) => s
                .parse()
                .map(Lead::Follower)
                .map_err(|_| StoreError::Protocol("cache lease is not a job id".into())),
        }
    }

    /// Ingest: job `env` (never published) is answered from the cache: its record is
    /// created `completed` with the entry's answer and where it came from.
    pub async fn record_cached(
        &self,
        env: &sluice_protocol::JobEnvelope,
        entry: &Entry,
    ) -> Result<crate::Transition, StoreError> {
        let source = entry.source_job.to_string();
        self.record_completed_with(
            env,
            &[("result", &entry.body), ("cached_from", source.as_bytes())],
        )
        .await
    }

    /// Frees the lease of `key` if job `job` still holds it (its job failed or was not
    /// queued, so the next request may lead).
    pub async fn cache_release(&self, key: &CacheKey, job: Uuid) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let script = redis::Script::new(RELEASE);
        self.timed(
            script
                .key(self.keys.cache_lead(key))
                .arg(job.to_string())
                .invoke_async::<i64>(&mut conn),
        )
        .await
        .map(|_| ())
    }
}

/// KEYS: the lease. ARGV: the job id. Deletes the lease only while that job holds it.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// The prompt and completion tokens of a provider answer (0 where it reports none), and
/// whether it is a degraded answer (a stale answer or the degradation message, which the
/// response cache must not store as a fresh one).
pub(crate) fn usage_of(result: &[u8]) -> (u64, u64, bool) {
    #[derive(serde::Deserialize, Default)]
    struct Usage {
        #[serde(default)]
        prompt_tokens: u64,
        #[serde(default)]
        completion_tokens: u64,
    }
    #[derive(serde::Deserialize, Default)]
    struct Answer {
        #[serde(default)]
        usage: Option<Usage>,
        #[serde(default)]
        degraded: bool,
    }
    let a = serde_json::from_slice::<Answer>(result).unwrap_or_default();
    let u = a.usage.unwrap_or_default();
    (u.prompt_tokens, u.completion_tokens, a.degraded)
}

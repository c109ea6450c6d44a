//! The Redis key schema. Every key Sluice writes is built here, under one prefix.
//!
//! | key | type | what |
//! |---|---|---|
//! | `{p}job:{id}` | hash | job record: tenant, status, timestamps, attempts, result, error |
//! | `{p}job:{id}:events` | list | event history (JSON), index + 1 is the event id |
//! | `{p}rejected:{id}` | string | tombstone: the publish was answered 503, never run the job |
//! | `{p}hooks:{tenant}` | set | the tenant's webhook endpoint ids |
//! | `{p}hook:{id}` | hash | endpoint: tenant, url, events, secret(s), disabled, created_at |
//! | `{p}hook:{id}:log` | list | the endpoint's latest delivery attempts (JSON, newest first) |
//! | `{p}cache:{<hex>}` | string | response cache entry (MessagePack), expires with its model's TTL |
//! | `{p}cache:{<hex>}:lead` | string | the job computing that entry (single-flight lease) |
//!
//! A job's keys expire [`crate::PENDING_TTL_S`] (a week, or `redis.result_ttl_s` if longer)
//! after the job was queued, and `redis.result_ttl_s` after it ended; webhook endpoints live
//! until deleted.

use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn job(&self, id: Uuid) -> String {
        format!("{}job:{}", self.prefix, id)
    }

    /// Tombstone of a job whose publish was answered 503 (see `Store::record_rejected`).
    pub fn rejected(&self, id: Uuid) -> String {
        format!("{}rejected:{}", self.prefix, id)
    }

    pub fn job_events(&self, id: Uuid) -> String {
        format!("{}job:{}:events", self.prefix, id)
    }

    pub fn tenant_hooks(&self, tenant: &str) -> String {
        format!("{}hooks:{}", self.prefix, tenant)
    }

    pub fn hook(&self, id: &str) -> String {
        format!("{}hook:{}", self.prefix, id)
    }

    pub fn hook_log(&self, id: &str) -> String {
        format!("{}hook:{}:log", self.prefix, id)
    }

    /// A response cache entry; the digest is the key's hash tag.
    pub fn cache_entry(&self, key: &sluice_cache::CacheKey) -> String {
        format!("{}cache:{{{}}}", self.prefix, key.hex())
    }

    /// The single-flight lease of a cache entry, on the entry's shard.
    pub fn cache_lead(&self, key: &sluice_cache::CacheKey) -> String {
        format!("{}cache:{{{}}}:lead", self.prefix, key.hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_prefix() {
        let k = Keys::new("t1:");
        let id = Uuid::nil();
        assert_eq!(k.job(id), "t1:job:00000000-0000-0000-0000-000000000000");
        assert!(k.job_events(id).starts_with("t1:job:"));
    }
}

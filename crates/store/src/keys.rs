//! The Redis key schema: every key Sluice writes is built here, under one configurable prefix
//! (`redis.prefix`). The store owns it because it owns Redis; the governance crate, which
//! builds on the store, reaches it through `Governor::keys()`, so no other crate formats a key.
//!
//! Jobs and webhooks:
//!
//! | key | type | what |
//! |---|---|---|
//! | `{p}job:{id}` | hash | job record: tenant, status, timestamps, attempts, result, error |
//! | `{p}job:{id}:events` | list | event history (JSON), index + 1 is the event id |
//! | `{p}rejected:{id}` | string | tombstone: the publish was answered 503, never run the job |
//! | `{p}hooks:{tenant}` | set | the tenant's webhook endpoint ids |
//! | `{p}hook:{id}` | hash | endpoint: tenant, url, events, secret(s), disabled, created_at |
//! | `{p}hook:{id}:log` | list | the endpoint's latest delivery attempts (JSON, newest first) |
//! | `{p}hookatt:{<job>}` | hash | `<event id>:<target>` → failed attempts of that delivery |
//! | `{p}hookoutbox` | sorted set | terminal events `HOOKS` refused (JSON) → next try (ms) |
//! | `{p}cache:{<hex>}` | string | response cache entry (MessagePack), expires with its model's TTL |
//! | `{p}cache:{<hex>}:lead` | string | the job computing that entry (single-flight lease) |
//!
//! | `{p}dash:workers` | sorted set | worker id → when it last wrote its summary (ms) |
//! | `{p}dash:worker:{id}` | string | a worker's dashboard summary (JSON), expires in seconds |
//!
//! A job's keys expire [`crate::PENDING_TTL_S`] (a week, or `redis.result_ttl_s` if longer)
//! after the job was queued, and `redis.result_ttl_s` after it ended; webhook endpoints live
//! until deleted.
//!
//! Governance (`sluice-governance`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `{p}rl:{dim}:{subject}:{r\|t}` | string | GCRA theoretical arrival time (ms) of one limit |
//! | `{p}budget:{tenant}:{period}` | hash | `tokens`, `cost` (micro-USD): settled + reserved |
//! | `{p}kbudget:{tenant}:{key id}:{period}` | hash | the same for one API key's budget |
//! | `{p}res:{job}` | hash | a job's reservation until it is settled |
//! | `{p}loop:{tenant}:{chain}:{prompt hash}` | string | requests this minute |
//! | `{p}idem:{tenant}:{key hash}` | string | `body hash` and first job id |
//! | `{p}idem:{tenant}:{key hash}:ok` | string | that job's id, once the broker took it |
//! | `{p}tenant:{id}` | hash | `disabled` (kill switch), `created_at` |
//! | `{p}tenants` | set | tenant ids known to the admin API |
//! | `{p}apikey:{sha256}` | hash | tenant, key id, created/expires/revoked |
//! | `{p}apikeys:{tenant}` | hash | key id → sha256 |
//! | `{p}inflight:{tenant}` | hash | job id → lease expiry (ms) of running jobs |
//! | `{p}deferred:{tenant}` | hash | job id → times deferred at the in-flight cap |

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

    /// The failed attempts of a job's webhook deliveries; the job id is the hash tag.
    pub fn hook_attempts(&self, job: Uuid) -> String {
        format!("{}hookatt:{{{}}}", self.prefix, job)
    }

    /// Terminal events whose `HOOKS` publish failed, waiting to be enqueued again.
    pub fn hook_outbox(&self) -> String {
        format!("{}hookoutbox", self.prefix)
    }

    /// A response cache entry; the digest is the key's hash tag.
    pub fn cache_entry(&self, key: &sluice_cache::CacheKey) -> String {
        format!("{}cache:{{{}}}", self.prefix, key.hex())
    }

    /// The single-flight lease of a cache entry, on the entry's shard.
    pub fn cache_lead(&self, key: &sluice_cache::CacheKey) -> String {
        format!("{}cache:{{{}}}:lead", self.prefix, key.hex())
    }

    /// GCRA state of one rate limit: `dim` is the dimension's name, `subject` who it counts.
    pub fn rate(&self, dim: &str, subject: &str, tokens: bool) -> String {
        format!(
            "{}rl:{dim}:{subject}:{}",
            self.prefix,
            if tokens { "t" } else { "r" }
        )
    }

    pub fn budget(&self, tenant: &str, period: &str) -> String {
        format!("{}budget:{tenant}:{period}", self.prefix)
    }

    pub fn key_budget(&self, tenant: &str, key_id: &str, period: &str) -> String {
        format!("{}kbudget:{tenant}:{key_id}:{period}", self.prefix)
    }

    pub fn reservation(&self, job: Uuid) -> String {
        format!("{}res:{job}", self.prefix)
    }

    pub fn loop_counter(&self, tenant: &str, chain: &str, prompt_hash: &str) -> String {
        format!("{}loop:{tenant}:{chain}:{prompt_hash}", self.prefix)
    }

    pub fn idempotency(&self, tenant: &str, key_hash: &str) -> String {
        format!("{}idem:{tenant}:{key_hash}", self.prefix)
    }

    pub fn idempotency_accepted(&self, tenant: &str, key_hash: &str) -> String {
        format!("{}idem:{tenant}:{key_hash}:ok", self.prefix)
    }

    pub fn tenant(&self, id: &str) -> String {
        format!("{}tenant:{id}", self.prefix)
    }

    pub fn tenants(&self) -> String {
        format!("{}tenants", self.prefix)
    }

    pub fn api_key(&self, sha256: &str) -> String {
        format!("{}apikey:{sha256}", self.prefix)
    }

    pub fn tenant_keys(&self, tenant: &str) -> String {
        format!("{}apikeys:{tenant}", self.prefix)
    }

    pub fn inflight(&self, tenant: &str) -> String {
        format!("{}inflight:{tenant}", self.prefix)
    }

    pub fn deferred(&self, tenant: &str) -> String {
        format!("{}deferred:{tenant}", self.prefix)
    }

    pub fn dash_workers(&self) -> String {
        format!("{}dash:workers", self.prefix)
    }

    pub fn dash_worker(&self, id: &str) -> String {
        format!("{}dash:worker:{id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key names are a stored format (records outlive a deploy): they stay byte for byte.
    #[test]
    fn key_names_are_stable() {
        let k = Keys::new("t1:");
        let id = Uuid::nil();
        let nil = "00000000-0000-0000-0000-000000000000";
        let cases = [
            (k.job(id), format!("t1:job:{nil}")),
            (k.job_events(id), format!("t1:job:{nil}:events")),
            (k.rejected(id), format!("t1:rejected:{nil}")),
            (k.tenant_hooks("acme"), "t1:hooks:acme".into()),
            (k.hook("h1"), "t1:hook:h1".into()),
            (k.hook_log("h1"), "t1:hook:h1:log".into()),
            (
                k.rate("model", "acme:m", true),
                "t1:rl:model:acme:m:t".into(),
            ),
            (
                k.rate("tenant", "acme", false),
                "t1:rl:tenant:acme:r".into(),
            ),
            (
                k.budget("acme", "d20261201"),
                "t1:budget:acme:d20261201".into(),
            ),
            (
                k.key_budget("acme", "k1", "d20261201"),
                "t1:kbudget:acme:k1:d20261201".into(),
            ),
            (k.reservation(id), format!("t1:res:{nil}")),
            (k.dash_workers(), "t1:dash:workers".into()),
            (k.dash_worker("w1"), "t1:dash:worker:w1".into()),
            (
                k.loop_counter("acme", "-", "ab"),
                "t1:loop:acme:-:ab".into(),
            ),
            (k.idempotency("acme", "ab"), "t1:idem:acme:ab".into()),
            (k.tenant("acme"), "t1:tenant:acme".into()),
            (k.tenants(), "t1:tenants".into()),
            (k.api_key("ab"), "t1:apikey:ab".into()),
            (k.tenant_keys("acme"), "t1:apikeys:acme".into()),
            (k.inflight("acme"), "t1:inflight:acme".into()),
            (k.deferred("acme"), "t1:deferred:acme".into()),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}

//! The Redis key schema: every key Sluice writes is built here, under one configurable prefix
//! (`redis.prefix`, written `P` below). The store owns it because it owns Redis; the
//! governance crate, which builds on the store, reaches it through `Governor::keys()`, so no
//! other crate formats a key.
//!
//! # Hash tags (Redis Cluster)
//!
//! In the tables, `<x>` stands for a value and braces are literal: `{…}` is the key's hash tag.
//! Redis Cluster places a key by the text between its first `{` and the next `}` when there
//! is one, so keys with the same tag live in the same slot. A script or `MULTI` may only touch
//! keys of one slot, hence the rule: every key a multi-key script or transaction touches shares
//! one tag, and a key only ever used alone has none (its name is what it was before the
//! cluster support, so stored data under it keeps working after an upgrade).
//!
//! - per job `{<job id>}`: the record, its history and its tombstone, which the job scripts
//!   touch together; jobs spread over all slots.
//! - per tenant `{<tenant>}`: the kill switch, rate-limit states, budgets, reservations, loop
//!   counters, idempotency claims, in-flight leases and deferrals, which admission and
//!   settlement touch together. One tenant's governance lives on one shard; many tenants
//!   spread over all of them.
//! - per cache entry `{<digest>}`: the entry and its single-flight lease.
//! - `{workers}`: the dashboard's index and the workers' summaries, written and read together
//!   (a few small writes a second, on one shard).
//! - untagged, used alone: API keys (looked up by their hash alone), the tenants set, webhook
//!   endpoints and their logs. Commands that touch several of them run one by one on a
//!   cluster (`Store::query_each`, `Store::apply_in_order`), not in one transaction.
//!
//! The prefix may contain neither `{` nor `}` (checked at start-up), so the tag is always the
//! one written here. Rate limits shared by every tenant (`governance.global`) have their own
//! tag `{global}`, and so cannot share a script with a tenant's keys on a cluster.
//!
//! Jobs and webhooks:
//!
//! | key | type | what |
//! |---|---|---|
//! | `Pjob:{<id>}` | hash | job record: tenant, status, timestamps, attempts, result, error |
//! | `Pjob:{<id>}:events` | list | event history (JSON), index + 1 is the event id |
//! | `Prejected:{<id>}` | string | tombstone: the publish was answered 503, never run the job |
//! | `Phooks:<tenant>` | set | the tenant's webhook endpoint ids |
//! | `Phook:<id>` | hash | endpoint: tenant, url, events, secret(s), disabled, created_at |
//! | `Phook:<id>:log` | list | the endpoint's latest delivery attempts (JSON, newest first) |
//! | `Phookatt:{<job>}` | hash | `<event id>:<target>` → failed attempts of that delivery |
//! | `Phookoutbox` | sorted set | terminal events `HOOKS` refused (JSON) → next try (ms) |
//! | `Pcache:{<hex>}` | string | response cache entry (MessagePack), expires with its model's TTL |
//! | `Pcache:{<hex>}:lead` | string | the job computing that entry (single-flight lease) |
//! | `Pdash:{workers}` | sorted set | worker id → when it last wrote its summary (ms) |
//! | `Pdash:{workers}:<id>` | string | a worker's dashboard summary (JSON), expires in seconds |
//!
//! A job's keys expire [`crate::PENDING_TTL_S`] (a week, or `redis.result_ttl_s` if longer)
//! after the job was queued, and `redis.result_ttl_s` after it ended; webhook endpoints live
//! until deleted.
//!
//! Governance (`sluice-governance`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `Pgcra:{<tenant>}:<dim>[:<subject>]` | hash | GCRA theoretical arrival times (ms) of one dimension's limits, `r` requests and `t` tokens, `n` the latest `now` seen, `x` the hash's expiry (`dim`: key, model, agent or chain; `subject`: which one); the tenant dimension's are fields of `Ptenant:{<id>}` |
//! | `Pgcra:{global}` | hash | the same for the limit shared by all tenants |
//! | `Pbudget:{<tenant>}:<period>` | hash | `tokens`, `cost` (micro-USD): settled + reserved |
//! | `Pkbudget:{<tenant>}:<key id>:<period>` | hash | the same for one API key's budget |
//! | `Pres:{<tenant>}:<job>` | string | a job's reservation until it is settled (JSON `[tokens, cost]`; the counters it went to travel in the job's envelope; one written before also names them: `[tokens, cost, budget, key budget, [GCRA key, T]...]`) |
//! | `Ploop:{<tenant>}:<chain>:<prompt hash>` | string | requests this minute |
//! | `Pidem:{<tenant>}:<key hash>` | string | `body hash` and first job id |
//! | `Pidem:{<tenant>}:<key hash>:ok` | string | that job's id, once the broker took it |
//! | `Ptenant:{<id>}` | hash | `disabled` (kill switch), `created_at`; `r`, `t`, `n`: the tenant limit's GCRA state (read with the kill switch in one `HMGET`; the hash does not expire) |
//! | `Ptenants` | set | tenant ids known to the admin API |
//! | `Pschema` | string | version of the key names (2: hash tags), see [`crate::Store::upgrade_keys`] |
//! | `Papikey:<sha256>` | hash | tenant, key id, created/expires/revoked |
//! | `Papikeys:<tenant>` | hash | key id → sha256 |
//! | `Pleases:{<tenant>}` | sorted set | running job id, scored by its lease's expiry (ms) |
//! | `Pdeferred:{<tenant>}` | hash | job id → times deferred at the in-flight cap |
//!
//! Upgrading from the untagged names: job keys, rate-limit states, reservations, loop
//! counters, idempotency claims and leases are short-lived and start afresh; API keys, the
//! tenants set and webhook endpoints kept their names. The kill switch and the budgets of the
//! current periods are carried over by [`crate::Store::upgrade_keys`] (ingest runs it at
//! start-up).

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
        format!("{}job:{{{}}}", self.prefix, id)
    }

    /// Tombstone of a job whose publish was answered 503 (see `Store::record_rejected`).
    pub fn rejected(&self, id: Uuid) -> String {
        format!("{}rejected:{{{}}}", self.prefix, id)
    }

    pub fn job_events(&self, id: Uuid) -> String {
        format!("{}job:{{{}}}:events", self.prefix, id)
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

    /// GCRA state of one rate-limit dimension of `tenant` (`dim` is the dimension's name),
    /// both its limits in one hash; `subject` is who it counts within the tenant (a key id,
    /// a model, an agent or chain id), `None` for the tenant itself.
    pub fn gcra(&self, tenant: &str, dim: &str, subject: Option<&str>) -> String {
        match subject {
            Some(s) => format!("{}gcra:{{{tenant}}}:{dim}:{s}", self.prefix),
            None => format!("{}gcra:{{{tenant}}}:{dim}", self.prefix),
        }
    }

    /// GCRA state of the limit over all tenants: the one governance key no tenant owns.
    pub fn gcra_global(&self) -> String {
        format!("{}gcra:{{global}}", self.prefix)
    }

    pub fn budget(&self, tenant: &str, period: &str) -> String {
        format!("{}budget:{{{tenant}}}:{period}", self.prefix)
    }

    pub fn key_budget(&self, tenant: &str, key_id: &str, period: &str) -> String {
        format!("{}kbudget:{{{tenant}}}:{key_id}:{period}", self.prefix)
    }

    /// A job's reservation, on its tenant's shard (settling it moves the tenant's counters).
    pub fn reservation(&self, tenant: &str, job: Uuid) -> String {
        format!("{}res:{{{tenant}}}:{job}", self.prefix)
    }

    pub fn loop_counter(&self, tenant: &str, chain: &str, prompt_hash: &str) -> String {
        format!("{}loop:{{{tenant}}}:{chain}:{prompt_hash}", self.prefix)
    }

    pub fn idempotency(&self, tenant: &str, key_hash: &str) -> String {
        format!("{}idem:{{{tenant}}}:{key_hash}", self.prefix)
    }

    pub fn idempotency_accepted(&self, tenant: &str, key_hash: &str) -> String {
        format!("{}idem:{{{tenant}}}:{key_hash}:ok", self.prefix)
    }

    pub fn tenant(&self, id: &str) -> String {
        format!("{}tenant:{{{id}}}", self.prefix)
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

    /// The leases of a tenant's running jobs (the in-flight cap).
    pub fn leases(&self, tenant: &str) -> String {
        format!("{}leases:{{{tenant}}}", self.prefix)
    }

    pub fn deferred(&self, tenant: &str) -> String {
        format!("{}deferred:{{{tenant}}}", self.prefix)
    }

    /// The version of these key names, once [`crate::Store::upgrade_keys`] carried the old
    /// ones over.
    pub fn schema_version(&self) -> String {
        format!("{}schema", self.prefix)
    }

    pub fn dash_workers(&self) -> String {
        format!("{}dash:{{workers}}", self.prefix)
    }

    pub fn dash_worker(&self, id: &str) -> String {
        format!("{}dash:{{workers}}:{id}", self.prefix)
    }
}

/// The part of `key` Redis Cluster hashes to place it: the text between the first `{` and
/// the next `}` when it is not empty, else the whole key.
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key names are a stored format (records outlive a deploy): they stay byte for byte.
    /// The hash tags were added with the Redis Cluster support; keys used alone kept their
    /// names.
    #[test]
    fn key_names_are_stable() {
        let k = Keys::new("t1:");
        let id = Uuid::nil();
        let nil = "00000000-0000-0000-0000-000000000000";
        let cases = [
            (k.job(id), format!("t1:job:{{{nil}}}")),
            (k.job_events(id), format!("t1:job:{{{nil}}}:events")),
            (k.rejected(id), format!("t1:rejected:{{{nil}}}")),
            (k.tenant_hooks("acme"), "t1:hooks:acme".into()),
            (k.hook("h1"), "t1:hook:h1".into()),
            (k.hook_log("h1"), "t1:hook:h1:log".into()),
            (
                k.gcra("acme", "model", Some("m")),
                "t1:gcra:{acme}:model:m".into(),
            ),
            (
                k.gcra("acme", "tenant", None),
                "t1:gcra:{acme}:tenant".into(),
            ),
            (k.gcra_global(), "t1:gcra:{global}".into()),
            (
                k.budget("acme", "d20261201"),
                "t1:budget:{acme}:d20261201".into(),
            ),
            (
                k.key_budget("acme", "k1", "d20261201"),
                "t1:kbudget:{acme}:k1:d20261201".into(),
            ),
            (k.reservation("acme", id), format!("t1:res:{{acme}}:{nil}")),
            (k.dash_workers(), "t1:dash:{workers}".into()),
            (k.dash_worker("w1"), "t1:dash:{workers}:w1".into()),
            (
                k.loop_counter("acme", "-", "ab"),
                "t1:loop:{acme}:-:ab".into(),
            ),
            (k.idempotency("acme", "ab"), "t1:idem:{acme}:ab".into()),
            (
                k.idempotency_accepted("acme", "ab"),
                "t1:idem:{acme}:ab:ok".into(),
            ),
            (k.tenant("acme"), "t1:tenant:{acme}".into()),
            (k.tenants(), "t1:tenants".into()),
            (k.schema_version(), "t1:schema".into()),
            (k.api_key("ab"), "t1:apikey:ab".into()),
            (k.tenant_keys("acme"), "t1:apikeys:acme".into()),
            (k.leases("acme"), "t1:leases:{acme}".into()),
            (k.deferred("acme"), "t1:deferred:{acme}".into()),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    /// The keys each script or transaction touches together hash to one slot.
    #[test]
    fn keys_used_together_share_a_tag() {
        let k = Keys::new("sluice:");
        let job = Uuid::now_v7();
        let tenant = "acme";
        let groups = [
            vec![k.job(job), k.job_events(job), k.rejected(job)],
            vec![
                k.tenant(tenant),
                k.loop_counter(tenant, "-", "ab"),
                k.budget(tenant, "d20261201"),
                k.key_budget(tenant, "k1", "m202612"),
                k.reservation(tenant, job),
                k.gcra(tenant, "tenant", None),
                k.gcra(tenant, "key", Some("k1")),
                k.gcra(tenant, "model", Some("gpt:4o")),
                k.idempotency(tenant, "ab"),
                k.idempotency_accepted(tenant, "ab"),
                k.leases(tenant),
                k.deferred(tenant),
            ],
            vec![k.dash_workers(), k.dash_worker("w1")],
        ];
        for group in groups {
            let tag = hash_tag(&group[0]);
            for key in &group {
                assert_eq!(hash_tag(key), tag, "{key} is not on {}'s slot", group[0]);
            }
        }
        assert_eq!(hash_tag(&k.job(job)), job.to_string());
        assert_eq!(hash_tag(&k.tenant(tenant)), tenant);
        assert_ne!(hash_tag(&k.gcra_global()), tenant);
    }

    #[test]
    fn hash_tags_follow_redis() {
        assert_eq!(hash_tag("a{b}c"), "b");
        assert_eq!(hash_tag("a{}c{d}"), "a{}c{d}");
        assert_eq!(hash_tag("a{b{c}d}"), "b{c");
        assert_eq!(hash_tag("plain"), "plain");
    }
}

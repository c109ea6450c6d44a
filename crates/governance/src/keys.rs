//! The governance keys, under the same prefix as the job store (`sluice_store::keys`).
//!
//! | key | type | what |
//! |---|---|---|
//! | `{p}rl:{dim}:{subject}:{r\|t}` | string | GCRA theoretical arrival time (ms) of one limit |
//! | `{p}budget:{tenant}:{period}` | hash | `tokens`, `cost` (micro-USD): settled + reserved |
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

#[derive(Debug, Clone)]
pub struct GovKeys {
    p: String,
}

impl GovKeys {
    pub fn new(prefix: &str) -> GovKeys {
        GovKeys {
            p: prefix.to_string(),
        }
    }

    pub fn rate(&self, dim: &str, subject: &str, tokens: bool) -> String {
        format!(
            "{}rl:{dim}:{subject}:{}",
            self.p,
            if tokens { "t" } else { "r" }
        )
    }

    pub fn budget(&self, tenant: &str, period: &str) -> String {
        format!("{}budget:{tenant}:{period}", self.p)
    }

    pub fn key_budget(&self, tenant: &str, key_id: &str, period: &str) -> String {
        format!("{}kbudget:{tenant}:{key_id}:{period}", self.p)
    }

    pub fn reservation(&self, job: uuid::Uuid) -> String {
        format!("{}res:{job}", self.p)
    }

    pub fn loop_counter(&self, tenant: &str, chain: &str, prompt_hash: &str) -> String {
        format!("{}loop:{tenant}:{chain}:{prompt_hash}", self.p)
    }

    pub fn idempotency(&self, tenant: &str, key_hash: &str) -> String {
        format!("{}idem:{tenant}:{key_hash}", self.p)
    }

    pub fn idempotency_accepted(&self, tenant: &str, key_hash: &str) -> String {
        format!("{}idem:{tenant}:{key_hash}:ok", self.p)
    }

    pub fn tenant(&self, id: &str) -> String {
        format!("{}tenant:{id}", self.p)
    }

    pub fn tenants(&self) -> String {
        format!("{}tenants", self.p)
    }

    pub fn api_key(&self, sha256: &str) -> String {
        format!("{}apikey:{sha256}", self.p)
    }

    pub fn tenant_keys(&self, tenant: &str) -> String {
        format!("{}apikeys:{tenant}", self.p)
    }

    pub fn inflight(&self, tenant: &str) -> String {
        format!("{}inflight:{tenant}", self.p)
    }

    pub fn deferred(&self, tenant: &str) -> String {
        format!("{}deferred:{tenant}", self.p)
    }
}

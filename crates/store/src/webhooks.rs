//! Webhook endpoints, per-job webhook targets and delivery logs.
//!
//! Secrets are stored as given (`whsec_…`): they sign requests, so they cannot be hashed.
//! A rotation keeps the previous secret in `old_secret` until `old_until`, and the
//! dispatcher signs with both meanwhile.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::{Store, StoreError, scripts::Lua};

/// A registered endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub tenant: String,
    pub url: String,
    /// Event types it receives (`job.completed`, …).
    pub events: Vec<String>,
    pub secret: String,
    /// The previous secret and until when (ms) it still signs.
    pub old_secret: Option<(String, u64)>,
    pub disabled: bool,
    pub created_at_ms: u64,
}

impl Endpoint {
    fn from_fields(id: &str, f: BTreeMap<String, String>) -> Option<Endpoint> {
        let old_until = f.get("old_until").and_then(|v| v.parse().ok()).unwrap_or(0);
        Some(Endpoint {
            id: id.to_string(),
            tenant: f.get("tenant")?.clone(),
            url: f.get("url")?.clone(),
            events: f
                .get("events")
                .map(|e| {
                    e.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            secret: f.get("secret")?.clone(),
            old_secret: f
                .get("old_secret")
                .filter(|s| !s.is_empty())
                .map(|s| (s.clone(), old_until)),
            disabled: f.get("disabled").is_some_and(|d| d == "1"),
            created_at_ms: f
                .get("created_at")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        })
    }
}

/// Where a job's terminal event goes: its own webhook (if it has one) and the tenant's
/// endpoint ids.
#[derive(Debug, Clone, Default)]
pub struct HookTargets {
    pub tenant: Option<String>,
    pub job_url: Option<String>,
    pub endpoints: Vec<String>,
}

/// Registering an endpoint within its tenant's cap (`lua/create_endpoint.lua`).
pub(crate) static CREATE_ENDPOINT: Lua = Lua::new(
    "create_endpoint",
    include_str!("../lua/create_endpoint.lua"),
);

impl Store {
    /// Registers an endpoint; `false` when the tenant already has `max` endpoints.
    ///
    /// The endpoint is written first, then its id joins the tenant's set under the cap (one
    /// script: the count and the add are one step, so parallel registrations cannot pass the
    /// cap together); a refused endpoint is deleted again. The two keys are on different
    /// cluster slots, so they cannot share a script.
    pub async fn create_endpoint(&self, ep: &Endpoint, max: usize) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let () = self
            .timed(
                redis::cmd("HSET")
                    .arg(self.keys.hook(&ep.id))
                    .arg("tenant")
                    .arg(&ep.tenant)
                    .arg("url")
                    .arg(&ep.url)
                    .arg("events")
                    .arg(ep.events.join(","))
                    .arg("secret")
                    .arg(&ep.secret)
                    .arg("disabled")
                    .arg(if ep.disabled { "1" } else { "0" })
                    .arg("created_at")
                    .arg(ep.created_at_ms)
                    .query_async(&mut conn),
            )
            .await?;
        let mut call = CREATE_ENDPOINT.key(self.keys.tenant_hooks(&ep.tenant));
        call.arg(max).arg(&ep.id);
        let added: i64 = self.invoke(&call).await?;
        if added == 1 {
            return Ok(true);
        }
        let () = self
            .timed(
                redis::cmd("DEL")
                    .arg(self.keys.hook(&ep.id))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(false)
    }

    pub async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        let mut conn = self.conn().await?;
        let f: BTreeMap<String, String> = self
            .timed(
                redis::cmd("HGETALL")
                    .arg(self.keys.hook(id))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(Endpoint::from_fields(id, f))
    }

    /// The tenant's endpoint `id`, or `None` (also for another tenant's).
    pub async fn tenant_endpoint(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<Endpoint>, StoreError> {
        Ok(self.endpoint(id).await?.filter(|e| e.tenant == tenant))
    }

    pub async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, StoreError> {
        let mut conn = self.conn().await?;
        let mut ids: Vec<String> = self
            .timed(
                redis::cmd("SMEMBERS")
                    .arg(self.keys.tenant_hooks(tenant))
                    .query_async(&mut conn),
            )
            .await?;
        ids.sort();
        drop(conn);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(e) = self.endpoint(&id).await? {
                out.push(e);
            }
        }
        Ok(out)
    }

    pub async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        if self.tenant_endpoint(tenant, id).await?.is_none() {
            return Ok(false);
        }
        // Three keys on different cluster slots: no transaction; out of the set first, so a
        // reader never lists an endpoint that is half deleted.
        let mut conn = self.conn().await?;
        let _: i64 = self
            .timed(
                redis::cmd("SREM")
                    .arg(self.keys.tenant_hooks(tenant))
                    .arg(id)
                    .query_async(&mut conn),
            )
            .await?;
        let _: Vec<()> = self
            .query_each(vec![
                redis::cmd("DEL").arg(self.keys.hook(id)).to_owned(),
                redis::cmd("DEL").arg(self.keys.hook_log(id)).to_owned(),
            ])
            .await?;
        Ok(true)
    }

    /// Replaces the secret, keeping the current one valid until `old_until_ms`.
    pub async fn rotate_secret(
        &self,
        ep: &Endpoint,
        new_secret: &str,
        old_until_ms: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        self.timed(
            redis::cmd("HSET")
                .arg(self.keys.hook(&ep.id))
                .arg("secret")
                .arg(new_secret)
                .arg("old_secret")
                .arg(&ep.secret)
                .arg("old_until")
                .arg(old_until_ms)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// The receiver answered `410 Gone`: no more deliveries.
    pub async fn disable_endpoint(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        self.timed(
            redis::cmd("HSET")
                .arg(self.keys.hook(id))
                .arg("disabled")
                .arg("1")
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Prepends a delivery attempt (JSON) to the endpoint's log, keeping `max`.
    pub async fn log_delivery(&self, id: &str, entry: &str, max: usize) -> Result<(), StoreError> {
        let key = self.keys.hook_log(id);
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("LPUSH")
            .arg(&key)
            .arg(entry)
            .ignore()
            .cmd("LTRIM")
            .arg(&key)
            .arg(0)
            .arg(max.max(1) - 1)
            .ignore();
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    pub async fn delivery_log(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn().await?;
        self.timed(
            redis::cmd("LRANGE")
                .arg(self.keys.hook_log(id))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn),
        )
        .await
    }

    /// Ingest, before publishing: the job's own webhook URL and its signing secret.
    pub async fn set_job_hook(&self, job: Uuid, url: &str, secret: &str) -> Result<(), StoreError> {
        let key = self.keys.job(job);
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(&key)
            .arg("webhook_url")
            .arg(url)
            .arg("webhook_secret")
            .arg(secret)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(self.pending_ttl_s)
            .ignore();
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// The job's webhook URL and secret, if it has one.
    pub async fn job_hook(&self, job: Uuid) -> Result<Option<(String, String)>, StoreError> {
        let mut conn = self.conn().await?;
        let (url, secret): (Option<String>, Option<String>) = self
            .timed(
                redis::cmd("HMGET")
                    .arg(self.keys.job(job))
                    .arg("webhook_url")
                    .arg("webhook_secret")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(url.zip(secret))
    }

    /// Everything a terminal event of `job` is delivered to, in one round trip.
    pub async fn hook_targets(&self, job: Uuid, tenant: &str) -> Result<HookTargets, StoreError> {
        // The job's keys and the tenant's set are on different cluster slots: two commands,
        // sent together.
        let (mut a, mut b) = (self.conn().await?, self.conn().await?);
        let record = redis::cmd("HMGET")
            .arg(self.keys.job(job))
            .arg("webhook_url")
            .arg("tenant")
            .to_owned();
        let set = redis::cmd("SMEMBERS")
            .arg(self.keys.tenant_hooks(tenant))
            .to_owned();
        let ((job_url, rec_tenant), endpoints): ((Option<String>, Option<String>), Vec<String>) =
            self.timed(async {
                tokio::try_join!(record.query_async(&mut a), set.query_async(&mut b))
            })
            .await?;
        Ok(HookTargets {
            tenant: rec_tenant,
            job_url,
            endpoints,
        })
    }

    /// Failed attempts recorded for one delivery (`field`: `<event id>:<target>`).
    pub async fn hook_attempts(&self, job: Uuid, field: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let n: Option<u64> = self
            .timed(
                redis::cmd("HGET")
                    .arg(self.keys.hook_attempts(job))
                    .arg(field)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Records a failed attempt of one delivery; the count after it. The key lives `ttl_s`
    /// past the latest failure (the delivery's whole schedule).
    pub async fn hook_attempt_failed(
        &self,
        job: Uuid,
        field: &str,
        ttl_s: u64,
    ) -> Result<u64, StoreError> {
        let key = self.keys.hook_attempts(job);
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HINCRBY")
            .arg(&key)
            .arg(field)
            .arg(1)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(ttl_s.max(1))
            .ignore();
        let (n,): (u64,) = self.timed(pipe.query_async(&mut conn)).await?;
        Ok(n)
    }

    /// Forgets a delivery's failed attempts (it was dead-lettered: a replay starts afresh).
    pub async fn hook_attempts_reset(&self, job: Uuid, field: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        self.timed(
            redis::cmd("HDEL")
                .arg(self.keys.hook_attempts(job))
                .arg(field)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// Puts an event in the outbox, due at `due_ms`; `false` when it holds `max` already.
    pub async fn outbox_add(
        &self,
        event: &str,
        due_ms: u64,
        max: usize,
    ) -> Result<bool, StoreError> {
        let key = self.keys.hook_outbox();
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(&key)
            .arg("NX")
            .arg(due_ms)
            .arg(event)
            .ignore()
            .cmd("ZCARD")
            .arg(&key);
        let (len,): (usize,) = self.timed(pipe.query_async(&mut conn)).await?;
        if len > max {
            self.outbox_remove(event).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Up to `limit` outbox events due by `now_ms`, oldest due first.
    pub async fn outbox_due(&self, now_ms: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn().await?;
        self.timed(
            redis::cmd("ZRANGE")
                .arg(self.keys.hook_outbox())
                .arg("-inf")
                .arg(now_ms)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut conn),
        )
        .await
    }

    /// Moves an outbox event's next try to `due_ms`.
    pub async fn outbox_reschedule(&self, event: &str, due_ms: u64) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        self.timed(
            redis::cmd("ZADD")
                .arg(self.keys.hook_outbox())
                .arg("XX")
                .arg(due_ms)
                .arg(event)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    pub async fn outbox_remove(&self, event: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        self.timed(
            redis::cmd("ZREM")
                .arg(self.keys.hook_outbox())
                .arg(event)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    pub async fn outbox_len(&self) -> Result<usize, StoreError> {
        let mut conn = self.conn().await?;
        self.timed(
            redis::cmd("ZCARD")
                .arg(self.keys.hook_outbox())
                .query_async(&mut conn),
        )
        .await
    }
}

//! Job record transitions.
//!
//! Every write goes through one Lua script, so the rule of [`JobStatus::may_become`] holds
//! atomically whoever writes: ingest recording `queued` after the publish ack may arrive
//! after a worker already recorded `in_progress`; a redelivered message may try to start a
//! job that already completed. The script refuses any backward or repeated terminal move and
//! reports the current status, so the caller can act on it (a worker simply acks).
//!
//! Every transition carries the descriptive fields (tenant, model, priority, …) and writes
//! them when it creates the record, so whichever process writes first creates a complete one.
//!
//! Two short scripts cover the common case, since Lua time is most of Redis's time per job:
//! ingest creates the record of a job nobody knows yet through `lua/create.lua`
//! ([`Store::create_queued`]), and a worker's transition of a record that exists goes through
//! `lua/advance.lua`. Both only check and write what the caller prepared (fields and history
//! event); `advance.lua` falls back to the full `lua/transition.lua` when the record is
//! missing. The status rule is not written in Lua: both transition scripts look it up in a
//! function generated from [`JobStatus::may_become`] ([`status_rule_lua`]).

use std::collections::BTreeMap;

use serde::Serialize;
use sluice_protocol::{ErrorCode, JobEnvelope, JobKind, JobStatus, Priority};
use uuid::Uuid;

use crate::{JobRecord, Store, StoreError, now_ms, scripts::Lua};

/// The full transition (`lua/transition.lua`): creates a missing record, finds the
/// tombstone of a rejected publish.
pub(crate) static TRANSITION: Lua = Lua::with_prelude(
    "transition",
    status_rule_lua,
    include_str!("../lua/transition.lua"),
);

/// Ingest's creation of a `queued` record (`lua/create.lua`).
pub(crate) static CREATE: Lua = Lua::new("create", include_str!("../lua/create.lua"));

/// A worker's transition of a record that exists (`lua/advance.lua`); falls back to
/// [`TRANSITION`] when the record is missing.
pub(crate) static ADVANCE: Lua = Lua::with_prelude(
    "advance",
    status_rule_lua,
    include_str!("../lua/advance.lua"),
);

/// A worker's `in_progress` transition, numbering the attempt from the failures recorded
/// (`lua/start.lua`); falls back to [`TRANSITION`] when the record is missing.
pub(crate) static START: Lua =
    Lua::with_prelude("start", status_rule_lua, include_str!("../lua/start.lua"));

/// Recording a failed attempt (`lua/failed_attempt.lua`).
pub(crate) static FAILED_ATTEMPT: Lua =
    Lua::new("failed_attempt", include_str!("../lua/failed_attempt.lua"));

/// The status rule as the scripts' `may_become(cur, new)`, generated from
/// [`JobStatus::may_become`] so that the rule is written once. A function of string
/// comparisons on one line: building a table on every call would cost the hot script a fifth
/// more Redis time, and one line keeps Redis's line numbers one off the file's.
pub(crate) fn status_rule_lua() -> String {
    let mut out = String::from("local function may_become(cur, new)");
    for from in JobStatus::ALL {
        let to: Vec<String> = JobStatus::ALL
            .into_iter()
            .filter(|to| from.may_become(*to))
            .map(|to| format!("new == '{}'", to.as_str()))
            .collect();
        if !to.is_empty() {
            out.push_str(&format!(
                " if cur == '{}' then return {} end",
                from.as_str(),
                to.join(" or ")
            ));
        }
    }
    out.push_str(" return false end");
    out
}

/// A status event of the history, as `transition.lua` writes it.
fn status_event(status: JobStatus, at_ms: u64, attempt: Option<u64>) -> String {
    match attempt {
        Some(n) => format!(
            r#"{{"type":"status","status":"{}","at":{at_ms},"attempt":{n}}}"#,
            status.as_str()
        ),
        None => format!(
            r#"{{"type":"status","status":"{}","at":{at_ms}}}"#,
            status.as_str()
        ),
    }
}

/// What a transition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Applied,
    /// The record was already in `current`, which may not become the requested status.
    Refused {
        current: JobStatus,
    },
    /// Ingest answered the client 503 for this job (its publish was not acknowledged), yet
    /// the broker stored it after all: it must never run.
    Rejected,
}

/// The descriptive fields a transition writes when it creates the record: everything the
/// job's view shows that is known before the job runs.
#[derive(Debug, Clone, Copy)]
pub struct RecordBase<'a> {
    pub id: Uuid,
    pub tenant: &'a str,
    pub priority: Priority,
    pub model: &'a str,
    pub kind: JobKind,
    pub created_at_ms: u64,
    pub metadata: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a JobEnvelope> for RecordBase<'a> {
    fn from(env: &'a JobEnvelope) -> RecordBase<'a> {
        RecordBase {
            id: env.id,
            tenant: &env.tenant,
            priority: env.priority,
            model: &env.model,
            kind: env.kind,
            created_at_ms: env.created_at_ms,
            metadata: &env.metadata,
        }
    }
}

/// The error recorded on a failed job, in OpenAI's error vocabulary
/// (`{"message", "type", "code"}`, the type following from the code). It never carries raw
/// upstream text: `message` is written by Sluice. `retry_after_s` is the upstream's own
/// `Retry-After` on the last attempt (a provider that kept rate limiting), bounded by
/// [`MAX_RETRY_AFTER_S`], so a synchronous client is told truthfully when the provider said
/// it would take work again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

/// The negative cache entry of a job that ended `status` with `code` (its stored error
/// `error`, JSON): only a failed job the upstream refused as a request (`upstream_rejected`,
/// a 4xx other than 404, 408, 409 and 429: deterministic, unlike a 5xx, a 429 or a timeout),
/// and only when the write asks for negative entries.
fn negative_entry(
    env: &JobEnvelope,
    status: JobStatus,
    write: &sluice_protocol::CacheWrite,
    code: ErrorCode,
    error: &str,
) -> Option<sluice_cache::Entry> {
    let deterministic = status == JobStatus::Failed && code == ErrorCode::UpstreamRejected;
    if !deterministic || write.negative_ttl_s == 0 {
        return None;
    }
    let now = now_ms();
    Some(sluice_cache::Entry {
        v: sluice_cache::entry::ENTRY_VERSION,
        source_job: env.id,
        created_at_ms: now,
        body: error.as_bytes().to_vec(),
        prompt_tokens: 0,
        completion_tokens: 0,
        fresh_until_ms: now.saturating_add(u64::from(write.negative_ttl_s).saturating_mul(1000)),
        negative: true,
    })
}

/// Longest upstream `Retry-After` stored with a job's error.
pub const MAX_RETRY_AFTER_S: u64 = 3600;

impl JobError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> JobError {
        JobError {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// With the upstream's `Retry-After`, rounded up to whole seconds and bounded.
    pub fn with_retry_after(mut self, after: Option<std::time::Duration>) -> JobError {
        self.retry_after_s = after.map(|d| {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            secs.min(MAX_RETRY_AFTER_S)
        });
        self
    }
}

impl Serialize for JobError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Stored<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            code: ErrorCode,
            #[serde(skip_serializing_if = "Option::is_none")]
            retry_after_s: Option<u64>,
        }
        Stored {
            message: &self.message,
            kind: self.code.error_type(),
            code: self.code,
            retry_after_s: self.retry_after_s,
        }
        .serialize(s)
    }
}

impl Store {
    /// The `queued` transition through the state machine: refused once a worker recorded
    /// more (a late write never moves a job back).
    pub async fn record_queued<'a>(
        &self,
        base: impl Into<RecordBase<'a>>,
    ) -> Result<Transition, StoreError> {
        self.transition(base.into(), JobStatus::Queued, &[]).await
    }

    /// Ingest: creates the `queued` record of a job that is about to be published (a short
    /// script: nothing to compare, only the existence checks). If the job is not published
    /// after all, [`Store::discard`] or [`Store::record_rejected`] removes it before anyone
    /// learned the id. `false`: the record or the job's tombstone already existed, and nothing
    /// was written.
    pub async fn create_queued(&self, rec: RecordBase<'_>) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut inv = CREATE.key(self.keys.job(rec.id));
        inv.key(self.keys.job_events(rec.id));
        inv.key(self.keys.rejected(rec.id));
        inv.arg(self.pending_ttl_s)
            .arg(status_event(JobStatus::Queued, now, None))
            .arg("status")
            .arg(JobStatus::Queued.as_str())
            .arg("queued_at")
            .arg(now);
        for (k, v) in &base_fields(&rec)? {
            inv.arg(*k).arg(v);
        }
        let created: i64 = self.invoke(&inv).await?;
        Ok(created == 1)
    }

    /// Attempt `attempt` starts (an explicit number: tools and tests).
    pub async fn record_started(
        &self,
        env: &JobEnvelope,
        attempt: u64,
    ) -> Result<Transition, StoreError> {
        let n = attempt.to_string();
        self.advance(
            env,
            JobStatus::InProgress,
            &[("attempts", n.as_bytes())],
            Some(attempt),
        )
        .await
    }

    /// Worker: the job starts its next attempt, numbered one more than the attempts
    /// recorded as failed ([`Store::record_failed_attempt`]), so a redelivery that is not a
    /// retry (a worker crashed, the store was away) runs the same attempt again. Returns the
    /// transition and, when applied, the attempt number.
    pub async fn start_attempt(&self, env: &JobEnvelope) -> Result<(Transition, u64), StoreError> {
        let mut inv = START.key(self.keys.job(env.id));
        inv.key(self.keys.job_events(env.id));
        inv.arg(now_ms());
        let (applied, value): (i64, String) = self.invoke(&inv).await?;
        match applied {
            1 => {
                let attempt = value
                    .parse()
                    .map_err(|_| StoreError::Protocol(format!("start returned {value:?}")))?;
                Ok((Transition::Applied, attempt))
            }
            // No record (it was never written, or expired): no failure is known either.
            -1 => {
                let t = self
                    .transition(env.into(), JobStatus::InProgress, &[("attempts", b"1")])
                    .await?;
                Ok((t, 1))
            }
            _ => Ok((
                Transition::Refused {
                    current: parse_status(&value)?,
                },
                0,
            )),
        }
    }

    /// Worker: attempt `attempt` of job `id` failed and will be retried (the next start
    /// numbers `attempt + 1`). Idempotent and monotonic.
    pub async fn record_failed_attempt(&self, id: Uuid, attempt: u64) -> Result<(), StoreError> {
        let mut inv = FAILED_ATTEMPT.key(self.keys.job(id));
        inv.arg(attempt);
        let _: i64 = self.invoke(&inv).await?;
        Ok(())
    }

    /// Worker: the upstream answered; `result` is the JSON response body. A job ingest
    /// marked cacheable (`env.cache`) also stores its answer in the response cache, in the
    /// same round trip; a cache write that fails is only logged (the job's result is what
    /// matters, and the next identical request simply misses).
    pub async fn record_completed(
        &self,
        env: &JobEnvelope,
        result: &[u8],
    ) -> Result<Transition, StoreError> {
        let set = [("result", result)];
        let advance = self.advance(env, JobStatus::Completed, &set, None);
        let Some((key, write)) = env
            .cache
            .as_ref()
            .and_then(|c| Some((sluice_cache::CacheKey::from_hex(&c.key)?, c)))
        else {
            return advance.await;
        };
        let (prompt_tokens, completion_tokens, degraded) = crate::cache::usage_of(result);
        if degraded {
            // A stale answer or the degradation message is not a fresh answer: the entry
            // stays as it was, and the lease is freed for the next request.
            let (recorded, released) = tokio::join!(advance, self.cache_release(&key, env.id));
            if let Err(e) = released {
                tracing::warn!(job = %env.id, error = %e, "cannot free a cache lease; it expires with its TTL");
            }
            return recorded;
        }
        let now = now_ms();
        let ttl_s = u64::from(write.ttl_s);
        let entry = sluice_cache::Entry {
            v: sluice_cache::entry::ENTRY_VERSION,
            source_job: env.id,
            created_at_ms: now,
            body: result.to_vec(),
            prompt_tokens,
            completion_tokens,
            fresh_until_ms: now.saturating_add(ttl_s.saturating_mul(1000)),
            negative: false,
        };
        // Redis keeps the entry past its freshness for the stale window, if any.
        let keep_s = ttl_s.saturating_add(u64::from(write.stale_s));
        let (recorded, cached) = tokio::join!(advance, self.cache_put(&key, &entry, keep_s));
        if let Err(e) = cached {
            tracing::warn!(job = %env.id, error = %e, "cannot store the answer in the response cache");
        }
        recorded
    }

    /// A `completed` transition writing `set` (the result and any other fields).
    pub(crate) async fn record_completed_with(
        &self,
        env: &JobEnvelope,
        set: &[(&str, &[u8])],
    ) -> Result<Transition, StoreError> {
        self.advance(env, JobStatus::Completed, set, None).await
    }

    /// Worker or ingest: the job ended in `status` (failed, cancelled, expired) with `error`.
    pub async fn record_ended(
        &self,
        env: &JobEnvelope,
        status: JobStatus,
        error: &JobError,
    ) -> Result<Transition, StoreError> {
        let code = error.code;
        let error =
            serde_json::to_string(error).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let set = [("error", error.as_bytes())];
        let ended = self.advance(env, status, &set, None);
        let Some((key, write)) = env
            .cache
            .as_ref()
            .and_then(|c| Some((sluice_cache::CacheKey::from_hex(&c.key)?, c)))
        else {
            return ended.await;
        };
        if let Some(entry) = negative_entry(env, status, write, code, &error) {
            // The upstream refused this very request: the next identical one gets the same
            // error from the cache (and the lease is freed by the write).
            let (ended, cached) = tokio::join!(
                ended,
                self.cache_put(&key, &entry, u64::from(write.negative_ttl_s))
            );
            if let Err(e) = cached {
                tracing::warn!(job = %env.id, error = %e, "cannot store a negative cache entry");
            }
            return ended;
        }
        // A job that ends without an answer frees its single-flight lease, so the next
        // identical request calls upstream itself instead of sharing this failure.
        let (ended, released) = tokio::join!(ended, self.cache_release(&key, env.id));
        if let Err(e) = released {
            tracing::warn!(job = %env.id, error = %e, "cannot free a cache lease; it expires with its TTL");
        }
        ended
    }

    /// A transition through [`ADVANCE`], or through [`TRANSITION`] when the record is missing
    /// (it creates the record, or finds the tombstone of a rejected publish).
    async fn advance(
        &self,
        env: &JobEnvelope,
        status: JobStatus,
        set: &[(&str, &[u8])],
        attempt: Option<u64>,
    ) -> Result<Transition, StoreError> {
        let now = now_ms();
        let mut inv = ADVANCE.key(self.keys.job(env.id));
        inv.key(self.keys.job_events(env.id));
        inv.arg(status.as_str())
            .arg(now)
            .arg(status_event(status, now, attempt))
            .arg(self.ttl_s);
        for (k, v) in set {
            inv.arg(*k).arg(*v);
        }
        let (applied, current): (i64, String) = self.invoke(&inv).await?;
        match applied {
            1 => Ok(Transition::Applied),
            -1 => self.transition(env.into(), status, set).await,
            _ => Ok(Transition::Refused {
                current: parse_status(&current)?,
            }),
        }
    }

    /// Ingest: a client cancelled job `id`. Only an existing record is moved (`None` when
    /// there is none); the state machine refuses it once the job has ended.
    pub async fn record_cancelled(
        &self,
        id: Uuid,
        error: &JobError,
    ) -> Result<Option<Transition>, StoreError> {
        let error =
            serde_json::to_string(error).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let mut inv = TRANSITION.key(self.keys.job(id));
        inv.key(self.keys.job_events(id));
        inv.key(self.keys.rejected(id));
        inv.arg(JobStatus::Cancelled.as_str())
            .arg(now_ms())
            .arg(self.ttl_s)
            .arg(0);
        inv.arg(1).arg("error").arg(error);
        let (applied, current): (i64, String) = self.invoke(&inv).await?;
        match applied {
            -1 => Ok(None),
            1 => Ok(Some(Transition::Applied)),
            _ => parse_status(&current).map(|current| Some(Transition::Refused { current })),
        }
    }

    /// Appends a non-status event (a batch of streamed chunks) to the job's history and
    /// returns its event id. The history keeps the job's TTL.
    pub async fn append_event(&self, id: Uuid, event: &str) -> Result<u64, StoreError> {
        let key = self.keys.job_events(id);
        let mut pipe = redis::pipe();
        pipe.cmd("RPUSH")
            .arg(&key)
            .arg(event)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(self.ttl_s)
            .ignore();
        let mut conn = self.conn().await?;
        let (len,): (u64,) = self.timed(pipe.query_async(&mut conn)).await?;
        Ok(len)
    }

    async fn transition(
        &self,
        rec: RecordBase<'_>,
        status: JobStatus,
        set: &[(&str, &[u8])],
    ) -> Result<Transition, StoreError> {
        let base = base_fields(&rec)?;
        let ttl = if status.is_terminal() {
            self.ttl_s
        } else {
            self.pending_ttl_s
        };
        let mut inv = TRANSITION.key(self.keys.job(rec.id));
        inv.key(self.keys.job_events(rec.id));
        inv.key(self.keys.rejected(rec.id));
        inv.arg(status.as_str())
            .arg(now_ms())
            .arg(ttl)
            .arg(base.len());
        for (k, v) in &base {
            inv.arg(*k).arg(v);
        }
        inv.arg(set.len());
        for (k, v) in set {
            inv.arg(*k).arg(*v);
        }
        let (applied, current): (i64, String) = self.invoke(&inv).await?;
        if applied == 1 {
            return Ok(Transition::Applied);
        }
        if current == "rejected" {
            return Ok(Transition::Rejected);
        }
        Ok(Transition::Refused {
            current: parse_status(&current)?,
        })
    }

    /// Status, raw result and raw error of job `id` in one read (for synchronous waiters).
    pub async fn outcome(
        &self,
        id: Uuid,
    ) -> Result<Option<(JobStatus, Option<String>, Option<String>)>, StoreError> {
        let mut conn = self.conn().await?;
        let (status, result, error): (Option<String>, Option<String>, Option<String>) = self
            .timed(
                redis::cmd("HMGET")
                    .arg(self.keys.job(id))
                    .arg("status")
                    .arg("result")
                    .arg("error")
                    .query_async(&mut conn),
            )
            .await?;
        match status {
            None => Ok(None),
            Some(s) => Ok(Some((parse_status(&s)?, result, error))),
        }
    }

    /// Only the status of job `id` (a cheap read for waiters).
    pub async fn status(&self, id: Uuid) -> Result<Option<JobStatus>, StoreError> {
        let mut conn = self.conn().await?;
        let s: Option<String> = self
            .timed(
                redis::cmd("HGET")
                    .arg(self.keys.job(id))
                    .arg("status")
                    .query_async(&mut conn),
            )
            .await?;
        s.map(|s| parse_status(&s)).transpose()
    }

    /// Ingest: the publish of this job was not acknowledged and the client got a 503. Its
    /// record goes, and since the broker may still have stored it (a publish buffered across
    /// a reconnect), a tombstone makes any worker drop it instead of running a job nobody
    /// knows about.
    pub async fn record_rejected(&self, id: Uuid) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&[self.keys.job(id), self.keys.job_events(id)])
            .ignore()
            .set_ex(self.keys.rejected(id), 1, self.pending_ttl_s)
            .ignore();
        let mut conn = self.conn().await?;
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Ingest: removes the record of a job that was refused before it was published.
    pub async fn discard(&self, id: Uuid) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        self.timed(
            redis::cmd("DEL")
                .arg(self.keys.job(id))
                .arg(self.keys.job_events(id))
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// The job record, if it exists (and has not expired).
    pub async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let fields: Vec<(String, String)> = self
            .timed(
                redis::cmd("HGETALL")
                    .arg(self.keys.job(id))
                    .query_async(&mut conn),
            )
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        JobRecord::from_fields(id, fields).map(Some)
    }

    /// At most `limit` events after the first `after` ones.
    pub async fn events_page(
        &self,
        id: Uuid,
        after: u64,
        limit: u64,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn().await?;
        let last = after + limit.max(1) - 1;
        self.timed(
            redis::cmd("LRANGE")
                .arg(self.keys.job_events(id))
                .arg(after)
                .arg(last)
                .query_async(&mut conn),
        )
        .await
    }

    /// Events after the first `after` ones (event ids are 1-based positions).
    pub async fn events_after(&self, id: Uuid, after: u64) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn().await?;
        self.timed(
            redis::cmd("LRANGE")
                .arg(self.keys.job_events(id))
                .arg(after)
                .arg(-1)
                .query_async(&mut conn),
        )
        .await
    }
}

/// The descriptive fields of a record as they are stored.
fn base_fields(rec: &RecordBase<'_>) -> Result<[(&'static str, String); 6], StoreError> {
    let metadata =
        serde_json::to_string(rec.metadata).map_err(|e| StoreError::Protocol(e.to_string()))?;
    let kind = match rec.kind {
        JobKind::ChatCompletion => "chat_completion",
        JobKind::Embedding => "embedding",
    };
    Ok([
        ("tenant", rec.tenant.to_string()),
        ("priority", rec.priority.as_str().to_string()),
        ("model", rec.model.to_string()),
        ("kind", kind.to_string()),
        ("created_at", rec.created_at_ms.to_string()),
        ("metadata", metadata),
    ])
}

fn parse_status(s: &str) -> Result<JobStatus, StoreError> {
    JobStatus::parse(s)
        .ok_or_else(|| StoreError::Protocol(format!("unknown status {s:?} in a job record")))
}

#[cfg(test)]
mod tests {
    //! The scripts against a real Redis (`SLUICE_TEST_REDIS_URL`), under a key prefix of
    //! their own.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use sluice_config::RedisConfig;

    fn store() -> Store {
        Store::new(&RedisConfig {
            url: std::env::var("SLUICE_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            prefix: format!("s{}:", Uuid::now_v7().simple()),
            ..RedisConfig::default()
        })
        .unwrap()
    }

    fn envelope() -> JobEnvelope {
        JobEnvelope {
            schema: sluice_protocol::SCHEMA_VERSION,
            id: Uuid::now_v7(),
            tenant: "acme".into(),
            priority: Priority::Normal,
            kind: JobKind::ChatCompletion,
            model: "m".into(),
            request: b"{}".to_vec(),
            created_at_ms: 1_000,
            deadline_ms: None,
            replays: 0,
            traceparent: None,
            metadata: BTreeMap::new(),
            stream: false,
            reserved: false,
            cache: None,
            reservation: None,
        }
    }

    /// A record in `status`, written directly.
    async fn record_in(store: &Store, id: Uuid, status: JobStatus) {
        let mut conn = store.conn().await.unwrap();
        let _: () = redis::cmd("HSET")
            .arg(store.keys.job(id))
            .arg("status")
            .arg(status.as_str())
            .arg("attempts")
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("EXPIRE")
            .arg(store.keys.job(id))
            .arg(600)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn every_script_states_its_contract_and_compiles() {
        crate::scripts::check(&store(), crate::scripts::SCRIPTS)
            .await
            .unwrap();
    }

    /// Every `(from, to)` pair through both transition scripts: each applies exactly what
    /// [`JobStatus::may_become`] allows, and a refusal leaves the record as it was.
    #[tokio::test]
    async fn scripts_apply_exactly_the_status_rule() {
        let store = store();
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                for full in [false, true] {
                    let env = envelope();
                    record_in(&store, env.id, from).await;
                    let got = if full {
                        store.transition((&env).into(), to, &[]).await
                    } else {
                        store.advance(&env, to, &[], Some(2)).await
                    }
                    .unwrap();
                    let script = if full { "TRANSITION" } else { "ADVANCE" };
                    let expected = if from.may_become(to) {
                        Transition::Applied
                    } else {
                        Transition::Refused { current: from }
                    };
                    assert_eq!(got, expected, "{script}: {from} -> {to}");
                    let now = store.status(env.id).await.unwrap();
                    let kept = if from.may_become(to) { to } else { from };
                    assert_eq!(now, Some(kept), "{script}: {from} -> {to}");
                }
            }
        }
    }
}

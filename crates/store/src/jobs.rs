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
//! ingest creates the record of a job nobody knows yet through [`CREATE`]
//! ([`Store::create_queued`]), and a worker's transition of a record that exists goes through
//! [`ADVANCE`]. Both only check and write what the caller prepared (fields and history
//! event); `ADVANCE` falls back to the full script when the record is missing.

use std::collections::BTreeMap;

use redis::Script;
use serde::Serialize;
use sluice_protocol::{ErrorCode, JobEnvelope, JobKind, JobStatus, Priority};
use uuid::Uuid;

use crate::{JobRecord, Store, StoreError, now_ms};

const TRANSITION: &str = r#"
local rank = {queued=0, in_progress=1, completed=2, failed=2, cancelled=2, expired=2}
local new = ARGV[1]
local now = ARGV[2]
local ttl = ARGV[3]
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur and tonumber(ARGV[4]) == 0 then
  return {-1, ''}
end
if not cur and redis.call('EXISTS', KEYS[3]) == 1 then
  return {0, 'rejected'}
end
if cur then
  local rc, rn = rank[cur], rank[new]
  if rc == 2 or rn < rc or (rn == rc and rn ~= 1) then
    return {0, cur}
  end
end
local i = 5
local nbase = tonumber(ARGV[4])
local set = {'status', new, new .. '_at', now}
if not cur then
  for j = i, i + 2 * nbase - 1 do set[#set + 1] = ARGV[j] end
end
i = i + 2 * nbase
local nset = tonumber(ARGV[i])
i = i + 1
local attempts
for j = i, i + 2 * nset - 1, 2 do
  set[#set + 1] = ARGV[j]
  set[#set + 1] = ARGV[j + 1]
  if ARGV[j] == 'attempts' then attempts = tonumber(ARGV[j + 1]) end
end
if not cur and new ~= 'queued' then
  local created = now
  for j = 5, 4 + 2 * nbase, 2 do
    if ARGV[j] == 'created_at' then created = ARGV[j + 1] end
  end
  set[#set + 1] = 'queued_at'
  set[#set + 1] = created
  redis.call('RPUSH', KEYS[2], cjson.encode({type = 'status', status = 'queued', at = tonumber(created)}))
end
redis.call('HSET', KEYS[1], unpack(set))
local ev = {type = 'status', status = new, at = tonumber(now)}
if new == 'in_progress' then
  ev.attempt = attempts or tonumber(redis.call('HGET', KEYS[1], 'attempts'))
end
redis.call('RPUSH', KEYS[2], cjson.encode(ev))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return {1, new}
"#;

/// The `queued` record of a new job, with everything prepared by the caller. KEYS: record,
/// history, tombstone. ARGV: TTL, the history event (JSON), then field/value pairs. Writes
/// nothing when the record exists (a worker got there first: a write that lands late must
/// not move it back) or the job was rejected.
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1], KEYS[3]) > 0 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"#;

/// A transition of a record that exists, with everything prepared by the caller. KEYS:
/// record, history. ARGV: status, now, the history event (JSON), TTL, then field/value
/// pairs. The same rule as [`TRANSITION`]: a terminal record never changes and nothing goes
/// back to `queued`; `in_progress` may repeat (a redelivery's new attempt). The TTL is
/// renewed when the job ends (the record was created with it). `-1`: no record, the caller
/// falls back to [`TRANSITION`].
const ADVANCE: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then
  return {-1, ''}
end
local new = ARGV[1]
if new == 'queued' or (cur ~= 'queued' and cur ~= 'in_progress') then
  return {0, cur}
end
redis.call('HSET', KEYS[1], 'status', new, new .. '_at', ARGV[2], unpack(ARGV, 5))
redis.call('RPUSH', KEYS[2], ARGV[3])
if new ~= 'in_progress' then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return {1, new}
"#;

pub(crate) struct Scripts {
    transition: Script,
    create: Script,
    advance: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            transition: Script::new(TRANSITION),
            create: Script::new(CREATE),
            advance: Script::new(ADVANCE),
        }
    }
}

/// A status event of the history, as [`TRANSITION`] writes it.
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
/// upstream text: `message` is written by Sluice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
}

impl JobError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> JobError {
        JobError {
            code,
            message: message.into(),
        }
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
        }
        Stored {
            message: &self.message,
            kind: self.code.error_type(),
            code: self.code,
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
        let mut inv = self.scripts.create.key(self.keys.job(rec.id));
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
        let mut conn = self.conn().await?;
        let created: i64 = self.timed(inv.invoke_async(&mut conn)).await?;
        Ok(created == 1)
    }

    /// Worker: attempt `attempt` (1-based delivery count) starts.
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
        let Some((key, ttl_s)) = env
            .cache
            .as_ref()
            .and_then(|c| Some((sluice_cache::CacheKey::from_hex(&c.key)?, c.ttl_s)))
        else {
            return advance.await;
        };
        let (prompt_tokens, completion_tokens) = crate::cache::usage_of(result);
        let entry = sluice_cache::Entry {
            v: sluice_cache::entry::ENTRY_VERSION,
            source_job: env.id,
            created_at_ms: now_ms(),
            body: result.to_vec(),
            prompt_tokens,
            completion_tokens,
        };
        let (recorded, cached) =
            tokio::join!(advance, self.cache_put(&key, &entry, u64::from(ttl_s)));
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
        let error =
            serde_json::to_string(error).map_err(|e| StoreError::Protocol(e.to_string()))?;
        self.advance(env, status, &[("error", error.as_bytes())], None)
            .await
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
        let mut inv = self.scripts.advance.key(self.keys.job(env.id));
        inv.key(self.keys.job_events(env.id));
        inv.arg(status.as_str())
            .arg(now)
            .arg(status_event(status, now, attempt))
            .arg(self.ttl_s);
        for (k, v) in set {
            inv.arg(*k).arg(*v);
        }
        let mut conn = self.conn().await?;
        let (applied, current): (i64, String) = self.timed(inv.invoke_async(&mut conn)).await?;
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
        let mut inv = self.scripts.transition.key(self.keys.job(id));
        inv.key(self.keys.job_events(id));
        inv.key(self.keys.rejected(id));
        inv.arg(JobStatus::Cancelled.as_str())
            .arg(now_ms())
            .arg(self.ttl_s)
            .arg(0);
        inv.arg(1).arg("error").arg(error);
        let mut conn = self.conn().await?;
        let (applied, current): (i64, String) = self.timed(inv.invoke_async(&mut conn)).await?;
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
        let mut inv = self.scripts.transition.key(self.keys.job(rec.id));
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
        let mut conn = self.conn().await?;
        let (applied, current): (i64, String) = self.timed(inv.invoke_async(&mut conn)).await?;
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

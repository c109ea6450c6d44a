//! Transitions outside the forward-only state machine, each explicit and audited in the
//! job's event history:
//!
//! - [`Store::record_replay`]: an operator replays a dead-lettered job; `failed` (or
//!   `expired`) becomes `queued` again, the error is cleared from the record (it stays in
//!   the history), and a `replay` event says who did it and how many times it was replayed.
//! - [`Store::record_route`]: the model router's decision, recorded on the job.

use std::sync::LazyLock;

use redis::Script;
use sluice_protocol::JobStatus;
use uuid::Uuid;

use crate::{Store, StoreError, now_ms};

const REPLAY: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
if cur == 'queued' and redis.call('HGET', KEYS[1], 'replay_token') == ARGV[4] then
  return {1, tostring(redis.call('HGET', KEYS[1], 'replays'))}
end
if cur ~= 'failed' and cur ~= 'expired' then return {0, cur} end
local n = redis.call('HINCRBY', KEYS[1], 'replays', 1)
redis.call('HDEL', KEYS[1], 'error', 'failed_at', 'expired_at', 'in_progress_at', 'result')
redis.call('HSET', KEYS[1], 'status', 'queued', 'queued_at', ARGV[1], 'replay_token', ARGV[4])
redis.call('RPUSH', KEYS[2], cjson.encode({type = 'replay', from = cur, by = ARGV[2], replay = n, at = tonumber(ARGV[1])}))
redis.call('RPUSH', KEYS[2], cjson.encode({type = 'status', status = 'queued', at = tonumber(ARGV[1])}))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, tostring(n)}
"#;

const ROUTE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'route', ARGV[1])
local ev = cjson.decode(ARGV[1])
ev.type = 'route'
ev.at = tonumber(ARGV[2])
redis.call('RPUSH', KEYS[2], cjson.encode(ev))
return 1
"#;

static REPLAY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REPLAY));
static ROUTE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ROUTE));

/// What a replay request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// The job is `queued` again; `replays` counts this one.
    Applied { replays: u64 },
    /// The job is not in a replayable state (or its record expired: `None`).
    Refused { current: Option<JobStatus> },
}

impl Store {
    /// Resets a failed or expired job to `queued` for a replay by `actor`. `token` names the
    /// replayed dead letter: repeating the call with the same token (a replay whose publish
    /// failed and is retried) applies again without a second reset.
    pub async fn record_replay(
        &self,
        id: Uuid,
        actor: &str,
        token: &str,
    ) -> Result<Replay, StoreError> {
        let mut inv = REPLAY_SCRIPT.key(self.keys.job(id));
        inv.key(self.keys.job_events(id))
            .arg(now_ms())
            .arg(actor)
            .arg(self.pending_ttl_s)
            .arg(token);
        let mut conn = self.conn().await?;
        let (applied, value): (i64, String) = self.timed(inv.invoke_async(&mut conn)).await?;
        if applied == 1 {
            return Ok(Replay::Applied {
                replays: value.parse().unwrap_or(1),
            });
        }
        Ok(Replay::Refused {
            current: JobStatus::parse(&value),
        })
    }

    /// Records the routing decision (a JSON object) on the job and in its history.
    pub async fn record_route(
        &self,
        id: Uuid,
        route: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut inv = ROUTE_SCRIPT.key(self.keys.job(id));
        inv.key(self.keys.job_events(id))
            .arg(route.to_string())
            .arg(now_ms());
        let mut conn = self.conn().await?;
        let _: i64 = self.timed(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }
}

//! Transitions outside the forward-only state machine, each explicit and audited in the
//! job's event history:
//!
//! - [`Store::record_replay`]: an operator replays a dead-lettered job; `failed` (or
//!   `expired`) becomes `queued` again, the error is cleared from the record (it stays in
//!   the history), and a `replay` event says who did it and how many times it was replayed.
//! - [`Store::record_route`]: the model router's decision, recorded on the job.

use sluice_protocol::{JobStatus, ReplayLedger};
use uuid::Uuid;

use crate::{Store, StoreError, now_ms, scripts::Lua};

pub(crate) static REPLAY: Lua = Lua::new("replay", include_str!("../lua/replay.lua"));
pub(crate) static ROUTE: Lua = Lua::new("route", include_str!("../lua/route.lua"));

pub use sluice_protocol::Replay;

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
        let mut inv = REPLAY.key(self.keys.job(id));
        inv.key(self.keys.job_events(id))
            .arg(now_ms())
            .arg(actor)
            .arg(self.pending_ttl_s)
            .arg(token);
        let (applied, value): (i64, String) = self.invoke(&inv).await?;
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
        let mut inv = ROUTE.key(self.keys.job(id));
        inv.key(self.keys.job_events(id))
            .arg(route.to_string())
            .arg(now_ms());
        let _: i64 = self.invoke(&inv).await?;
        Ok(())
    }
}

/// The queue's DLQ replay resets the job's record here before publishing it again.
impl ReplayLedger for Store {
    type Error = StoreError;

    async fn record_replay(
        &self,
        id: Uuid,
        actor: &str,
        token: &str,
    ) -> Result<Replay, StoreError> {
        Store::record_replay(self, id, actor, token).await
    }
}

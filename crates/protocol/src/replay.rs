//! The contract between a dead-letter replay and the job record.
//!
//! `sluice-queue` re-publishes a dead-lettered job; before it does, the job's record must go
//! back to `queued` through an audited reset. The queue asks for that reset through
//! [`ReplayLedger`], which `sluice-store` implements, so the queue crate does not depend on
//! the store.

use std::future::Future;

use uuid::Uuid;

use crate::JobStatus;

/// What a replay reset did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// The job is `queued` again; `replays` counts this one.
    Applied { replays: u64 },
    /// The job is not in a replayable state (or its record expired: `None`).
    Refused { current: Option<JobStatus> },
}

/// Where a replayed job's record is reset before the job is published again.
pub trait ReplayLedger {
    type Error: std::fmt::Display;

    /// Resets a failed or expired job to `queued` for a replay by `actor`. `token` names the
    /// replayed dead letter: repeating the call with the same token (a replay whose publish
    /// failed and is retried) applies again without a second reset.
    fn record_replay(
        &self,
        id: Uuid,
        actor: &str,
        token: &str,
    ) -> impl Future<Output = Result<Replay, Self::Error>> + Send;
}

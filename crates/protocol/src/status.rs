//! Job states (OpenAI's batch vocabulary) and the rule that keeps transitions monotonic.
//!
//! The store enforces the same rule atomically in Redis: `sluice-store` generates the Lua
//! scripts' table of allowed transitions from [`JobStatus::may_become`], and a table test runs
//! every `(from, to)` pair through the scripts against Redis.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    InProgress,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

impl JobStatus {
    /// Every state, in rank order.
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::InProgress,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::InProgress => "in_progress",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "in_progress" => JobStatus::InProgress,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            "expired" => JobStatus::Expired,
            _ => return None,
        })
    }

    /// 0 queued, 1 in progress, 2 terminal. A write may only move a job to a higher rank
    /// (or repeat `in_progress` on a redelivery); terminal states never change.
    pub fn rank(self) -> u8 {
        match self {
            JobStatus::Queued => 0,
            JobStatus::InProgress => 1,
            JobStatus::Completed
            | JobStatus::Failed
            | JobStatus::Cancelled
            | JobStatus::Expired => 2,
        }
    }

    pub fn is_terminal(self) -> bool {
        self.rank() == 2
    }

    /// Whether a job currently in `self` may be written as `next`.
    pub fn may_become(self, next: JobStatus) -> bool {
        match (self.rank(), next.rank()) {
            (2, _) => false,
            (1, 1) => true,
            (cur, new) => new > cur,
        }
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStatus::*;

    #[test]
    fn transitions_only_move_forward() {
        assert!(Queued.may_become(InProgress));
        assert!(Queued.may_become(Completed));
        assert!(
            InProgress.may_become(InProgress),
            "a redelivery restarts the attempt"
        );
        assert!(InProgress.may_become(Failed));
        assert!(!InProgress.may_become(Queued));
        assert!(!Queued.may_become(Queued));
        for terminal in [Completed, Failed, Cancelled, Expired] {
            for next in [Queued, InProgress, Completed, Failed, Cancelled, Expired] {
                assert!(
                    !terminal.may_become(next),
                    "{terminal} must not become {next}"
                );
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
    }
}

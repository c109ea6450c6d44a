//! The job record as read back from Redis.

use std::collections::BTreeMap;

use sluice_protocol::{JobStatus, Priority};
use uuid::Uuid;

use crate::StoreError;

#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: Uuid,
    pub tenant: String,
    pub status: JobStatus,
    pub priority: Priority,
    pub model: String,
    pub kind: String,
    pub created_at_ms: u64,
    pub queued_at_ms: Option<u64>,
    pub in_progress_at_ms: Option<u64>,
    pub completed_at_ms: Option<u64>,
    pub failed_at_ms: Option<u64>,
    pub cancelled_at_ms: Option<u64>,
    pub expired_at_ms: Option<u64>,
    pub attempts: u64,
    pub metadata: BTreeMap<String, String>,
    /// The upstream response (JSON) when completed.
    pub result: Option<serde_json::Value>,
    /// The error object when failed, cancelled or expired.
    pub error: Option<serde_json::Value>,
    /// The model router's decision, when the job asked for a routed alias.
    pub route: Option<serde_json::Value>,
    /// How many times an operator replayed the job.
    pub replays: u64,
    /// Answered from the response cache: the job whose upstream answer this is.
    pub cached_from: Option<Uuid>,
}

impl JobRecord {
    pub(crate) fn from_fields(
        id: Uuid,
        fields: Vec<(String, String)>,
    ) -> Result<JobRecord, StoreError> {
        let map: BTreeMap<String, String> = fields.into_iter().collect();
        let get = |k: &str| map.get(k).map(String::as_str);
        let ms = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
        let json = |k: &str| get(k).and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok());
        let status = get("status")
            .and_then(JobStatus::parse)
            .ok_or_else(|| StoreError::Protocol(format!("job {id} has no valid status")))?;
        Ok(JobRecord {
            id,
            tenant: get("tenant").unwrap_or_default().to_string(),
            status,
            priority: get("priority")
                .and_then(Priority::parse)
                .unwrap_or_default(),
            model: get("model").unwrap_or_default().to_string(),
            kind: get("kind").unwrap_or("chat_completion").to_string(),
            created_at_ms: ms("created_at").unwrap_or(0),
            queued_at_ms: ms("queued_at"),
            in_progress_at_ms: ms("in_progress_at"),
            completed_at_ms: ms("completed_at"),
            failed_at_ms: ms("failed_at"),
            cancelled_at_ms: ms("cancelled_at"),
            expired_at_ms: ms("expired_at"),
            attempts: ms("attempts").unwrap_or(0),
            metadata: get("metadata")
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
            result: json("result"),
            error: json("error"),
            route: json("route"),
            replays: ms("replays").unwrap_or(0),
            cached_from: get("cached_from").and_then(|v| v.parse().ok()),
        })
    }
}

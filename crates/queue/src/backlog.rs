//! How much work waits per priority class, for load shedding: the messages a class's
//! consumer has not delivered yet, and the publish time of the oldest of them.

use sluice_protocol::Priority;

use crate::{Queue, QueueError, broker};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    pub pending: u64,
    /// Publish time (ms since the epoch) of the oldest undelivered message.
    pub oldest_ms: Option<u64>,
    /// Delivered and not yet acknowledged (being worked on, or lost with a worker).
    pub ack_pending: u64,
}

impl Queue {
    /// The class's backlog; empty while its consumer does not exist yet (no worker started).
    pub async fn backlog(&self, priority: Priority) -> Result<Backlog, QueueError> {
        let stream = self
            .js
            .get_stream(self.subjects.jobs_stream())
            .await
            .map_err(broker)?;
        let info = match stream.consumer_info(self.subjects.consumer(priority)).await {
            Ok(i) => i,
            Err(e) if e.to_string().contains("not found") => return Ok(Backlog::default()),
            Err(e) => return Err(broker(e)),
        };
        if info.num_pending == 0 {
            return Ok(Backlog {
                ack_pending: info.num_ack_pending as u64,
                ..Backlog::default()
            });
        }
        let next = info.delivered.stream_sequence + 1;
        let oldest_ms = match stream
            .get_first_raw_message_by_subject(self.subjects.priority_filter(priority), next)
            .await
        {
            Ok(m) => u64::try_from(m.time.unix_timestamp_nanos() / 1_000_000).ok(),
            Err(_) => None,
        };
        Ok(Backlog {
            pending: info.num_pending,
            oldest_ms,
            ack_pending: info.num_ack_pending as u64,
        })
    }
}

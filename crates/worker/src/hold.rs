//! Keeping a message through an infrastructure outage instead of spending its attempts.
//!
//! Attempts are numbered from the failures recorded on the job, so a NAK for a store error
//! spends none; but every NAK is a delivery (they bound a job through
//! [`crate::job::DELIVERIES_PER_ATTEMPT`]), and a NAK storm through an outage only moves the
//! work around. So when [`crate::attempt::decide`] says [`Broker::Wait`] (the store could not
//! be read or written, webhooks could not be enqueued), the worker keeps the message: it
//! waits with backoff, sending in-progress heartbeats so the broker does not redeliver it,
//! and then tries the same step again. The hold is bounded
//! ([`HOLD_LIMIT`]); past it, or when the worker stops, the message goes back to the broker.

use std::time::Duration;

use sluice_queue::Delivery;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Shared, attempt::Broker, backoff::redelivery_delay};

/// Longest a delivery is kept in the worker waiting for its infrastructure.
pub const HOLD_LIMIT: Duration = Duration::from_secs(300);

pub struct Hold<'a> {
    shared: &'a Shared,
    stop: &'a CancellationToken,
    since: Instant,
    waits: u64,
}

impl<'a> Hold<'a> {
    pub fn new(shared: &'a Shared, stop: &'a CancellationToken) -> Hold<'a> {
        Hold {
            shared,
            stop,
            since: Instant::now(),
            waits: 0,
        }
    }

    /// For a [`Broker::Wait`]: waits before the step is tried again and returns `None`, or
    /// returns what to tell the broker instead (the worker is stopping: release it; the hold
    /// is over its limit: an ordinary retry). Any other decision passes through.
    pub async fn wait(&mut self, delivery: &Delivery, broker: Broker) -> Option<Broker> {
        let Broker::Wait(reason) = broker else {
            return Some(broker);
        };
        if self.stop.is_cancelled() {
            return Some(Broker::Release);
        }
        if self.since.elapsed() >= HOLD_LIMIT {
            return Some(Broker::Retry {
                reason,
                at_least: None,
            });
        }
        self.waits += 1;
        metrics::counter!("sluice_worker_holds_total", "reason" => reason.as_str()).increment(1);
        let w = &self.shared.cfg.worker;
        let base = w.backoff_base.max(Duration::from_millis(1));
        let delay = redelivery_delay(self.waits, base, w.backoff_max.max(base), Some(base));
        let every = w.ack_wait.max(Duration::from_secs(1)) / 3;
        if let Err(e) = delivery.progress().await {
            tracing::debug!(error = %e, "heartbeat failed");
        }
        tokio::select! {
            () = crate::job::with_heartbeats(tokio::time::sleep(delay), delivery, every) => None,
            () = self.stop.cancelled() => Some(Broker::Release),
        }
    }
}

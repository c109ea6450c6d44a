//! Publishing jobs. A job counts as accepted only once JetStream acknowledged it.

use async_nats::HeaderMap;
use sluice_protocol::JobEnvelope;
use tracing::Instrument;

use crate::{Queue, QueueError};

impl Queue {
    /// Publishes the job on `jobs.<priority>.<tenant>` and waits for the stream's ack.
    ///
    /// The job id is the JetStream message id, so a publish retried within the duplicate
    /// window is stored once. When the client is not connected the call fails at once
    /// rather than buffering the job in memory behind a dead connection. After the ack it
    /// rings the class's doorbell (see [`Queue::ring`]).
    pub async fn publish_job(&self, env: &JobEnvelope) -> Result<(), QueueError> {
        if !self.is_connected() {
            return Err(QueueError::NotConnected);
        }
        let payload = env.encode()?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", env.id.to_string().as_str());
        let subject = self.subjects.job(env.priority, &env.tenant);
        let span = crate::trace::publish_span("jobs", &subject, env.id);
        crate::trace::inject(&span, &mut headers);
        let timeout = self.cfg.publish_timeout;
        let send = async {
            let ack = self
                .js
                .publish_with_headers(subject, headers, payload.into())
                .await
                .map_err(|e| QueueError::Refused(e.to_string()))?;
            ack.await.map_err(|e| QueueError::Refused(e.to_string()))
        };
        match tokio::time::timeout(timeout, send).instrument(span).await {
            Ok(Ok(_ack)) => {
                self.ring(env.priority).await;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(QueueError::Timeout),
        }
    }

    /// Tells idle workers that a class has work. Best effort: a lost ring only delays the
    /// job until a worker's periodic re-check, it never loses it.
    ///
    /// Rings are coalesced: while one is about to be sent for a class, further calls return
    /// at once. The pending flag is cleared just before the ring goes out, so every job stored
    /// before the clear is covered by that ring (workers fetch after receiving it) and any
    /// job stored after it rings anew. A class rings at most once per `nats.ring_gap_ms`: a
    /// ring due sooner waits for the gap to pass. An occasional job therefore rings at once,
    /// and under load each ring (and the fetches it causes) covers every job acknowledged in
    /// the meantime instead of one each.
    pub async fn ring(&self, priority: sluice_protocol::Priority) {
        use std::sync::atomic::Ordering;
        let class = priority.index();
        if self.doorbell.pending[class].swap(true, Ordering::AcqRel) {
            return;
        }
        // Sent from its own task, so a caller dropped mid-way (a client that went away) cannot
        // leave the flag set with no ring coming.
        let queue = self.clone();
        tokio::spawn(async move {
            let bell = &queue.doorbell;
            let last = bell.last[class].lock().map(|l| *l).unwrap_or(None);
            let gap = queue.cfg.ring_gap;
            match last.map(|at| at + gap) {
                Some(next) if next > std::time::Instant::now() => {
                    tokio::time::sleep_until(next.into()).await;
                }
                // Let the other tasks made ready by the same read (more acks) come first.
                _ => tokio::task::yield_now().await,
            }
            bell.pending[class].store(false, Ordering::Release);
            if let Ok(mut l) = bell.last[class].lock() {
                *l = Some(std::time::Instant::now());
            }
            if let Err(e) = queue
                .client
                .publish(queue.subjects.ring(priority), bytes::Bytes::new())
                .await
            {
                tracing::debug!(error = %e, "doorbell publish failed");
            }
        });
    }
}

/// Per priority class: whether a ring is about to be sent, and when the last one went.
#[derive(Default)]
pub(crate) struct Doorbell {
    pending: [std::sync::atomic::AtomicBool; 3],
    last: [std::sync::Mutex<Option<std::time::Instant>>; 3],
}

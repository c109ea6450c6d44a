//! Fetching and settling deliveries.
//!
//! Workers ask for exactly as many messages as they have free slots (see
//! [`crate::puller`]), so nothing piles up unacknowledged on the client. A [`Delivery`] that is dropped without being settled is handed to a
//! [`Releaser`], which NAKs it so the broker redelivers it promptly; no early return can leak
//! a message until `ack_wait`.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tokio::sync::mpsc;

use crate::{QueueError, broker};

/// Takes unsettled deliveries and NAKs them (see [`releaser`]).
#[derive(Clone)]
pub struct Releaser {
    tx: mpsc::Sender<jetstream::Message>,
}

/// A bounded channel and the task body that NAKs whatever arrives on it. The caller runs
/// the future in its own task set; it ends when every [`Releaser`] is dropped.
pub fn releaser(capacity: usize) -> (Releaser, impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = mpsc::channel::<jetstream::Message>(capacity);
    let task = async move {
        while let Some(msg) = rx.recv().await {
            if let Err(e) = msg.ack_with(AckKind::Nak(None)).await {
                tracing::debug!(error = %e, "releasing an unsettled delivery failed; it returns after ack_wait");
            }
        }
    };
    (Releaser { tx }, task)
}

/// One delivery of one message.
pub struct Delivery {
    msg: Option<jetstream::Message>,
    release: Option<Releaser>,
}

impl Delivery {
    pub fn new(msg: jetstream::Message, release: Option<Releaser>) -> Delivery {
        Delivery {
            msg: Some(msg),
            release,
        }
    }

    fn msg(&self) -> Result<&jetstream::Message, QueueError> {
        self.msg
            .as_ref()
            .ok_or_else(|| QueueError::Broker("delivery already settled".into()))
    }

    pub fn payload(&self) -> &[u8] {
        self.msg
            .as_ref()
            .map(|m| m.payload.as_ref())
            .unwrap_or_default()
    }

    pub fn subject(&self) -> &str {
        self.msg
            .as_ref()
            .map(|m| m.subject.as_str())
            .unwrap_or_default()
    }

    /// 1-based delivery count (1 when the broker did not say).
    pub fn delivered(&self) -> u64 {
        self.msg
            .as_ref()
            .and_then(|m| m.info().ok())
            .map(|i| i.delivered.max(1) as u64)
            .unwrap_or(1)
    }

    pub fn stream_sequence(&self) -> u64 {
        self.msg
            .as_ref()
            .and_then(|m| m.info().ok())
            .map(|i| i.stream_sequence)
            .unwrap_or(0)
    }

    /// Tells the broker the job is still being worked on (extends `ack_wait`).
    pub async fn progress(&self) -> Result<(), QueueError> {
        self.msg()?
            .ack_with(AckKind::Progress)
            .await
            .map_err(broker)
    }

    pub async fn ack(mut self) -> Result<(), QueueError> {
        self.settle(AckKind::Ack).await
    }

    /// Redeliver after `delay`.
    pub async fn nak(mut self, delay: Duration) -> Result<(), QueueError> {
        self.settle(AckKind::Nak(Some(delay))).await
    }

    /// Never redeliver (after it was dead-lettered).
    pub async fn term(mut self) -> Result<(), QueueError> {
        self.settle(AckKind::Term).await
    }

    async fn settle(&mut self, kind: AckKind) -> Result<(), QueueError> {
        let msg = self
            .msg
            .take()
            .ok_or_else(|| QueueError::Broker("delivery already settled".into()))?;
        msg.ack_with(kind).await.map_err(broker)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let (Some(msg), Some(release)) = (self.msg.take(), self.release.as_ref()) {
            // Full channel: the message simply returns after ack_wait.
            let _ = release.tx.try_send(msg);
        }
    }
}

//! NATS JetStream: the durable queue between ingest and workers.
//!
//! # Layout
//! - [`setup`]: the JOBS work-queue stream, the DLQ stream and one durable pull consumer per
//!   priority, created or updated idempotently at start-up.
//! - [`publisher`]: publishing a job and waiting for JetStream's acknowledgement.
//! - [`consumer`]: fetching deliveries sized to the caller's free capacity, and settling them
//!   (ack, NAK with delay, progress, terminate).
//! - [`dead_letter`]: moving a message to the dead-letter stream with its reason.
//! - [`dlq`]: listing, showing and replaying dead letters.
//! - [`notify`]: core NATS job-event notifications and cancellation broadcasts.
//! - [`puller`]: no-wait pull requests over one long-lived inbox per consumer.
//! - [`backlog`]: how much work waits per priority class (load shedding).
//! - [`trace`]: the broker hop of a trace — PRODUCER span and context headers on publish,
//!   CONSUMER span on processing.
//!
//! It does not depend on the store: a DLQ replay resets the job record through the
//! [`sluice_protocol::ReplayLedger`] its caller passes (the store implements it).

pub mod backlog;
pub mod consumer;
pub mod dead_letter;
pub mod dlq;
pub mod notify;
pub mod publisher;
pub mod puller;
pub mod setup;
pub mod trace;

use std::time::Duration;

use async_nats::jetstream;
use sluice_config::NatsSettings;
use sluice_protocol::Subjects;

pub use consumer::Delivery;
pub use dead_letter::DeadLetter;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the broker is not connected")]
    NotConnected,
    #[error("the broker did not acknowledge in time")]
    Timeout,
    #[error("the broker refused the message: {0}")]
    Refused(String),
    #[error("broker error: {0}")]
    Broker(String),
    #[error("encoding failed: {0}")]
    Encode(#[from] sluice_protocol::EncodeError),
}

/// A connection to NATS with the JetStream context and the names in use. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    cfg: NatsSettings,
    /// The doorbell's coalescing state (see [`Queue::ring`]).
    doorbell: std::sync::Arc<publisher::Doorbell>,
}

impl Queue {
    /// Connects to NATS. The connection is retried in the background if the server is not
    /// reachable yet, so a service can start before its broker and report not-ready.
    pub async fn connect(cfg: &NatsSettings, name: &str) -> Result<Queue, QueueError> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .client_capacity(65_536)
            .connect(server_addrs(&cfg.url)?)
            .await
            .map_err(|e| QueueError::Broker(e.to_string()))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(cfg.publish_timeout);
        Ok(Queue {
            client,
            js,
            subjects: Subjects::new(cfg.namespace.clone()),
            cfg: cfg.clone(),
            doorbell: Default::default(),
        })
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn config(&self) -> &NatsSettings {
        &self.cfg
    }

    pub fn is_connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }
}

/// `nats.url`: one address or a comma-separated list of a cluster's servers.
fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, QueueError> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| QueueError::Broker(format!("nats.url {u:?}: {e}")))
        })
        .collect()
}

fn broker<E: std::fmt::Display>(e: E) -> QueueError {
    QueueError::Broker(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_is_a_list_of_servers() {
        let addrs =
            server_addrs("nats://127.0.0.1:4222, nats://127.0.0.1:4223,nats://10.0.0.5:4222")
                .unwrap_or_default();
        assert_eq!(addrs.len(), 3);
        assert_eq!(addrs[1].port(), 4223);
        assert_eq!(
            server_addrs("nats://127.0.0.1:4222").map(|a| a.len()).ok(),
            Some(1)
        );
        assert!(server_addrs("nats://a b:1").is_err());
    }
}

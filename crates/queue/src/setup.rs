//! Streams and consumers, created or updated so that start-up is idempotent and a changed
//! setting (say `ack_wait`) takes effect on the next start.

use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use sluice_protocol::Priority;

use crate::{Queue, QueueError, broker};

/// Settings of the per-priority worker consumers.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerSettings {
    pub ack_wait: Duration,
    /// The worker dead-letters a job after this many attempts. The server sets no delivery
    /// limit: deferrals at a tenant's in-flight cap, crash redeliveries and retry-budget
    /// refusals are not attempts, and the worker numbers attempts from the failures recorded
    /// on the job (and bounds deliveries itself).
    pub max_attempts: u32,
}

impl Queue {
    /// Creates or updates the JOBS and DLQ streams.
    pub async fn ensure_streams(&self) -> Result<(), QueueError> {
        let s = &self.subjects;
        self.js
            .create_or_update_stream(stream::Config {
                name: s.jobs_stream(),
                subjects: vec![s.jobs_wildcard()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::New,
                max_messages: self.cfg.max_queued_jobs,
                max_bytes: self.cfg.max_queue_bytes,
                duplicate_window: self.cfg.duplicate_window,
                num_replicas: self.cfg.replicas,
                ..Default::default()
            })
            .await
            .map_err(broker)?;
        self.js
            .create_or_update_stream(stream::Config {
                name: s.dlq_stream(),
                subjects: vec![s.dlq_wildcard()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::Old,
                max_messages: self.cfg.dlq_max_msgs,
                max_age: self.cfg.dlq_max_age,
                duplicate_window: self.cfg.duplicate_window,
                num_replicas: self.cfg.replicas,
                ..Default::default()
            })
            .await
            .map_err(broker)?;
        Ok(())
    }

    /// Creates or updates the durable pull consumer of one priority class.
    pub async fn ensure_consumer(
        &self,
        priority: Priority,
        settings: ConsumerSettings,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, QueueError> {
        let stream = self
            .js
            .get_stream(self.subjects.jobs_stream())
            .await
            .map_err(broker)?;
        let name = self.subjects.consumer(priority);
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.clone()),
                name: Some(name),
                filter_subject: self.subjects.priority_filter(priority),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                max_deliver: -1,
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await
            .map_err(broker)
    }

    /// Messages waiting in the JOBS stream (all classes).
    pub async fn queued_messages(&self) -> Result<u64, QueueError> {
        let mut stream = self
            .js
            .get_stream(self.subjects.jobs_stream())
            .await
            .map_err(broker)?;
        Ok(stream.info().await.map_err(broker)?.state.messages)
    }
}

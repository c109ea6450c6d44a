//! Emitting a job's terminal event: one durable message per target on `HOOKS`.
//!
//! Called by whoever records the terminal state (the worker; ingest for a cancel) before the
//! job's message is acknowledged, so a crash in between re-emits on redelivery; through
//! [`crate::outbox::emit_or_defer`], so a `HOOKS` that refuses the event does not hold the job. The
//! JetStream message id is `<event id>:<target>`, so a re-emission within the duplicate window
//! is stored once; past it, the receiver still sees the same `webhook-id` and can dedupe.

use async_nats::{
    HeaderMap,
    jetstream::{context::PublishErrorKind, stream},
};
use serde::{Deserialize, Serialize};
use sluice_config::WebhooksConfig;
use sluice_protocol::JobStatus;
use sluice_queue::Queue;
use sluice_store::{HookTargets, Store};
use uuid::Uuid;

use crate::HookError;

/// What the dispatcher delivers (the message body on `HOOKS`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The `webhook-id` and the payload's `id`: the same for every attempt.
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub job_id: Uuid,
    pub tenant: String,
    /// Unix seconds of the event.
    pub created_at: u64,
    /// `job` for the job's own webhook, else an endpoint id.
    pub target: String,
}

impl Delivery {
    /// The delivery's name in the store's attempt counts (`{p}hookatt:{<job>}`).
    pub fn attempts_field(&self) -> String {
        format!("{}:{}", self.event_id, self.target)
    }

    /// The thin payload: `{id, object, type, created_at, data: {id}}`.
    pub fn payload(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.event_id,
            "object": "event",
            "type": self.kind,
            "created_at": self.created_at,
            "data": { "id": self.job_id, "object": "job" },
        })
    }
}

/// The event type of a terminal status.
pub fn event_type(status: JobStatus) -> Option<&'static str> {
    match status {
        JobStatus::Completed => Some("job.completed"),
        JobStatus::Failed => Some("job.failed"),
        JobStatus::Cancelled => Some("job.cancelled"),
        JobStatus::Expired => Some("job.expired"),
        JobStatus::Queued | JobStatus::InProgress => None,
    }
}

/// The `webhook-id` of a job's terminal event.
pub fn event_id(job_id: Uuid, kind: &str) -> String {
    format!(
        "evt_{}_{}",
        job_id.simple(),
        kind.trim_start_matches("job.")
    )
}

/// Enqueues the deliveries for job `job_id` having ended in `status`. Callers that record
/// a terminal state use [`crate::outbox::emit_or_defer`], which survives a full `HOOKS`.
pub async fn emit(
    queue: &Queue,
    store: &Store,
    cfg: &WebhooksConfig,
    job_id: Uuid,
    tenant: &str,
    status: JobStatus,
) -> Result<usize, HookError> {
    if event_type(status).is_none() {
        return Ok(0);
    }
    let targets = store.hook_targets(job_id, tenant).await?;
    emit_to(queue, cfg, targets, job_id, tenant, status).await
}

/// [`emit`] with the job's webhook targets already read.
pub async fn emit_to(
    queue: &Queue,
    cfg: &WebhooksConfig,
    targets: HookTargets,
    job_id: Uuid,
    tenant: &str,
    status: JobStatus,
) -> Result<usize, HookError> {
    let Some(kind) = event_type(status) else {
        return Ok(0);
    };
    let tenant = targets.tenant.clone().unwrap_or_else(|| tenant.to_string());
    let mut names: Vec<String> = targets.endpoints;
    if targets.job_url.is_some() {
        names.push("job".into());
    }
    if names.is_empty() {
        return Ok(0);
    }
    let created_at = sluice_store::now_ms() / 1000;
    let event_id = event_id(job_id, kind);
    for target in &names {
        let d = Delivery {
            event_id: event_id.clone(),
            kind: kind.into(),
            job_id,
            tenant: tenant.clone(),
            created_at,
            target: target.clone(),
        };
        publish(queue, cfg, &d).await?;
    }
    metrics::counter!("sluice_webhook_events_total", "type" => kind).increment(names.len() as u64);
    Ok(names.len())
}

async fn publish(queue: &Queue, cfg: &WebhooksConfig, d: &Delivery) -> Result<(), HookError> {
    let body = serde_json::to_vec(d)?;
    let subject = queue.subjects().hook(&d.tenant);
    let mut ensured = false;
    loop {
        let mut h = HeaderMap::new();
        h.insert(
            "Nats-Msg-Id",
            format!("{}:{}", d.event_id, d.target).as_str(),
        );
        sluice_queue::trace::inject(&tracing::Span::current(), &mut h);
        let sent = async {
            let ack = queue
                .jetstream()
                .publish_with_headers(subject.clone(), h, body.clone().into())
                .await?;
            ack.await
        };
        match tokio::time::timeout(queue.config().publish_timeout, sent).await {
            Ok(Ok(_)) => return Ok(()),
            // The stream may not exist yet (first use): create it once and try again.
            Ok(Err(e)) if !ensured && e.kind() == PublishErrorKind::StreamNotFound => {
                ensure_stream(queue, cfg).await?;
                ensured = true;
            }
            // A full stream (`discard: new`) answers with an error here.
            Ok(Err(e)) => return Err(sluice_queue::QueueError::Refused(e.to_string()).into()),
            Err(_) => return Err(sluice_queue::QueueError::Timeout.into()),
        }
    }
}

/// Creates or updates the `HOOKS` stream (work queue, file storage, deduplication window).
pub async fn ensure_stream(queue: &Queue, hooks: &WebhooksConfig) -> Result<(), HookError> {
    let s = queue.subjects();
    let cfg = queue.config();
    let max_messages = match hooks.stream_max_msgs {
        0 => cfg.max_queued_jobs,
        n => n,
    };
    let max_bytes = match hooks.stream_max_bytes {
        0 => cfg.max_queue_bytes.min(256 * 1024 * 1024),
        n => n,
    };
    queue
        .jetstream()
        .create_or_update_stream(stream::Config {
            name: s.hooks_stream(),
            subjects: vec![s.hooks_wildcard()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            max_messages,
            max_bytes,
            duplicate_window: cfg.duplicate_window,
            num_replicas: cfg.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| sluice_queue::QueueError::Broker(e.to_string()))?;
    Ok(())
}

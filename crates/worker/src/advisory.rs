//! Nothing stays stranded: the backstop for messages the server stopped delivering.
//!
//! The worker consumers set no server delivery limit (the worker counts attempts itself and
//! dead-letters on the last one), but an operator may set `max_deliver` on a consumer, and
//! then the server gives up on a message on its own and leaves it in the work queue. It
//! publishes a `MAX_DELIVERIES` advisory; this task (one per replica, in a queue group so
//! one replica handles each advisory) looks the message up by sequence — it is still there
//! however late the advisory arrives — records the job `failed`, copies the message to the
//! dead-letter stream and deletes the original.
//!
//! An advisory nobody heard (no worker running at that moment) is covered by a sweep, at
//! start and every [`SWEEP_EVERY`]: a message of a class still in the work queue that the
//! class's consumer has delivered, and that is neither acknowledged nor pending (the server
//! keeps NAKed and in-flight messages pending), was given up by the server. The sweep looks
//! up to the ack floor, or up to the last delivered message when nothing is pending, so a
//! class under constant load is swept when it next goes idle.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use sluice_protocol::Priority;
use sluice_protocol::{DeadLetterReason, ErrorCode, JobEnvelope, JobStatus};
use sluice_queue::{DeadLetter, Queue, QueueError};
use sluice_store::{JobError, Store};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

/// The advisory subject for the jobs stream.
pub fn subject(queue: &Queue) -> String {
    format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
        queue.subjects().jobs_stream()
    )
}

/// Subscribes (before the worker's first fetch, which may trigger an advisory).
pub async fn subscribe(queue: &Queue) -> Option<async_nats::Subscriber> {
    match queue
        .client()
        .queue_subscribe(subject(queue), "sluice-dlq-mover".into())
        .await
    {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot subscribe to max-deliveries advisories");
            None
        }
    }
}

pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Most stream sequences one sweep looks at per class.
const SWEEP_SCAN: u64 = 10_000;

/// Handles advisories (and sweeps) until `stop`.
pub async fn run(
    mut sub: async_nats::Subscriber,
    queue: Queue,
    store: Store,
    stop: CancellationToken,
) {
    let mut sweep_tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m { Some(m) => m, None => return },
            _ = sweep_tick.tick() => {
                match sweep(&queue, &store).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(moved = n, "sweep moved max-delivered messages to the dead letters"),
                    Err(e) => tracing::debug!(error = %e, "stranded-message sweep failed; retrying later"),
                }
                continue;
            }
            _ = stop.cancelled() => return,
        };
        let Ok(adv) = serde_json::from_slice::<MaxDeliveries>(&msg.payload) else {
            continue;
        };
        match strand_to_dead_letter(&queue, &store, adv.stream_seq, adv.deliveries).await {
            Ok(true) => {
                metrics::counter!("sluice_worker_dead_letters_total", "reason" => "max_deliveries")
                    .increment(1)
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(seq = adv.stream_seq, error = %e, "cannot move a max-delivered message")
            }
        }
    }
}

/// Moves every message the server gave up on but nobody moved; returns how many.
pub async fn sweep(queue: &Queue, store: &Store) -> Result<usize, QueueError> {
    let broker = |e: &dyn std::fmt::Display| QueueError::Broker(e.to_string());
    let mut stream = queue
        .jetstream()
        .get_stream(queue.subjects().jobs_stream())
        .await
        .map_err(|e| broker(&e))?;
    let first = stream
        .info()
        .await
        .map_err(|e| broker(&e))?
        .state
        .first_sequence;
    let mut moved = 0;
    for p in Priority::ALL {
        // A class whose consumer does not exist yet has nothing delivered to sweep.
        let Ok(mut consumer) = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                &queue.subjects().consumer(p),
            )
            .await
        else {
            continue;
        };
        let info = consumer.info().await.map_err(|e| broker(&e))?;
        let floor = if info.num_ack_pending == 0 {
            info.delivered.stream_sequence
        } else {
            info.ack_floor.stream_sequence
        };
        let max_deliver = u64::try_from(info.config.max_deliver).unwrap_or(0);
        let class_prefix = queue.subjects().priority_filter(p);
        let class_prefix = class_prefix.trim_end_matches('>');
        for seq in first..=floor.min(first.saturating_add(SWEEP_SCAN)) {
            match stream.get_raw_message(seq).await {
                Ok(m) if m.subject.starts_with(class_prefix) => {
                    if strand_to_dead_letter(queue, store, seq, max_deliver).await? {
                        metrics::counter!("sluice_worker_dead_letters_total", "reason" => "max_deliveries").increment(1);
                        moved += 1;
                    }
                }
                Ok(_) => {}
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(broker(&e)),
            }
        }
    }
    Ok(moved)
}

/// Moves the message at `seq` of the jobs stream to the dead letters; `false` if it is gone.
pub async fn strand_to_dead_letter(
    queue: &Queue,
    store: &Store,
    seq: u64,
    deliveries: u64,
) -> Result<bool, QueueError> {
    let broker = |e: &dyn std::fmt::Display| QueueError::Broker(e.to_string());
    let stream = queue
        .jetstream()
        .get_stream(queue.subjects().jobs_stream())
        .await
        .map_err(|e| broker(&e))?;
    let msg = match stream.get_raw_message(seq).await {
        Ok(m) => m,
        Err(e)
            if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
        {
            return Ok(false);
        }
        Err(e) => return Err(broker(&e)),
    };
    let env = JobEnvelope::decode(&msg.payload).ok();
    let (reason, tenant, job_id) = match &env {
        Some(env) => (
            DeadLetterReason::MaxDeliveries,
            env.tenant.as_str(),
            Some(env.id.to_string()),
        ),
        None => (DeadLetterReason::Undecodable, "unknown", None),
    };
    let error = format!("The server stopped delivering the message after {deliveries} deliveries.");
    if let Some(env) = &env {
        let err = JobError::new(ErrorCode::MaxAttemptsExceeded, error.clone());
        store
            .record_ended(env, JobStatus::Failed, &err)
            .await
            .map_err(|e| broker(&e))?;
    }
    let dl = DeadLetter {
        reason: reason.as_str(),
        tenant,
        job_id,
        original_subject: msg.subject.as_str(),
        stream_sequence: seq,
        attempts: deliveries,
        error: &error,
        payload: &msg.payload,
    };
    queue.dead_letter(&dl).await?;
    if let Err(e) = stream.delete_message(seq).await {
        tracing::debug!(seq, error = %e, "the max-delivered original was already gone");
    }
    tracing::warn!(
        reason = reason.as_str(),
        tenant,
        "max-delivered message dead-lettered"
    );
    Ok(true)
}

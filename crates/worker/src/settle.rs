//! Settling a delivery from its [`Outcome`]: the one place that acks, NAKs or terminates.

use std::time::Duration;

use sluice_queue::{DeadLetter, Delivery};

use crate::{Shared, job::Outcome};

pub async fn settle(shared: &Shared, delivery: Delivery, outcome: Outcome) {
    let result = match outcome {
        Outcome::Done { label } => {
            metrics::counter!("sluice_worker_jobs_total", "outcome" => label).increment(1);
            delivery.ack().await
        }
        Outcome::Retry { delay, label } => {
            metrics::counter!("sluice_worker_retries_total", "reason" => label).increment(1);
            delivery.nak(delay).await
        }
        Outcome::Release => delivery.nak(Duration::ZERO).await,
        Outcome::Defer { delay } => delivery.nak(delay).await,
        Outcome::DeadLetter {
            reason,
            error,
            tenant,
            job_id,
        } => {
            let dl = DeadLetter {
                reason,
                tenant: &tenant,
                job_id,
                original_subject: delivery.subject(),
                stream_sequence: delivery.stream_sequence(),
                attempts: delivery.delivered(),
                error: &error,
                payload: delivery.payload(),
            };
            match shared.queue.dead_letter(&dl).await {
                Ok(()) => {
                    metrics::counter!("sluice_worker_dead_letters_total", "reason" => reason)
                        .increment(1);
                    tracing::warn!(reason, tenant = %tenant, "message dead-lettered");
                    delivery.term().await
                }
                Err(e) => {
                    // Keep the message: it comes back and the move is tried again.
                    tracing::warn!(error = %e, "dead-lettering failed; the message will be redelivered");
                    delivery.nak(Duration::from_secs(1)).await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "settling a delivery failed; the broker redelivers it after ack_wait");
    }
}

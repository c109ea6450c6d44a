//! Signed webhooks, per the Standard Webhooks specification (as OpenAI's webhooks are).
//!
//! # Layout
//! - [`sign`]: `whsec_` secrets and `v1,` HMAC-SHA256 signatures.
//! - [`ssrf`]: the address policy, checked at registration and again at connect time.
//! - [`emit`]: turning a job's terminal state into one durable delivery message per target
//!   (the job's own webhook and the tenant's endpoints) on the JetStream `HOOKS` stream.
//! - [`outbox`]: where an event waits when `HOOKS` refuses it (full, unreachable), so the
//!   job's outcome never depends on the hook stream; enqueued again by the dispatcher.
//! - [`fair`]: per-tenant shares, per-endpoint concurrency and circuit breakers.
//! - [`dispatcher`]: consuming `HOOKS`, signing and POSTing each delivery with a timeout,
//!   retrying on the configured schedule (with jitter, honouring `Retry-After`), disabling
//!   an endpoint that answers `410`, dead-lettering what is exhausted, logging every attempt.
//!
//! A delivery's `webhook-id` is derived from the job and event type, so every attempt and
//! any duplicate carries the same id and receivers can deduplicate by it.

pub mod dispatcher;
pub mod emit;
pub mod fair;
pub mod outbox;
pub mod sign;
pub mod ssrf;

/// The event types.
pub const EVENT_TYPES: &[&str] = &[
    "job.completed",
    "job.failed",
    "job.cancelled",
    "job.expired",
];

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("invalid webhook URL: {0}")]
    BadUrl(&'static str),
    #[error("webhook URLs must not point at internal addresses")]
    Forbidden,
    #[error(transparent)]
    Store(#[from] sluice_store::StoreError),
    #[error(transparent)]
    Queue(#[from] sluice_queue::QueueError),
    #[error("encoding a webhook message failed: {0}")]
    Encode(#[from] serde_json::Error),
}

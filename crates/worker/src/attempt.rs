//! What to do after one delivery, decided in one place: [`decide`] turns what running the
//! delivery came to ([`Ran`]) into a [`Decision`] — the terminal state to record, what to
//! settle against the job's reservation, and what to tell the broker. It is pure (no I/O,
//! no clock, no randomness) and tested as a table below; [`crate::apply`] performs it.

use std::time::Duration;

use bytes::Bytes;
use sluice_governance::estimate::Usage;
use sluice_protocol::{DeadLetterReason, ErrorCode, JobStatus, Outcome};
use sluice_providers::{CallError, ErrorClass};
use sluice_store::JobError;

/// What running one delivery came to.
#[derive(Debug)]
pub enum Ran {
    /// The payload is not a job envelope this version can read (the decoder's own text).
    Undecodable(String),
    /// The tenant is at its in-flight cap: redeliver after the delay (not an attempt).
    Deferred(Duration),
    /// Every attempt was spent before this delivery.
    OutOfAttempts,
    /// Delivered this many times (deferrals not counted) without an outcome: a worker
    /// stopped on it each time. The backstop that keeps a message that kills its worker from
    /// coming back for ever, since crash redeliveries are not attempts.
    TooManyDeliveries(u64),
    /// The tenant's kill switch is on: a queued job of a disabled tenant does not run.
    TenantDisabled,
    /// The job's outcome was already recorded (a redelivery after a lost ack).
    AlreadyEnded(JobStatus),
    /// The job's publish was answered 503: nobody knows its id.
    RejectedPublish,
    /// Its deadline passed before it could run.
    DeadlinePassed,
    /// Cancelled while it ran: what it used, when known or estimated from what streamed.
    Cancelled(Option<Usage>),
    /// The worker is shutting down.
    Released,
    /// The upstream answered with this body.
    Answered(Bytes),
    /// The upstream call failed.
    Upstream(CallError),
    /// Redis could not be written (the start, streamed chunks, or the outcome).
    StoreUnavailable,
    /// The outcome is recorded but its webhooks could not be enqueued.
    WebhooksNotEnqueued,
}

/// What [`crate::apply`] does with a delivery.
#[derive(Debug, PartialEq)]
pub struct Decision {
    pub record: Record,
    pub settle: Settle,
    pub broker: Broker,
}

/// The job state to write before anything else.
#[derive(Debug, PartialEq)]
pub enum Record {
    Nothing,
    /// `completed` with the upstream's body; its usage is settled in the same round trip.
    Completed(Bytes),
    /// A terminal state without a result.
    Ended(JobStatus, JobError),
    /// The attempt failed and is retried: the next start numbers the next attempt.
    AttemptFailed,
    /// Already terminal: tell waiters and enqueue the webhooks again (deduplicated by id).
    Emit(JobStatus),
}

/// What to settle against the job's reservation (exactly once per job, whichever delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Not terminal (or settled with the record: [`Record::Completed`]).
    Nothing,
    /// The usage in the stored result (a redelivery of a finished job).
    Recorded,
    /// Return the reservation: nothing was used.
    Zero,
    /// Charge what admission reserved for the request: it ran, and what it used is not
    /// known (a job cancelled mid-call generated tokens nobody saw).
    Reservation,
    /// Charge this usage (a cancelled job's upstream usage, or the estimate of what it
    /// streamed).
    Used(Usage),
}

/// What to tell the broker.
#[derive(Debug, Clone, PartialEq)]
pub enum Broker {
    Ack(Outcome),
    /// NAK with the backoff of the attempt, at least `at_least`. Whether an attempt was
    /// spent is the record's business ([`Record::AttemptFailed`]), not the broker's: its
    /// delivery count also counts crash redeliveries and budget refusals.
    Retry {
        reason: RetryReason,
        at_least: Option<Duration>,
    },
    /// Keep the message: wait in the worker, then try the same step again. Not an attempt
    /// (see [`crate::hold`]).
    Wait(RetryReason),
    /// NAK with exactly this delay (a deferral: not an attempt).
    Defer(Duration),
    /// NAK at once (shutting down: another replica takes it).
    Release,
    /// Move to the dead-letter stream, then terminate.
    DeadLetter {
        reason: DeadLetterReason,
        error: String,
    },
}

/// Why a delivery is retried (the `reason` label of `sluice_worker_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    UpstreamRetry,
    /// The retry budget refused the call: no call was made, no attempt spent.
    RetryBudget,
    StoreUnavailable,
    WebhookEmit,
}

impl RetryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::UpstreamRetry => "upstream_retry",
            RetryReason::RetryBudget => "retry_budget",
            RetryReason::StoreUnavailable => "store_unavailable",
            RetryReason::WebhookEmit => "webhook_emit",
        }
    }
}

/// The decision for attempt `attempt` (1-based: one more than the attempts recorded as
/// failed) of a job allowed `max` attempts, from what running it came to.
pub fn decide(attempt: u64, max: u64, ran: Ran) -> Decision {
    let ack = |outcome, settle| Decision {
        record: Record::Nothing,
        settle,
        broker: Broker::Ack(outcome),
    };
    let retry = |reason, at_least| Decision {
        record: Record::Nothing,
        settle: Settle::Nothing,
        broker: Broker::Retry { reason, at_least },
    };
    let wait = |reason| Decision {
        record: Record::Nothing,
        settle: Settle::Nothing,
        broker: Broker::Wait(reason),
    };
    match ran {
        Ran::Undecodable(error) => Decision {
            record: Record::Nothing,
            settle: Settle::Nothing,
            broker: Broker::DeadLetter {
                reason: DeadLetterReason::Undecodable,
                error,
            },
        },
        Ran::Deferred(delay) => Decision {
            record: Record::Nothing,
            settle: Settle::Nothing,
            broker: Broker::Defer(delay),
        },
        Ran::OutOfAttempts => exhausted(attempt, max, None, None),
        Ran::TooManyDeliveries(n) => {
            let message = format!(
                "The job was delivered {n} times without an outcome (a worker stopped on it each time)."
            );
            Decision {
                record: Record::Ended(
                    JobStatus::Failed,
                    JobError::new(ErrorCode::MaxAttemptsExceeded, message.clone()),
                ),
                settle: Settle::Zero,
                broker: Broker::DeadLetter {
                    reason: DeadLetterReason::MaxDeliveries,
                    error: message,
                },
            }
        }
        Ran::TenantDisabled => Decision {
            record: Record::Ended(
                JobStatus::Failed,
                JobError::new(
                    ErrorCode::TenantDisabled,
                    "The tenant was disabled before the job could run.",
                ),
            ),
            settle: Settle::Zero,
            broker: Broker::Ack(Outcome::Failed),
        },
        // A job cancelled through ingest was emitted there.
        Ran::AlreadyEnded(JobStatus::Cancelled) => ack(Outcome::AlreadyDone, Settle::Recorded),
        Ran::AlreadyEnded(status) => Decision {
            record: Record::Emit(status),
            settle: Settle::Recorded,
            broker: Broker::Ack(Outcome::AlreadyDone),
        },
        Ran::RejectedPublish => ack(Outcome::RejectedPublish, Settle::Nothing),
        Ran::DeadlinePassed => Decision {
            record: Record::Ended(
                JobStatus::Expired,
                JobError::new(
                    ErrorCode::DeadlineExceeded,
                    "The job's deadline passed before it could run.",
                ),
            ),
            settle: Settle::Zero,
            broker: Broker::Ack(Outcome::Expired),
        },
        Ran::Cancelled(Some(used)) => ack(Outcome::Cancelled, Settle::Used(used)),
        Ran::Cancelled(None) => ack(Outcome::Cancelled, Settle::Reservation),
        Ran::Released => Decision {
            record: Record::Nothing,
            settle: Settle::Nothing,
            broker: Broker::Release,
        },
        Ran::Answered(body) => Decision {
            record: Record::Completed(body),
            settle: Settle::Nothing,
            broker: Broker::Ack(Outcome::Completed),
        },
        // No call was made: delay the attempt, do not spend it.
        Ran::Upstream(CallError::BudgetExhausted) => retry(RetryReason::RetryBudget, None),
        Ran::Upstream(e) => match e.class() {
            ErrorClass::Permanent => Decision {
                record: Record::Ended(
                    JobStatus::Failed,
                    JobError::new(
                        e.code(),
                        format!("The upstream provider rejected the request ({}).", e.code()),
                    ),
                ),
                settle: Settle::Zero,
                broker: Broker::Ack(Outcome::Failed),
            },
            ErrorClass::Retryable if attempt >= max => {
                exhausted(attempt, max, Some(e.code()), e.retry_after())
            }
            ErrorClass::Retryable => Decision {
                record: Record::AttemptFailed,
                settle: Settle::Nothing,
                broker: Broker::Retry {
                    reason: RetryReason::UpstreamRetry,
                    at_least: e.retry_after(),
                },
            },
        },
        // Infrastructure errors do not spend attempts.
        Ran::StoreUnavailable => wait(RetryReason::StoreUnavailable),
        Ran::WebhooksNotEnqueued => wait(RetryReason::WebhookEmit),
    }
}

/// `failed` after the last attempt, then the dead-letter stream. A provider that kept rate
/// limiting is reported as such, with its last `Retry-After`, so a synchronous client gets a
/// 429 it knows how to handle and is told truthfully when the provider takes work again.
fn exhausted(
    attempt: u64,
    max: u64,
    last: Option<ErrorCode>,
    retry_after: Option<Duration>,
) -> Decision {
    let message = format!(
        "The job failed after {} attempts (last error: {}).",
        attempt.min(max),
        last.map_or("the job failed on every attempt", ErrorCode::as_str)
    );
    let error = match last {
        Some(ErrorCode::UpstreamRateLimited) => {
            JobError::new(ErrorCode::UpstreamRateLimited, message.clone())
                .with_retry_after(retry_after)
        }
        // Sluice's provider key was refused on the last attempt: say so (502), so an
        // operator sees a credentials fault rather than a generic exhaustion.
        Some(ErrorCode::UpstreamUnauthorized) => {
            JobError::new(ErrorCode::UpstreamUnauthorized, message.clone())
        }
        _ => JobError::new(ErrorCode::MaxAttemptsExceeded, message.clone()),
    };
    Decision {
        record: Record::Ended(JobStatus::Failed, error),
        settle: Settle::Zero,
        broker: Broker::DeadLetter {
            reason: DeadLetterReason::MaxAttempts,
            error: message,
        },
    }
}

#[cfg(test)]
mod tests {
    use sluice_providers::ProviderError;

    use super::*;

    fn status(status: u16, retry_after: Option<Duration>) -> Ran {
        Ran::Upstream(CallError::Upstream(ProviderError::Status {
            status,
            retry_after,
        }))
    }

    fn failed(code: ErrorCode) -> Record {
        Record::Ended(
            JobStatus::Failed,
            JobError::new(code, String::new()), // compared by code below
        )
    }

    /// `(attempt, max, what ran) → (record, settle, broker)`, with a recorded error compared by
    /// status and code.
    #[test]
    fn decisions() {
        let s = Duration::from_secs;
        let retry = |reason, at_least| Broker::Retry { reason, at_least };
        let dead = |reason| move |b: &Broker| matches!(b, Broker::DeadLetter { reason: r, .. } if *r == reason);
        type Check = Box<dyn Fn(&Broker) -> bool>;
        let is = |want: Broker| -> Check { Box::new(move |b| *b == want) };
        let cases: Vec<(u64, u64, Ran, Record, Settle, Check)> = vec![
            (
                1,
                5,
                Ran::Undecodable("bad".into()),
                Record::Nothing,
                Settle::Nothing,
                Box::new(dead(DeadLetterReason::Undecodable)),
            ),
            (
                1,
                5,
                Ran::Deferred(s(3)),
                Record::Nothing,
                Settle::Nothing,
                is(Broker::Defer(s(3))),
            ),
            (
                6,
                5,
                Ran::OutOfAttempts,
                failed(ErrorCode::MaxAttemptsExceeded),
                Settle::Zero,
                Box::new(dead(DeadLetterReason::MaxAttempts)),
            ),
            (
                2,
                5,
                Ran::AlreadyEnded(JobStatus::Completed),
                Record::Emit(JobStatus::Completed),
                Settle::Recorded,
                is(Broker::Ack(Outcome::AlreadyDone)),
            ),
            (
                2,
                5,
                Ran::AlreadyEnded(JobStatus::Cancelled),
                Record::Nothing,
                Settle::Recorded,
                is(Broker::Ack(Outcome::AlreadyDone)),
            ),
            (
                1,
                5,
                Ran::RejectedPublish,
                Record::Nothing,
                Settle::Nothing,
                is(Broker::Ack(Outcome::RejectedPublish)),
            ),
            (
                1,
                5,
                Ran::DeadlinePassed,
                Record::Ended(
                    JobStatus::Expired,
                    JobError::new(ErrorCode::DeadlineExceeded, ""),
                ),
                Settle::Zero,
                is(Broker::Ack(Outcome::Expired)),
            ),
            (
                1,
                5,
                Ran::Cancelled(None),
                Record::Nothing,
                Settle::Reservation,
                is(Broker::Ack(Outcome::Cancelled)),
            ),
            (
                1,
                5,
                Ran::Cancelled(Some(Usage {
                    prompt_tokens: 9,
                    completion_tokens: 4,
                })),
                Record::Nothing,
                Settle::Used(Usage {
                    prompt_tokens: 9,
                    completion_tokens: 4,
                }),
                is(Broker::Ack(Outcome::Cancelled)),
            ),
            (
                1,
                5,
                Ran::Released,
                Record::Nothing,
                Settle::Nothing,
                is(Broker::Release),
            ),
            (
                1,
                5,
                Ran::Answered(Bytes::from_static(b"{}")),
                Record::Completed(Bytes::from_static(b"{}")),
                Settle::Nothing,
                is(Broker::Ack(Outcome::Completed)),
            ),
            (
                1,
                5,
                status(400, None),
                failed(ErrorCode::UpstreamRejected),
                Settle::Zero,
                is(Broker::Ack(Outcome::Failed)),
            ),
            (
                1,
                5,
                status(401, None),
                Record::AttemptFailed,
                Settle::Nothing,
                is(retry(RetryReason::UpstreamRetry, None)),
            ),
            (
                5,
                5,
                status(403, None),
                failed(ErrorCode::UpstreamUnauthorized),
                Settle::Zero,
                Box::new(dead(DeadLetterReason::MaxAttempts)),
            ),
            (
                5,
                5,
                status(404, None),
                failed(ErrorCode::ModelNotFound),
                Settle::Zero,
                is(Broker::Ack(Outcome::Failed)),
            ),
            (
                1,
                5,
                status(503, None),
                Record::AttemptFailed,
                Settle::Nothing,
                is(retry(RetryReason::UpstreamRetry, None)),
            ),
            (
                4,
                5,
                status(429, Some(s(2))),
                Record::AttemptFailed,
                Settle::Nothing,
                is(retry(RetryReason::UpstreamRetry, Some(s(2)))),
            ),
            (
                5,
                5,
                status(503, None),
                failed(ErrorCode::MaxAttemptsExceeded),
                Settle::Zero,
                Box::new(dead(DeadLetterReason::MaxAttempts)),
            ),
            (
                5,
                5,
                status(429, None),
                failed(ErrorCode::UpstreamRateLimited),
                Settle::Zero,
                Box::new(dead(DeadLetterReason::MaxAttempts)),
            ),
            // The provider's last Retry-After is kept (rounded up) for the client.
            (
                5,
                5,
                status(429, Some(Duration::from_millis(6500))),
                Record::Ended(
                    JobStatus::Failed,
                    JobError::new(ErrorCode::UpstreamRateLimited, "").with_retry_after(Some(s(7))),
                ),
                Settle::Zero,
                Box::new(dead(DeadLetterReason::MaxAttempts)),
            ),
            // Infrastructure errors keep the message, whatever the attempt.
            (
                1,
                5,
                Ran::StoreUnavailable,
                Record::Nothing,
                Settle::Nothing,
                is(Broker::Wait(RetryReason::StoreUnavailable)),
            ),
            (
                5,
                5,
                Ran::StoreUnavailable,
                Record::Nothing,
                Settle::Nothing,
                is(Broker::Wait(RetryReason::StoreUnavailable)),
            ),
            (
                1,
                5,
                Ran::WebhooksNotEnqueued,
                Record::Nothing,
                Settle::Nothing,
                is(Broker::Wait(RetryReason::WebhookEmit)),
            ),
            // A budget refusal delays the attempt without spending it, even the last one.
            (
                2,
                5,
                Ran::Upstream(CallError::BudgetExhausted),
                Record::Nothing,
                Settle::Nothing,
                is(retry(RetryReason::RetryBudget, None)),
            ),
            (
                5,
                5,
                Ran::Upstream(CallError::BudgetExhausted),
                Record::Nothing,
                Settle::Nothing,
                is(retry(RetryReason::RetryBudget, None)),
            ),
            (
                1,
                5,
                Ran::TooManyDeliveries(25),
                failed(ErrorCode::MaxAttemptsExceeded),
                Settle::Zero,
                Box::new(dead(DeadLetterReason::MaxDeliveries)),
            ),
            (
                1,
                5,
                Ran::TenantDisabled,
                failed(ErrorCode::TenantDisabled),
                Settle::Zero,
                is(Broker::Ack(Outcome::Failed)),
            ),
        ];
        for (attempt, max, ran, record, settle, broker) in cases {
            let what = format!("{ran:?} at {attempt}/{max}");
            let d = decide(attempt, max, ran);
            match (&d.record, &record) {
                (Record::Ended(a, ea), Record::Ended(b, eb)) => {
                    assert_eq!(
                        (a, ea.code, ea.retry_after_s),
                        (b, eb.code, eb.retry_after_s),
                        "{what}"
                    );
                }
                _ => assert_eq!(d.record, record, "{what}"),
            }
            assert_eq!(d.settle, settle, "{what}");
            assert!(broker(&d.broker), "{what}: {:?}", d.broker);
        }
    }

    #[test]
    fn an_exhausted_job_says_how_many_attempts_it_had() {
        let d = decide(7, 5, Ran::OutOfAttempts);
        let Broker::DeadLetter { error, .. } = &d.broker else {
            panic!("{d:?}")
        };
        assert_eq!(
            error,
            "The job failed after 5 attempts (last error: the job failed on every attempt)."
        );
        let Record::Ended(_, e) = &d.record else {
            panic!("{d:?}")
        };
        assert_eq!(&e.message, error);
    }
}

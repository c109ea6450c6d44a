//! How a job ends, as types every process shares: the [`ErrorCode`] stored on a job that
//! ended without a result (and turned into an HTTP status by the synchronous endpoints),
//! the worker's terminal [`Outcome`] of a delivery, and the [`DeadLetterReason`] of a
//! dead-lettered message.
//!
//! Each serializes as the exact string Sluice has always stored (`as_str()` is the same
//! string, for storage and metric labels), so records written before these types existed
//! read back unchanged.

use http::StatusCode;
use serde::{Deserialize, Serialize};

/// The `code` of a job's stored error. Written by Sluice only, never upstream text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    UpstreamTimeout,
    UpstreamUnreachable,
    UpstreamRateLimited,
    /// The upstream answered 5xx.
    UpstreamError,
    ModelNotFound,
    /// The upstream answered another 4xx.
    UpstreamRejected,
    /// The upstream refused Sluice's own credentials (401 or 403): the deployment's
    /// provider key is wrong or lacks access. A gateway fault, not the client's request,
    /// so it is answered 502 and never cached.
    UpstreamUnauthorized,
    UpstreamInvalidResponse,
    UpstreamTransport,
    UpstreamCircuitOpen,
    UpstreamUnavailable,
    RetryBudgetExhausted,
    MaxAttemptsExceeded,
    DeadlineExceeded,
    Cancelled,
    /// The tenant's kill switch was turned on while the job was queued.
    TenantDisabled,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::UpstreamTimeout,
        ErrorCode::UpstreamUnreachable,
        ErrorCode::UpstreamRateLimited,
        ErrorCode::UpstreamError,
        ErrorCode::ModelNotFound,
        ErrorCode::UpstreamRejected,
        ErrorCode::UpstreamUnauthorized,
        ErrorCode::UpstreamInvalidResponse,
        ErrorCode::UpstreamTransport,
        ErrorCode::UpstreamCircuitOpen,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::RetryBudgetExhausted,
        ErrorCode::MaxAttemptsExceeded,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Cancelled,
        ErrorCode::TenantDisabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamUnreachable => "upstream_unreachable",
            ErrorCode::UpstreamRateLimited => "upstream_rate_limited",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::UpstreamRejected => "upstream_rejected",
            ErrorCode::UpstreamUnauthorized => "upstream_unauthorized",
            ErrorCode::UpstreamInvalidResponse => "upstream_invalid_response",
            ErrorCode::UpstreamTransport => "upstream_transport",
            ErrorCode::UpstreamCircuitOpen => "upstream_circuit_open",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::RetryBudgetExhausted => "retry_budget_exhausted",
            ErrorCode::MaxAttemptsExceeded => "max_attempts_exceeded",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::TenantDisabled => "tenant_disabled",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The error's `type` in OpenAI's vocabulary, stored beside the code.
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::DeadlineExceeded => "expired",
            // As ingest answers a disabled tenant's request.
            ErrorCode::TenantDisabled => "permission_error",
            ErrorCode::UpstreamTimeout
            | ErrorCode::UpstreamUnreachable
            | ErrorCode::UpstreamRateLimited
            | ErrorCode::UpstreamError
            | ErrorCode::ModelNotFound
            | ErrorCode::UpstreamRejected
            | ErrorCode::UpstreamUnauthorized
            | ErrorCode::UpstreamInvalidResponse
            | ErrorCode::UpstreamTransport
            | ErrorCode::UpstreamCircuitOpen
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::RetryBudgetExhausted
            | ErrorCode::MaxAttemptsExceeded => "upstream_error",
        }
    }

    /// The status a synchronous client gets for a job that ended with this code: what an
    /// OpenAI SDK expects for the same failure when calling the provider directly.
    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::ModelNotFound => StatusCode::NOT_FOUND,
            ErrorCode::UpstreamRejected => StatusCode::BAD_REQUEST,
            ErrorCode::UpstreamRateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Cancelled => StatusCode::CONFLICT,
            ErrorCode::TenantDisabled => StatusCode::FORBIDDEN,
            ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::UpstreamTimeout
            | ErrorCode::UpstreamUnreachable
            | ErrorCode::UpstreamError
            | ErrorCode::UpstreamUnauthorized
            | ErrorCode::UpstreamInvalidResponse
            | ErrorCode::UpstreamTransport
            | ErrorCode::UpstreamCircuitOpen
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::RetryBudgetExhausted
            | ErrorCode::MaxAttemptsExceeded => StatusCode::BAD_GATEWAY,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a worker finished with a delivery it acknowledged (the `outcome` label of
/// `sluice_worker_jobs_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream answered and the result is recorded.
    Completed,
    /// A redelivery of a job whose outcome was already recorded.
    AlreadyDone,
    /// The job's publish was answered 503: the client never got its id.
    RejectedPublish,
    /// Cancelled while it ran.
    Cancelled,
    /// Its deadline passed before it could run.
    Expired,
    /// A permanent upstream error.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::AlreadyDone => "already_done",
            Outcome::RejectedPublish => "rejected_publish",
            Outcome::Cancelled => "cancelled",
            Outcome::Expired => "expired",
            Outcome::Failed => "failed",
        }
    }
}

/// Why a message was dead-lettered: a token of its DLQ subject and its `Sluice-Reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// The payload is not a job envelope this version can read.
    Undecodable,
    /// The job failed on every attempt the worker gives it.
    MaxAttempts,
    /// The broker stopped delivering it (its server-side delivery limit).
    MaxDeliveries,
    /// A webhook delivery that failed on every attempt.
    WebhookExhausted,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Undecodable => "undecodable",
            DeadLetterReason::MaxAttempts => "max_attempts",
            DeadLetterReason::MaxDeliveries => "max_deliveries",
            DeadLetterReason::WebhookExhausted => "webhook_exhausted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_stored_strings() {
        for c in ErrorCode::ALL {
            assert_eq!(serde_json::to_string(&c).ok(), Some(format!("\"{c}\"")));
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }

    #[test]
    fn failed_jobs_map_to_the_status_an_sdk_expects() {
        assert_eq!(
            ErrorCode::ModelNotFound.http_status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ErrorCode::UpstreamRateLimited.http_status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            ErrorCode::MaxAttemptsExceeded.http_status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(ErrorCode::DeadlineExceeded.error_type(), "expired");
    }
}

//! Upstream failures, classified once.
//!
//! Retryable: timeouts, connection errors, 408, 409, 429 and 5xx; permanent: every other
//! 4xx (bad request, content filter, unknown model) and a 2xx body that is not JSON. The
//! error text is Sluice's own: upstream bodies never travel further than a debug log.

use std::time::Duration;

use sluice_protocol::ErrorCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Retryable,
    Permanent,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("upstream timed out")]
    Timeout,
    #[error("could not connect to upstream")]
    Connect,
    #[error("upstream answered {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("upstream response was not valid JSON")]
    InvalidResponse,
    #[error("upstream request failed")]
    Transport,
    /// The stream had started when the upstream sent an error event (`data: {"error": …}`),
    /// as OpenAI reports a failure mid-generation.
    #[error("upstream stream failed mid-way")]
    StreamFailed,
}

impl ProviderError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ProviderError::Timeout
            | ProviderError::Connect
            | ProviderError::Transport
            | ProviderError::StreamFailed => ErrorClass::Retryable,
            ProviderError::Status { status, .. } => match status {
                // 401/403: this deployment's provider key is refused. Another deployment or
                // a fallback may hold a good one, and the breaker should see the failure.
                401 | 403 | 408 | 409 | 429 => ErrorClass::Retryable,
                s if *s >= 500 => ErrorClass::Retryable,
                _ => ErrorClass::Permanent,
            },
            ProviderError::InvalidResponse => ErrorClass::Permanent,
        }
    }

    /// What the upstream asked us to wait, if anything.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The stored error code; its `as_str()` is the metric label.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProviderError::Timeout => ErrorCode::UpstreamTimeout,
            ProviderError::Connect => ErrorCode::UpstreamUnreachable,
            ProviderError::Status { status: 429, .. } => ErrorCode::UpstreamRateLimited,
            ProviderError::Status { status, .. } if *status >= 500 => ErrorCode::UpstreamError,
            ProviderError::StreamFailed => ErrorCode::UpstreamError,
            ProviderError::Status { status: 404, .. } => ErrorCode::ModelNotFound,
            ProviderError::Status {
                status: 401 | 403, ..
            } => ErrorCode::UpstreamUnauthorized,
            ProviderError::Status { .. } => ErrorCode::UpstreamRejected,
            ProviderError::InvalidResponse => ErrorCode::UpstreamInvalidResponse,
            ProviderError::Transport => ErrorCode::UpstreamTransport,
        }
    }
}

/// Parses `Retry-After` as seconds (the HTTP-date form is rare for APIs and is ignored).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let s = |status| ProviderError::Status {
            status,
            retry_after: None,
        };
        assert_eq!(s(429).class(), ErrorClass::Retryable);
        assert_eq!(s(503).class(), ErrorClass::Retryable);
        assert_eq!(s(400).class(), ErrorClass::Permanent);
        assert_eq!(s(404).class(), ErrorClass::Permanent);
        for refused in [401, 403] {
            assert_eq!(s(refused).class(), ErrorClass::Retryable);
            assert_eq!(s(refused).code(), ErrorCode::UpstreamUnauthorized);
        }
        assert_eq!(s(400).code(), ErrorCode::UpstreamRejected);
        assert_eq!(ProviderError::Timeout.class(), ErrorClass::Retryable);
        assert_eq!(
            ProviderError::InvalidResponse.class(),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("99999"), Some(Duration::from_secs(3600)));
    }
}

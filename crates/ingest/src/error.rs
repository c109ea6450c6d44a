//! The API error: one type, one `IntoResponse`, OpenAI's error shape everywhere.
//!
//! 5xx bodies are opaque; the detail stays in the log line the trace layer writes. Each
//! variant has a low-cardinality label for the `sluice_ingest_errors_total` metric.
//!
//! Every error also tells the client whether retrying can help ([`Retry`]): the official
//! OpenAI SDKs retry 408/409/429/5xx on their own (twice by default) unless the answer says
//! `x-should-retry: false`, and wait the `Retry-After` when it is at most a minute. A job
//! that failed after the worker's own attempts says `false`, so the SDK does not run the whole
//! chain again; a refusal that lifts says when (see docs/retries.md).

use axum::{
    Json,
    http::{
        HeaderValue, StatusCode,
        header::{CONNECTION, RETRY_AFTER},
    },
    response::{IntoResponse, Response},
};
use serde_json::json;
use sluice_governance::Dimension;
use sluice_protocol::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    /// `GET /v1/models/{id}` for a model this deployment does not serve.
    #[error("model not found")]
    ModelNotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the queue is not accepting work right now")]
    QueueUnavailable { retry_after_s: u64, reason: String },
    #[error("the job store is unavailable")]
    StoreUnavailable { retry_after_s: u64, reason: String },
    #[error("too many concurrent requests")]
    Overloaded { retry_after_s: u64 },
    #[error("{0}")]
    Conflict(String),
    /// A job the client waited for synchronously ended without a result. `code` is the
    /// job's stored error code (written by Sluice, never upstream text); `retry_after_s` the
    /// provider's last `Retry-After`, stored with it.
    #[error("the job ended without a result: {code}")]
    JobFailed {
        code: ErrorCode,
        message: String,
        retry_after_s: Option<u64>,
    },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("rate limit {policy} exceeded")]
    RateLimited {
        dimension: Dimension,
        policy: String,
        retry_after_s: u64,
        headers: Vec<(&'static str, String)>,
    },
    #[error("budget exhausted")]
    BudgetExhausted { cost: bool, retry_after_s: u64 },
    #[error("loop detected")]
    LoopDetected { retry_after_s: u64 },
    #[error("tenant disabled")]
    TenantDisabled,
    #[error("{priority} work is being shed")]
    Shed {
        priority: &'static str,
        retry_after_s: u64,
    },
    #[error("idempotency key reused with a different body")]
    IdempotencyConflict,
    /// The key's first request is still being published (past the wait for its outcome).
    #[error("idempotency key in use by a request in progress")]
    IdempotencyInProgress { retry_after_s: u64 },
    #[error("admission state unavailable: {reason}")]
    AdmissionUnavailable { retry_after_s: u64, reason: String },
    #[error("admin key required")]
    Forbidden,
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("too many synchronous waits for this tenant")]
    TooManySyncWaits { retry_after_s: u64 },
    #[error("too many event streams")]
    TooManyStreams { retry_after_s: u64 },
}

impl ApiError {
    pub fn invalid(
        message: impl Into<String>,
        param: Option<&str>,
        code: &'static str,
    ) -> ApiError {
        ApiError::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_string),
            code,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) | ApiError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::QueueUnavailable { .. }
            | ApiError::StoreUnavailable { .. }
            | ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::JobFailed { code, .. } => code.http_status(),
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::RateLimited { .. }
            | ApiError::BudgetExhausted { .. }
            | ApiError::LoopDetected { .. }
            | ApiError::Shed { .. }
            | ApiError::TooManySyncWaits { .. }
            | ApiError::TooManyStreams { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TenantDisabled | ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::IdempotencyConflict => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::IdempotencyInProgress { .. } => StatusCode::CONFLICT,
            ApiError::AdmissionUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Whether a client's retry can help, and when.
    pub fn retry(&self) -> Retry {
        let after = |s: u64| Retry::After(s);
        match self {
            ApiError::InvalidRequest { .. }
            | ApiError::Unauthorized
            | ApiError::NotFound(_)
            | ApiError::ModelNotFound(_)
            | ApiError::MethodNotAllowed
            | ApiError::PayloadTooLarge { .. }
            | ApiError::Conflict(_)
            | ApiError::TenantDisabled
            | ApiError::IdempotencyConflict
            | ApiError::Forbidden => Retry::Never,
            // The worker already spent its attempts (and its calls on other deployments); a
            // client retry would run that whole chain again. When the provider said when it
            // takes work again, the client is told so, truthfully.
            ApiError::JobFailed {
                retry_after_s: None,
                ..
            } => Retry::Never,
            ApiError::JobFailed {
                retry_after_s: Some(s),
                ..
            } => Retry::NeverBefore(*s),
            // Nothing is known about whether it would recur: the SDK's own policy applies.
            ApiError::Internal(_) => Retry::Unknown,
            // Sending the same prompt again is the loop; the window is still truthful.
            ApiError::LoopDetected { retry_after_s } => Retry::NeverBefore(*retry_after_s),
            ApiError::QueueUnavailable { retry_after_s, .. }
            | ApiError::StoreUnavailable { retry_after_s, .. }
            | ApiError::Overloaded { retry_after_s }
            | ApiError::RateLimited { retry_after_s, .. }
            | ApiError::BudgetExhausted { retry_after_s, .. }
            | ApiError::Shed { retry_after_s, .. }
            | ApiError::IdempotencyInProgress { retry_after_s }
            | ApiError::TooManySyncWaits { retry_after_s }
            | ApiError::TooManyStreams { retry_after_s }
            | ApiError::AdmissionUnavailable { retry_after_s, .. } => after(*retry_after_s),
            // The body was too slow: the same client sending it again may well succeed.
            ApiError::RequestTimeout => Retry::Unknown,
        }
    }

    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::QueueUnavailable { .. } => "queue_unavailable",
            ApiError::StoreUnavailable { .. } => "store_unavailable",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::Conflict(_) => "conflict",
            ApiError::JobFailed { .. } => "job_failed",
            ApiError::Internal(_) => "internal",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::BudgetExhausted { .. } => "budget_exhausted",
            ApiError::LoopDetected { .. } => "loop_detected",
            ApiError::TenantDisabled => "tenant_disabled",
            ApiError::Shed { .. } => "shed",
            ApiError::IdempotencyConflict => "idempotency_conflict",
            ApiError::IdempotencyInProgress { .. } => "idempotency_in_progress",
            ApiError::AdmissionUnavailable { .. } => "admission_unavailable",
            ApiError::Forbidden => "forbidden",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::TooManySyncWaits { .. } => "too_many_sync_waits",
            ApiError::TooManyStreams { .. } => "too_many_streams",
        }
    }

    /// The error's `type`, as the OpenAI API names it for the same status: `server_error` for
    /// every 5xx; for a 429, `insufficient_quota` when a budget is spent, else the kind of
    /// limit (`tokens`, or `requests` for every other refusal); `invalid_request_error` for
    /// every other 4xx (OpenAI uses it for 401, 403 and 404 too). The whole table, with
    /// codes, is in docs/compat.md.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::BudgetExhausted { .. } => "insufficient_quota",
            ApiError::RateLimited { policy, .. } if policy.ends_with("-tokens") => "tokens",
            _ => match self.status() {
                s if s.is_server_error() => "server_error",
                StatusCode::TOO_MANY_REQUESTS => "requests",
                _ => "invalid_request_error",
            },
        }
    }

    /// The OpenAI error object `{"error": {message, type, param, code}}`, also sent as the
    /// last event of a stream that fails after it started.
    pub fn body(&self) -> serde_json::Value {
        let (message, param, code): (String, Option<&str>, Option<&str>) = match self {
            ApiError::InvalidRequest {
                message,
                param,
                code,
            } => (
                message.clone(),
                param.as_deref(),
                Some(code),
            ),
            ApiError::Unauthorized => (
                "Missing or invalid API key. Send it as 'Authorization: Bearer <key>'.".into(),
                None,
                Some("invalid_api_key"),
            ),
            ApiError::NotFound(what) => (
                what.clone(),
                None,
                Some("not_found"),
            ),
            ApiError::ModelNotFound(model) => (
                format!(
                    "The model '{}' does not exist or you do not have access to it.",
                    crate::validate::truncate(model, 256)
                ),
                Some("model"),
                Some("model_not_found"),
            ),
            ApiError::MethodNotAllowed => (
                "Method not allowed for this URL.".into(),
                None,
                Some("method_not_allowed"),
            ),
            ApiError::PayloadTooLarge { limit } => (
                format!("Request body is larger than the limit of {limit} bytes."),
                None,
                Some("request_too_large"),
            ),
            ApiError::QueueUnavailable { .. } => (
                "The queue is not accepting work right now; retry after the indicated delay."
                    .into(),
                None,
                Some("queue_unavailable"),
            ),
            ApiError::StoreUnavailable { .. } => (
                "The job store is unavailable; retry after the indicated delay.".into(),
                None,
                Some("store_unavailable"),
            ),
            ApiError::Overloaded { .. } => (
                "Too many concurrent requests; retry after the indicated delay.".into(),
                None,
                Some("overloaded"),
            ),
            ApiError::Conflict(what) => (
                what.clone(),
                None,
                Some("conflict"),
            ),
            ApiError::JobFailed { code, message, .. } => {
                (message.clone(), None, Some(code.as_str()))
            }
            ApiError::Internal(_) => (
                "Internal error.".into(),
                None,
                Some("internal_error"),
            ),
            ApiError::RateLimited {
                dimension, policy, ..
            } => (
                format!("Rate limit '{policy}' exceeded; retry after the indicated delay."),
                None,
                Some(rate_code(dimension)),
            ),
            ApiError::BudgetExhausted { cost, .. } => (
                format!(
                    "The tenant's {} budget for this period is exhausted; it resets after the indicated delay.",
                    if *cost { "cost" } else { "token" }
                ),
                None,
                Some("budget_exhausted"),
            ),
            ApiError::LoopDetected { .. } => (
                "The same prompt was sent too many times in the last minute on this chain.".into(),
                None,
                Some("loop_detected"),
            ),
            ApiError::TenantDisabled => (
                "This tenant is disabled.".into(),
                None,
                Some("tenant_disabled"),
            ),
            ApiError::Shed { priority, .. } => (
                format!(
                    "The queue is saturated; '{priority}' priority work is not being accepted right now."
                ),
                Some("priority"),
                Some("queue_saturated"),
            ),
            ApiError::IdempotencyConflict => (
                "This Idempotency-Key was already used with a different request body.".into(),
                None,
                Some("idempotency_key_reused"),
            ),
            ApiError::IdempotencyInProgress { .. } => (
                "A request with this Idempotency-Key is still in progress; retry after the indicated delay.".into(),
                None,
                Some("idempotency_key_in_use"),
            ),
            ApiError::AdmissionUnavailable { .. } => (
                "Rate limits cannot be checked right now; retry after the indicated delay.".into(),
                None,
                Some("admission_unavailable"),
            ),
            ApiError::Forbidden => (
                "This route needs the admin key.".into(),
                None,
                Some("admin_key_required"),
            ),
            ApiError::RequestTimeout => (
                "The request body did not arrive within the time limit.".into(),
                None,
                Some("request_timeout"),
            ),
            ApiError::TooManySyncWaits { .. } => (
                "This tenant has too many synchronous requests waiting; retry after the indicated delay, or submit through POST /v1/jobs.".into(),
                None,
                Some("too_many_sync_waits"),
            ),
            ApiError::TooManyStreams { .. } => (
                "Too many event streams are open; retry after the indicated delay.".into(),
                None,
                Some("too_many_streams"),
            ),
        };
        let kind = self.error_type();
        json!({ "error": { "message": message, "type": kind, "param": param, "code": code } })
    }
}

/// What an error tells the client about retrying, as the `x-should-retry` and `Retry-After`
/// headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Retrying the same request cannot succeed (or Sluice already retried it).
    Never,
    /// Not before this many seconds, and not automatically.
    NeverBefore(u64),
    /// Retrying after this many seconds can succeed.
    After(u64),
    /// No advice: the client's own policy applies.
    Unknown,
}

/// Longest `Retry-After` the official SDKs wait for; a longer one they replace with their
/// own short backoff, which would only be refused again, so it is sent with
/// `x-should-retry: false`.
pub const SDK_MAX_RETRY_AFTER_S: u64 = 60;

/// The header the official SDKs read before their own retry decision.
pub const SHOULD_RETRY: &str = "x-should-retry";

impl Retry {
    fn apply(self, headers: &mut axum::http::HeaderMap) {
        let (should, after) = match self {
            Retry::Never => (Some(false), None),
            Retry::NeverBefore(s) => (Some(false), Some(s)),
            Retry::After(s) => (Some(s <= SDK_MAX_RETRY_AFTER_S), Some(s)),
            Retry::Unknown => (None, None),
        };
        if let Some(should) = should {
            headers.insert(
                SHOULD_RETRY,
                HeaderValue::from_static(if should { "true" } else { "false" }),
            );
        }
        if let Some(s) = after {
            headers.insert(RETRY_AFTER, HeaderValue::from(s));
        }
    }
}

impl From<sluice_webhooks::HookError> for ApiError {
    fn from(e: sluice_webhooks::HookError) -> ApiError {
        use sluice_webhooks::HookError;
        match e {
            HookError::BadUrl(why) => ApiError::invalid(
                format!("Invalid webhook URL: {why}."),
                Some("url"),
                "invalid_url",
            ),
            HookError::Forbidden => ApiError::invalid(
                "The webhook URL resolves to an internal address, which is not allowed.",
                Some("url"),
                "url_not_allowed",
            ),
            HookError::Store(e) => ApiError::StoreUnavailable {
                retry_after_s: 1,
                reason: e.to_string(),
            },
            HookError::Queue(e) => ApiError::QueueUnavailable {
                retry_after_s: 1,
                reason: e.to_string(),
            },
            HookError::Encode(e) => ApiError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("sluice_ingest_errors_total", "kind" => self.label()).increment(1);
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(kind = self.label(), detail = %self, "request failed");
        }
        let retry = self.retry();
        if let ApiError::RateLimited { dimension, .. } = &self {
            metrics::counter!("sluice_ingest_rate_limited_total", "dimension" => dimension.as_str()).increment(1);
        }
        let extra = match &self {
            ApiError::RateLimited { headers, .. } => headers.clone(),
            _ => Vec::new(),
        };
        let mut resp = (status, Json(self.body())).into_response();
        for (name, value) in extra {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        retry.apply(resp.headers_mut());
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: the connection cannot be reused.
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// The error `code` of a rate-limit refusal names its dimension.
fn rate_code(dimension: &Dimension) -> &'static str {
    match dimension {
        Dimension::Global => "rate_limit_global",
        Dimension::Tenant => "rate_limit_tenant",
        Dimension::Key => "rate_limit_key",
        Dimension::Model => "rate_limit_model",
        Dimension::Agent => "rate_limit_agent",
        Dimension::Chain => "rate_limit_chain",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_opaque() {
        let body = ApiError::Internal("redis said: WRONGTYPE at key sluice:job:x".into()).body();
        let text = body.to_string();
        assert!(!text.contains("WRONGTYPE"), "{text}");
        assert_eq!(body["error"]["type"], "server_error");
    }

    #[test]
    fn failed_jobs_answer_with_their_code_and_type() {
        let f = |code| ApiError::JobFailed {
            code,
            message: "m".into(),
            retry_after_s: None,
        };
        let limited = f(ErrorCode::UpstreamRateLimited);
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.body()["error"]["type"], "requests");
        assert_eq!(limited.body()["error"]["code"], "upstream_rate_limited");
        let exhausted = f(ErrorCode::MaxAttemptsExceeded);
        assert_eq!(exhausted.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(exhausted.body()["error"]["type"], "server_error");
        assert_eq!(
            f(ErrorCode::ModelNotFound).body()["error"]["type"],
            "invalid_request_error"
        );
    }

    /// Every error's status, `type` and `code`: the table docs/compat.md lists. The types are
    /// the OpenAI API's for the same status.
    #[test]
    fn status_type_and_code_of_every_error() {
        let rate = |policy: &str| ApiError::RateLimited {
            dimension: Dimension::Tenant,
            policy: policy.into(),
            retry_after_s: 1,
            headers: Vec::new(),
        };
        let job = |code| ApiError::JobFailed {
            code,
            message: "m".into(),
            retry_after_s: None,
        };
        let table: Vec<(ApiError, u16, &str, &str)> = vec![
            (
                ApiError::invalid("m", Some("n"), "invalid_value"),
                400,
                "invalid_request_error",
                "invalid_value",
            ),
            (
                ApiError::Unauthorized,
                401,
                "invalid_request_error",
                "invalid_api_key",
            ),
            (
                ApiError::TenantDisabled,
                403,
                "invalid_request_error",
                "tenant_disabled",
            ),
            (
                ApiError::Forbidden,
                403,
                "invalid_request_error",
                "admin_key_required",
            ),
            (
                ApiError::NotFound("m".into()),
                404,
                "invalid_request_error",
                "not_found",
            ),
            (
                ApiError::ModelNotFound("m".into()),
                404,
                "invalid_request_error",
                "model_not_found",
            ),
            (
                ApiError::MethodNotAllowed,
                405,
                "invalid_request_error",
                "method_not_allowed",
            ),
            (
                ApiError::RequestTimeout,
                408,
                "invalid_request_error",
                "request_timeout",
            ),
            (
                ApiError::Conflict("m".into()),
                409,
                "invalid_request_error",
                "conflict",
            ),
            (
                ApiError::IdempotencyInProgress { retry_after_s: 1 },
                409,
                "invalid_request_error",
                "idempotency_key_in_use",
            ),
            (
                ApiError::PayloadTooLarge { limit: 1 },
                413,
                "invalid_request_error",
                "request_too_large",
            ),
            (
                ApiError::IdempotencyConflict,
                422,
                "invalid_request_error",
                "idempotency_key_reused",
            ),
            (
                rate("tenant-requests"),
                429,
                "requests",
                "rate_limit_tenant",
            ),
            (rate("tenant-tokens"), 429, "tokens", "rate_limit_tenant"),
            (
                ApiError::BudgetExhausted {
                    cost: false,
                    retry_after_s: 1,
                },
                429,
                "insufficient_quota",
                "budget_exhausted",
            ),
            (
                ApiError::LoopDetected { retry_after_s: 1 },
                429,
                "requests",
                "loop_detected",
            ),
            (
                ApiError::Shed {
                    priority: "low",
                    retry_after_s: 1,
                },
                429,
                "requests",
                "queue_saturated",
            ),
            (
                ApiError::TooManySyncWaits { retry_after_s: 1 },
                429,
                "requests",
                "too_many_sync_waits",
            ),
            (
                ApiError::TooManyStreams { retry_after_s: 1 },
                429,
                "requests",
                "too_many_streams",
            ),
            (
                ApiError::Internal("x".into()),
                500,
                "server_error",
                "internal_error",
            ),
            (
                ApiError::QueueUnavailable {
                    retry_after_s: 1,
                    reason: "x".into(),
                },
                503,
                "server_error",
                "queue_unavailable",
            ),
            (
                ApiError::StoreUnavailable {
                    retry_after_s: 1,
                    reason: "x".into(),
                },
                503,
                "server_error",
                "store_unavailable",
            ),
            (
                ApiError::Overloaded { retry_after_s: 1 },
                503,
                "server_error",
                "overloaded",
            ),
            (
                ApiError::AdmissionUnavailable {
                    retry_after_s: 1,
                    reason: "x".into(),
                },
                503,
                "server_error",
                "admission_unavailable",
            ),
        ];
        for (e, status, kind, code) in table {
            let body = e.body();
            assert_eq!(
                (
                    e.status().as_u16(),
                    body["error"]["type"].as_str(),
                    body["error"]["code"].as_str()
                ),
                (status, Some(kind), Some(code)),
                "{e:?}"
            );
        }
        // A failed job: the status an SDK expects for the same upstream failure.
        for code in ErrorCode::ALL {
            let e = job(code);
            let status = code.http_status();
            let want = match status.as_u16() {
                429 => "requests",
                s if s >= 500 => "server_error",
                _ => "invalid_request_error",
            };
            assert_eq!(e.status(), status);
            assert_eq!(e.body()["error"]["type"], want, "{code}");
            assert_eq!(e.body()["error"]["code"], code.as_str());
        }
    }

    #[test]
    fn unavailable_carries_retry_after() {
        let resp = ApiError::QueueUnavailable {
            retry_after_s: 3,
            reason: "x".into(),
        }
        .into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[RETRY_AFTER], "3");
        assert_eq!(resp.headers()[SHOULD_RETRY], "true");
    }

    #[test]
    fn retry_advice_says_what_sluice_already_did() {
        let headers = |e: ApiError| e.into_response().headers().clone();
        // A job that failed after the worker's attempts: never again, no Retry-After.
        let h = headers(ApiError::JobFailed {
            code: sluice_protocol::ErrorCode::UpstreamRateLimited,
            message: "m".into(),
            retry_after_s: None,
        });
        assert_eq!(h[SHOULD_RETRY], "false");
        assert!(h.get(RETRY_AFTER).is_none());
        // ... unless the provider said when it takes work again: then that, truthfully.
        let h = headers(ApiError::JobFailed {
            code: sluice_protocol::ErrorCode::UpstreamRateLimited,
            message: "m".into(),
            retry_after_s: Some(7),
        });
        assert_eq!(h[SHOULD_RETRY], "false");
        assert_eq!(h[RETRY_AFTER], "7");
        // A window the SDK waits for, and one it would not.
        let h = headers(ApiError::Shed {
            priority: "low",
            retry_after_s: 2,
        });
        assert_eq!(
            (&h[SHOULD_RETRY], &h[RETRY_AFTER]),
            (&"true".parse().unwrap(), &"2".parse().unwrap())
        );
        let h = headers(ApiError::BudgetExhausted {
            cost: false,
            retry_after_s: 3600,
        });
        assert_eq!(h[SHOULD_RETRY], "false");
        assert_eq!(h[RETRY_AFTER], "3600");
        let h = headers(ApiError::LoopDetected { retry_after_s: 5 });
        assert_eq!(h[SHOULD_RETRY], "false");
        assert_eq!(headers(ApiError::Unauthorized)[SHOULD_RETRY], "false");
        assert!(
            headers(ApiError::Internal("x".into()))
                .get(SHOULD_RETRY)
                .is_none()
        );
    }
}

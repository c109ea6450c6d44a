//! The API error: every failure the simulator answers, in OpenAI's error shape
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An answer other than success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request could not be understood (bad JSON, missing fields, bad directive).
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// The requested model is not in [`crate::SimConfig::models`].
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// No route matches.
    #[error("Unknown request URL: {0}")]
    UnknownUrl(String),
    /// A response could not be rendered (should not happen).
    #[error("internal error: {0}")]
    Internal(String),
    /// A failure injected by the configured rates or a directive; `status` is 400..=599.
    #[error("injected status {status}")]
    Injected {
        status: StatusCode,
        retry_after_s: u64,
    },
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::ModelNotFound(_) | Self::UnknownUrl(_) => StatusCode::NOT_FOUND,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Injected { status, .. } => *status,
        }
    }
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// OpenAI's `type` and `code` for an arbitrary status, and a message in its style.
fn injected_shape(status: StatusCode) -> (&'static str, Option<&'static str>, &'static str) {
    match status.as_u16() {
        429 => (
            "requests",
            Some("rate_limit_exceeded"),
            "Rate limit reached for requests (simulated).",
        ),
        401 => (
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided (simulated).",
        ),
        403 => (
            "permission_error",
            None,
            "You are not allowed to make this request (simulated).",
        ),
        404 => (
            "invalid_request_error",
            Some("not_found"),
            "The resource was not found (simulated).",
        ),
        400..=499 => (
            "invalid_request_error",
            None,
            "The request was refused (simulated).",
        ),
        503 => (
            "server_error",
            Some("overloaded"),
            "The engine is currently overloaded (simulated).",
        ),
        _ => (
            "server_error",
            None,
            "The server had an error while processing your request (simulated).",
        ),
    }
}

impl ApiError {
    /// The error object, and the `Retry-After` seconds to send with it.
    fn parts(&self) -> (ErrorObject<'_>, Option<u64>) {
        match self {
            Self::InvalidRequest { message, param } => (
                ErrorObject {
                    message: message.clone(),
                    kind: "invalid_request_error",
                    param: *param,
                    code: None,
                },
                None,
            ),
            Self::ModelNotFound(_) => (
                ErrorObject {
                    message: self.to_string(),
                    kind: "invalid_request_error",
                    param: Some("model"),
                    code: Some("model_not_found"),
                },
                None,
            ),
            Self::UnknownUrl(_) => (
                ErrorObject {
                    message: self.to_string(),
                    kind: "invalid_request_error",
                    param: None,
                    code: None,
                },
                None,
            ),
            Self::Internal(_) => (
                ErrorObject {
                    message: "The server had an error while processing your request.".to_owned(),
                    kind: "server_error",
                    param: None,
                    code: None,
                },
                None,
            ),
            Self::Injected {
                status,
                retry_after_s,
            } => {
                let (kind, code, message) = injected_shape(*status);
                let retry = (*status == StatusCode::TOO_MANY_REQUESTS).then_some(*retry_after_s);
                (
                    ErrorObject {
                        message: message.to_owned(),
                        kind,
                        param: None,
                        code,
                    },
                    retry,
                )
            }
        }
    }

    /// The body `{"error": {…}}`, also the event that ends a stream failing mid-way.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(ErrorEnvelope {
            error: self.parts().0,
        })
        .unwrap_or(serde_json::Value::Null)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (object, retry_after) = self.parts();
        let mut response = (status, Json(ErrorEnvelope { error: object })).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_variant() {
        assert_eq!(ApiError::invalid("x").status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            ApiError::ModelNotFound("m".into()).status(),
            StatusCode::NOT_FOUND
        );
        let injected = ApiError::Injected {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after_s: 1,
        };
        assert_eq!(injected.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn only_429_carries_retry_after() {
        let r = ApiError::Injected {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after_s: 7,
        }
        .into_response();
        assert_eq!(
            r.headers()
                .get(header::RETRY_AFTER)
                .map(HeaderValue::as_bytes),
            Some(&b"7"[..])
        );
        let r = ApiError::Injected {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            retry_after_s: 7,
        }
        .into_response();
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }
}

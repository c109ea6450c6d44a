//! HTTP handlers, one module per endpoint group.
//!
//! Each `/v1` handler opens a [`crate::counters::RequestGuard`] first, validates the request
//! (answering `400`/`404` at once), asks [`crate::SimState`] for a plan (delay and injected
//! failure), sleeps, then answers. The guard completes when the response is handed over.

pub mod admin;
pub mod chat;
pub mod embeddings;
pub mod models;

use std::time::Duration;

use axum::http::Uri;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Parses a JSON body into an OpenAI-shaped `400` on failure.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("Invalid request body: {e}")))
}

/// Sleeps unless there is nothing to wait for (a zero sleep would still touch the timer).
pub(crate) async fn pause(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// Any unrouted path: a `404` in OpenAI's shape.
pub async fn fallback(uri: Uri) -> ApiError {
    ApiError::UnknownUrl(uri.path().to_owned())
}

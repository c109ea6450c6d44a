//! Simulator control for tests and benchmarks: `GET /sim/counters`, `POST /sim/reset`,
//! `GET`/`PUT /sim/config`. Not counted in the request counters.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::config::SimConfig;
use crate::counters::Counters;
use crate::error::ApiError;
use crate::handlers::parse_json;
use crate::state::SimState;

pub async fn counters(State(state): State<SimState>) -> Json<Counters> {
    Json(state.counters())
}

/// Zeroes the counters and forgets `fail_first` keys; answers `204`.
pub async fn reset(State(state): State<SimState>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}

pub async fn get_config(State(state): State<SimState>) -> Json<SimConfig> {
    Json(state.config())
}

/// Replaces the configuration with the JSON body (missing fields take their defaults) and
/// answers with the configuration now in force.
pub async fn put_config(State(state): State<SimState>, body: Bytes) -> Response {
    let result = parse_json::<SimConfig>(&body).and_then(|cfg| {
        state
            .set_config(cfg)
            .map_err(|e| ApiError::invalid(e.to_string()))
    });
    match result {
        Ok(()) => Json(state.config()).into_response(),
        Err(e) => e.into_response(),
    }
}

//! `GET /v1/models`: the configured models.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use crate::counters::Endpoint;
use crate::error::ApiError;
use crate::openai::{ModelEntry, ModelList};
use crate::state::SimState;

/// A fixed `created` (2024-01-01) so the listing is stable.
const CREATED: u64 = 1_704_067_200;

pub async fn list(State(state): State<SimState>) -> Response {
    let guard = state.begin(Endpoint::Models);
    let live = state.live();
    let data = live
        .cfg
        .models
        .iter()
        .map(|id| ModelEntry {
            id,
            object: "model",
            created: CREATED,
            owned_by: "sluice-sim",
        })
        .collect();
    let response = Json(ModelList {
        object: "list",
        data,
    })
    .into_response();
    guard.complete();
    response
}

/// `GET /v1/models/{id}`: one served model, or `404 model_not_found`.
pub async fn retrieve(State(state): State<SimState>, Path(id): Path<String>) -> Response {
    let guard = state.begin(Endpoint::Models);
    let live = state.live();
    let response = match live.cfg.models.iter().find(|m| **m == id) {
        Some(id) => Json(ModelEntry {
            id,
            object: "model",
            created: CREATED,
            owned_by: "sluice-sim",
        })
        .into_response(),
        None => ApiError::ModelNotFound(id).into_response(),
    };
    guard.complete();
    response
}

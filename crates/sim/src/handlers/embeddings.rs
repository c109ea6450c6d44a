//! `POST /v1/embeddings`: deterministic 16-dimensional unit vectors, as float arrays or (with
//! `encoding_format: "base64"`) base64 of their little-endian `float32` bytes, like OpenAI.
//!
//! Directives are read from the last input string, as chat reads them from the last user
//! message.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::counters::Endpoint;
use crate::directives::Directives;
use crate::error::ApiError;
use crate::handlers::{parse_json, pause};
use crate::openai::{
    EmbeddingItem, EmbeddingList, EmbeddingUsage, EmbeddingVector, EmbeddingsRequest,
    EncodingFormat,
};
use crate::state::SimState;
use crate::{bow, output};

/// Most inputs in one request, as OpenAI allows.
pub const MAX_INPUTS: usize = 2048;

pub async fn create(State(state): State<SimState>, body: Bytes) -> Response {
    let guard = state.begin(Endpoint::Embeddings);
    let response = match handle(&state, &body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    guard.complete();
    response
}

async fn handle(state: &SimState, body: &[u8]) -> Result<Response, ApiError> {
    let req: EmbeddingsRequest = parse_json(body)?;
    let inputs = req.input.as_slice();
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(ApiError::invalid_param(
            "input",
            format!("'input' must hold 1 to {MAX_INPUTS} strings."),
        ));
    }
    let format = EncodingFormat::parse(req.encoding_format.as_deref()).ok_or_else(|| {
        ApiError::invalid_param(
            "encoding_format",
            "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
        )
    })?;
    let live = state.live();
    let format = if live.cfg.embeddings_floats_only {
        EncodingFormat::Float
    } else {
        format
    };
    if !live.serves(&req.model) {
        return Err(ApiError::ModelNotFound(req.model));
    }
    state.record_model(&req.model);
    let directives = match inputs.last() {
        Some(text) => {
            Directives::parse(text).map_err(|e| ApiError::invalid_param("input", e.to_string()))?
        }
        None => Directives::default(),
    };
    let plan = state.plan(&live, &directives);
    pause(plan.delay).await;
    if let Some(fault) = plan.fault {
        return Err(fault);
    }
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| EmbeddingItem {
            object: "embedding",
            index,
            embedding: if bow::is_bow(&req.model) {
                EmbeddingVector::encode(&bow::embedding(text), format)
            } else {
                EmbeddingVector::encode(&output::embedding(&req.model, text), format)
            },
        })
        .collect();
    let prompt_tokens = inputs.iter().map(|t| output::text_tokens(t)).sum();
    Ok(Json(EmbeddingList {
        object: "list",
        data,
        model: &req.model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    })
    .into_response())
}

//! The admin API (`/v1/admin/...`, admin key only): tenants, their kill switch, and their
//! API keys (create — the key is shown once —, list, revoke, rotate with an overlap window).
//! The `sluice` CLI is a client of these routes.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
};
use serde::Deserialize;
use serde_json::json;
use sluice_governance::GovernanceError;
use sluice_store::now_ms;

use crate::{AppState, error::ApiError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/tenants", get(list_tenants))
        .route("/v1/admin/tenants/{tenant}", put(put_tenant))
        .route(
            "/v1/admin/tenants/{tenant}/keys",
            get(list_keys).post(create_key),
        )
        .route(
            "/v1/admin/tenants/{tenant}/keys/{key_id}",
            delete(revoke_key),
        )
        .route(
            "/v1/admin/tenants/{tenant}/keys/{key_id}/rotate",
            post(rotate_key),
        )
}

/// Registers the config file's tenants in Redis, so the admin API lists them. Best effort:
/// Redis may not be up yet, and nothing depends on it.
pub async fn seed_tenants(state: &AppState) {
    // Kill switches and budgets stored under the key names of earlier versions (before the
    // tenant seeding below writes the new ones).
    match state.store.upgrade_keys().await {
        Ok(up) if up.tenants + up.budgets > 0 => {
            tracing::info!(
                tenants = up.tenants,
                budgets = up.budgets,
                "moved stored tenants and budgets to the hash-tagged key names"
            );
        }
        Ok(_) => {}
        Err(e) => {
            tracing::info!(error = %e, "cannot upgrade stored key names yet");
            return;
        }
    }
    let ids = state
        .cfg
        .tenants
        .iter()
        .map(|t| t.id.as_str())
        .chain(state.cfg.governance.tenants.keys().map(String::as_str));
    for id in ids {
        if let Err(e) = state.gov.seed_tenant(id, now_ms()).await {
            tracing::info!(error = %e, "cannot seed tenants into Redis yet");
            return;
        }
    }
}

fn store(e: GovernanceError) -> ApiError {
    ApiError::StoreUnavailable {
        retry_after_s: 1,
        reason: e.to_string(),
    }
}

/// An optional JSON body: none when empty; otherwise it must parse, and a problem is a 400
/// in OpenAI's shape (axum's own rejection is plain text).
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<Option<T>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some).map_err(|e| {
        ApiError::invalid(
            format!(
                "Invalid request body: {}.",
                crate::validate::json_error_kind(&e)
            ),
            None,
            "invalid_json",
        )
    })
}

fn tenant_id(id: &str) -> Result<&str, ApiError> {
    if sluice_protocol::subjects::is_token(id) {
        Ok(id)
    } else {
        Err(ApiError::invalid(
            "A tenant id is 1-64 letters, digits, '-' or '_'.",
            Some("tenant"),
            "invalid_value",
        ))
    }
}

async fn list_tenants(State(state): State<AppState>) -> Result<Response, ApiError> {
    let tenants = state.gov.list_tenants().await.map_err(store)?;
    Ok(Json(json!({ "object": "list", "data": tenants })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantBody {
    #[serde(default)]
    disabled: bool,
}

async fn put_tenant(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = tenant_id(&tenant)?;
    let disabled = json_body::<TenantBody>(&body)?.is_some_and(|b| b.disabled);
    state
        .gov
        .put_tenant(id, disabled, now_ms())
        .await
        .map_err(store)?;
    Ok(Json(json!({ "id": id, "disabled": disabled })).into_response())
}

async fn list_keys(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let keys = state
        .gov
        .list_keys(tenant_id(&tenant)?)
        .await
        .map_err(store)?;
    Ok(Json(json!({ "object": "list", "data": keys })).into_response())
}

async fn create_key(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let created = state
        .gov
        .create_key(tenant_id(&tenant)?, now_ms())
        .await
        .map_err(store)?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn revoke_key(
    State(state): State<AppState>,
    Path((tenant, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    match state
        .gov
        .revoke_key(tenant_id(&tenant)?, &key_id)
        .await
        .map_err(store)?
    {
        true => Ok(Json(json!({ "key_id": key_id, "revoked": true })).into_response()),
        false => Err(ApiError::NotFound("No such key for this tenant.".into())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    overlap_s: u64,
}

async fn rotate_key(
    State(state): State<AppState>,
    Path((tenant, key_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let overlap = json_body::<RotateBody>(&body)?
        .map_or(0, |b| b.overlap_s)
        .min(30 * 24 * 3600);
    match state
        .gov
        .rotate_key(tenant_id(&tenant)?, &key_id, overlap, now_ms())
        .await
        .map_err(store)?
    {
        Some(created) => Ok((StatusCode::CREATED, Json(created)).into_response()),
        None => Err(ApiError::NotFound("No such key for this tenant.".into())),
    }
}

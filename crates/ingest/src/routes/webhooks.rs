//! Webhook endpoints: `POST /v1/webhooks` (the secret is in this answer only),
//! `GET /v1/webhooks`, `DELETE /v1/webhooks/{id}`, `POST /v1/webhooks/{id}/rotate` (new
//! secret; the old one keeps signing for `webhooks.rotation_grace_s`) and
//! `GET /v1/webhooks/{id}/deliveries` (the latest attempts, newest first).

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::StatusCode,
};
use serde_json::{Value, json};
use sluice_store::{Endpoint, now_ms};
use sluice_webhooks::{EVENT_TYPES, sign::new_secret, ssrf::Policy};

use crate::{
    AppState,
    auth::Tenant,
    error::ApiError,
    routes::jobs::{body_or_error, store_unavailable},
};

fn view(ep: &Endpoint) -> Value {
    json!({
        "id": ep.id,
        "object": "webhook_endpoint",
        "url": ep.url,
        "events": ep.events,
        "status": if ep.disabled { "disabled" } else { "enabled" },
        "created_at": ep.created_at_ms / 1000,
    })
}

pub async fn create(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body_or_error(body, state.cfg.ingest.max_body_bytes)?;
    let v = crate::validate::parse_body(&body)?;
    let obj = v.as_object().ok_or_else(|| {
        ApiError::invalid(
            "The request body must be a JSON object.",
            None,
            "invalid_json",
        )
    })?;
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "url" | "events")) {
        return Err(ApiError::invalid(
            format!(
                "Unrecognized request argument supplied: '{}'.",
                k.chars().take(64).collect::<String>()
            ),
            Some(k),
            "unknown_parameter",
        ));
    }
    let url = obj.get("url").and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid(
            "Missing required parameter: 'url'.",
            Some("url"),
            "missing_required_parameter",
        )
    })?;
    let events: Vec<String> = match obj.get("events") {
        None | Some(Value::Null) => EVENT_TYPES.iter().map(|s| s.to_string()).collect(),
        Some(Value::Array(list)) if !list.is_empty() => list
            .iter()
            .map(|e| {
                e.as_str()
                    .filter(|e| EVENT_TYPES.contains(e))
                    .map(str::to_string)
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::invalid(
                    format!(
                        "Invalid 'events': expected some of {}.",
                        EVENT_TYPES.join(", ")
                    ),
                    Some("events"),
                    "invalid_value",
                )
            })?,
        Some(_) => {
            return Err(ApiError::invalid(
                "Invalid type for 'events': expected a non-empty array.",
                Some("events"),
                "invalid_type",
            ));
        }
    };
    let url = Policy::new(&state.cfg.webhooks.allow_private)
        .check_url(url)
        .await?
        .to_string();
    let ep = Endpoint {
        id: format!("we_{}", uuid::Uuid::now_v7().simple()),
        tenant: tenant.id.to_string(),
        url,
        events,
        secret: new_secret(),
        old_secret: None,
        disabled: false,
        created_at_ms: now_ms(),
    };
    if !state
        .store
        .create_endpoint(&ep, state.cfg.webhooks.max_endpoints_per_tenant)
        .await
        .map_err(store_unavailable)?
    {
        return Err(ApiError::Conflict(format!(
            "A tenant may register at most {} webhook endpoints.",
            state.cfg.webhooks.max_endpoints_per_tenant
        )));
    }
    let mut out = view(&ep);
    out["secret"] = json!(ep.secret);
    Ok((StatusCode::CREATED, Json(out)))
}

pub async fn list(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
) -> Result<Json<Value>, ApiError> {
    let eps = state
        .store
        .endpoints(&tenant.id)
        .await
        .map_err(store_unavailable)?;
    Ok(Json(
        json!({ "object": "list", "data": eps.iter().map(view).collect::<Vec<_>>() }),
    ))
}

async fn owned(state: &AppState, tenant: &Tenant, id: &str) -> Result<Endpoint, ApiError> {
    state
        .store
        .tenant_endpoint(&tenant.id, id)
        .await
        .map_err(store_unavailable)?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "No webhook endpoint with id '{}'.",
                id.chars().take(64).collect::<String>()
            ))
        })
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ep = owned(&state, &tenant, &id).await?;
    state
        .store
        .delete_endpoint(&tenant.id, &ep.id)
        .await
        .map_err(store_unavailable)?;
    Ok(Json(
        json!({ "id": ep.id, "object": "webhook_endpoint", "deleted": true }),
    ))
}

pub async fn rotate(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ep = owned(&state, &tenant, &id).await?;
    let secret = new_secret();
    let until = now_ms() + sluice_config::duration::millis_u64(state.cfg.webhooks.rotation_grace);
    state
        .store
        .rotate_secret(&ep, &secret, until)
        .await
        .map_err(store_unavailable)?;
    let mut out = view(&ep);
    out["secret"] = json!(secret);
    out["previous_secret_expires_at"] = json!(until / 1000);
    Ok(Json(out))
}

pub async fn deliveries(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ep = owned(&state, &tenant, &id).await?;
    let log = state
        .store
        .delivery_log(&ep.id)
        .await
        .map_err(store_unavailable)?;
    let data: Vec<Value> = log
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

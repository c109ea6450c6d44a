//! API-key authentication.
//!
//! Keys are stored as SHA-256 digests; a presented key is hashed, looked up by digest, and
//! the digests compared in constant time. Authentication is on for every route except the
//! short allowlist in [`OPEN_PATHS`], so a new route cannot forget it.
//!
//! Keys come from the config file (in memory) and from Redis (created through the admin
//! API; looked up through a short-TTL cache, so a revocation reaches every replica within
//! `governance.key_cache_ttl_ms`). Routes under [`ADMIN_PREFIX`] take only the admin key,
//! whose digest is `governance.admin_key_sha256`; tenant keys do not open them.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Request, State},
    http::header::AUTHORIZATION,
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use sluice_config::TenantConfig;
use subtle::ConstantTimeEq;

use crate::{AppState, error::ApiError};

/// Routes served without a key.
/// (The dashboard's page and script hold no data; its JSON needs the admin key.)
pub const OPEN_PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/dashboard",
    "/dashboard.js",
];

/// Routes that need the admin key.
pub const ADMIN_PREFIX: &str = "/v1/admin/";

/// The authenticated caller, put into request extensions.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Arc<str>,
    pub key_id: Arc<str>,
}

/// Digest → tenant.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_digest: HashMap<[u8; 32], Tenant>,
}

impl KeyTable {
    pub fn from_config(tenants: &[TenantConfig]) -> KeyTable {
        let mut by_digest = HashMap::new();
        for t in tenants {
            for k in &t.keys {
                let mut digest = [0u8; 32];
                if hex::decode_to_slice(&k.sha256, &mut digest).is_ok() {
                    by_digest.insert(
                        digest,
                        Tenant {
                            id: Arc::from(t.id.as_str()),
                            key_id: Arc::from(k.id.as_str()),
                        },
                    );
                }
            }
        }
        KeyTable { by_digest }
    }

    pub fn authenticate(&self, presented: &str) -> Option<&Tenant> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let (stored, tenant) = self.by_digest.get_key_value(&digest)?;
        bool::from(stored.ct_eq(&digest)).then_some(tenant)
    }
}

pub async fn require_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if OPEN_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let Some(presented) = presented else {
        return ApiError::Unauthorized.into_response();
    };
    if req.uri().path().starts_with(ADMIN_PREFIX) {
        return match is_admin(&state, presented) {
            true => next.run(req).await,
            false => ApiError::Forbidden.into_response(),
        };
    }
    let tenant = match state.keys.authenticate(presented) {
        Some(t) => Some(t.clone()),
        None => match stored_key(&state, presented).await {
            Ok(t) => t,
            Err(e) => return e.into_response(),
        },
    };
    match tenant {
        Some(tenant) => {
            req.extensions_mut().insert(tenant);
            next.run(req).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_token(v: &str) -> Option<&str> {
    let (scheme, token) = v.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn is_admin(state: &AppState, presented: &str) -> bool {
    let Some(expected) = &state.cfg.governance.admin_key_sha256 else {
        return false;
    };
    let mut want = [0u8; 32];
    if hex::decode_to_slice(expected, &mut want).is_err() {
        return false;
    }
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    bool::from(digest.ct_eq(&want))
}

/// A key created through the admin API, via the cache.
async fn stored_key(state: &AppState, presented: &str) -> Result<Option<Tenant>, ApiError> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let to_tenant = |k: sluice_governance::apikeys::KeyInfo| Tenant {
        id: Arc::from(k.tenant),
        key_id: Arc::from(k.key_id),
    };
    if let Some(hit) = state.key_cache.get(&digest) {
        return Ok(hit.map(to_tenant));
    }
    let found = state
        .gov
        .lookup_key(&hex::encode(digest), sluice_store::now_ms())
        .await
        .map_err(|e| ApiError::StoreUnavailable {
            retry_after_s: 1,
            reason: e.to_string(),
        })?;
    state.key_cache.put(digest, found.clone());
    Ok(found.map(to_tenant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::{KeyConfig, hash_api_key};

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer sk-1", "bearer sk-1", "BEARER  sk-1 "] {
            assert_eq!(bearer_token(v), Some("sk-1"), "{v}");
        }
        assert_eq!(bearer_token("Basic sk-1"), None);
        assert_eq!(bearer_token("Bearersk-1"), None);
    }

    #[test]
    fn finds_the_tenant_of_a_key_and_nothing_else() {
        let table = KeyTable::from_config(&[TenantConfig {
            id: "acme".into(),
            keys: vec![KeyConfig {
                id: "k1".into(),
                sha256: hash_api_key("sk-right"),
            }],
        }]);
        assert_eq!(table.authenticate("sk-right").map(|t| &*t.id), Some("acme"));
        assert!(table.authenticate("sk-wrong").is_none());
        assert!(table.authenticate("").is_none());
    }
}

//! API-key authentication.
//!
//! Keys are stored as SHA-256 digests; a presented key is hashed, looked up by digest, and
//! the digests compared in constant time. Authentication is on for every route except the
//! short allowlist in [`OPEN_PATHS`], so a new route cannot forget it.

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
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

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
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented.and_then(|k| state.keys.authenticate(k)) {
        Some(tenant) => {
            req.extensions_mut().insert(tenant.clone());
            next.run(req).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::{KeyConfig, hash_api_key};

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

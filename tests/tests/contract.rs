//! The API contract: the OpenAPI document the service serves, in process (`oneshot`, no
//! socket) against real NATS and Redis. `scripts/contract_test.sh` fuzzes a live stack from
//! the same document.

use anyhow::Result;
use axum::{
    body::{Body, to_bytes},
    http::{Request, StatusCode, header::CONTENT_TYPE},
};
use serde_json::Value;
use sluice_e2e::TestEnv;
use tower::ServiceExt;

#[tokio::test]
async fn the_openapi_document_is_served_without_a_key() -> Result<()> {
    let env = TestEnv::new();
    let state = sluice_ingest::AppState::new(env.cfg.clone()).await?;
    let app = sluice_ingest::router(state);
    let resp = app
        .oneshot(Request::get("/openapi.json").body(Body::empty())?)
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
    let doc: Value = serde_json::from_slice(&to_bytes(resp.into_body(), 4 << 20).await?)?;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/v1/jobs",
        "/v1/chat/completions",
        "/healthz",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    Ok(())
}

//! A small client for ingest's admin API. Errors carry the API's own message, never a body
//! the server did not mean for clients.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub struct AdminClient {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(base: &str, key: &str) -> Result<AdminClient> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
            http,
        })
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}/v1/admin{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status();
        let json: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = json["error"]["message"].as_str().unwrap_or("no message");
            bail!("{status}: {msg}");
        }
        Ok(json)
    }
}

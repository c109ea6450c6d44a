//! An OpenAI-compatible deployment reached over HTTP.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use sluice_config::UpstreamConfig;

use crate::error::{ProviderError, parse_retry_after};

/// One deployment with its own connection pool.
#[derive(Clone)]
pub struct OpenAiProvider {
    http: reqwest::Client,
    base_url: String,
    auth: Option<HeaderValue>,
}

impl OpenAiProvider {
    pub fn new(
        cfg: &UpstreamConfig,
        api_key: Option<SecretString>,
    ) -> Result<OpenAiProvider, ProviderError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .timeout(Duration::from_secs(cfg.timeout_s))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| ProviderError::Transport)?;
        let auth = match api_key {
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", k.expose_secret()))
                    .map_err(|_| ProviderError::Transport)?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(OpenAiProvider {
            http,
            base_url: cfg.base_url.trim_end_matches('/').to_string(),
            auth,
        })
    }

    /// `POST {base}/chat/completions` with the client's (validated) body; returns the JSON
    /// response body.
    pub async fn chat_completion(&self, body: Bytes) -> Result<Bytes, ProviderError> {
        self.post_json("/chat/completions", body).await
    }

    /// `POST {base}/chat/completions` for a body with `stream: true`: the answer as a stream
    /// of chunks once the upstream accepted the request.
    pub async fn chat_completion_stream(&self, body: Bytes) -> Result<crate::stream::ChunkStream, ProviderError> {
        let resp = self.send("/chat/completions", body).await?;
        Ok(crate::stream::ChunkStream::new(resp))
    }

    /// `POST {base}/embeddings`.
    pub async fn embeddings(&self, body: Bytes) -> Result<Bytes, ProviderError> {
        self.post_json("/embeddings", body).await
    }

    async fn post_json(&self, path: &str, body: Bytes) -> Result<Bytes, ProviderError> {
        let resp = self.send(path, body).await?;
        let bytes = resp.bytes().await.map_err(transport)?;
        // The result is stored and served as JSON; refuse anything that is not an object.
        if bytes.first() != Some(&b'{') || serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
            return Err(ProviderError::InvalidResponse);
        }
        Ok(bytes)
    }

    /// Sends the request; a non-2xx answer becomes a [`ProviderError::Status`].
    async fn send(&self, path: &str, body: Bytes) -> Result<reqwest::Response, ProviderError> {
        let mut req = self
            .http
            .post(format!("{}{}", self.base_url, path))
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            return Err(ProviderError::Status {
                status: status.as_u16(),
                retry_after,
            });
        }
        Ok(resp)
    }
}

pub(crate) fn transport(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else if e.is_connect() {
        ProviderError::Connect
    } else {
        ProviderError::Transport
    }
}

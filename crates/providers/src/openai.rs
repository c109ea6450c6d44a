//! An OpenAI-compatible deployment reached over HTTP, in OpenAI's URL and header style
//! (`{base}/chat/completions`, `Authorization: Bearer`) or Azure OpenAI's
//! (`{base}/openai/deployments/{name}/chat/completions?api-version=…`, `api-key`).

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use sluice_config::{ApiStyle, DeploymentConfig, UpstreamConfig};

use futures_util::{Stream, StreamExt};

use crate::error::{ProviderError, parse_retry_after};

/// An upstream response body as it arrives.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, ProviderError>> + Send>>;

/// One deployment with its own connection pool.
#[derive(Clone)]
pub struct OpenAiProvider {
    http: reqwest::Client,
    base_url: String,
    /// `?api-version=…` for Azure, empty otherwise.
    query: String,
    auth: Option<(HeaderName, HeaderValue)>,
    /// The two endpoints, parsed once (parsing a URL per call was 5% of a worker's time).
    chat_url: reqwest::Url,
    embeddings_url: reqwest::Url,
}

impl OpenAiProvider {
    /// The implicit deployment of the `[upstream]` section.
    pub fn new(
        cfg: &UpstreamConfig,
        api_key: Option<SecretString>,
    ) -> Result<OpenAiProvider, ProviderError> {
        let http = client(cfg.pool_max_idle_per_host, cfg.connect_timeout, cfg.timeout)?;
        OpenAiProvider::build(
            http,
            cfg.base_url.trim_end_matches('/').to_string(),
            String::new(),
            bearer(api_key)?,
        )
    }

    /// One deployment of a model pool, with its own connection pool.
    pub fn for_deployment(
        d: &DeploymentConfig,
        api_key: Option<SecretString>,
    ) -> Result<OpenAiProvider, ProviderError> {
        let http = client(
            d.max_concurrency.min(1024),
            Duration::from_secs(2),
            d.timeout,
        )?;
        let base = d.base_url.trim_end_matches('/');
        match d.style {
            ApiStyle::Openai => {
                OpenAiProvider::build(http, base.to_string(), String::new(), bearer(api_key)?)
            }
            ApiStyle::Azure => {
                let name = d.azure_deployment.as_deref().unwrap_or_default();
                let auth = match api_key {
                    Some(k) => {
                        let mut v = HeaderValue::from_str(k.expose_secret())
                            .map_err(|_| ProviderError::Transport)?;
                        v.set_sensitive(true);
                        Some((HeaderName::from_static("api-key"), v))
                    }
                    None => None,
                };
                OpenAiProvider::build(
                    http,
                    format!("{base}/openai/deployments/{name}"),
                    format!("?api-version={}", d.azure_api_version),
                    auth,
                )
            }
        }
    }

    fn build(
        http: reqwest::Client,
        base_url: String,
        query: String,
        auth: Option<(HeaderName, HeaderValue)>,
    ) -> Result<OpenAiProvider, ProviderError> {
        let parse = |path: &str| {
            reqwest::Url::parse(&format!("{base_url}{path}{query}"))
                .map_err(|_| ProviderError::Transport)
        };
        Ok(OpenAiProvider {
            chat_url: parse("/chat/completions")?,
            embeddings_url: parse("/embeddings")?,
            http,
            base_url,
            query,
            auth,
        })
    }

    /// The URL a call to `path` goes to (for tests and logs; holds no secret).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.base_url, path, self.query)
    }

    /// `POST {base}/chat/completions` with the client's (validated) body; returns the JSON
    /// response body.
    pub async fn chat_completion(&self, body: Bytes) -> Result<Bytes, ProviderError> {
        self.post_json(&self.chat_url, body).await
    }

    /// `POST {base}/embeddings`.
    pub async fn embeddings(&self, body: Bytes) -> Result<Bytes, ProviderError> {
        self.post_json(&self.embeddings_url, body).await
    }

    /// `POST {base}/chat/completions` with `"stream": true` in `body`: once the upstream
    /// answered 2xx, its server-sent events as they arrive (see [`crate::ChunkStream`]).
    pub async fn chat_completion_stream(&self, body: Bytes) -> Result<ByteStream, ProviderError> {
        let resp = self.send(&self.chat_url, body).await?;
        Ok(Box::pin(resp.bytes_stream().map(|r| r.map_err(transport))))
    }

    /// Sends the request; a non-2xx answer becomes a [`ProviderError::Status`].
    async fn send(
        &self,
        url: &reqwest::Url,
        body: Bytes,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut req = self
            .http
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some((name, value)) = &self.auth {
            req = req.header(name.clone(), value.clone());
        }
        for (name, value) in sluice_telemetry::trace::headers_of(&tracing::Span::current()) {
            req = req.header(name, value);
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

    async fn post_json(&self, url: &reqwest::Url, body: Bytes) -> Result<Bytes, ProviderError> {
        let resp = self.send(url, body).await?;
        let bytes = resp.bytes().await.map_err(transport)?;
        // The result is stored and served as JSON; refuse anything that is not an object.
        if bytes.first() != Some(&b'{')
            || serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err()
        {
            return Err(ProviderError::InvalidResponse);
        }
        Ok(bytes)
    }
}

fn client(
    pool_idle: usize,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool_idle)
        .pool_idle_timeout(Duration::from_secs(60))
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|_| ProviderError::Transport)
}

fn bearer(
    api_key: Option<SecretString>,
) -> Result<Option<(HeaderName, HeaderValue)>, ProviderError> {
    match api_key {
        Some(k) => {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", k.expose_secret()))
                .map_err(|_| ProviderError::Transport)?;
            v.set_sensitive(true);
            Ok(Some((AUTHORIZATION, v)))
        }
        None => Ok(None),
    }
}

fn transport(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else if e.is_connect() {
        ProviderError::Connect
    } else {
        ProviderError::Transport
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn azure_urls_carry_the_deployment_and_api_version() {
        let d: DeploymentConfig = toml::from_str(
            "name = \"az\"\nbase_url = \"https://x.openai.azure.com/\"\nstyle = \"azure\"\nazure_deployment = \"gpt4o\"\n",
        )
        .unwrap();
        let p = OpenAiProvider::for_deployment(&d, Some(SecretString::from("k"))).unwrap();
        assert_eq!(
            p.url("/chat/completions"),
            "https://x.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(p.auth.as_ref().map(|(n, _)| n.as_str()), Some("api-key"));
        let d: DeploymentConfig =
            toml::from_str("name = \"o\"\nbase_url = \"http://h/v1\"\n").unwrap();
        let p = OpenAiProvider::for_deployment(&d, None).unwrap();
        assert_eq!(p.url("/embeddings"), "http://h/v1/embeddings");
        assert_eq!(p.embeddings_url.as_str(), "http://h/v1/embeddings");
        assert_eq!(p.chat_url.as_str(), "http://h/v1/chat/completions");
    }
}

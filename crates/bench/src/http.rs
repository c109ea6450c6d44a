//! The HTTP side: one shared keep-alive client, request bodies, and the calls each mode makes.
//!
//! The measured requests go through [`RawClient`] for `http://` targets (the general client
//! for `https://`); status polls always use the general client. Every response body is read
//! to the end, errors included, so the connection goes back to the pool instead of being
//! closed; at 10,000 requests/s reconnecting would be the benchmark.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, LOCATION};
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};

use crate::cli::Settings;
use crate::raw::{RawClient, RawError};
use crate::stats::Outcome;

/// Builds the shared client: HTTP/1.1 keep-alive with Nagle off, an idle pool as large as the
/// in-flight cap so a burst's connections are reused instead of re-dialled.
pub fn client(settings: &Settings, pool: usize) -> anyhow::Result<Client> {
    Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(5).min(settings.timeout))
        .timeout(settings.timeout)
        .user_agent(concat!("sluice-bench/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

/// Where requests go and how they authenticate.
#[derive(Clone)]
pub struct Target {
    client: Client,
    raw: Option<Arc<RawClient>>,
    base: String,
    auth: Option<HeaderValue>,
}

/// A `POST` endpoint, prepared once: its URL for the general client and its request head
/// for the raw one.
pub struct Endpoint {
    url: String,
    raw_head: Option<String>,
}

/// A `POST`'s answer, body read to the end.
struct Answer {
    status: u16,
    location: Option<String>,
    body: Vec<u8>,
}

impl Target {
    pub async fn new(client: Client, settings: &Settings) -> anyhow::Result<Self> {
        let raw = RawClient::for_url(
            &settings.url,
            settings
                .api_key
                .as_ref()
                .map(|key| format!("Bearer {key}"))
                .as_deref(),
            settings.timeout,
        )
        .await?
        .map(Arc::new);
        let auth = settings
            .api_key
            .as_ref()
            .map(|key| {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                    .context("the API key is not a valid header value")?;
                value.set_sensitive(true);
                anyhow::Ok(value)
            })
            .transpose()?;
        Ok(Self {
            client,
            raw,
            base: settings.url.clone(),
            auth,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn endpoint(&self, path: &str) -> Endpoint {
        Endpoint {
            url: self.url(path),
            raw_head: self.raw.as_ref().map(|raw| raw.post_head(path)),
        }
    }

    /// POSTs a JSON `body` and reads the whole answer; a failure is already an [`Outcome`].
    async fn post_json(&self, endpoint: &Endpoint, body: Vec<u8>) -> Result<Answer, Outcome> {
        if let (Some(raw), Some(head)) = (&self.raw, &endpoint.raw_head) {
            return match raw.send(head, &body).await {
                Ok(r) => Ok(Answer {
                    status: r.status,
                    location: r.location,
                    body: r.body,
                }),
                Err(RawError::Timeout) => Err(Outcome::Timeout),
                Err(RawError::Connect(_)) => Err(Outcome::Connect),
                Err(RawError::Transport(_)) => Err(Outcome::Transport),
            };
        }
        let resp = self
            .post(&endpoint.url, body)
            .send()
            .await
            .map_err(|e| transport_outcome(&e))?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.bytes().await.map_err(|e| transport_outcome(&e))?;
        Ok(Answer {
            status,
            location,
            body: body.to_vec(),
        })
    }

    fn post(&self, url: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        let req = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        self.authed(req)
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.authed(self.client.get(url))
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some(auth) => req.header(AUTHORIZATION, auth.clone()),
            None => req,
        }
    }
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: String,
}

#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: [Message<'a>; 1],
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<u8>,
}

/// What every request body shares; the prompt varies per request so no result cache can
/// answer from a previous request (or a previous run: `run_id` differs per run), unless
/// `repeat` asks for that many distinct deterministic prompts, cycled (the same in every run).
#[derive(Debug, Clone)]
pub struct BodyTemplate {
    pub model: String,
    pub max_tokens: u32,
    pub priority: Option<String>,
    pub run_id: u64,
    pub repeat: u64,
}

impl BodyTemplate {
    pub fn new(settings: &Settings, priority: Option<String>) -> Self {
        let run_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Self {
            model: settings.model.clone(),
            max_tokens: settings.max_tokens,
            priority,
            run_id,
            repeat: settings.repeat,
        }
    }

    /// The JSON body of request `seq`.
    pub fn body(&self, seq: u64) -> Vec<u8> {
        let (seq, temperature) = match self.repeat {
            0 => (seq, None),
            n => (seq % n, Some(0)),
        };
        // Repeated prompts leave the run out, so a warm-up run fills the entries the measured
        // run then hits.
        let content = match temperature {
            None => format!(
                "sluice-bench run {:x} request {seq}: reply with one short sentence about the number {seq}.",
                self.run_id
            ),
            Some(_) => format!(
                "sluice-bench repeated request {seq}: reply with one short sentence about the number {seq}."
            ),
        };
        let body = ChatBody {
            model: &self.model,
            messages: [Message {
                role: "user",
                content,
            }],
            max_tokens: self.max_tokens,
            priority: self.priority.as_deref(),
            temperature,
        };
        // Serialising plain strings and integers cannot fail; an empty body would show up as
        // HTTP 400s in the figures rather than as a crash.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// One request kind an open- or closed-loop driver issues.
pub trait Operation: Send + Sync + 'static {
    /// Sends request `seq` and reports how it ended.
    fn call(&self, seq: u64) -> impl Future<Output = Outcome> + Send;
}

fn transport_outcome(e: &reqwest::Error) -> Outcome {
    if e.is_timeout() {
        Outcome::Timeout
    } else if e.is_connect() {
        Outcome::Connect
    } else {
        Outcome::Transport
    }
}

/// Classifies a non-2xx status, after its body was read.
fn status_outcome(status: u16) -> Outcome {
    match status {
        429 | 503 => Outcome::Rejected { status },
        _ => Outcome::HttpError { status },
    }
}

/// `POST /v1/jobs`: success is a 2xx carrying the job's id.
pub struct SubmitJob {
    target: Target,
    endpoint: Endpoint,
    body: BodyTemplate,
}

impl SubmitJob {
    pub fn new(target: Target, body: BodyTemplate) -> Self {
        let endpoint = target.endpoint("/v1/jobs");
        Self {
            target,
            endpoint,
            body,
        }
    }
}

#[derive(Deserialize)]
struct Accepted {
    id: String,
}

impl Operation for SubmitJob {
    async fn call(&self, seq: u64) -> Outcome {
        let answer = match self
            .target
            .post_json(&self.endpoint, self.body.body(seq))
            .await
        {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        if !(200..300).contains(&answer.status) {
            return status_outcome(answer.status);
        }
        let id = serde_json::from_slice::<Accepted>(&answer.body)
            .ok()
            .map(|a| a.id)
            .or_else(|| {
                answer
                    .location
                    .and_then(|l| l.rsplit('/').next().map(str::to_owned))
            })
            .filter(|id| !id.is_empty());
        match id {
            Some(id) => Outcome::Ok { job_id: Some(id) },
            None => Outcome::BadResponse,
        }
    }
}

/// A synchronous chat completion at `--path`: success is any 2xx with its body read.
pub struct ChatCompletion {
    target: Target,
    endpoint: Endpoint,
    body: BodyTemplate,
}

impl ChatCompletion {
    pub fn new(target: Target, path: &str, body: BodyTemplate) -> Self {
        let endpoint = target.endpoint(path);
        Self {
            target,
            endpoint,
            body,
        }
    }
}

impl Operation for ChatCompletion {
    async fn call(&self, seq: u64) -> Outcome {
        match self
            .target
            .post_json(&self.endpoint, self.body.body(seq))
            .await
        {
            Ok(answer) if (200..300).contains(&answer.status) => Outcome::Ok { job_id: None },
            Ok(answer) => status_outcome(answer.status),
            Err(outcome) => outcome,
        }
    }
}

/// The part of `GET /v1/jobs/{id}` the end-to-end figures need.
#[derive(Debug, Clone, Deserialize)]
pub struct JobView {
    pub status: String,
    #[serde(default)]
    pub timings_ms: Timings,
}

/// Milliseconds since the Unix epoch of each state change (floats accepted too).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Timings {
    pub queued_at: Option<f64>,
    pub in_progress_at: Option<f64>,
    pub completed_at: Option<f64>,
    pub failed_at: Option<f64>,
}

/// How one status poll went.
#[derive(Debug, Clone)]
pub enum Poll {
    Job(JobView),
    NotFound,
    Failed,
}

/// `GET /v1/jobs/{id}`.
pub async fn poll_job(target: &Target, id: &str) -> Poll {
    let resp = match target
        .get(&target.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
    {
        Ok(resp) => resp,
        Err(_) => return Poll::Failed,
    };
    let status = resp.status();
    let Ok(bytes) = resp.bytes().await else {
        return Poll::Failed;
    };
    if status == StatusCode::NOT_FOUND {
        return Poll::NotFound;
    }
    if !status.is_success() {
        return Poll::Failed;
    }
    serde_json::from_slice(&bytes).map_or(Poll::Failed, Poll::Job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_differ_per_request_and_carry_the_flags() -> anyhow::Result<()> {
        let t = BodyTemplate {
            model: "sim-small".into(),
            max_tokens: 16,
            priority: Some("normal".into()),
            run_id: 0xabc,
            repeat: 0,
        };
        let a: serde_json::Value = serde_json::from_slice(&t.body(1))?;
        let b: serde_json::Value = serde_json::from_slice(&t.body(2))?;
        assert_ne!(a["messages"][0]["content"], b["messages"][0]["content"]);
        assert_eq!(a["model"], "sim-small");
        assert_eq!(a["max_tokens"], 16);
        assert_eq!(a["priority"], "normal");
        assert_eq!(a["messages"][0]["role"], "user");
        let no_priority = BodyTemplate {
            priority: None,
            ..t
        };
        let c: serde_json::Value = serde_json::from_slice(&no_priority.body(1))?;
        assert!(c.get("priority").is_none());
        assert!(a.get("temperature").is_none());
        Ok(())
    }

    #[test]
    fn repeat_cycles_deterministic_prompts() -> anyhow::Result<()> {
        let t = BodyTemplate {
            model: "sim-small".into(),
            max_tokens: 16,
            priority: None,
            run_id: 0xabc,
            repeat: 3,
        };
        assert_eq!(t.body(1), t.body(4));
        assert_ne!(t.body(1), t.body(2));
        let a: serde_json::Value = serde_json::from_slice(&t.body(1))?;
        assert_eq!(a["temperature"], 0);
        Ok(())
    }

    #[test]
    fn shedding_statuses_are_rejections() {
        assert_eq!(status_outcome(429), Outcome::Rejected { status: 429 });
        assert_eq!(status_outcome(503), Outcome::Rejected { status: 503 });
        assert_eq!(status_outcome(502), Outcome::HttpError { status: 502 });
    }

    #[test]
    fn job_view_tolerates_nulls_and_extra_fields() -> anyhow::Result<()> {
        let v: JobView = serde_json::from_str(
            r#"{"id":"x","object":"job","status":"queued",
                "timings_ms":{"queued_at":1700000000000,"in_progress_at":null,"completed_at":null,"failed_at":null}}"#,
        )?;
        assert_eq!(v.status, "queued");
        assert_eq!(v.timings_ms.queued_at, Some(1_700_000_000_000.0));
        assert_eq!(v.timings_ms.completed_at, None);
        Ok(())
    }
}

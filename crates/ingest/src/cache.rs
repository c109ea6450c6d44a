//! The response cache at ingest: look a request up before admission, answer a hit without
//! the broker or a worker, and make identical misses in flight wait for one job.
//!
//! ```text
//! Submission ─ lookup ─▶ Off | Bypass          → the job runs, nothing is stored
//!                        Hit(entry)            → answered here (x-sluice-cache: hit); a
//!                                                negative entry with its stored error
//!                        Stale(entry, refresh) → an expired entry within its model's stale
//!                                                window (x-sluice-cache: stale); `refresh`:
//!                                                this request took the lease, so it queues
//!                                                the one low-priority job that rewrites it
//!                        Similar(entry, sim)   → a similar prompt's answer (semantic hit,
//!                                                x-sluice-cache-similarity: sim)
//!                        Lead(write)           → the job runs and stores its answer
//!                        Follow(leader, write) → wait for the leader's job (coalesced)
//! ```
//!
//! The cache is an optimization, never a safety control: when Redis cannot be asked the
//! request simply runs uncached (`bypass`, counted in `sluice_cache_errors_total`).

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    http::{HeaderMap, HeaderValue},
    response::{
        IntoResponse, Response,
        sse::{Event, Sse},
    },
};
use serde_json::{Value, json};
use sluice_cache::{CacheKey, Call, Control, Decision, Entry, LocalTier, Scope, policy};
use sluice_config::{CacheConfig, CacheMode, duration::millis_u64};
use sluice_protocol::CacheWrite;
use sluice_store::{Lead, Store, now_ms};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    AppState,
    error::ApiError,
    routes::jobs::store_unavailable,
    semantic::SemanticCache,
    watch::{JobWatch, Outcome},
};

/// Response header that tells what the cache did.
pub const CACHE_HEADER: &str = "x-sluice-cache";
/// Request header that opts a request in (`on`) or out (`off`) whatever its model's mode.
pub const OPT_HEADER: &str = "x-sluice-cache";

pub struct ResponseCache {
    cfg: CacheConfig,
    tier: LocalTier,
    /// The semantic cache, when a model has one ([`crate::semantic`]).
    semantic: Option<SemanticCache>,
}

/// The background job that refreshes a stale entry: its id holds the entry's lease.
#[derive(Debug, Clone)]
pub struct Refresh {
    pub job: Uuid,
    pub key: CacheKey,
    pub write: CacheWrite,
}

/// What the cache makes of one request.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The cache is switched off: no header.
    Off,
    /// Not cacheable, or the client said `no-store`.
    Bypass,
    Hit(Arc<Entry>),
    /// An expired entry still within its stale window. `refresh`: the job id that took the
    /// entry's single-flight lease, to be queued at low priority and rewrite the entry
    /// (`None`: another job is refreshing it already).
    Stale {
        entry: Arc<Entry>,
        refresh: Option<Refresh>,
    },
    /// A semantic hit: the answer of a prompt this similar (cosine) in the same scope.
    Similar {
        entry: Arc<Entry>,
        similarity: f32,
    },
    /// Run the job and store its answer; `leased`: this job holds the single-flight lease,
    /// to give back if it is never queued.
    Lead {
        write: CacheWrite,
        key: CacheKey,
        leased: bool,
    },
    /// Job `leader` is computing this answer: wait for it (and should it turn out never to
    /// have been queued, run this request's own job, storing under `key`).
    Follow {
        leader: Uuid,
        write: CacheWrite,
        key: CacheKey,
    },
}

impl Lookup {
    pub fn header(&self) -> Option<&'static str> {
        match self {
            Lookup::Off => None,
            Lookup::Bypass => Some("bypass"),
            Lookup::Hit(_) | Lookup::Similar { .. } => Some("hit"),
            Lookup::Stale { .. } => Some("stale"),
            Lookup::Lead { .. } => Some("miss"),
            Lookup::Follow { .. } => Some("coalesced"),
        }
    }

    /// The entry a hit answers with, and the similarity of a semantic one.
    pub fn hit(&self) -> Option<(Arc<Entry>, Option<f32>)> {
        match self {
            Lookup::Hit(e) | Lookup::Stale { entry: e, .. } => Some((e.clone(), None)),
            Lookup::Similar { entry, similarity } => Some((entry.clone(), Some(*similarity))),
            _ => None,
        }
    }

    /// The envelope's `cache` for the job this request runs.
    pub fn write(&self) -> Option<CacheWrite> {
        match self {
            Lookup::Lead { write, .. } => Some(write.clone()),
            _ => None,
        }
    }
}

impl ResponseCache {
    pub fn new(cfg: &CacheConfig) -> ResponseCache {
        ResponseCache {
            cfg: cfg.clone(),
            tier: LocalTier::new(cfg.local_max_bytes, cfg.local_ttl),
            semantic: None,
        }
    }

    /// With the semantic cache (`None`: no model has one).
    pub fn with_semantic(mut self, semantic: Option<SemanticCache>) -> ResponseCache {
        self.semantic = semantic;
        self
    }

    pub fn semantic(&self) -> Option<&SemanticCache> {
        self.semantic.as_ref()
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    pub fn hits_count_against_limits(&self) -> bool {
        self.cfg.hits_count_against_limits
    }

    /// Looks `request` (the body as forwarded upstream) up for job `job` of `tenant`.
    /// `coalesce`: the caller can wait for another job's answer (the synchronous
    /// endpoints); `POST /v1/jobs` cannot, so its misses never follow.
    #[allow(clippy::too_many_arguments)]
    pub async fn lookup(
        &self,
        store: &Store,
        tenant: &str,
        call: Call,
        model: &str,
        request: &Value,
        headers: &HeaderMap,
        job: Uuid,
        coalesce: bool,
    ) -> Lookup {
        if !self.cfg.enabled {
            return Lookup::Off;
        }
        let opt = headers
            .get(OPT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| match v.trim().to_ascii_lowercase().as_str() {
                "on" | "true" | "1" => Some(true),
                "off" | "false" | "0" => Some(false),
                _ => None,
            });
        let control = Control::parse(
            headers
                .get(axum::http::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok()),
        );
        let mode = match self.cfg.mode(model, call == Call::Embedding) {
            CacheMode::Off => policy::Mode::Off,
            CacheMode::Deterministic => policy::Mode::Deterministic,
            CacheMode::Always => policy::Mode::Always,
        };
        let decision = policy::decide(&policy::Inputs {
            call,
            mode,
            opt,
            control,
            request,
        });
        let Decision::Use {
            read, max_age_s, ..
        } = decision
        else {
            metrics::counter!("sluice_cache_requests_total", "result" => "bypass").increment(1);
            return Lookup::Bypass;
        };
        let key = CacheKey::new(Scope::Tenant(tenant), call, model, request);
        let write = CacheWrite {
            key: key.hex(),
            // Validated at start-up to fit.
            ttl_s: u32::try_from(self.cfg.ttl(model).as_secs()).unwrap_or(u32::MAX),
            stale_s: u32::try_from(self.cfg.stale(model).as_secs()).unwrap_or(u32::MAX),
            negative_ttl_s: u32::try_from(self.cfg.negative_ttl.as_secs()).unwrap_or(u32::MAX),
            semantic: None,
        };
        let lookup = if read {
            self.read(store, key, write, max_age_s, job, coalesce).await
        } else {
            // `no-cache`: skip the lookup, refresh the entry.
            Ok(Lookup::Lead {
                write,
                key,
                leased: false,
            })
        };
        let lookup = match lookup {
            Ok(l) => {
                let q = SemanticQuery {
                    tenant,
                    model,
                    request,
                    headers,
                    read,
                    max_age_s,
                    job,
                };
                self.semantic_step(store, &q, l).await
            }
            Err(e) => Err(e),
        };
        let lookup = match lookup {
            Ok(l) => l,
            Err(e) => {
                metrics::counter!("sluice_cache_errors_total").increment(1);
                tracing::warn!(error = %e, "response cache unavailable; running the request uncached");
                Lookup::Bypass
            }
        };
        let result = lookup.header().unwrap_or("off");
        metrics::counter!("sluice_cache_requests_total", "result" => result).increment(1);
        if let Lookup::Hit(e) = &lookup
            && e.negative
        {
            metrics::counter!("sluice_cache_negative_hits_total").increment(1);
        }
        lookup
    }

    /// An exact miss that runs its own job: look for a similar prompt's answer first, and
    /// otherwise carry the prompt's embedding to the worker, which inserts it once the
    /// answer is stored. Anything else passes through.
    async fn semantic_step(
        &self,
        store: &Store,
        q: &SemanticQuery<'_>,
        lookup: Lookup,
    ) -> Result<Lookup, sluice_store::StoreError> {
        let Some(sem) = &self.semantic else {
            return Ok(lookup);
        };
        let Lookup::Lead {
            mut write,
            key,
            leased,
        } = lookup
        else {
            return Ok(lookup);
        };
        let prepared = match sem.prepare(q.tenant, q.model, q.request, q.headers).await {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(Lookup::Lead { write, key, leased }),
            Err(e) => {
                metrics::counter!("sluice_cache_semantic_requests_total", "result" => "error")
                    .increment(1);
                tracing::warn!(error = %e, "semantic cache unavailable; looking up exactly only");
                return Ok(Lookup::Lead { write, key, leased });
            }
        };
        if q.read {
            if let Some(hit) = sem.find(store, &self.tier, &prepared, q.max_age_s).await? {
                metrics::counter!("sluice_cache_semantic_requests_total", "result" => "hit")
                    .increment(1);
                if leased && let Err(e) = store.cache_release(&key, q.job).await {
                    tracing::warn!(error = %e, "cannot free a cache lease; it expires with its TTL");
                }
                return Ok(Lookup::Similar {
                    entry: hit.entry,
                    similarity: hit.similarity,
                });
            }
            metrics::counter!("sluice_cache_semantic_requests_total", "result" => "miss")
                .increment(1);
        }
        write.semantic = Some(prepared.write());
        Ok(Lookup::Lead { write, key, leased })
    }

    /// Looks `key` up; a miss leads (storing under `write`) or follows the job that leads.
    /// An expired entry within its stale window is served stale, and the request that
    /// takes its lease refreshes it. A negative entry answers only a request that can be
    /// answered with an error (`coalesce`: the synchronous endpoints); `POST /v1/jobs`
    /// runs its job.
    async fn read(
        &self,
        store: &Store,
        key: CacheKey,
        write: CacheWrite,
        max_age_s: Option<u64>,
        job: Uuid,
        coalesce: bool,
    ) -> Result<Lookup, sluice_store::StoreError> {
        let now = now_ms();
        let usable = |e: &Entry| e.acceptable(now, max_age_s) && (coalesce || !e.negative);
        if let Some(e) = self.tier.get(&key).filter(|e| e.fresh(now) && usable(e)) {
            return Ok(Lookup::Hit(e));
        }
        let mut stale = None;
        if let Some(e) = store.cache_get(&key).await? {
            let e = Arc::new(e);
            if e.fresh(now) {
                self.tier.insert(key, e.clone());
                if usable(&e) {
                    return Ok(Lookup::Hit(e));
                }
            } else if e.servable_stale(now, u64::from(write.stale_s)) && usable(&e) {
                stale = Some(e);
            }
        }
        if let Some(entry) = stale {
            return self.stale(store, entry, key, write, max_age_s).await;
        }
        if !coalesce {
            return Ok(Lookup::Lead {
                write,
                key,
                leased: false,
            });
        }
        match store
            .cache_lead(&key, job, millis_u64(self.cfg.lease))
            .await?
        {
            Lead::Follower(leader) => Ok(Lookup::Follow { leader, write, key }),
            Lead::Leader => {
                // The previous leader may have stored the answer between our read and our
                // lease: look once more, so a burst makes one upstream call, not two.
                match store.cache_get(&key).await? {
                    Some(e) if e.fresh(now) && usable(&e) => {
                        store.cache_release(&key, job).await?;
                        Ok(Lookup::Hit(Arc::new(e)))
                    }
                    _ => Ok(Lookup::Lead {
                        write,
                        key,
                        leased: true,
                    }),
                }
            }
        }
    }

    /// `entry` expired but is within its stale window: serve it, and refresh it unless a
    /// job already holds the lease (a refresh, or a miss computing the entry). The lease is
    /// taken for the refresh job's id, so across replicas exactly one refresh is queued.
    async fn stale(
        &self,
        store: &Store,
        entry: Arc<Entry>,
        key: CacheKey,
        write: CacheWrite,
        max_age_s: Option<u64>,
    ) -> Result<Lookup, sluice_store::StoreError> {
        let refresh = Uuid::now_v7();
        let refresh = match store
            .cache_lead(&key, refresh, millis_u64(self.cfg.lease))
            .await?
        {
            Lead::Follower(_) => None,
            Lead::Leader => {
                // A refresh may have completed between our read and our lease.
                let now = now_ms();
                match store.cache_get(&key).await? {
                    Some(e) if e.fresh(now) && !e.negative && e.acceptable(now, max_age_s) => {
                        store.cache_release(&key, refresh).await?;
                        return Ok(Lookup::Hit(Arc::new(e)));
                    }
                    _ => Some(Refresh {
                        job: refresh,
                        key,
                        write,
                    }),
                }
            }
        };
        metrics::counter!("sluice_cache_stale_served_total", "refresh" => if refresh.is_some() { "queued" } else { "running" })
            .increment(1);
        Ok(Lookup::Stale { entry, refresh })
    }
}

/// What the semantic step needs of a request.
struct SemanticQuery<'a> {
    tenant: &'a str,
    model: &'a str,
    request: &'a Value,
    headers: &'a HeaderMap,
    read: bool,
    max_age_s: Option<u64>,
    job: Uuid,
}

/// Frees this job's single-flight lease when dropped while armed: the job was refused or
/// never queued, so the next identical request may lead instead of waiting for a job that
/// will not come. The release runs as a task tracked by the server.
pub struct LeaseGuard {
    state: AppState,
    key: CacheKey,
    job: Uuid,
    armed: bool,
}

impl LeaseGuard {
    /// A guard for `lookup`'s lease, if it took one.
    pub fn for_lookup(state: &AppState, lookup: &Lookup, job: Uuid) -> Option<LeaseGuard> {
        match lookup {
            Lookup::Lead {
                key, leased: true, ..
            } => Some(LeaseGuard {
                state: state.clone(),
                key: *key,
                job,
                armed: true,
            }),
            _ => None,
        }
    }

    /// A guard for the lease a stale entry's refresh job holds.
    pub fn for_refresh(state: &AppState, refresh: &Refresh) -> LeaseGuard {
        LeaseGuard {
            state: state.clone(),
            key: refresh.key,
            job: refresh.job,
            armed: true,
        }
    }

    /// The job is queued: it frees the lease when it stores its answer.
    pub fn commit(mut self) {
        self.armed = false;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let state = self.state.clone();
        let (key, job) = (self.key, self.job);
        self.state.background.spawn(async move {
            if let Err(e) = state.store.cache_release(&key, job).await {
                tracing::warn!(error = %e, "cannot free a cache lease; it expires with its TTL");
            }
        });
    }
}

/// What became of the job a coalesced request waited for.
pub enum Followed {
    /// It ended: its outcome is this request's.
    Ended(Outcome),
    /// Still running when the wait limit passed.
    StillRunning,
    /// It does not exist (never queued): run this request's own job.
    Gone,
}

/// Waits up to `limit` for job `leader`, whose answer this request shares.
pub async fn follow(state: &AppState, leader: Uuid, limit: Duration) -> Result<Followed, ApiError> {
    let deadline = Instant::now() + limit;
    let check = state.cfg.delivery.recheck.saturating_mul(2);
    let mut watch = JobWatch::open(state, leader, 0).await?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(check.min(left), watch.wait_terminal()).await {
            Ok(r) => return r.map(Followed::Ended),
            Err(_) if Instant::now() >= deadline => return Ok(Followed::StillRunning),
            Err(_) => {
                if state
                    .store
                    .status(leader)
                    .await
                    .map_err(store_unavailable)?
                    .is_none()
                {
                    return Ok(Followed::Gone);
                }
            }
        }
    }
}

/// The synchronous answer of a hit or a coalesced wait: the stored JSON, or for a stream
/// request its re-chunking as server-sent events.
pub fn answer(
    body: &[u8],
    stream: Option<bool>,
    how: &'static str,
    extra: Vec<(&'static str, String)>,
) -> Result<Response, ApiError> {
    let mut resp = match stream {
        None => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body.to_vec(),
        )
            .into_response(),
        Some(include_usage) => {
            let completion: Value = serde_json::from_slice(body)
                .map_err(|_| ApiError::Internal("a cached answer is not JSON".into()))?;
            let events = rechunk(&completion, include_usage)
                .into_iter()
                .map(|c| Ok::<_, Infallible>(Event::default().data(c.to_string())))
                .chain(std::iter::once(Ok(Event::default().data("[DONE]"))));
            Sse::new(futures_util::stream::iter(events)).into_response()
        }
    };
    let h = resp.headers_mut();
    h.insert(CACHE_HEADER, HeaderValue::from_static(how));
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    Ok(resp)
}

/// The answer of a negative entry: the stored error of the upstream's refusal, with the
/// status and OpenAI error body the job itself ended with (for a stream request too: the
/// refusal came before any chunk).
pub fn negative_answer(
    error: &[u8],
    how: &'static str,
    extra: Vec<(&'static str, String)>,
) -> Response {
    let error = std::str::from_utf8(error).ok();
    let mut resp = crate::watch::failure(sluice_protocol::JobStatus::Failed, error).into_response();
    let h = resp.headers_mut();
    h.insert(CACHE_HEADER, HeaderValue::from_static(how));
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    resp
}

/// A cached chat completion as the chunks of a stream, the way the provider would have
/// sent it: per choice a role chunk, the content in word-sized pieces, tool calls, then the
/// finish reason; with `include_usage` a last chunk with empty `choices` and the usage.
pub fn rechunk(completion: &Value, include_usage: bool) -> Vec<Value> {
    let id = completion.get("id").cloned().unwrap_or(Value::Null);
    let created = completion.get("created").cloned().unwrap_or(json!(0));
    let model = completion.get("model").cloned().unwrap_or(Value::Null);
    let fingerprint = completion.get("system_fingerprint").cloned();
    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created,
            "model": model, "choices": choices,
        });
        if let Some(f) = &fingerprint {
            c["system_fingerprint"] = f.clone();
        }
        if include_usage {
            c["usage"] = usage.cloned().unwrap_or(Value::Null);
        }
        c
    };
    let mut out = Vec::new();
    let choices = completion
        .get("choices")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (n, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(json!(n));
        let message = choice.get("message").cloned().unwrap_or(json!({}));
        let role = message.get("role").cloned().unwrap_or(json!("assistant"));
        let delta_chunk = |delta: Value, finish: Value| {
            chunk(
                json!([{ "index": index, "delta": delta, "logprobs": null, "finish_reason": finish }]),
                None,
            )
        };
        out.push(delta_chunk(
            json!({ "role": role, "content": "" }),
            Value::Null,
        ));
        if let Some(text) = message.get("content").and_then(Value::as_str) {
            for piece in pieces(text) {
                out.push(delta_chunk(json!({ "content": piece }), Value::Null));
            }
        }
        if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
            for (i, call) in calls.iter().enumerate() {
                let mut c = call.clone();
                c["index"] = json!(i);
                out.push(delta_chunk(json!({ "tool_calls": [c] }), Value::Null));
            }
        }
        let finish = choice
            .get("finish_reason")
            .cloned()
            .unwrap_or(json!("stop"));
        out.push(delta_chunk(json!({}), finish));
    }
    if include_usage {
        out.push(chunk(json!([]), completion.get("usage")));
    }
    out
}

/// `text` cut after each run of whitespace: word-sized pieces that concatenate back to it.
fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, ch) in text.char_indices() {
        if ch.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// A hit was served: what it saved, per tenant and model (both configured, so bounded):
/// `sluice_cache_saved_tokens_total{tenant, model, type=input|output}` and
/// `sluice_cache_saved_cost_microusd_total{tenant, model}` (priced by `governance.prices`,
/// like `sluice_cost_microusd_total`).
pub fn count_saved(gov: &sluice_config::GovernanceConfig, tenant: &str, model: &str, e: &Entry) {
    for (kind, n) in [("input", e.prompt_tokens), ("output", e.completion_tokens)] {
        metrics::counter!("sluice_cache_saved_tokens_total", "type" => kind, "model" => model.to_owned(), "tenant" => tenant.to_owned())
            .increment(n);
    }
    let usage = sluice_governance::estimate::Usage {
        prompt_tokens: e.prompt_tokens,
        completion_tokens: e.completion_tokens,
    };
    let cost = sluice_governance::estimate::cost_micro_usd(gov, model, usage);
    if cost > 0 {
        metrics::counter!("sluice_cache_saved_cost_microusd_total", "model" => model.to_owned(), "tenant" => tenant.to_owned())
            .increment(cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion() -> Value {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, friend."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        })
    }

    #[test]
    fn pieces_concatenate_back_to_the_text() {
        for text in ["", "one", "a b  c", " lead", "trail ", "héllo wörld \n x"] {
            assert_eq!(pieces(text).concat(), text);
        }
        assert_eq!(pieces("a b c"), vec!["a ", "b ", "c"]);
    }

    #[test]
    fn a_rechunked_answer_reassembles_to_the_cached_one() {
        let chunks = rechunk(&completion(), true);
        let mut content = String::new();
        let mut finish = None;
        for c in &chunks[..chunks.len() - 1] {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["id"], "chatcmpl-1");
            let choice = &c["choices"][0];
            content.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if !choice["finish_reason"].is_null() {
                finish = Some(choice["finish_reason"].clone());
            }
            assert!(c["usage"].is_null());
        }
        assert_eq!(content, "Hello there, friend.");
        assert_eq!(finish, Some(json!("stop")));
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 7);
    }

    #[test]
    fn without_include_usage_no_chunk_carries_usage() {
        let chunks = rechunk(&completion(), false);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert!(
            chunks
                .iter()
                .all(|c| !c["choices"].as_array().unwrap().is_empty())
        );
    }

    #[test]
    fn tool_calls_are_streamed_with_their_index() {
        let mut c = completion();
        c["choices"][0]["message"] = json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]});
        c["choices"][0]["finish_reason"] = json!("tool_calls");
        let chunks = rechunk(&c, false);
        let call = chunks
            .iter()
            .find_map(|c| c["choices"][0]["delta"].get("tool_calls"))
            .expect("a tool call chunk");
        assert_eq!(call[0]["index"], 0);
        assert_eq!(call[0]["function"]["name"], "f");
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }
}

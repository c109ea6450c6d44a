//! Model pools: one call of a job attempt, through the whole resilience chain.
//!
//! ```text
//! retry budget ─▶ pool of the alias: P2C pick ─▶ call (hedged after the p95) ─┐
//!                      ▲ another deployment, jittered backoff, budget-gated ◀──┘ retryable
//!                 └── fallback model's pool ─▶ (last attempt only) stale answer ─▶ degradation message
//! ```
//!
//! A model without a configured pool is served by the `[upstream]` section as one implicit
//! deployment. Errors keep their single classification ([`CallError::class`]); the worker
//! decides ack / NAK / fail from it in one place.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use rand::Rng;
use serde_json::Value;
use sluice_config::{DeploymentConfig, HedgeConfig, ModelsConfig, ProviderSettings};
use sluice_protocol::ErrorCode;
use tokio::{sync::Mutex, time::Instant};
use tracing::Instrument;

use crate::{
    ErrorClass, OpenAiProvider, ProviderError,
    balance::{self, Pick},
    budget::RetryBudget,
    deployment::{Deployment, Slot, Unavailable},
    fallback::{self, SharedStale, StaleCache},
    routing::Router,
};

/// The upstream endpoint a job calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Chat,
    Embeddings,
}

/// One job attempt's call.
#[derive(Debug, Clone)]
pub struct CallRequest<'a> {
    pub kind: CallKind,
    /// The alias to serve (after routing).
    pub model: &'a str,
    pub body: &'a [u8],
    /// A redelivery: its upstream calls are retries and need budget.
    pub redelivery: bool,
    /// The last attempt the job gets: the chain may end in a stale or degraded answer.
    pub final_attempt: bool,
    pub deadline: Option<Instant>,
}

/// How an answer was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Upstream,
    Hedge,
    FallbackModel,
    Stale,
    Degraded,
}

impl Served {
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Upstream => "upstream",
            Served::Hedge => "hedge",
            Served::FallbackModel => "fallback_model",
            Served::Stale => "stale",
            Served::Degraded => "degraded",
        }
    }

    pub fn is_degraded(self) -> bool {
        matches!(self, Served::Stale | Served::Degraded)
    }
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub body: Bytes,
    /// The alias that answered.
    pub model: String,
    pub deployment: String,
    pub served: Served,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Upstream(#[from] ProviderError),
    /// `reason`: why the last deployment looked at could not take it (`None`: none was
    /// left to try).
    #[error("no deployment can take the call now ({})", reason.map_or("no_deployment", Unavailable::as_str))]
    Unavailable {
        reason: Option<Unavailable>,
        retry_in: Option<Duration>,
    },
    #[error("the retry budget is spent")]
    BudgetExhausted,
}

impl CallError {
    pub fn class(&self) -> ErrorClass {
        match self {
            CallError::Upstream(e) => e.class(),
            CallError::Unavailable { .. } | CallError::BudgetExhausted => ErrorClass::Retryable,
        }
    }

    /// The least time to wait before the next attempt, when known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Upstream(e) => e.retry_after(),
            CallError::Unavailable { retry_in, .. } => *retry_in,
            CallError::BudgetExhausted => None,
        }
    }

    /// The stored error code; its `as_str()` is the metric label.
    pub fn code(&self) -> ErrorCode {
        match self {
            CallError::Upstream(e) => e.code(),
            CallError::Unavailable { reason, .. } => match reason {
                Some(Unavailable::BreakerOpen) => ErrorCode::UpstreamCircuitOpen,
                Some(Unavailable::CoolingDown(_) | Unavailable::NearQuota(_)) => {
                    ErrorCode::UpstreamRateLimited
                }
                Some(Unavailable::Busy) | None => ErrorCode::UpstreamUnavailable,
            },
            CallError::BudgetExhausted => ErrorCode::RetryBudgetExhausted,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot build the HTTP client of deployment {0}")]
    Client(String),
}

struct Pool {
    deps: Vec<Arc<Deployment>>,
    fallback_model: Option<String>,
    degraded_message: Option<String>,
    hedge: HedgeConfig,
    /// Hedges as a share of calls (the retry budget's shape).
    hedges: Mutex<RetryBudget>,
}

/// Every model pool of a worker, the shared retry budget and the stale-answer cache.
pub struct Pools {
    pools: HashMap<String, Pool>,
    /// Some deployment has a tokens-per-minute quota.
    counts_tokens: bool,
    implicit: Pool,
    cfg: ModelsConfig,
    budget: Mutex<RetryBudget>,
    stale: StaleCache,
    router: Router,
}

impl Pools {
    /// The pools of `[models]` and the implicit `[upstream]` one, with the keys the
    /// settings resolved at start-up.
    pub fn new(cfg: &ProviderSettings) -> Result<Pools, BuildError> {
        let m = &cfg.models;
        let now = Instant::now();
        let pool = |deps: Vec<Arc<Deployment>>,
                    fallback_model,
                    degraded_message,
                    hedge: HedgeConfig| Pool {
            // At least one hedge per window, otherwise max_share of calls.
            hedges: Mutex::new(RetryBudget::new(
                hedge.max_share,
                0.1,
                Duration::from_secs(10),
                now,
            )),
            deps,
            fallback_model,
            degraded_message,
            hedge,
        };
        let mut pools = HashMap::with_capacity(m.pools.len());
        for p in &m.pools {
            let mut deps = Vec::with_capacity(p.deployments.len());
            for d in &p.deployments {
                let key = cfg.deployment_key(&p.alias, &d.name);
                let client = OpenAiProvider::for_deployment(d, key)
                    .map_err(|_| BuildError::Client(d.name.clone()))?;
                deps.push(Deployment::from_config(
                    d,
                    client,
                    &m.breaker,
                    m.quota_headroom,
                ));
            }
            pools.insert(
                p.alias.clone(),
                pool(
                    deps,
                    p.fallback_model.clone(),
                    p.degraded_message.clone(),
                    p.hedge.clone(),
                ),
            );
        }
        let up = &cfg.upstream;
        let client = OpenAiProvider::new(up, cfg.upstream_key.clone())
            .map_err(|_| BuildError::Client("upstream".into()))?;
        let implicit_cfg = DeploymentConfig {
            max_concurrency: 1_000_000,
            timeout: up.timeout,
            ..DeploymentConfig::new("upstream", &up.base_url)
        };
        let implicit = pool(
            vec![Deployment::from_config(
                &implicit_cfg,
                client,
                &m.breaker,
                m.quota_headroom,
            )],
            None,
            None,
            HedgeConfig::default(),
        );
        let counts_tokens = pools
            .values()
            .flat_map(|p| &p.deps)
            .any(|d| d.counts_tokens);
        Ok(Pools {
            counts_tokens,
            pools,
            implicit,
            budget: Mutex::new(RetryBudget::new(
                m.retry_budget_ratio,
                m.retry_budget_min_per_s,
                m.retry_budget_window,
                now,
            )),
            stale: StaleCache::new(m.stale_cache_entries),
            router: Router::new(&m.routing),
            cfg: m.clone(),
        })
    }

    /// Every deployment's breaker state, `(deployment, state)`, sorted by name, with the
    /// implicit `upstream` deployment that serves models without a pool.
    pub fn breakers(&self) -> Vec<(String, &'static str)> {
        let mut out: Vec<(String, &'static str)> = self
            .pools
            .values()
            .chain([&self.implicit])
            .flat_map(|p| &p.deps)
            .map(|d| (d.name.clone(), d.breaker_state()))
            .collect();
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    fn pool(&self, alias: &str) -> &Pool {
        self.pools.get(alias).unwrap_or(&self.implicit)
    }

    async fn withdraw(&self) -> bool {
        let ok = self.budget.lock().await.try_withdraw(Instant::now());
        if !ok {
            metrics::counter!("sluice_retry_budget_exhausted_total").increment(1);
        }
        ok
    }

    /// Charges the attempt to the retry budget (a redelivery withdraws, a first attempt
    /// deposits) and returns the token estimate and the chain of aliases to try.
    async fn begin(&self, req: &CallRequest<'_>) -> Result<(f64, Vec<String>), CallError> {
        if req.redelivery {
            if !self.withdraw().await {
                return Err(CallError::BudgetExhausted);
            }
        } else {
            self.budget.lock().await.deposit(Instant::now());
        }
        let mut chain = vec![req.model.to_string()];
        if let Some(f) = &self.pool(req.model).fallback_model {
            chain.push(f.clone());
        }
        // Only a tokens-per-minute quota needs the estimate (it parses the whole body).
        let estimate = if self.counts_tokens {
            estimate_tokens(req.body)
        } else {
            0.0
        };
        Ok((estimate, chain))
    }

    /// Runs one job attempt's call through the chain (see the module docs).
    pub async fn call(&self, req: &CallRequest<'_>) -> Result<Answer, CallError> {
        self.call_with(req, None).await
    }

    /// [`Pools::call`] whose stale answer, at the end of the chain, comes from `shared`
    /// (the response cache) rather than this worker's map, unless `shared` cannot be read.
    pub async fn call_with(
        &self,
        req: &CallRequest<'_>,
        shared: Option<&dyn SharedStale>,
    ) -> Result<Answer, CallError> {
        let (tokens, chain) = match self.begin(req).await {
            Ok(v) => v,
            Err(e) => return self.last_resort(req, e, shared).await,
        };
        let answered = self
            .through_chain(&chain, req, tokens, &Plain { req, tokens })
            .await;
        match answered {
            Ok((i, mut a)) => {
                if i > 0 {
                    a.served = Served::FallbackModel;
                }
                self.stale.put(req.model, req.body, &a.body);
                metrics::counter!("sluice_answers_total", "served" => a.served.as_str())
                    .increment(1);
                Ok(a)
            }
            Err(e) => self.last_resort(req, e, shared).await,
        }
    }

    /// Tries the pools of `chain` in order with `one` until one answers; returns the chain
    /// index that did. A permanent error ends the chain.
    async fn through_chain<C: Caller>(
        &self,
        chain: &[String],
        req: &CallRequest<'_>,
        tokens: f64,
        one: &C,
    ) -> Result<(usize, C::Out), CallError> {
        let mut calls = 0u32;
        let mut last = None;
        for (i, model) in chain.iter().enumerate() {
            let pool = self.pool(model);
            let answered = self
                .call_pool(pool, model, req, tokens, &mut calls, one)
                .await;
            match answered {
                Ok(a) => return Ok((i, a)),
                Err(e) if e.class() == ErrorClass::Permanent => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(CallError::Unavailable {
            reason: None,
            retry_in: None,
        }))
    }

    /// On the last attempt, a stale answer or the degradation message instead of `err`.
    async fn last_resort(
        &self,
        req: &CallRequest<'_>,
        err: CallError,
        shared: Option<&dyn SharedStale>,
    ) -> Result<Answer, CallError> {
        if !req.final_attempt || err.class() == ErrorClass::Permanent {
            return Err(err);
        }
        let stale = match shared {
            Some(s) => match s.stale_answer().await {
                Ok(found) => {
                    let result = if found.is_some() { "hit" } else { "miss" };
                    metrics::counter!("sluice_stale_answer_lookups_total", "result" => result)
                        .increment(1);
                    found
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stale answer: using this worker's own, the shared cache is unreadable");
                    metrics::counter!("sluice_stale_answer_lookups_total", "result" => "error")
                        .increment(1);
                    self.stale.get(req.model, req.body)
                }
            },
            None => self.stale.get(req.model, req.body),
        };
        let (body, served) = if let Some(b) = stale.and_then(|b| fallback::mark_stale(&b)) {
            (b, Served::Stale)
        } else if let (Some(msg), CallKind::Chat) =
            (&self.pool(req.model).degraded_message, req.kind)
        {
            (
                fallback::degraded_completion(req.model, msg),
                Served::Degraded,
            )
        } else {
            return Err(err);
        };
        metrics::counter!("sluice_answers_total", "served" => served.as_str()).increment(1);
        Ok(Answer {
            body,
            model: req.model.to_string(),
            deployment: String::new(),
            served,
        })
    }

    /// One pool's deployments, one after the other with jittered backoff, each call after
    /// the first budget-gated, until `one` answers or a permanent error.
    async fn call_pool<C: Caller>(
        &self,
        pool: &Pool,
        model: &str,
        req: &CallRequest<'_>,
        tokens: f64,
        calls: &mut u32,
        one: &C,
    ) -> Result<C::Out, CallError> {
        let mut tried: Vec<usize> = Vec::with_capacity(pool.deps.len());
        let mut last: Option<CallError> = None;
        while *calls < self.cfg.max_calls_per_attempt {
            let (idx, pick) = balance::pick(&pool.deps, &tried, tokens);
            let slot = match pick {
                Pick::Slot(s) => s,
                Pick::None { retry_in, reason } => {
                    last = Some(last.unwrap_or(CallError::Unavailable { reason, retry_in }));
                    break;
                }
            };
            if *calls > 0 {
                if !self.withdraw().await {
                    last = Some(last.unwrap_or(CallError::BudgetExhausted));
                    break;
                }
                let cap = self
                    .cfg
                    .retry_base
                    .saturating_mul(1 << (*calls - 1).min(16))
                    .min(self.cfg.retry_max);
                let pause = cap.mul_f64(rand::rng().random_range(0.0..=1.0));
                if req.deadline.is_some_and(|d| Instant::now() + pause >= d) {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            tried.extend(idx);
            *calls += 1;
            match one.call(self, pool, model, slot, &mut tried, calls).await {
                Ok(a) => return Ok(a),
                Err(e) if e.class() == ErrorClass::Permanent => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(CallError::Unavailable {
            reason: None,
            retry_in: None,
        }))
    }

    /// One call, hedged on another deployment when it runs past the threshold.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        pool: &Pool,
        model: &str,
        req: &CallRequest<'_>,
        tokens: f64,
        slot: Slot,
        tried: &mut Vec<usize>,
        calls: &mut u32,
    ) -> Result<Answer, CallError> {
        if !pool.hedge.enabled {
            return send(slot, model, req).await;
        }
        pool.hedges.lock().await.deposit(Instant::now());
        let after = if !pool.hedge.after.is_zero() {
            pool.hedge.after
        } else {
            slot.deployment().p95().unwrap_or(Duration::from_secs(1))
        };
        let first = send(slot, model, req);
        tokio::pin!(first);
        tokio::select! {
            r = &mut first => return r,
            _ = tokio::time::sleep(after) => {}
        }
        if *calls >= self.cfg.max_calls_per_attempt
            || !pool.hedges.lock().await.try_withdraw(Instant::now())
        {
            return first.await;
        }
        let (idx, pick) = balance::pick(&pool.deps, tried, tokens);
        let Pick::Slot(second_slot) = pick else {
            return first.await;
        };
        tried.extend(idx);
        *calls += 1;
        metrics::counter!("sluice_hedges_total", "event" => "started").increment(1);
        let second = send(second_slot, model, req);
        tokio::pin!(second);
        // The first answer wins and the other call is dropped (cancelled) on return; an
        // error waits for the other call instead.
        tokio::select! {
            r = &mut first => match r {
                Ok(a) => {
                    metrics::counter!("sluice_hedges_total", "event" => "primary_won").increment(1);
                    Ok(a)
                }
                Err(e) => second.await.map(hedged).or(Err(e)),
            },
            r = &mut second => match r {
                Ok(a) => Ok(hedged(a)),
                Err(e) => first.await.or(Err(e)),
            },
        }
    }
}

/// A streamed answer: the upstream's server-sent events, passed through as they arrive.
/// The deployment's books (latency, breaker) are settled when the stream ends or is dropped.
pub struct StreamAnswer {
    pub model: String,
    pub deployment: String,
    pub stream: crate::openai::ByteStream,
}

impl Pools {
    /// A streaming chat completion: the same routing and deployment choice as [`Pools::call`],
    /// retried on other deployments (and the fallback model) until one answers 2xx. Once
    /// bytes flow they belong to the client, so a failure mid-stream is not retried.
    pub async fn stream(&self, req: &CallRequest<'_>) -> Result<StreamAnswer, CallError> {
        let (tokens, chain) = self.begin(req).await?;
        let (_, answer) = self
            .through_chain(&chain, req, tokens, &Streaming { body: req.body })
            .await?;
        Ok(answer)
    }
}

/// One call on a reserved slot, as [`Pools::call_pool`] makes it: the plain call (hedged)
/// or opening a stream.
trait Caller: Sync {
    type Out;
    fn call(
        &self,
        pools: &Pools,
        pool: &Pool,
        model: &str,
        slot: Slot,
        tried: &mut Vec<usize>,
        calls: &mut u32,
    ) -> impl Future<Output = Result<Self::Out, CallError>> + Send;
}

struct Plain<'r, 'a> {
    req: &'r CallRequest<'a>,
    tokens: f64,
}

impl Caller for Plain<'_, '_> {
    type Out = Answer;
    async fn call(
        &self,
        pools: &Pools,
        pool: &Pool,
        model: &str,
        slot: Slot,
        tried: &mut Vec<usize>,
        calls: &mut u32,
    ) -> Result<Answer, CallError> {
        pools
            .attempt(pool, model, self.req, self.tokens, slot, tried, calls)
            .await
    }
}

struct Streaming<'r> {
    body: &'r [u8],
}

impl Caller for Streaming<'_> {
    type Out = StreamAnswer;
    /// Opens the streaming call on `slot`; the slot is settled when the stream ends.
    async fn call(
        &self,
        _: &Pools,
        _: &Pool,
        model: &str,
        slot: Slot,
        _: &mut Vec<usize>,
        _: &mut u32,
    ) -> Result<StreamAnswer, CallError> {
        open_stream(slot, model, self.body).await
    }
}

async fn open_stream(slot: Slot, model: &str, body: &[u8]) -> Result<StreamAnswer, CallError> {
    let dep = slot.deployment().clone();
    let body = with_model(body, dep.upstream_model.as_deref().unwrap_or(model));
    let span = crate::genai::call_span(CallKind::Chat, model, &dep.name);
    let started = Instant::now();
    match dep
        .client
        .chat_completion_stream(body)
        .instrument(span.clone())
        .await
    {
        Ok(inner) => Ok(StreamAnswer {
            model: model.to_string(),
            deployment: dep.name.clone(),
            stream: Box::pin(SlotStream {
                inner,
                slot: Some(slot),
                span,
                first: Some((started, model.to_string(), dep.name.clone())),
            }),
        }),
        Err(e) => {
            slot.failed(e.clone());
            Err(CallError::Upstream(e))
        }
    }
}

/// Passes a stream through and settles its [`Slot`] when it ends, fails or is dropped.
struct SlotStream {
    inner: crate::openai::ByteStream,
    slot: Option<Slot>,
    /// The call's span; when it started, its model and deployment, until the first chunk.
    span: tracing::Span,
    first: Option<(Instant, String, String)>,
}

impl futures_util::Stream for SlotStream {
    type Item = Result<Bytes, ProviderError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let item = std::task::ready!(self.inner.as_mut().poll_next(cx));
        match &item {
            None => {
                if let Some(s) = self.slot.take() {
                    s.succeeded(None);
                }
            }
            Some(Err(e)) => {
                if let Some(s) = self.slot.take() {
                    s.failed(e.clone());
                }
            }
            Some(Ok(_)) => {
                if let Some((at, model, deployment)) = self.first.take() {
                    crate::genai::first_chunk(&self.span, &model, &deployment, at.elapsed());
                }
            }
        }
        std::task::Poll::Ready(item)
    }
}

fn hedged(mut a: Answer) -> Answer {
    metrics::counter!("sluice_hedges_total", "event" => "hedge_won").increment(1);
    a.served = Served::Hedge;
    a
}

async fn send(slot: Slot, model: &str, req: &CallRequest<'_>) -> Result<Answer, CallError> {
    let dep = slot.deployment().clone();
    let body = with_model(req.body, dep.upstream_model.as_deref().unwrap_or(model));
    let span = crate::genai::call_span(req.kind, model, &dep.name);
    let started = Instant::now();
    let call = async {
        match req.kind {
            CallKind::Chat => dep.client.chat_completion(body).await,
            CallKind::Embeddings => dep.client.embeddings(body).await,
        }
    };
    let result = match req.deadline {
        Some(d) => tokio::time::timeout_at(d, call)
            .instrument(span.clone())
            .await
            .unwrap_or(Err(ProviderError::Timeout)),
        None => call.instrument(span.clone()).await,
    };
    let facts = result
        .as_ref()
        .map(|b| &b[..])
        .map_err(|e| e.code().as_str());
    crate::genai::finished(&span, req.kind, model, &dep.name, started.elapsed(), facts);
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    };
    metrics::counter!("sluice_upstream_calls_total", "deployment" => dep.name.clone(), "outcome" => outcome).increment(1);
    match result {
        Ok(body) => {
            let used = dep.counts_tokens.then(|| used_tokens(&body)).flatten();
            slot.succeeded(used);
            Ok(Answer {
                body,
                model: model.to_string(),
                deployment: dep.name.clone(),
                served: Served::Upstream,
            })
        }
        Err(e) => {
            slot.failed(e.clone());
            Err(CallError::Upstream(e))
        }
    }
}

/// The request body with `model` set to what the deployment expects.
fn with_model(body: &[u8], model: &str) -> Bytes {
    /// Reads only `model`: most bodies already name the deployment's model, and building the
    /// whole object to find out was a worker's largest parse.
    #[derive(serde::Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        model: Option<std::borrow::Cow<'a, str>>,
    }
    if serde_json::from_slice::<Named>(body).is_ok_and(|n| n.model.as_deref() == Some(model)) {
        return Bytes::copy_from_slice(body);
    }
    let Ok(mut v) = serde_json::from_slice::<serde_json::Map<String, Value>>(body) else {
        return Bytes::copy_from_slice(body);
    };
    v.insert("model".into(), Value::String(model.to_string()));
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::copy_from_slice(body))
}

/// A token estimate for the quota: prompt bytes / 4 plus the output allowance.
fn estimate_tokens(body: &[u8]) -> f64 {
    #[derive(serde::Deserialize)]
    struct Limits {
        max_tokens: Option<u64>,
        max_completion_tokens: Option<u64>,
    }
    let out = serde_json::from_slice::<Limits>(body)
        .ok()
        .and_then(|l| l.max_completion_tokens.or(l.max_tokens))
        .unwrap_or(256);
    (body.len() / 4) as f64 + out as f64
}

fn used_tokens(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Usage {
        total_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct Resp {
        usage: Option<Usage>,
    }
    serde_json::from_slice::<Resp>(body)
        .ok()?
        .usage?
        .total_tokens
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures_util::StreamExt;
    use sluice_config::{Config, PoolConfig};

    use super::*;

    #[tokio::test]
    async fn streaming_moves_to_another_deployment_until_one_answers_then_passes_events_through() {
        let down = sluice_sim::SimConfig {
            error_rate: 1.0,
            ..Default::default()
        };
        let bad = sluice_sim::start(down, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let good = sluice_sim::start(Default::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut cfg = Config::default();
        cfg.models.pools = vec![PoolConfig {
            alias: "sim-small".into(),
            deployments: vec![
                DeploymentConfig {
                    weight: 100,
                    ..DeploymentConfig::new("bad", &bad.base_url())
                },
                DeploymentConfig::new("good", &good.base_url()),
            ],
            fallback_model: None,
            degraded_message: None,
            hedge: HedgeConfig::default(),
        }];
        let pools = Pools::new(&ProviderSettings::new(&cfg).unwrap()).unwrap();
        let body =
            br#"{"model":"sim-small","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let req = CallRequest {
            kind: CallKind::Chat,
            model: "sim-small",
            body,
            redelivery: false,
            final_attempt: false,
            deadline: None,
        };
        let mut answer = pools.stream(&req).await.unwrap();
        assert_eq!(answer.deployment, "good");
        let mut text = Vec::new();
        while let Some(chunk) = answer.stream.next().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.starts_with("data: ") && text.trim_end().ends_with("data: [DONE]"),
            "{text}"
        );
        assert_eq!(bad.counters().injected_errors, 1);
        assert_eq!(
            pools.pool("sim-small").deps[1].outstanding(),
            0,
            "the slot is settled at the end"
        );
    }

    #[tokio::test]
    async fn a_tokens_per_minute_quota_counts_the_estimate_and_only_it_does() {
        let sim = sluice_sim::start(Default::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut cfg = Config::default();
        cfg.models.pools = vec![PoolConfig {
            alias: "sim-small".into(),
            deployments: vec![DeploymentConfig {
                tpm: 100,
                ..DeploymentConfig::new("small-quota", &sim.base_url())
            }],
            fallback_model: None,
            degraded_message: None,
            hedge: HedgeConfig::default(),
        }];
        cfg.upstream.base_url = sim.base_url();
        let pools = Pools::new(&ProviderSettings::new(&cfg).unwrap()).unwrap();
        assert!(pools.counts_tokens);
        let call = |model: &'static str, body: &'static [u8]| CallRequest {
            kind: CallKind::Chat,
            model,
            body,
            redelivery: false,
            final_attempt: false,
            deadline: None,
        };
        // Asks for more than the whole minute's quota: refused before reaching upstream.
        let big = br#"{"model":"sim-small","max_tokens":5000,"messages":[{"role":"user","content":"hi"}]}"#;
        let refused = pools.call(&call("sim-small", big)).await;
        assert!(
            matches!(refused, Err(CallError::Unavailable { .. })),
            "{refused:?}"
        );
        assert_eq!(sim.counters().per_endpoint.chat_completions, 0);
        // The implicit upstream has no quota: the same size goes through.
        let other = br#"{"model":"sim-large","max_tokens":5000,"messages":[{"role":"user","content":"hi"}]}"#;
        assert!(pools.call(&call("sim-large", other)).await.is_ok());
        assert_eq!(sim.counters().per_endpoint.chat_completions, 1);
        let no_quota = Pools::new(
            &ProviderSettings::new(&Config {
                upstream: cfg.upstream.clone(),
                ..Config::default()
            })
            .unwrap(),
        )
        .unwrap();
        assert!(!no_quota.counts_tokens);
    }

    #[test]
    fn the_model_is_rewritten_only_when_it_differs() {
        let body = br#"{"model":"auto","messages":[]}"#;
        let out: Value = serde_json::from_slice(&with_model(body, "sim-small")).unwrap();
        assert_eq!(out["model"], "sim-small");
        assert_eq!(&with_model(body, "auto")[..], &body[..]);
        let escaped = br#"{"model":"au\u0074o","messages":[]}"#;
        assert_eq!(&with_model(escaped, "auto")[..], &escaped[..]);
        let unnamed: Value =
            serde_json::from_slice(&with_model(br#"{"messages":[]}"#, "m")).unwrap();
        assert_eq!(unnamed["model"], "m");
        assert_eq!(estimate_tokens(br#"{"max_tokens":10}"#), 4.0 + 10.0);
        assert_eq!(used_tokens(br#"{"usage":{"total_tokens":7}}"#), Some(7));
    }
}

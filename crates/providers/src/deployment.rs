//! One deployment of a model pool: its HTTP client and everything the balancer needs to
//! know about it — calls outstanding, latency (EWMA and a recent p95), the circuit breaker,
//! request/token quotas and a `Retry-After` cool-down.
//!
//! A call holds a [`Slot`] from the moment the balancer picks the deployment; whatever way
//! the call ends (answer, error, or the future dropped because a hedge won), the slot's
//! drop puts the deployment's books straight.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use sluice_config::{BreakerConfig, DeploymentConfig};
use tokio::time::Instant;

use crate::{
    OpenAiProvider, ProviderError,
    breaker::{Admission, Breaker},
    quota::Bucket,
};

/// Latency samples kept for the p95 estimate.
const LATENCY_SAMPLES: usize = 64;
const EWMA_ALPHA: f64 = 0.3;

pub struct Deployment {
    pub name: String,
    /// Model name sent upstream; `None`: the alias the client asked for.
    pub upstream_model: Option<String>,
    pub weight: u32,
    pub max_concurrency: usize,
    pub client: OpenAiProvider,
    /// A tokens-per-minute quota applies: calls are estimated and answers' usage counted.
    pub counts_tokens: bool,
    headroom: f64,
    state: Mutex<State>,
    /// Registered once: looking a labelled gauge up per call costs a hash of its labels.
    outstanding_gauge: metrics::Gauge,
    breaker_gauge: metrics::Gauge,
}

struct State {
    outstanding: usize,
    ewma_ms: Option<f64>,
    recent: VecDeque<f64>,
    breaker: Breaker,
    rpm: Option<Bucket>,
    tpm: Option<Bucket>,
    cooldown_until: Option<Instant>,
}

/// Why a deployment cannot take a call now, and for how long at least.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    Busy,
    BreakerOpen,
    CoolingDown(Duration),
    NearQuota(Duration),
}

impl Unavailable {
    /// A low-cardinality label (logs and error text).
    pub fn as_str(self) -> &'static str {
        match self {
            Unavailable::Busy => "deployments_busy",
            Unavailable::BreakerOpen => "breaker_open",
            Unavailable::CoolingDown(_) => "rate_limited",
            Unavailable::NearQuota(_) => "quota",
        }
    }

    /// How long at least until the deployment may take a call, when known.
    pub fn wait(self) -> Option<Duration> {
        match self {
            Unavailable::Busy | Unavailable::BreakerOpen => None,
            Unavailable::CoolingDown(w) | Unavailable::NearQuota(w) => Some(w),
        }
    }
}

impl Deployment {
    pub fn from_config(
        d: &DeploymentConfig,
        client: OpenAiProvider,
        breaker: &BreakerConfig,
        headroom: f64,
    ) -> Arc<Deployment> {
        let now = Instant::now();
        Arc::new(Deployment {
            outstanding_gauge: metrics::gauge!("sluice_deployment_outstanding", "deployment" => d.name.clone()),
            breaker_gauge: metrics::gauge!("sluice_breaker_state", "deployment" => d.name.clone()),
            name: d.name.clone(),
            upstream_model: d.model.clone(),
            weight: d.weight.max(1),
            max_concurrency: d.max_concurrency.max(1),
            client,
            counts_tokens: d.tpm > 0,
            headroom,
            state: Mutex::new(State {
                outstanding: 0,
                ewma_ms: None,
                recent: VecDeque::with_capacity(LATENCY_SAMPLES),
                breaker: Breaker::new(breaker, now),
                rpm: Bucket::per_minute(d.rpm, now),
                tpm: Bucket::per_minute(d.tpm, now),
                cooldown_until: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the deployment could take a call of `tokens` now (no side effects other than
    /// the breaker's open → half-open step).
    pub fn check(&self, now: Instant, tokens: f64) -> Result<(), Unavailable> {
        let mut s = self.lock();
        check(&mut s, now, tokens, self.headroom, self.max_concurrency)
    }

    /// The balancer's cost of sending one more call here: expected latency × queue depth,
    /// divided by weight. Unknown latency counts as fast, so new deployments get traffic.
    pub fn score(&self) -> f64 {
        let s = self.lock();
        let latency = s.ewma_ms.unwrap_or(1.0).max(1.0);
        latency * (s.outstanding as f64 + 1.0) / f64::from(self.weight)
    }

    /// The breaker's state now: `closed`, `open` or `half_open` (the dashboard).
    pub fn breaker_state(&self) -> &'static str {
        let mut s = self.lock();
        s.breaker.state(Instant::now()).as_str()
    }

    pub fn outstanding(&self) -> usize {
        self.lock().outstanding
    }

    /// A p95 of recent successful calls, if enough were seen.
    pub fn p95(&self) -> Option<Duration> {
        let s = self.lock();
        if s.recent.len() < 8 {
            return None;
        }
        let mut v: Vec<f64> = s.recent.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let i = ((v.len() as f64) * 0.95).ceil() as usize;
        v.get(i.saturating_sub(1).min(v.len() - 1))
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
    }

    /// Reserves a call: checks again under the lock, then counts it against concurrency,
    /// quotas and the breaker.
    pub fn reserve(self: &Arc<Self>, now: Instant, tokens: f64) -> Result<Slot, Unavailable> {
        let mut s = self.lock();
        check(&mut s, now, tokens, self.headroom, self.max_concurrency)?;
        let admission = s.breaker.admit(now).ok_or(Unavailable::BreakerOpen)?;
        s.outstanding += 1;
        if let Some(b) = s.rpm.as_mut() {
            b.take(now, 1.0);
        }
        if let Some(b) = s.tpm.as_mut() {
            b.take(now, tokens);
        }
        self.gauges(&mut s, now);
        Ok(Slot {
            dep: self.clone(),
            admission,
            started: now,
            tokens,
            outcome: None,
        })
    }

    fn gauges(&self, s: &mut State, now: Instant) {
        self.outstanding_gauge.set(s.outstanding as f64);
        self.breaker_gauge.set(s.breaker.state(now).gauge());
    }

    /// Sets a cool-down (after a 429), so the balancer sends nothing here until it ends.
    pub fn cool_down(&self, until: Instant) {
        let mut s = self.lock();
        if s.cooldown_until.is_none_or(|u| u < until) {
            s.cooldown_until = Some(until);
        }
    }
}

fn check(
    s: &mut State,
    now: Instant,
    tokens: f64,
    headroom: f64,
    max_concurrency: usize,
) -> Result<(), Unavailable> {
    if let Some(until) = s.cooldown_until {
        if now < until {
            return Err(Unavailable::CoolingDown(until - now));
        }
        s.cooldown_until = None;
    }
    if !s.breaker.would_admit(now) {
        return Err(Unavailable::BreakerOpen);
    }
    if s.outstanding >= max_concurrency {
        return Err(Unavailable::Busy);
    }
    if let Some(b) = s.rpm.as_mut()
        && !b.has_room(now, 1.0, headroom)
    {
        return Err(Unavailable::NearQuota(b.wait_for(now, 1.0, headroom)));
    }
    if let Some(b) = s.tpm.as_mut()
        && !b.has_room(now, tokens, headroom)
    {
        return Err(Unavailable::NearQuota(b.wait_for(now, tokens, headroom)));
    }
    Ok(())
}

/// A reserved call on a deployment; records its outcome when dropped.
pub struct Slot {
    dep: Arc<Deployment>,
    admission: Admission,
    started: Instant,
    tokens: f64,
    outcome: Option<Result<Option<u64>, ProviderError>>,
}

impl Slot {
    pub fn deployment(&self) -> &Arc<Deployment> {
        &self.dep
    }

    /// The call answered; `used_tokens` from the response's usage, if it said.
    pub fn succeeded(mut self, used_tokens: Option<u64>) {
        self.outcome = Some(Ok(used_tokens));
    }

    /// The call failed with `e`; a 429 also starts a cool-down of its `Retry-After`.
    pub fn failed(mut self, e: ProviderError) {
        self.outcome = Some(Err(e));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut s = self.dep.lock();
        s.outstanding = s.outstanding.saturating_sub(1);
        match self.outcome.take() {
            Some(Ok(used)) => {
                let ms = now.saturating_duration_since(self.started).as_secs_f64() * 1000.0;
                s.ewma_ms = Some(match s.ewma_ms {
                    Some(e) => e + EWMA_ALPHA * (ms - e),
                    None => ms,
                });
                if s.recent.len() == LATENCY_SAMPLES {
                    s.recent.pop_front();
                }
                s.recent.push_back(ms);
                if let (Some(used), Some(b)) = (used, s.tpm.as_mut()) {
                    b.adjust(now, self.tokens - used as f64);
                }
                // A success can still complete a window whose failure ratio opens it.
                if s.breaker.record(now, self.admission, Some(true)) {
                    opened(&self.dep.name);
                }
            }
            Some(Err(e)) => {
                if let ProviderError::Status {
                    status: 429,
                    retry_after,
                } = e
                {
                    let until = now + retry_after.unwrap_or(Duration::from_secs(1));
                    if s.cooldown_until.is_none_or(|u| u < until) {
                        s.cooldown_until = Some(until);
                    }
                }
                // A rejected request (4xx) says nothing about the deployment's health.
                let health = e.class() == crate::ErrorClass::Permanent;
                if s.breaker.record(now, self.admission, Some(health)) {
                    opened(&self.dep.name);
                }
                if !health {
                    // Failed calls count toward the latency estimate as slow ones, so the
                    // balancer leans away from a failing deployment even before it opens.
                    let ms = now.saturating_duration_since(self.started).as_secs_f64() * 1000.0;
                    let e = s.ewma_ms.unwrap_or(ms);
                    s.ewma_ms = Some(e + EWMA_ALPHA * (ms.max(e * 2.0) - e));
                }
            }
            None => {
                s.breaker.record(now, self.admission, None);
            }
        }
        self.dep.gauges(&mut s, now);
    }
}

fn opened(deployment: &str) {
    metrics::counter!("sluice_breaker_opened_total", "deployment" => deployment.to_string())
        .increment(1);
    tracing::warn!(deployment, "circuit breaker opened");
}

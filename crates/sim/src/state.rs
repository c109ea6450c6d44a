//! Shared simulator state: the live configuration, the random source, the counters and the
//! `fail_first` bookkeeping, plus the one place that decides a request's fate.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{ConfigError, SimConfig};
use crate::counters::{CounterSet, Counters, Endpoint, RequestGuard};
use crate::directives::Directives;
use crate::error::ApiError;
use crate::fail_first::FailFirstTracker;
use crate::latency::LatencyModel;

/// Cheap to clone; every clone shares the same simulator.
#[derive(Clone, Debug)]
pub struct SimState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    live: RwLock<Arc<Live>>,
    rng: Mutex<StdRng>,
    counters: Arc<CounterSet>,
    fail_first: Mutex<FailFirstTracker>,
    id_nonce: u32,
    next_id: AtomicU64,
}

/// A configuration with what is derived from it, swapped as a whole by `set_config`.
#[derive(Debug)]
pub(crate) struct Live {
    pub cfg: SimConfig,
    pub latency: LatencyModel,
}

impl Live {
    fn new(cfg: SimConfig) -> Self {
        let latency = LatencyModel::new(&cfg.latency);
        Self { cfg, latency }
    }

    pub fn serves(&self, model: &str) -> bool {
        self.cfg.models.iter().any(|m| m == model)
    }
}

/// What happens to one request: how long it waits, and whether it then fails.
#[derive(Debug)]
pub(crate) struct Plan {
    pub delay: Duration,
    pub fault: Option<ApiError>,
    /// End a stream with an error event after this many chunks.
    pub stream_error_after: Option<u32>,
}

fn rng_for(seed: Option<u64>) -> StdRng {
    match seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_rng(&mut rand::rng()),
    }
}

impl SimState {
    /// Validates `cfg` and builds a fresh simulator state.
    pub fn new(cfg: SimConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let rng = rng_for(cfg.seed);
        Ok(Self {
            inner: Arc::new(Inner {
                live: RwLock::new(Arc::new(Live::new(cfg))),
                rng: Mutex::new(rng),
                counters: Arc::default(),
                fail_first: Mutex::default(),
                id_nonce: rand::rng().random(),
                next_id: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> SimConfig {
        self.live().cfg.clone()
    }

    /// Replaces the configuration; a `seed` restarts the random sequence from it.
    pub fn set_config(&self, cfg: SimConfig) -> Result<(), ConfigError> {
        cfg.validate()?;
        if cfg.seed.is_some() {
            *self
                .inner
                .rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = rng_for(cfg.seed);
        }
        *self
            .inner
            .live
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Live::new(cfg));
        Ok(())
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.inner.counters.snapshot()
    }

    /// Zeroes the counters (except `in_flight`) and forgets every `fail_first` key.
    pub fn reset(&self) {
        self.inner.counters.reset();
        self.inner
            .fail_first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub(crate) fn live(&self) -> Arc<Live> {
        Arc::clone(
            &self
                .inner
                .live
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    pub(crate) fn begin(&self, endpoint: Endpoint) -> RequestGuard {
        self.inner.counters.begin(endpoint)
    }

    pub(crate) fn record_model(&self, model: &str) {
        self.inner.counters.record_model(model);
    }

    /// Decides latency and injected failure for a request to a served model.
    ///
    /// Precedence: `[[sim:status]]`, then `[[sim:fail_first]]`, then the configured rates.
    /// Both random numbers are always drawn, so a seeded run stays reproducible whatever the
    /// directives.
    pub(crate) fn plan(&self, live: &Live, directives: &Directives) -> Plan {
        let (u_latency, u_fault): (f64, f64) = {
            let mut rng = self
                .inner
                .rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (rng.random(), rng.random())
        };
        let delay = match directives.sleep_ms {
            Some(ms) => Duration::from_millis(ms),
            None => live.latency.sample(u_latency),
        };
        let failing_first = directives.fail_first.as_ref().is_some_and(|ff| {
            self.inner
                .fail_first
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .should_fail(&ff.key, ff.n)
        });
        let status = if let Some(code) = directives.status {
            StatusCode::from_u16(code).ok()
        } else if failing_first || u_fault < live.cfg.error_rate {
            Some(StatusCode::INTERNAL_SERVER_ERROR)
        } else if u_fault < live.cfg.error_rate + live.cfg.rate_429 {
            Some(StatusCode::TOO_MANY_REQUESTS)
        } else {
            None
        };
        let fault = status.map(|status| {
            self.inner.counters.record_injected(status.as_u16());
            ApiError::Injected {
                status,
                retry_after_s: live.cfg.retry_after_s,
            }
        });
        Plan {
            delay,
            fault,
            stream_error_after: directives.stream_error_after,
        }
    }

    /// A unique response id such as `chatcmpl-sim1a2b3c4d000000000007`.
    pub(crate) fn next_id(&self, prefix: &str) -> String {
        let n = self.inner.next_id.fetch_add(1, Relaxed);
        format!("{prefix}-sim{:08x}{n:012x}", self.inner.id_nonce)
    }
}

/// Seconds since the Unix epoch, for `created` fields.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::directives::FailFirst;

    fn statuses(state: &SimState, n: usize) -> Vec<Option<u16>> {
        let live = state.live();
        (0..n)
            .map(|_| {
                state
                    .plan(&live, &Directives::default())
                    .fault
                    .map(|f| f.status().as_u16())
            })
            .collect()
    }

    #[test]
    fn seeded_runs_repeat_and_rates_are_honoured() {
        let cfg = SimConfig {
            error_rate: 0.2,
            rate_429: 0.3,
            seed: Some(42),
            ..SimConfig::default()
        };
        let a = SimState::new(cfg.clone()).unwrap();
        let b = SimState::new(cfg).unwrap();
        let (sa, sb) = (statuses(&a, 10_000), statuses(&b, 10_000));
        assert_eq!(sa, sb);
        let count = |code| sa.iter().filter(|s| **s == Some(code)).count() as f64 / 10_000.0;
        assert!((count(500) - 0.2).abs() < 0.03, "{}", count(500));
        assert!((count(429) - 0.3).abs() < 0.03, "{}", count(429));
        let c = a.counters();
        assert_eq!(
            c.injected_errors + c.injected_429,
            sa.iter().filter(|s| s.is_some()).count() as u64
        );
    }

    #[test]
    fn directives_take_precedence() {
        let state = SimState::new(SimConfig {
            error_rate: 1.0,
            ..SimConfig::default()
        })
        .unwrap();
        let live = state.live();
        let d = Directives {
            status: Some(503),
            sleep_ms: Some(5),
            ..Directives::default()
        };
        let plan = state.plan(&live, &d);
        assert_eq!(plan.delay, Duration::from_millis(5));
        assert_eq!(
            plan.fault.map(|f| f.status()),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );

        state.set_config(SimConfig::default()).unwrap();
        let live = state.live();
        let d = Directives {
            fail_first: Some(FailFirst {
                n: 2,
                key: "k".into(),
            }),
            ..Directives::default()
        };
        let got: Vec<bool> = (0..3)
            .map(|_| state.plan(&live, &d).fault.is_some())
            .collect();
        assert_eq!(got, [true, true, false]);
        state.reset();
        assert!(
            state.plan(&live, &d).fault.is_some(),
            "reset forgets fail_first keys"
        );
    }

    #[test]
    fn set_config_validates() {
        let state = SimState::new(SimConfig::default()).unwrap();
        assert!(
            state
                .set_config(SimConfig {
                    error_rate: 2.0,
                    ..SimConfig::default()
                })
                .is_err()
        );
        assert_eq!(state.config(), SimConfig::default());
        assert!(
            SimState::new(SimConfig {
                rate_429: -1.0,
                ..SimConfig::default()
            })
            .is_err()
        );
    }

    #[test]
    fn ids_are_unique() {
        let state = SimState::new(SimConfig::default()).unwrap();
        let a = state.next_id("chatcmpl");
        assert!(a.starts_with("chatcmpl-sim"));
        assert_ne!(a, state.next_id("chatcmpl"));
    }
}

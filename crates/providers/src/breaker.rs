//! Circuit breaker per deployment: closed → open when the failure ratio over a window
//! reaches the threshold (with a minimum number of calls), open → half-open after
//! `open_s`, where a few probes decide: all succeed → closed, one fails → open again.
//!
//! Plain data behind the deployment's lock; time comes in as a `tokio::time::Instant`, so
//! tests drive it with paused time.

use std::time::Duration;

use sluice_config::BreakerConfig;
use tokio::time::Instant;

use crate::window::Window;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        probes_in_flight: u32,
        successes: u32,
    },
}

impl BreakerState {
    /// A low-cardinality name: `closed`, `open`, `half_open`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }

    /// For the `sluice_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge(&self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open { .. } => 1.0,
            BreakerState::HalfOpen { .. } => 2.0,
        }
    }
}

/// What [`Breaker::admit`] allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Normal,
    Probe,
}

#[derive(Debug)]
pub struct Breaker {
    min_calls: u64,
    failure_ratio: f64,
    open_for: Duration,
    probes: u32,
    state: BreakerState,
    /// (calls, failures) per second.
    window: Window,
}

impl Breaker {
    pub fn new(cfg: &BreakerConfig, now: Instant) -> Breaker {
        Breaker {
            min_calls: u64::from(cfg.min_calls),
            failure_ratio: cfg.failure_ratio,
            open_for: cfg.open_for,
            probes: cfg.half_open_probes.max(1),
            state: BreakerState::Closed,
            window: Window::new(cfg.window, now),
        }
    }

    pub fn state(&mut self, now: Instant) -> BreakerState {
        if let BreakerState::Open { until } = self.state
            && now >= until
        {
            self.state = BreakerState::HalfOpen {
                probes_in_flight: 0,
                successes: 0,
            };
        }
        self.state
    }

    /// Whether a call could be admitted now (without admitting it).
    pub fn would_admit(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen {
                probes_in_flight,
                successes,
            } => probes_in_flight + successes < self.probes,
        }
    }

    /// Admits a call if the breaker allows one.
    pub fn admit(&mut self, now: Instant) -> Option<Admission> {
        match self.state(now) {
            BreakerState::Closed => Some(Admission::Normal),
            BreakerState::Open { .. } => None,
            BreakerState::HalfOpen {
                probes_in_flight,
                successes,
            } => {
                if probes_in_flight + successes < self.probes {
                    self.state = BreakerState::HalfOpen {
                        probes_in_flight: probes_in_flight + 1,
                        successes,
                    };
                    Some(Admission::Probe)
                } else {
                    None
                }
            }
        }
    }

    /// Records a finished call. `None` outcome: the call was cancelled (a hedge loser) and
    /// says nothing about the deployment. Returns whether this call opened the breaker.
    pub fn record(&mut self, now: Instant, admission: Admission, success: Option<bool>) -> bool {
        let was_open = matches!(self.state, BreakerState::Open { .. });
        match (admission, self.state) {
            (
                Admission::Probe,
                BreakerState::HalfOpen {
                    probes_in_flight,
                    successes,
                },
            ) => {
                let in_flight = probes_in_flight.saturating_sub(1);
                self.state = match success {
                    Some(true) if successes + 1 >= self.probes => {
                        self.window.clear();
                        BreakerState::Closed
                    }
                    Some(true) => BreakerState::HalfOpen {
                        probes_in_flight: in_flight,
                        successes: successes + 1,
                    },
                    Some(false) => BreakerState::Open {
                        until: now + self.open_for,
                    },
                    None => BreakerState::HalfOpen {
                        probes_in_flight: in_flight,
                        successes,
                    },
                };
            }
            (Admission::Normal, BreakerState::Closed) => {
                let Some(ok) = success else { return false };
                self.window.add(now, 1, u64::from(!ok));
                let (calls, failures) = self.window.totals(now);
                if calls >= self.min_calls
                    && calls > 0
                    && failures as f64 / calls as f64 >= self.failure_ratio
                {
                    self.state = BreakerState::Open {
                        until: now + self.open_for,
                    };
                }
            }
            // A call admitted in an earlier state: its outcome is stale.
            _ => {}
        }
        !was_open && matches!(self.state, BreakerState::Open { .. })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 4,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_failure_ratio_and_recovers_through_probes() {
        let mut b = Breaker::new(&cfg(), Instant::now());
        let now = Instant::now;
        // Below the minimum throughput, failures alone do not open it.
        for _ in 0..3 {
            let a = b.admit(now()).unwrap();
            b.record(now(), a, Some(false));
        }
        assert_eq!(b.state(now()), BreakerState::Closed);
        let a = b.admit(now()).unwrap();
        b.record(now(), a, Some(true));
        // 3 failures / 4 calls ≥ 0.5.
        assert!(
            matches!(b.state(now()), BreakerState::Open { .. }),
            "{:?}",
            b.state(now())
        );
        assert!(b.admit(now()).is_none());

        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(b.state(now()), BreakerState::HalfOpen { .. }));
        let p1 = b.admit(now()).unwrap();
        let p2 = b.admit(now()).unwrap();
        assert_eq!(p1, Admission::Probe);
        assert!(b.admit(now()).is_none(), "only two probes at once");
        b.record(now(), p1, Some(true));
        assert!(b.admit(now()).is_none());
        b.record(now(), p2, Some(true));
        assert_eq!(b.state(now()), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_and_a_cancelled_one_frees_its_slot() {
        let mut b = Breaker::new(&cfg(), Instant::now());
        for _ in 0..4 {
            let a = b.admit(Instant::now()).unwrap();
            b.record(Instant::now(), a, Some(false));
        }
        tokio::time::advance(Duration::from_secs(6)).await;
        let p = b.admit(Instant::now()).unwrap();
        b.record(Instant::now(), p, None);
        let p = b.admit(Instant::now()).unwrap();
        b.record(Instant::now(), p, Some(false));
        assert!(matches!(b.state(Instant::now()), BreakerState::Open { .. }));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(b.admit(Instant::now()).is_none(), "still open");
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_age_out_of_the_window() {
        let mut b = Breaker::new(&cfg(), Instant::now());
        for _ in 0..3 {
            let a = b.admit(Instant::now()).unwrap();
            b.record(Instant::now(), a, Some(false));
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..3 {
            let a = b.admit(Instant::now()).unwrap();
            b.record(Instant::now(), a, Some(true));
        }
        let a = b.admit(Instant::now()).unwrap();
        b.record(Instant::now(), a, Some(false));
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
    }
}

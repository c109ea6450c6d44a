//! Fair share for the dispatcher: who may make a delivery now.
//!
//! `HOOKS` is one stream for every tenant, so the dispatcher, not the broker, keeps one
//! tenant's slow receivers from delaying the others. A delivery takes two slots before its
//! request is sent: one of its tenant's share of the dispatcher's concurrency
//! ([`WebhooksConfig::tenant_slots`]) and one of its endpoint's
//! (`webhooks.endpoint_concurrency`). An endpoint is a registered endpoint, or the host of
//! a per-job webhook URL. Each endpoint also has a circuit breaker: after
//! `webhooks.breaker_failures` consecutive failed attempts it opens for
//! `webhooks.breaker_cooldown_ms`; then one probe goes through, whose success closes it and
//! whose failure opens it again.
//!
//! A delivery that gets no slot is not an attempt: the dispatcher NAKs it with the
//! [`Wait`]'s delay and it comes back from the broker later, so a tar-pit receiver holds at
//! most its own slots and a broken one is not hammered. The state is in-process (each
//! dispatcher replica keeps its own) and bounded: tenants and endpoints with nothing in
//! flight and a closed breaker are forgotten, and the endpoint map is capped.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sluice_config::WebhooksConfig;
use tokio::time::Instant;

/// Most endpoints whose state is kept; past it, idle endpoints lose their breaker state.
const MAX_ENDPOINTS: usize = 65_536;

/// Why a delivery waits (the `reason` label of `sluice_webhook_deferrals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Its tenant holds its whole share of the dispatcher.
    TenantShare,
    /// Its endpoint has `endpoint_concurrency` deliveries in flight (or a probe).
    EndpointBusy,
    /// Its endpoint's breaker is open for this long still.
    CircuitOpen(Duration),
}

impl Wait {
    pub fn as_str(self) -> &'static str {
        match self {
            Wait::TenantShare => "tenant_share",
            Wait::EndpointBusy => "endpoint_busy",
            Wait::CircuitOpen(_) => "circuit_open",
        }
    }
}

/// One endpoint's circuit breaker, a pure state machine over the instants it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cool-down is over and one probe is in flight.
    HalfOpen,
}

impl Breaker {
    /// Whether a delivery may go: `Ok(true)` when it is the probe.
    pub fn admit(&mut self, now: Instant) -> Result<bool, Wait> {
        match *self {
            Breaker::Closed { .. } => Ok(false),
            Breaker::Open { until } if now >= until => {
                *self = Breaker::HalfOpen;
                Ok(true)
            }
            Breaker::Open { until } => Err(Wait::CircuitOpen(until - now)),
            Breaker::HalfOpen => Err(Wait::EndpointBusy),
        }
    }

    /// An attempt came to this; `threshold` 0 never opens.
    pub fn record(&mut self, ok: bool, now: Instant, threshold: u32, cooldown: Duration) {
        *self = match (*self, ok) {
            (_, true) => Breaker::Closed { failures: 0 },
            (Breaker::Closed { failures }, false) if threshold == 0 || failures + 1 < threshold => {
                Breaker::Closed {
                    failures: failures + 1,
                }
            }
            // A failure of a delivery admitted before the breaker opened does not extend it.
            (Breaker::Open { until }, false) => Breaker::Open { until },
            (Breaker::Closed { .. } | Breaker::HalfOpen, false) => Breaker::Open {
                until: now + cooldown,
            },
        };
    }

    /// A probe ended without an attempt (the dispatcher stopped, the store failed): the next
    /// delivery probes instead.
    pub fn abandon(&mut self, now: Instant) {
        if *self == Breaker::HalfOpen {
            *self = Breaker::Open { until: now };
        }
    }

    fn idle(&self) -> bool {
        *self == Breaker::Closed { failures: 0 }
    }
}

#[derive(Debug)]
struct Lane {
    in_flight: usize,
    breaker: Breaker,
}

#[derive(Default)]
struct State {
    tenants: HashMap<String, usize>,
    endpoints: HashMap<String, Lane>,
}

/// The dispatcher's slots (shared by its delivery tasks).
pub struct Fair {
    tenant_slots: usize,
    endpoint_slots: usize,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Fair {
    pub fn new(cfg: &WebhooksConfig) -> Arc<Fair> {
        Arc::new(Fair {
            tenant_slots: cfg.tenant_slots(),
            endpoint_slots: cfg.endpoint_concurrency.max(1),
            threshold: cfg.breaker_failures,
            cooldown: cfg.breaker_cooldown,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is counters only: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One of `tenant`'s slots, or why not.
    pub fn tenant(self: &Arc<Fair>, tenant: &str) -> Result<TenantSlot, Wait> {
        let mut s = self.state();
        let n = s.tenants.entry(tenant.to_string()).or_insert(0);
        if *n >= self.tenant_slots {
            return Err(Wait::TenantShare);
        }
        *n += 1;
        Ok(TenantSlot {
            fair: self.clone(),
            tenant: tenant.to_string(),
        })
    }

    /// One of `endpoint`'s slots (its breaker permitting), or why not.
    pub fn endpoint(self: &Arc<Fair>, endpoint: &str) -> Result<EndpointSlot, Wait> {
        let now = Instant::now();
        let mut s = self.state();
        if !s.endpoints.contains_key(endpoint) && s.endpoints.len() >= MAX_ENDPOINTS {
            s.endpoints.retain(|_, l| l.in_flight > 0);
        }
        let lane = s.endpoints.entry(endpoint.to_string()).or_insert(Lane {
            in_flight: 0,
            breaker: Breaker::Closed { failures: 0 },
        });
        if lane.in_flight >= self.endpoint_slots {
            return Err(Wait::EndpointBusy);
        }
        let probe = lane.breaker.admit(now)?;
        lane.in_flight += 1;
        Ok(EndpointSlot {
            fair: self.clone(),
            endpoint: endpoint.to_string(),
            probe,
            reported: false,
        })
    }

    #[cfg(test)]
    fn breaker(&self, endpoint: &str) -> Option<Breaker> {
        self.state().endpoints.get(endpoint).map(|l| l.breaker)
    }
}

/// A tenant's slot, given back on drop.
pub struct TenantSlot {
    fair: Arc<Fair>,
    tenant: String,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut s = self.fair.state();
        if let Some(n) = s.tenants.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.tenants.remove(&self.tenant);
            }
        }
    }
}

/// An endpoint's slot: [`EndpointSlot::report`] what the attempt came to; dropped without a
/// report, it gives the slot back and abandons its probe.
pub struct EndpointSlot {
    fair: Arc<Fair>,
    endpoint: String,
    probe: bool,
    reported: bool,
}

impl EndpointSlot {
    /// The receiver answered or failed: `ok` for a success.
    pub fn report(mut self, ok: bool) {
        self.reported = true;
        let now = Instant::now();
        let (threshold, cooldown) = (self.fair.threshold, self.fair.cooldown);
        if let Some(lane) = self.fair.state().endpoints.get_mut(&self.endpoint) {
            lane.breaker.record(ok, now, threshold, cooldown);
        }
    }
}

impl Drop for EndpointSlot {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut s = self.fair.state();
        if let Some(lane) = s.endpoints.get_mut(&self.endpoint) {
            lane.in_flight = lane.in_flight.saturating_sub(1);
            if self.probe && !self.reported {
                lane.breaker.abandon(now);
            }
            if lane.in_flight == 0 && lane.breaker.idle() {
                s.endpoints.remove(&self.endpoint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(concurrency: usize, share: f64, per_endpoint: usize, failures: u32) -> WebhooksConfig {
        WebhooksConfig {
            concurrency,
            tenant_share: share,
            endpoint_concurrency: per_endpoint,
            breaker_failures: failures,
            breaker_cooldown: Duration::from_millis(1_000),
            ..WebhooksConfig::default()
        }
    }

    #[test]
    fn breaker_transitions() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(10);
        let open = Breaker::Open { until: t0 + cool };
        // (state, ok, expected) with a threshold of 3.
        let table = [
            (
                Breaker::Closed { failures: 0 },
                false,
                Breaker::Closed { failures: 1 },
            ),
            (
                Breaker::Closed { failures: 1 },
                false,
                Breaker::Closed { failures: 2 },
            ),
            (Breaker::Closed { failures: 2 }, false, open),
            (
                Breaker::Closed { failures: 2 },
                true,
                Breaker::Closed { failures: 0 },
            ),
            (Breaker::HalfOpen, false, open),
            (Breaker::HalfOpen, true, Breaker::Closed { failures: 0 }),
            (open, false, open),
        ];
        for (from, ok, to) in table {
            let mut b = from;
            b.record(ok, t0, 3, cool);
            assert_eq!(b, to, "{from:?} + ok={ok}");
        }
        let mut never = Breaker::Closed { failures: 99 };
        never.record(false, t0, 0, cool);
        assert_eq!(
            never,
            Breaker::Closed { failures: 100 },
            "threshold 0 never opens"
        );

        let mut b = open;
        assert_eq!(
            b.admit(t0 + Duration::from_secs(4)),
            Err(Wait::CircuitOpen(Duration::from_secs(6)))
        );
        assert_eq!(b.admit(t0 + cool), Ok(true), "the probe");
        assert_eq!(b, Breaker::HalfOpen);
        assert_eq!(
            b.admit(t0 + cool),
            Err(Wait::EndpointBusy),
            "one probe at a time"
        );
        b.abandon(t0 + cool);
        assert_eq!(
            b.admit(t0 + cool),
            Ok(true),
            "an abandoned probe is taken again"
        );
    }

    #[test]
    fn a_tenant_gets_its_share_and_slots_come_back_on_drop() {
        let fair = Fair::new(&cfg(4, 0.5, 8, 0));
        let a1 = fair.tenant("a");
        let a2 = fair.tenant("a");
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(fair.tenant("a").err(), Some(Wait::TenantShare));
        assert!(fair.tenant("b").is_ok(), "another tenant is not held up");
        drop(a1);
        assert!(fair.tenant("a").is_ok());
        // At least one slot whatever the share.
        assert_eq!(Fair::new(&cfg(3, 0.1, 8, 0)).tenant_slots, 1);
    }

    #[test]
    fn an_endpoint_gets_its_slots_and_idle_endpoints_are_forgotten() {
        let fair = Fair::new(&cfg(32, 0.5, 2, 3));
        let e1 = fair.endpoint("ep1");
        let e2 = fair.endpoint("ep1");
        assert!(e1.is_ok() && e2.is_ok());
        assert_eq!(fair.endpoint("ep1").err(), Some(Wait::EndpointBusy));
        assert!(fair.endpoint("ep2").is_ok());
        drop(e1);
        drop(e2);
        assert!(fair.breaker("ep1").is_none(), "forgotten when idle");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_open_the_breaker_then_one_probe_closes_it() {
        let fair = Fair::new(&cfg(32, 0.5, 8, 3));
        for _ in 0..3 {
            fair.endpoint("ep").map(|s| s.report(false)).ok();
        }
        assert!(matches!(fair.breaker("ep"), Some(Breaker::Open { .. })));
        assert!(matches!(
            fair.endpoint("ep").err(),
            Some(Wait::CircuitOpen(d)) if d == Duration::from_secs(1)
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = fair.endpoint("ep");
        assert!(probe.is_ok());
        assert_eq!(fair.endpoint("ep").err(), Some(Wait::EndpointBusy));
        probe.map(|p| p.report(false)).ok();
        assert!(matches!(
            fair.endpoint("ep").err(),
            Some(Wait::CircuitOpen(_))
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        fair.endpoint("ep").map(|p| p.report(true)).ok();
        assert!(fair.breaker("ep").is_none(), "closed and idle again");
        assert!(fair.endpoint("ep").is_ok());
    }
}

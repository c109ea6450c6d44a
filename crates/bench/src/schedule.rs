//! The open-loop arrival schedule.
//!
//! Request `i` is due at `start + i / rate`, whatever happened to the requests before it. The
//! first [`Schedule::warmup_count`] requests are the warm-up (sent, not recorded); the next
//! [`Schedule::measured_count`] are the measured phase. Latency is taken from the *due* time,
//! so a generator or server stall shows up as latency instead of silently thinning the load
//! (no coordinated omission).

use std::time::Duration;

/// The most requests one run may schedule; keeps every per-run structure bounded.
pub const MAX_REQUESTS: u64 = 1_000_000_000;

/// Guards `secs * rate` against landing a hair below an integer (`0.3 * 10 = 2.999…`).
const COUNT_EPSILON: f64 = 1e-9;

/// Why a schedule could not be built.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleError {
    /// The rate is not a positive, finite number.
    BadRate(f64),
    /// The run would schedule more than [`MAX_REQUESTS`].
    TooManyRequests(f64),
}

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadRate(rate) => write!(f, "rate must be a positive number, got {rate}"),
            Self::TooManyRequests(n) => {
                write!(
                    f,
                    "the run would schedule {n:.0} requests (at most {MAX_REQUESTS})"
                )
            }
        }
    }
}

impl std::error::Error for ScheduleError {}

/// A constant-rate schedule of `warmup_count + measured_count` requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    rate: f64,
    warmup: u64,
    measured: u64,
}

impl Schedule {
    /// A schedule at `rate` requests per second: `warmup` seconds not recorded, then
    /// `duration` seconds measured.
    pub fn new(rate: f64, warmup: Duration, duration: Duration) -> Result<Self, ScheduleError> {
        if !rate.is_finite() || rate <= 0.0 {
            return Err(ScheduleError::BadRate(rate));
        }
        let total = (warmup.as_secs_f64() + duration.as_secs_f64()) * rate;
        if total > MAX_REQUESTS as f64 {
            return Err(ScheduleError::TooManyRequests(total));
        }
        Ok(Self {
            rate,
            warmup: count(warmup, rate),
            measured: count(duration, rate),
        })
    }

    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Requests in the warm-up phase (sequence numbers `0..warmup_count`).
    pub fn warmup_count(&self) -> u64 {
        self.warmup
    }

    /// Requests in the measured phase.
    pub fn measured_count(&self) -> u64 {
        self.measured
    }

    /// All requests the run sends (warm-up and measured).
    pub fn total(&self) -> u64 {
        self.warmup + self.measured
    }

    /// Whether request `seq` belongs to the measured phase.
    pub fn is_measured(&self, seq: u64) -> bool {
        seq >= self.warmup && seq < self.total()
    }

    /// When request `seq` is due, relative to the start of the run.
    pub fn offset(&self, seq: u64) -> Duration {
        // seq <= MAX_REQUESTS < 2^53, so the division is exact enough; a failed conversion
        // can only mean an absurd value, which saturates instead of panicking.
        Duration::try_from_secs_f64(seq as f64 / self.rate).unwrap_or(Duration::MAX)
    }

    /// When the measured phase starts, relative to the start of the run.
    pub fn measure_start(&self) -> Duration {
        self.offset(self.warmup)
    }

    /// When the last measured request is due, relative to the start of the run; `None` for an
    /// empty measured phase.
    pub fn last_measured(&self) -> Option<Duration> {
        (self.measured > 0).then(|| self.offset(self.total() - 1))
    }
}

/// Arrivals in `[0, secs)` at `rate`: the number of `i` with `i / rate < secs`.
fn count(span: Duration, rate: f64) -> u64 {
    let exact = span.as_secs_f64() * rate;
    let floor = (exact + COUNT_EPSILON).floor();
    // An arrival exactly at `secs` belongs to the next phase, except rounding noise.
    let n = if (exact - floor).abs() <= COUNT_EPSILON {
        floor
    } else {
        exact.ceil()
    };
    n.max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn counts_follow_rate_times_duration() -> Result<(), ScheduleError> {
        let s = Schedule::new(1000.0, secs(2.0), secs(10.0))?;
        assert_eq!(s.warmup_count(), 2000);
        assert_eq!(s.measured_count(), 10_000);
        assert_eq!(s.total(), 12_000);
        Ok(())
    }

    #[test]
    fn fractional_products_do_not_lose_a_request_to_rounding() -> Result<(), ScheduleError> {
        // 0.3 * 10.0 is 2.9999999999999996 in floating point.
        let s = Schedule::new(10.0, Duration::ZERO, secs(0.3))?;
        assert_eq!(s.measured_count(), 3);
        // 2.5 arrivals in the window: those at 0, 0.1 and 0.2 s.
        let s = Schedule::new(10.0, Duration::ZERO, secs(0.25))?;
        assert_eq!(s.measured_count(), 3);
        let s = Schedule::new(3.0, Duration::ZERO, secs(1.0))?;
        assert_eq!(s.measured_count(), 3);
        Ok(())
    }

    #[test]
    fn offsets_are_evenly_spaced() -> Result<(), ScheduleError> {
        let s = Schedule::new(4.0, Duration::ZERO, secs(1.0))?;
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_millis(250));
        assert_eq!(s.offset(3), Duration::from_millis(750));
        let s = Schedule::new(10_000.0, Duration::ZERO, secs(1.0))?;
        assert_eq!(s.offset(1), Duration::from_micros(100));
        assert_eq!(s.offset(10_000), Duration::from_secs(1));
        Ok(())
    }

    #[test]
    fn warmup_comes_first_and_is_not_measured() -> Result<(), ScheduleError> {
        let s = Schedule::new(100.0, secs(1.0), secs(2.0))?;
        assert!(!s.is_measured(0));
        assert!(!s.is_measured(99));
        assert!(s.is_measured(100));
        assert!(s.is_measured(299));
        assert!(!s.is_measured(300));
        assert_eq!(s.measure_start(), Duration::from_secs(1));
        assert_eq!(s.last_measured(), Some(Duration::from_millis(2990)));
        Ok(())
    }

    #[test]
    fn empty_measured_phase_has_no_last_request() -> Result<(), ScheduleError> {
        let s = Schedule::new(100.0, secs(1.0), Duration::ZERO)?;
        assert_eq!(s.measured_count(), 0);
        assert_eq!(s.last_measured(), None);
        Ok(())
    }

    #[test]
    fn rejects_bad_rates_and_huge_runs() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                Schedule::new(rate, Duration::ZERO, secs(1.0)),
                Err(ScheduleError::BadRate(_))
            ));
        }
        assert!(matches!(
            Schedule::new(1e9, Duration::ZERO, secs(10.0)),
            Err(ScheduleError::TooManyRequests(_))
        ));
    }
}

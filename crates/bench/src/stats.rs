//! What a load phase records: outcome counts and latency histograms.
//!
//! Histograms hold microseconds with 3 significant digits, from 1 µs to an hour (larger
//! values saturate at the top instead of being lost).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest trackable latency: one hour, in microseconds.
const HIGHEST_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    #[allow(clippy::expect_used)] // constant bounds: this cannot fail at run time
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    pub fn histogram(&self) -> &Histogram<u64> {
        &self.0
    }

    /// Adds another series' values (same bounds, so this cannot overflow the range).
    pub fn merge(&mut self, other: &Latency) {
        // Both histograms have the same bounds; `add` only fails when `other` holds values
        // this one cannot, so there is nothing to lose here.
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx with a usable body; for a job submission, the job's id.
    Ok { job_id: Option<String> },
    /// 429 or 503: the service shed load (not retried).
    Rejected { status: u16 },
    /// Any other non-2xx status.
    HttpError { status: u16 },
    /// 2xx whose body did not carry what the mode needs (e.g. no job id).
    BadResponse,
    /// The per-request timeout expired.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// Any other transport failure (reset, protocol error, body read failure).
    Transport,
}

/// Outcome counts of a phase. `sent = ok + rejected + errors + unfinished`, and in open-loop
/// modes `scheduled = sent + dropped_by_generator`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Requests due in the measured phase (open loop only).
    pub scheduled: u64,
    /// Requests actually started.
    pub sent: u64,
    pub ok: u64,
    pub rejected_429: u64,
    pub rejected_503: u64,
    /// Non-2xx answers other than 429/503, by status.
    pub http_errors: BTreeMap<u16, u64>,
    pub bad_responses: u64,
    pub timeouts: u64,
    pub connect_errors: u64,
    pub transport_errors: u64,
    /// Due while `--max-in-flight` requests were outstanding: never sent, no latency recorded.
    pub dropped_by_generator: u64,
    /// Sent but not answered when the phase was closed (normally 0: requests time out).
    pub unfinished: u64,
}

impl Counts {
    pub fn rejected(&self) -> u64 {
        self.rejected_429 + self.rejected_503
    }

    pub fn http_error_total(&self) -> u64 {
        self.http_errors.values().sum()
    }

    /// Every failure that is not a load-shedding rejection.
    pub fn errors(&self) -> u64 {
        self.http_error_total()
            + self.bad_responses
            + self.timeouts
            + self.connect_errors
            + self.transport_errors
    }

    /// Requests that got an answer or failed: everything sent but `unfinished`.
    pub fn finished(&self) -> u64 {
        self.ok + self.rejected() + self.errors()
    }

    /// Adds another phase's counts.
    pub fn merge(&mut self, other: &Counts) {
        self.scheduled += other.scheduled;
        self.sent += other.sent;
        self.ok += other.ok;
        self.rejected_429 += other.rejected_429;
        self.rejected_503 += other.rejected_503;
        for (status, n) in &other.http_errors {
            *self.http_errors.entry(*status).or_default() += n;
        }
        self.bad_responses += other.bad_responses;
        self.timeouts += other.timeouts;
        self.connect_errors += other.connect_errors;
        self.transport_errors += other.transport_errors;
        self.dropped_by_generator += other.dropped_by_generator;
        self.unfinished += other.unfinished;
    }

    pub fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Ok { .. } => self.ok += 1,
            Outcome::Rejected { status: 503 } => self.rejected_503 += 1,
            Outcome::Rejected { .. } => self.rejected_429 += 1,
            Outcome::HttpError { status } => *self.http_errors.entry(*status).or_default() += 1,
            Outcome::BadResponse => self.bad_responses += 1,
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Connect => self.connect_errors += 1,
            Outcome::Transport => self.transport_errors += 1,
        }
    }
}

/// Latency and counts of one load phase.
#[derive(Debug, Clone, Default)]
pub struct PhaseStats {
    pub counts: Counts,
    /// Successful requests, from the time they were due (open loop) or sent (closed loop).
    pub latency: Latency,
    /// Successful requests, from the time they were actually sent (open loop only): the
    /// difference to `latency` is time spent waiting on the generator itself.
    pub service: Latency,
    /// Since the measured phase started, when the last measured answer arrived.
    pub last_answer: Option<Duration>,
}

impl PhaseStats {
    /// Records one finished request.
    pub fn record(&mut self, outcome: &Outcome, latency: Duration, service: Option<Duration>) {
        self.counts.add(outcome);
        if matches!(outcome, Outcome::Ok { .. }) {
            self.latency.record(latency);
            if let Some(service) = service {
                self.service.record(service);
            }
        }
    }

    /// Adds another phase's figures (closed-loop workers each keep their own).
    pub fn merge(&mut self, other: &PhaseStats) {
        self.counts.merge(&other.counts);
        self.latency.merge(&other.latency);
        self.service.merge(&other.service);
        if let Some(t) = other.last_answer {
            self.answered_at(t);
        }
    }

    pub fn answered_at(&mut self, since_measure_start: Duration) {
        self.last_answer = Some(
            self.last_answer
                .map_or(since_measure_start, |t| t.max(since_measure_start)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_by_kind() {
        let mut c = Counts::default();
        for o in [
            Outcome::Ok { job_id: None },
            Outcome::Ok {
                job_id: Some("a".into()),
            },
            Outcome::Rejected { status: 429 },
            Outcome::Rejected { status: 503 },
            Outcome::HttpError { status: 500 },
            Outcome::HttpError { status: 500 },
            Outcome::HttpError { status: 401 },
            Outcome::BadResponse,
            Outcome::Timeout,
            Outcome::Connect,
            Outcome::Transport,
        ] {
            c.add(&o);
        }
        assert_eq!(c.ok, 2);
        assert_eq!(c.rejected(), 2);
        assert_eq!(c.http_errors.get(&500), Some(&2));
        assert_eq!(c.http_error_total(), 3);
        assert_eq!(c.errors(), 7);
        assert_eq!(c.finished(), 11);
    }

    #[test]
    fn only_successes_enter_the_latency_series() {
        let mut p = PhaseStats::default();
        p.record(
            &Outcome::Ok { job_id: None },
            Duration::from_millis(5),
            Some(Duration::from_millis(2)),
        );
        p.record(
            &Outcome::Rejected { status: 429 },
            Duration::from_millis(1),
            None,
        );
        assert_eq!(p.latency.len(), 1);
        assert_eq!(p.service.len(), 1);
        assert_eq!(p.counts.finished(), 2);
    }

    #[test]
    fn merging_adds_counts_and_values() {
        let mut a = PhaseStats::default();
        a.record(
            &Outcome::Ok { job_id: None },
            Duration::from_millis(1),
            None,
        );
        a.record(
            &Outcome::HttpError { status: 500 },
            Duration::from_millis(1),
            None,
        );
        a.answered_at(Duration::from_secs(2));
        let mut b = PhaseStats::default();
        b.record(
            &Outcome::Ok { job_id: None },
            Duration::from_millis(3),
            None,
        );
        b.record(
            &Outcome::HttpError { status: 500 },
            Duration::from_millis(1),
            None,
        );
        b.answered_at(Duration::from_secs(3));
        a.merge(&b);
        assert_eq!(a.counts.ok, 2);
        assert_eq!(a.counts.http_errors.get(&500), Some(&2));
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.last_answer, Some(Duration::from_secs(3)));
    }

    #[test]
    fn latency_saturates_instead_of_dropping() {
        let mut l = Latency::new();
        l.record(Duration::from_secs(10 * 3600));
        l.record(Duration::ZERO);
        assert_eq!(l.len(), 2);
        assert!(l.histogram().max() >= HIGHEST_US);
        assert!(l.histogram().min() >= 1);
    }
}

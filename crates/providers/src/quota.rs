//! Per-deployment request and token quotas (per minute) as token buckets, so the balancer
//! can skip a deployment that is near its quota instead of hammering it into 429s.

use tokio::time::Instant;

#[derive(Debug)]
pub struct Bucket {
    capacity: f64,
    tokens: f64,
    per_s: f64,
    last: Instant,
}

impl Bucket {
    /// `per_minute == 0` means unlimited (no bucket).
    pub fn per_minute(per_minute: u64, now: Instant) -> Option<Bucket> {
        (per_minute > 0).then(|| Bucket {
            capacity: per_minute as f64,
            tokens: per_minute as f64,
            per_s: per_minute as f64 / 60.0,
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_s).min(self.capacity);
        self.last = now;
    }

    /// Whether `cost` fits while leaving `headroom` (a fraction of capacity) unused.
    pub fn has_room(&mut self, now: Instant, cost: f64, headroom: f64) -> bool {
        self.refill(now);
        self.tokens - cost >= self.capacity * headroom - f64::EPSILON
    }

    pub fn take(&mut self, now: Instant, cost: f64) {
        self.refill(now);
        self.tokens -= cost;
    }

    /// Gives back what an estimate over-charged (or charges what it under-charged).
    pub fn adjust(&mut self, now: Instant, delta: f64) {
        self.refill(now);
        self.tokens = (self.tokens + delta).min(self.capacity);
    }

    /// How long until `cost` fits with `headroom`.
    pub fn wait_for(&mut self, now: Instant, cost: f64, headroom: f64) -> std::time::Duration {
        self.refill(now);
        let missing = cost + self.capacity * headroom - self.tokens;
        if missing <= 0.0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs_f64((missing / self.per_s).min(60.0))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn near_quota_is_refused_until_it_refills() {
        let mut b = Bucket::per_minute(60, Instant::now()).unwrap();
        let mut sent = 0;
        while b.has_room(Instant::now(), 1.0, 0.1) {
            b.take(Instant::now(), 1.0);
            sent += 1;
        }
        assert_eq!(sent, 54, "6 of 60 kept as headroom");
        assert_eq!(b.wait_for(Instant::now(), 1.0, 0.1), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.has_room(Instant::now(), 1.0, 0.1));
        assert!(Bucket::per_minute(0, Instant::now()).is_none());
    }
}

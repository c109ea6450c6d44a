//! A sliding window of per-second counters, the shared bookkeeping of the circuit breaker,
//! the retry budget and the hedge cap. Bounded: one bucket per second of the window.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

/// Two counters per second over the last `len` seconds.
#[derive(Debug)]
pub struct Window {
    origin: Instant,
    len_s: u64,
    buckets: VecDeque<(u64, u64, u64)>,
}

impl Window {
    pub fn new(len: Duration, now: Instant) -> Window {
        let len_s = len.as_secs().max(1);
        Window {
            origin: now,
            len_s,
            buckets: VecDeque::with_capacity(len_s as usize + 1),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    fn expire(&mut self, now: Instant) {
        let sec = self.second(now);
        while let Some(&(s, _, _)) = self.buckets.front() {
            if s + self.len_s <= sec {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// Adds to the current second's counters.
    pub fn add(&mut self, now: Instant, a: u64, b: u64) {
        self.expire(now);
        let sec = self.second(now);
        match self.buckets.back_mut() {
            Some(last) if last.0 == sec => {
                last.1 += a;
                last.2 += b;
            }
            _ => self.buckets.push_back((sec, a, b)),
        }
    }

    /// Both counters summed over the window.
    pub fn totals(&mut self, now: Instant) -> (u64, u64) {
        self.expire(now);
        self.buckets
            .iter()
            .fold((0, 0), |(a, b), &(_, x, y)| (a + x, b + y))
    }

    pub fn clear(&mut self) {
        self.buckets.clear();
    }

    pub fn len(&self) -> Duration {
        Duration::from_secs(self.len_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn old_seconds_fall_out() {
        let mut w = Window::new(Duration::from_secs(3), Instant::now());
        w.add(Instant::now(), 1, 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        w.add(Instant::now(), 2, 1);
        assert_eq!(w.totals(Instant::now()), (3, 1));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(w.totals(Instant::now()), (2, 1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(w.totals(Instant::now()), (0, 0));
    }
}

//! The retry budget: retries may be at most `ratio` of first attempts over a sliding window,
//! plus a small floor (`min_per_s`) so a quiet worker can still retry. During an outage this
//! caps upstream calls near `(1 + ratio) × traffic` instead of multiplying it by the number
//! of attempts. The same shape caps the hedged share of calls.

use std::time::Duration;

use tokio::time::Instant;

use crate::window::Window;

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor: f64,
    /// (first attempts, retries) per second.
    window: Window,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_s: f64, window: Duration, now: Instant) -> RetryBudget {
        let window = Window::new(window, now);
        let floor = min_per_s * window.len().as_secs_f64();
        RetryBudget {
            ratio,
            floor,
            window,
        }
    }

    /// Counts a first attempt (live traffic).
    pub fn deposit(&mut self, now: Instant) {
        self.window.add(now, 1, 0);
    }

    /// Takes one retry from the budget if there is one left.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let (firsts, retries) = self.window.totals(now);
        if (retries as f64) < self.floor + self.ratio * firsts as f64 {
            self.window.add(now, 0, 1);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_fraction_of_traffic() {
        let mut b = RetryBudget::new(0.2, 0.0, Duration::from_secs(10), Instant::now());
        for _ in 0..50 {
            b.deposit(Instant::now());
        }
        let granted = (0..100).filter(|_| b.try_withdraw(Instant::now())).count();
        assert_eq!(granted, 10);
        // The window slides: after it, the budget is earned again by new traffic only.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!b.try_withdraw(Instant::now()));
        for _ in 0..5 {
            b.deposit(Instant::now());
        }
        assert!(b.try_withdraw(Instant::now()));
        assert!(!b.try_withdraw(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_a_few_retries_without_traffic() {
        let mut b = RetryBudget::new(0.1, 0.5, Duration::from_secs(4), Instant::now());
        assert_eq!(
            (0..10).filter(|_| b.try_withdraw(Instant::now())).count(),
            2
        );
    }
}

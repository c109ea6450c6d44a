//! Redelivery delay: exponential with full jitter, at least what the upstream asked for.

use std::time::Duration;

use rand::Rng;

/// Delay before delivery `attempt + 1`: uniform in `[0, min(max, base * 2^(attempt-1))]`,
/// raised to `retry_after` when the upstream asked for more.
pub fn redelivery_delay(
    attempt: u64,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = attempt.saturating_sub(1).min(20) as u32;
    let cap = base.saturating_mul(1u32 << exp).min(max);
    let jittered = Duration::from_secs_f64(rand::rng().random_range(0.0..=1.0) * cap.as_secs_f64());
    match retry_after {
        Some(ra) => jittered.max(ra.min(max)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_the_exponential_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 1..30 {
            for _ in 0..50 {
                let d = redelivery_delay(attempt, base, max, None);
                let cap = (base * 2u32.pow(attempt.saturating_sub(1).min(20) as u32)).min(max);
                assert!(d <= cap, "attempt {attempt}: {d:?} > {cap:?}");
            }
        }
    }

    #[test]
    fn honours_retry_after_up_to_the_max() {
        let d = redelivery_delay(
            1,
            Duration::from_millis(10),
            Duration::from_secs(60),
            Some(Duration::from_secs(3)),
        );
        assert!(d >= Duration::from_secs(3));
        let d = redelivery_delay(
            1,
            Duration::from_millis(10),
            Duration::from_secs(1),
            Some(Duration::from_secs(30)),
        );
        assert!(d <= Duration::from_secs(1));
    }
}

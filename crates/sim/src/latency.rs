//! Latency sampling that reproduces configured p50/p95/p99.
//!
//! A uniform draw `u` in `[0, 1)` is mapped through a piecewise curve interpolated in log
//! space between the points `(0, p50/10)`, `(0.5, p50)`, `(0.95, p95)`, `(0.99, p99)` and
//! `(1, 1.5 * p99)`. Because the curve is the inverse CDF, the configured quantiles are the
//! sampled quantiles, and the tail is long like a real model server's.

use std::time::Duration;

use crate::config::Latency;

/// Inverse-CDF points as `(u, ln(ms))`; `None` when no latency is configured.
#[derive(Clone, Debug)]
pub struct LatencyModel {
    points: Option<[(f64, f64); 5]>,
}

impl LatencyModel {
    /// Builds the curve; expects a validated [`Latency`] (all zero, or `0 < p50 <= p95 <= p99`).
    pub fn new(latency: &Latency) -> Self {
        if latency.is_zero() || latency.p50_ms <= 0.0 {
            return Self { points: None };
        }
        let Latency {
            p50_ms,
            p95_ms,
            p99_ms,
        } = *latency;
        let points = [
            (0.0, (p50_ms / 10.0).ln()),
            (0.5, p50_ms.ln()),
            (0.95, p95_ms.ln()),
            (0.99, p99_ms.ln()),
            (1.0, (p99_ms * 1.5).ln()),
        ];
        Self {
            points: Some(points),
        }
    }

    /// The delay for a uniform draw `u` in `[0, 1)` (values outside are clamped).
    pub fn sample(&self, u: f64) -> Duration {
        let Some(points) = &self.points else {
            return Duration::ZERO;
        };
        let u = if u.is_nan() { 0.0 } else { u.clamp(0.0, 1.0) };
        let mut ln_ms = points[points.len() - 1].1;
        for pair in points.windows(2) {
            let ((u0, y0), (u1, y1)) = (pair[0], pair[1]);
            if u <= u1 {
                let t = if u1 > u0 { (u - u0) / (u1 - u0) } else { 0.0 };
                ln_ms = y0 + t * (y1 - y0);
                break;
            }
        }
        let ms = ln_ms.exp();
        if ms.is_finite() && ms > 0.0 {
            Duration::from_secs_f64(ms / 1000.0)
        } else {
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn quantile(sorted: &[f64], q: f64) -> f64 {
        sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
    }

    #[test]
    fn sampled_quantiles_match_the_configuration() {
        let cfg = Latency {
            p50_ms: 120.0,
            p95_ms: 800.0,
            p99_ms: 2500.0,
        };
        let model = LatencyModel::new(&cfg);
        let mut rng = StdRng::seed_from_u64(7);
        let mut ms: Vec<f64> = (0..100_000)
            .map(|_| model.sample(rng.random()).as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        for (q, want) in [(0.5, cfg.p50_ms), (0.95, cfg.p95_ms), (0.99, cfg.p99_ms)] {
            let got = quantile(&ms, q);
            assert!(
                (got - want).abs() <= want * 0.1,
                "p{} = {got}, want {want}",
                q * 100.0
            );
        }
        assert!(ms[0] >= cfg.p50_ms / 10.0 * 0.999);
        assert!(ms[ms.len() - 1] <= cfg.p99_ms * 1.5 * 1.001);
    }

    #[test]
    fn curve_passes_through_the_quantile_points() {
        let model = LatencyModel::new(&Latency {
            p50_ms: 100.0,
            p95_ms: 400.0,
            p99_ms: 1000.0,
        });
        let ms = |u: f64| model.sample(u).as_secs_f64() * 1000.0;
        assert!((ms(0.0) - 10.0).abs() < 1e-6);
        assert!((ms(0.5) - 100.0).abs() < 1e-6);
        assert!((ms(0.95) - 400.0).abs() < 1e-6);
        assert!((ms(0.99) - 1000.0).abs() < 1e-6);
        assert!((ms(1.0) - 1500.0).abs() < 1e-6);
    }

    #[test]
    fn zero_configuration_means_no_delay() {
        let model = LatencyModel::new(&Latency::default());
        assert_eq!(model.sample(0.3), Duration::ZERO);
        assert_eq!(model.sample(0.999), Duration::ZERO);
    }
}

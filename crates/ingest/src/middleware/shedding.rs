//! Load shedding by queue backlog.
//!
//! A tracked background task reads each class's backlog (undelivered messages and the age
//! of the oldest) every `governance.shedding.poll_ms`. Admission compares it with the
//! thresholds: the backlog a class competes with is its own and every higher class's, so
//! `low` is shed first (everything queued counts), then `normal` (`normal` + `high`), and
//! `high` only at its hard limit. Shed requests get `429 queue_saturated` with `Retry-After`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sluice_config::{Shedding, duration::millis_u64};
use sluice_protocol::Priority;
use sluice_queue::Queue;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// The latest backlog per class: `[high, normal, low]`.
#[derive(Debug, Default)]
pub struct Backlogs {
    pending: [AtomicU64; 3],
    /// Publish time of the oldest undelivered message (0: none).
    oldest_ms: [AtomicU64; 3],
}

impl Backlogs {
    pub fn set(&self, p: Priority, pending: u64, oldest_ms: Option<u64>) {
        self.pending[p.index()].store(pending, Ordering::Relaxed);
        self.oldest_ms[p.index()].store(oldest_ms.unwrap_or(0), Ordering::Relaxed);
        metrics::gauge!("sluice_queue_pending", "priority" => p.as_str()).set(pending as f64);
    }

    /// Pending messages and oldest age (ms) of `p` and every class above it.
    fn competing(&self, p: Priority, now_ms: u64) -> (u64, u64) {
        let upto = p.index();
        let mut pending = 0;
        let mut age = 0;
        for i in 0..=upto {
            pending += self.pending[i].load(Ordering::Relaxed);
            let o = self.oldest_ms[i].load(Ordering::Relaxed);
            if o > 0 {
                age = age.max(now_ms.saturating_sub(o));
            }
        }
        (pending, age)
    }

    /// `Err(Shed)` when `p` must not be admitted now.
    pub fn check(&self, cfg: &Shedding, p: Priority, now_ms: u64) -> Result<(), ApiError> {
        let (pending, age) = self.competing(p, now_ms);
        let over = |max: u64, v: u64| max > 0 && v > max;
        let (low_age, normal_age) = (millis_u64(cfg.low_max_age), millis_u64(cfg.normal_max_age));
        let shed = match p {
            Priority::Low => over(cfg.low_max_depth, pending) || over(low_age, age),
            Priority::Normal => over(cfg.normal_max_depth, pending) || over(normal_age, age),
            Priority::High => over(cfg.high_max_depth, pending),
        };
        if shed {
            metrics::counter!("sluice_ingest_shed_total", "priority" => p.as_str()).increment(1);
            return Err(ApiError::Shed {
                priority: p.as_str(),
                retry_after_s: 1 + millis_u64(cfg.poll).div_ceil(1000),
            });
        }
        Ok(())
    }
}

pub fn enabled(cfg: &Shedding) -> bool {
    [
        cfg.low_max_depth,
        cfg.normal_max_depth,
        cfg.high_max_depth,
        millis_u64(cfg.low_max_age),
        millis_u64(cfg.normal_max_age),
    ]
    .iter()
    .any(|&v| v > 0)
}

/// Polls the backlog until shutdown.
pub async fn poll(
    queue: Queue,
    backlogs: Arc<Backlogs>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        for p in Priority::ALL {
            match tokio::time::timeout(every.max(Duration::from_millis(100)), queue.backlog(p))
                .await
            {
                Ok(Ok(b)) => backlogs.set(p, b.pending, b.oldest_ms),
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot read the queue backlog"),
                Err(_) => tracing::debug!("reading the queue backlog timed out"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_is_shed_first_then_normal_and_high_only_at_its_hard_limit() {
        let cfg = Shedding {
            low_max_depth: 100,
            normal_max_depth: 500,
            high_max_depth: 2000,
            ..Shedding::default()
        };
        let b = Backlogs::default();
        let shed = |b: &Backlogs, p| b.check(&cfg, p, 0).is_err();
        b.set(Priority::Normal, 150, None);
        assert!(
            shed(&b, Priority::Low) && !shed(&b, Priority::Normal) && !shed(&b, Priority::High)
        );
        b.set(Priority::High, 400, None);
        assert!(shed(&b, Priority::Normal) && !shed(&b, Priority::High));
        b.set(Priority::High, 2001, None);
        assert!(shed(&b, Priority::High));
        // A deep low backlog alone does not shed normal work.
        let b = Backlogs::default();
        b.set(Priority::Low, 10_000, None);
        assert!(shed(&b, Priority::Low) && !shed(&b, Priority::Normal));
    }

    #[test]
    fn age_sheds_too() {
        let cfg = Shedding {
            low_max_age: Duration::from_millis(1000),
            ..Shedding::default()
        };
        let b = Backlogs::default();
        b.set(Priority::High, 1, Some(10_000));
        assert!(b.check(&cfg, Priority::Low, 10_500).is_ok());
        assert!(b.check(&cfg, Priority::Low, 11_500).is_err());
        assert!(b.check(&cfg, Priority::Normal, 99_999).is_ok());
    }
}

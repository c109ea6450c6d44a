//! Choosing a deployment: power of two choices over the deployments that can take the call
//! now (breaker closed or probing, under concurrency, not near a quota, not cooling down
//! after a 429), picked at random by weight and compared by expected latency × queue depth.

use std::sync::Arc;

use rand::Rng;
use tokio::time::Instant;

use crate::deployment::{Deployment, Slot, Unavailable};

/// The outcome of a pick: a reserved slot, or the shortest time until one may be free and
/// why the last deployment looked at could not take it (`None`: no deployment was left to
/// look at).
pub enum Pick {
    Slot(Slot),
    None {
        retry_in: Option<std::time::Duration>,
        reason: Option<Unavailable>,
    },
}

/// Picks among `deps` minus `exclude` (indices already tried in this job attempt).
pub fn pick(deps: &[Arc<Deployment>], exclude: &[usize], tokens: f64) -> (Option<usize>, Pick) {
    let now = Instant::now();
    let mut eligible: Vec<usize> = Vec::with_capacity(deps.len());
    let mut retry_in: Option<std::time::Duration> = None;
    let mut reason = None;
    for (i, d) in deps.iter().enumerate() {
        if exclude.contains(&i) {
            continue;
        }
        match d.check(now, tokens) {
            Ok(()) => eligible.push(i),
            Err(u) => {
                reason = Some(u);
                if let Some(w) = u.wait() {
                    retry_in = Some(retry_in.map_or(w, |r| r.min(w)));
                }
            }
        }
    }
    let mut rng = rand::rng();
    while !eligible.is_empty() {
        let a = weighted(deps, &eligible, &mut rng);
        let chosen = if eligible.len() == 1 {
            a
        } else {
            let rest: Vec<usize> = eligible.iter().copied().filter(|&i| i != a).collect();
            let b = weighted(deps, &rest, &mut rng);
            if deps[b].score() < deps[a].score() {
                b
            } else {
                a
            }
        };
        match deps[chosen].reserve(now, tokens) {
            Ok(slot) => return (Some(chosen), Pick::Slot(slot)),
            // Taken by a concurrent call between check and reserve: try the others.
            Err(_) => eligible.retain(|&i| i != chosen),
        }
    }
    (None, Pick::None { retry_in, reason })
}

fn weighted(deps: &[Arc<Deployment>], among: &[usize], rng: &mut impl Rng) -> usize {
    let total: u64 = among.iter().map(|&i| u64::from(deps[i].weight)).sum();
    let mut x = rng.random_range(0..total.max(1));
    for &i in among {
        let w = u64::from(deps[i].weight);
        if x < w {
            return i;
        }
        x -= w;
    }
    among[0]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use sluice_config::{BreakerConfig, DeploymentConfig};

    use super::*;
    use crate::{OpenAiProvider, ProviderError};

    fn dep(name: &str, max_concurrency: usize, rpm: u64) -> Arc<Deployment> {
        let d: DeploymentConfig =
            toml::from_str(&format!("name = \"{name}\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmax_concurrency = {max_concurrency}\nrpm = {rpm}\n"))
                .unwrap();
        let client = OpenAiProvider::for_deployment(&d, None).unwrap();
        let breaker = BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 2,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        };
        Deployment::from_config(&d, client, &breaker, 0.1)
    }

    fn slot(p: Pick) -> Slot {
        match p {
            Pick::Slot(s) => s,
            Pick::None { reason, .. } => panic!("no slot: {reason:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn least_outstanding_wins_and_concurrency_is_never_exceeded() {
        let deps = vec![dep("a", 2, 0), dep("b", 2, 0)];
        let held: Vec<Slot> = (0..4).map(|_| slot(pick(&deps, &[], 1.0).1)).collect();
        // Two choices among two: always the one with fewer calls outstanding.
        assert_eq!((deps[0].outstanding(), deps[1].outstanding()), (2, 2));
        assert!(matches!(
            pick(&deps, &[], 1.0).1,
            Pick::None {
                reason: Some(Unavailable::Busy),
                ..
            }
        ));
        drop(held);
        assert_eq!(deps[0].outstanding() + deps[1].outstanding(), 0);
        let (i, _s) = pick(&deps, &[0], 1.0);
        assert_eq!(i, Some(1), "excluded deployments are not picked");
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_sidelines_a_deployment_for_its_retry_after() {
        let deps = vec![dep("a", 8, 0)];
        slot(pick(&deps, &[], 1.0).1).failed(ProviderError::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(3)),
        });
        match pick(&deps, &[], 1.0).1 {
            Pick::None { reason, retry_in } => {
                assert!(matches!(reason, Some(Unavailable::CoolingDown(_))));
                assert_eq!(retry_in, Some(Duration::from_secs(3)));
            }
            Pick::Slot(_) => panic!("picked a cooling deployment"),
        }
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(matches!(pick(&deps, &[], 1.0).1, Pick::Slot(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deployment_near_its_quota_is_skipped() {
        let deps = vec![dep("limited", 100, 10), dep("free", 100, 0)];
        // Keep `free` busy so the balancer would prefer `limited` while it has quota.
        let _busy: Vec<Slot> = (0..50)
            .map(|_| deps[1].reserve(Instant::now(), 1.0).unwrap())
            .collect();
        let mut to_limited = 0;
        for _ in 0..20 {
            let (i, s) = pick(&deps, &[], 1.0);
            if i == Some(0) {
                to_limited += 1;
            }
            slot(s).succeeded(None);
        }
        assert_eq!(to_limited, 9, "10 per minute minus 10% headroom");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_takes_no_traffic_until_a_probe_succeeds() {
        let deps = vec![dep("a", 8, 0)];
        for _ in 0..2 {
            slot(pick(&deps, &[], 1.0).1).failed(ProviderError::Status {
                status: 503,
                retry_after: None,
            });
        }
        assert!(matches!(
            pick(&deps, &[], 1.0).1,
            Pick::None {
                reason: Some(Unavailable::BreakerOpen),
                ..
            }
        ));
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = slot(pick(&deps, &[], 1.0).1);
        assert!(
            matches!(pick(&deps, &[], 1.0).1, Pick::None { .. }),
            "one probe at a time"
        );
        probe.succeeded(None);
        assert!(matches!(pick(&deps, &[], 1.0).1, Pick::Slot(_)));
    }
}

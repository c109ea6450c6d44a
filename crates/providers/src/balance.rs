//! Choosing a deployment: power of two choices over the deployments that can take the call
//! now (breaker closed or probing, under concurrency, not near a quota, not cooling down
//! after a 429), picked at random by weight and compared by expected latency × queue depth.

use std::sync::Arc;

use rand::Rng;
use tokio::time::Instant;

use crate::deployment::{Deployment, Slot, Unavailable};

/// The outcome of a pick: a reserved slot, or the shortest time until one may be free.
pub enum Pick {
    Slot(Slot),
    None { retry_in: Option<std::time::Duration>, reason: &'static str },
}

/// Picks among `deps` minus `exclude` (indices already tried in this job attempt).
pub fn pick(deps: &[Arc<Deployment>], exclude: &[usize], tokens: f64) -> (Option<usize>, Pick) {
    let now = Instant::now();
    let mut eligible: Vec<usize> = Vec::with_capacity(deps.len());
    let mut retry_in: Option<std::time::Duration> = None;
    let mut reason = "no_deployment";
    for (i, d) in deps.iter().enumerate() {
        if exclude.contains(&i) {
            continue;
        }
        match d.check(now, tokens) {
            Ok(()) => eligible.push(i),
            Err(u) => {
                let (wait, why) = match u {
                    Unavailable::Busy => (None, "deployments_busy"),
                    Unavailable::BreakerOpen => (None, "breaker_open"),
                    Unavailable::CoolingDown(w) => (Some(w), "rate_limited"),
                    Unavailable::NearQuota(w) => (Some(w), "quota"),
                };
                reason = why;
                if let Some(w) = wait {
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
            if deps[b].score() < deps[a].score() { b } else { a }
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

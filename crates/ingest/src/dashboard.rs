//! The live dashboard: `GET /dashboard` (a static page and its script, `/dashboard.js`) and
//! the JSON it refreshes from, `GET /v1/admin/dashboard` (admin key).
//!
//! The page holds no data, so it is an open route; its login form keeps the admin key in
//! the tab's `sessionStorage` and the script sends it as an `Authorization` header, never in
//! a URL. The JSON joins what ingest reads itself — queue depth, lag and oldest age per
//! priority from the broker, budget use from Redis — with the workers' summaries (jobs,
//! failures and latencies of their last few seconds, slots, breaker states, token use per
//! tenant; see `sluice_store::dashboard`). [`overview`] is the pure part: it merges the
//! summaries into the figures the page shows.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    Json,
    extract::State,
    http::header::{CACHE_CONTROL, CONTENT_TYPE},
    response::IntoResponse,
};
use serde::Serialize;
use sluice_protocol::Priority;
use sluice_store::{dashboard::WorkerSummary, now_ms};
use utoipa::ToSchema;

use crate::{AppState, error::ApiError};

const PAGE: &str = include_str!("dashboard/page.html");
const SCRIPT: &str = include_str!("dashboard/page.js");
/// The page runs only its own script and styles and is never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'none'";
/// A worker summary older than this is ignored (workers report every two seconds).
const SUMMARY_TTL: Duration = Duration::from_secs(10);
/// Tenants shown.
const TOP_TENANTS: usize = 10;

pub async fn page() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
            (axum::http::header::CONTENT_SECURITY_POLICY, CSP),
        ],
        PAGE,
    )
}

pub async fn script() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        SCRIPT,
    )
}

/// What the dashboard shows, at `at_ms`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    pub at_ms: u64,
    /// Workers that reported in the last ten seconds.
    pub workers: usize,
    /// Jobs that ended per second, over the workers' last report (about two seconds).
    pub jobs_per_s: f64,
    /// Failed (failed, expired or dead-lettered) among those jobs; `null` without jobs.
    pub error_rate: Option<f64>,
    /// Submission-to-end latency percentiles of those jobs, ms; `null` without jobs.
    pub latency_ms: Option<Percentiles>,
    pub in_flight: u64,
    pub free_slots: u64,
    pub queues: Vec<QueueRow>,
    /// Per deployment: the worst state any worker sees, and on how many it is not closed.
    pub breakers: Vec<BreakerRow>,
    /// Top tenants by tokens since the reporting workers started.
    pub tenants: Vec<TenantRow>,
    /// Configured budgets and their use this period, highest ratio first.
    pub budgets: Vec<BudgetRow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct Percentiles {
    pub p50: u32,
    pub p95: u32,
    pub p99: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueRow {
    pub priority: String,
    /// Not yet delivered.
    pub depth: u64,
    /// Not yet delivered + delivered and not yet acknowledged.
    pub lag: u64,
    pub oldest_age_s: f64,
}

#[derive(Debug, PartialEq, Serialize, ToSchema)]
pub struct BreakerRow {
    pub deployment: String,
    /// `closed`, `half_open` or `open`.
    pub state: String,
    pub workers_not_closed: usize,
}

#[derive(Debug, PartialEq, Serialize, ToSchema)]
pub struct TenantRow {
    pub tenant: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetRow {
    pub tenant: String,
    pub tokens_used: u64,
    /// 0: no token budget.
    pub tokens_limit: u64,
    pub cost_used_usd: f64,
    /// 0: no cost budget.
    pub cost_limit_usd: f64,
    /// The larger used ratio of the two.
    pub ratio: f64,
}

/// `GET /v1/admin/dashboard`.
pub async fn data(State(state): State<AppState>) -> Result<Json<Overview>, ApiError> {
    let now = now_ms();
    let (summaries, budgets, queues) = tokio::join!(
        state
            .store
            .worker_summaries(now, SUMMARY_TTL.as_millis() as u64),
        state.gov.budget_use(now),
        queues(&state, now),
    );
    let summaries = summaries.map_err(|e| ApiError::StoreUnavailable {
        retry_after_s: 1,
        reason: e.to_string(),
    })?;
    let mut o = overview(&summaries, now);
    o.queues = queues;
    // Budgets are best effort: the rest of the page is worth showing without them.
    o.budgets = budgets
        .unwrap_or_default()
        .into_iter()
        .map(|b| BudgetRow {
            tenant: b.tenant,
            tokens_used: b.tokens_used,
            tokens_limit: b.tokens_limit,
            cost_used_usd: b.cost_used_usd,
            cost_limit_usd: b.cost_limit_usd,
            ratio: b.ratio,
        })
        .collect();
    Ok(Json(o))
}

/// Depth, lag and oldest age per priority, each read bounded by a second; a class the
/// broker did not answer for is left out.
async fn queues(state: &AppState, now: u64) -> Vec<QueueRow> {
    let read = |p: Priority| async move {
        let b = tokio::time::timeout(Duration::from_secs(1), state.queue.backlog(p)).await;
        let b = b.ok()?.ok()?;
        Some(QueueRow {
            priority: p.as_str().to_owned(),
            depth: b.pending,
            lag: b.pending + b.ack_pending,
            oldest_age_s: b
                .oldest_ms
                .map_or(0.0, |o| now.saturating_sub(o) as f64 / 1000.0),
        })
    };
    let [high, normal, low] = Priority::ALL;
    let (a, b, c) = tokio::join!(read(high), read(normal), read(low));
    [a, b, c].into_iter().flatten().collect()
}

/// Merges the workers' summaries (queues and budgets are left empty).
pub fn overview(summaries: &[WorkerSummary], now: u64) -> Overview {
    let jobs: u64 = summaries.iter().map(|s| s.jobs).sum();
    let failed: u64 = summaries.iter().map(|s| s.failed).sum();
    let jobs_per_s = summaries
        .iter()
        .map(|s| s.jobs as f64 * 1000.0 / s.window_ms.max(1) as f64)
        .sum();
    let mut samples: Vec<u32> = summaries
        .iter()
        .flat_map(|s| s.latency_ms.iter().copied())
        .collect();
    samples.sort_unstable();
    let latency_ms = (!samples.is_empty()).then(|| Percentiles {
        p50: rank(&samples, 0.50),
        p95: rank(&samples, 0.95),
        p99: rank(&samples, 0.99),
    });
    let mut breakers: BTreeMap<&str, (u8, usize)> = BTreeMap::new();
    for b in summaries.iter().flat_map(|s| &s.breakers) {
        let severity = match b.state.as_str() {
            "open" => 2,
            "half_open" => 1,
            _ => 0,
        };
        let e = breakers.entry(&b.deployment).or_default();
        e.0 = e.0.max(severity);
        e.1 += usize::from(severity > 0);
    }
    let mut tenants: BTreeMap<&str, TenantRow> = BTreeMap::new();
    for t in summaries.iter().flat_map(|s| &s.tenants) {
        let row = tenants.entry(&t.tenant).or_insert_with(|| TenantRow {
            tenant: t.tenant.clone(),
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
        });
        row.input_tokens += t.input_tokens;
        row.output_tokens += t.output_tokens;
        row.cost_usd += t.cost_usd;
    }
    let mut tenants: Vec<TenantRow> = tenants.into_values().collect();
    tenants.sort_by_key(|t| std::cmp::Reverse(t.input_tokens + t.output_tokens));
    tenants.truncate(TOP_TENANTS);
    Overview {
        at_ms: now,
        workers: summaries.len(),
        jobs_per_s,
        error_rate: (jobs > 0).then(|| failed as f64 / jobs as f64),
        latency_ms,
        in_flight: summaries.iter().map(|s| s.in_flight).sum(),
        free_slots: summaries.iter().map(|s| s.free_slots).sum(),
        queues: Vec::new(),
        breakers: breakers
            .into_iter()
            .map(|(d, (severity, n))| BreakerRow {
                deployment: d.to_owned(),
                state: ["closed", "half_open", "open"][usize::from(severity.min(2))].to_owned(),
                workers_not_closed: n,
            })
            .collect(),
        tenants,
        budgets: Vec::new(),
    }
}

/// The nearest-rank percentile `q` of sorted `v` (0 when empty).
fn rank(v: &[u32], q: f64) -> u32 {
    let i = ((v.len() as f64) * q).ceil() as usize;
    v.get(i.max(1) - 1).or(v.last()).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use sluice_store::dashboard::{BreakerSummary, TenantUsage};

    use super::*;

    fn summary(jobs: u64, failed: u64, latency: Vec<u32>, breaker: &str) -> WorkerSummary {
        WorkerSummary {
            worker: format!("w{jobs}"),
            at_ms: 1_000,
            window_ms: 2_000,
            jobs,
            failed,
            latency_ms: latency,
            in_flight: 2,
            free_slots: 6,
            breakers: vec![BreakerSummary {
                deployment: "upstream".into(),
                state: breaker.into(),
            }],
            tenants: vec![TenantUsage {
                tenant: "acme".into(),
                input_tokens: jobs,
                output_tokens: 1,
                cost_usd: 0.5,
            }],
        }
    }

    #[test]
    fn merges_the_workers_summaries() {
        let o = overview(
            &[
                summary(10, 1, (1..=50).collect(), "closed"),
                summary(30, 3, (51..=100).collect(), "open"),
            ],
            5,
        );
        assert_eq!(o.workers, 2);
        assert!((o.jobs_per_s - 20.0).abs() < 1e-9, "{}", o.jobs_per_s);
        assert_eq!(o.error_rate, Some(0.1));
        assert_eq!(
            o.latency_ms,
            Some(Percentiles {
                p50: 50,
                p95: 95,
                p99: 99
            })
        );
        assert_eq!((o.in_flight, o.free_slots), (4, 12));
        assert_eq!(
            o.breakers,
            vec![BreakerRow {
                deployment: "upstream".into(),
                state: "open".into(),
                workers_not_closed: 1
            }]
        );
        assert_eq!(
            o.tenants,
            vec![TenantRow {
                tenant: "acme".into(),
                input_tokens: 40,
                output_tokens: 2,
                cost_usd: 1.0
            }]
        );
    }

    #[test]
    fn without_workers_there_is_nothing_to_rate() {
        let o = overview(&[], 5);
        assert_eq!(o.workers, 0);
        assert_eq!(o.jobs_per_s, 0.0);
        assert_eq!(o.error_rate, None);
        assert_eq!(o.latency_ms, None);
        assert!(o.breakers.is_empty() && o.tenants.is_empty());
    }

    #[test]
    fn a_single_sample_is_every_percentile() {
        assert_eq!(rank(&[7], 0.5), 7);
        assert_eq!(rank(&[7], 0.99), 7);
        assert_eq!(rank(&[1, 2], 0.5), 1);
        assert_eq!(rank(&[1, 2], 0.51), 2);
    }
}

//! What each tenant's budget has used this period, for the dashboard and the
//! `sluice_budget_used_ratio{tenant, budget}` gauge (`budget` is `tokens` or `cost`).
//!
//! Only tenants with a budget in the configuration are read, so the gauge's labels and the
//! dashboard's list are bounded by the configuration.

use serde::Serialize;

use crate::{GovernanceError, Governor, period};

/// A tenant's budget and what is in use of it (settled + reserved) in the current period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetUse {
    pub tenant: String,
    /// 0: no token budget.
    pub tokens_limit: u64,
    pub tokens_used: u64,
    /// 0: no cost budget.
    pub cost_limit_usd: f64,
    pub cost_used_usd: f64,
    /// The larger of the two used ratios (0 to 1, past 1 when reservations overshoot).
    pub ratio: f64,
}

/// Sets `sluice_budget_used_ratio` for `tenant` from what is in use (tokens, micro-USD).
/// A no-op for a tenant without a budget.
pub fn record_ratio(gov: &Governor, tenant: &str, tokens_used: u64, cost_used_micro_usd: u64) {
    let Some(b) = gov.config().tenant_policy(tenant).map(|p| &p.budget) else {
        return;
    };
    if b.tokens > 0 {
        metrics::gauge!("sluice_budget_used_ratio", "tenant" => tenant.to_owned(), "budget" => "tokens")
            .set(tokens_used as f64 / b.tokens as f64);
    }
    if b.cost_usd > 0.0 {
        metrics::gauge!("sluice_budget_used_ratio", "tenant" => tenant.to_owned(), "budget" => "cost")
            .set(cost_used_micro_usd as f64 / (b.cost_usd * 1e6));
    }
}

impl Governor {
    /// The budgets of every configured tenant that has one, with their use now (one
    /// pipelined read), sorted by ratio, highest first; also refreshes the gauge.
    pub async fn budget_use(&self, now_ms: u64) -> Result<Vec<BudgetUse>, GovernanceError> {
        let cfg = self.config();
        let budgeted: Vec<_> = cfg
            .tenants
            .iter()
            .filter(|(_, p)| p.budget.tokens > 0 || p.budget.cost_usd > 0.0)
            .collect();
        if budgeted.is_empty() {
            return Ok(Vec::new());
        }
        // Each tenant's budget is on its tenant's cluster slot.
        let reads = budgeted
            .iter()
            .map(|(tenant, p)| {
                let (name, _) = period::current(p.budget.period, now_ms);
                redis::cmd("HMGET")
                    .arg(self.keys().budget(tenant, &name))
                    .arg("tokens")
                    .arg("cost")
                    .to_owned()
            })
            .collect();
        let rows: Vec<(Option<i64>, Option<i64>)> = self.store().query_each(reads).await?;
        let mut out: Vec<BudgetUse> = budgeted
            .iter()
            .zip(rows)
            .map(|((tenant, p), (tokens, cost))| {
                let (tokens, cost) = (
                    tokens.unwrap_or(0).max(0) as u64,
                    cost.unwrap_or(0).max(0) as u64,
                );
                record_ratio(self, tenant, tokens, cost);
                let b = &p.budget;
                let ratio_tokens = if b.tokens > 0 {
                    tokens as f64 / b.tokens as f64
                } else {
                    0.0
                };
                let ratio_cost = if b.cost_usd > 0.0 {
                    cost as f64 / (b.cost_usd * 1e6)
                } else {
                    0.0
                };
                BudgetUse {
                    tenant: (*tenant).clone(),
                    tokens_limit: b.tokens,
                    tokens_used: tokens,
                    cost_limit_usd: b.cost_usd,
                    cost_used_usd: cost as f64 / 1e6,
                    ratio: ratio_tokens.max(ratio_cost),
                }
            })
            .collect();
        out.sort_by(|a, b| b.ratio.total_cmp(&a.ratio));
        Ok(out)
    }
}

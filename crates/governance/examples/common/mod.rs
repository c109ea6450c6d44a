//! The governed configuration the examples share: every limit high enough never to refuse,
//! loop detection on, and a budget for tenant `bench`.

use sluice_config::{Budget, BudgetPeriod, GovernanceConfig, Limit, TenantPolicy};

pub fn governed(period: BudgetPeriod, cost_usd: f64) -> GovernanceConfig {
    let big = Limit {
        requests: 1_000_000_000,
        tokens: 1_000_000_000_000,
        burst: 1.0,
    };
    let mut cfg = GovernanceConfig {
        global: big,
        tenant: big,
        key: big,
        model: big,
        loop_max_per_minute: 1_000_000_000,
        ..Default::default()
    };
    let budget = Budget {
        period,
        tokens: u64::MAX / 4,
        cost_usd,
    };
    cfg.tenants.insert(
        "bench".into(),
        TenantPolicy {
            budget,
            ..Default::default()
        },
    );
    cfg
}

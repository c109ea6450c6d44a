//! `[governance]`: rate limits, budgets, fairness, idempotency, loop detection, load shedding
//! and the admin key. Every limit of `0` is off.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GovernanceConfig {
    /// What admission does when Redis cannot be asked: refuse (`fail_closed`, 503) or admit
    /// without limits (`fail_open`), the same for every check, `Idempotency-Key` included
    /// (unchecked: not deduplicated). Either way it shows in metrics and `/readyz`.
    pub on_store_error: FailPolicy,
    /// Length of every rate-limit window.
    #[serde(rename = "window_s", with = "crate::duration::secs")]
    pub window: Duration,
    /// Over all tenants.
    pub global: Limit,
    /// Per tenant (overridable in `tenants.<id>.limits`).
    pub tenant: Limit,
    /// Per API key.
    pub key: Limit,
    /// Per tenant and model (overridable per model in `models`).
    pub model: Limit,
    pub models: BTreeMap<String, Limit>,
    /// Per tenant and `X-Agent-Id` / `X-Chain-Id` header value.
    pub agent: Limit,
    pub chain: Limit,
    /// Per-tenant policies: budgets, kill switch, fair share.
    pub tenants: BTreeMap<String, TenantPolicy>,
    /// USD per million tokens, by model, for cost budgets. Models not listed cost nothing.
    pub prices: BTreeMap<String, Price>,
    /// Fraction of a budget past which the soft-threshold metric and event fire.
    pub budget_soft_ratio: f64,
    /// How long an `Idempotency-Key` is remembered.
    #[serde(rename = "idempotency_ttl_s", with = "crate::duration::secs")]
    pub idempotency_ttl: Duration,
    /// Same tenant, chain and prompt more than this many times a minute is a loop (0: off).
    pub loop_max_per_minute: u64,
    /// Jobs one tenant may run at once across all workers, unless its policy says otherwise.
    pub max_in_flight_per_tenant: u64,
    /// A typical job's duration: a job of a tenant at its in-flight cap is deferred for this
    /// times the tenant's deferred jobs per slot (up to 30 s).
    #[serde(rename = "defer_ms", with = "crate::duration::millis")]
    pub defer: Duration,
    /// Hex SHA-256 of the admin key guarding `/v1/admin/...` (absent: admin API off).
    pub admin_key_sha256: Option<String>,
    /// How long a key looked up in Redis is trusted before it is read again (revocation
    /// reaches every replica within this time).
    #[serde(rename = "key_cache_ttl_ms", with = "crate::duration::millis")]
    pub key_cache_ttl: Duration,
    pub key_cache_capacity: usize,
    pub shedding: Shedding,
}

impl Default for GovernanceConfig {
    fn default() -> Self {
        GovernanceConfig {
            on_store_error: FailPolicy::FailClosed,
            window: Duration::from_secs(60),
            global: Limit::default(),
            tenant: Limit::default(),
            key: Limit::default(),
            model: Limit::default(),
            models: BTreeMap::new(),
            agent: Limit::default(),
            chain: Limit::default(),
            tenants: BTreeMap::new(),
            prices: BTreeMap::new(),
            budget_soft_ratio: 0.8,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            loop_max_per_minute: 0,
            max_in_flight_per_tenant: 0,
            defer: Duration::from_millis(100),
            admin_key_sha256: None,
            key_cache_ttl: Duration::from_millis(2_000),
            key_cache_capacity: 10_000,
            shedding: Shedding::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailPolicy {
    FailClosed,
    FailOpen,
}

/// Requests and tokens (prompt estimate plus `max_tokens`) per window. `burst` scales the
/// capacity: 1.0 lets a whole window's worth through at once, 0.1 a tenth of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limit {
    pub requests: u64,
    pub tokens: u64,
    pub burst: f64,
}

impl Default for Limit {
    fn default() -> Self {
        Limit {
            requests: 0,
            tokens: 0,
            burst: 1.0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantPolicy {
    /// Replaces `governance.tenant` for this tenant.
    pub limits: Option<Limit>,
    pub budget: Budget,
    /// Kill switch: every request of the tenant is refused (also settable at run time).
    pub disabled: bool,
    /// Replaces `governance.max_in_flight_per_tenant` (0: use it).
    pub max_in_flight: u64,
    /// Budgets of single API keys of this tenant, by key id (on top of the tenant's).
    pub key_budgets: std::collections::BTreeMap<String, Budget>,
    /// Fair-share weight: without its own `max_in_flight`, the tenant's cap is
    /// `max_in_flight_per_tenant × weight` (at least 1). Absent: 1.
    pub weight: Option<f64>,
}

impl TenantPolicy {
    /// The tenant's in-flight cap given the default cap `base` (0: no cap).
    pub fn in_flight_cap(&self, base: u64) -> u64 {
        if self.max_in_flight > 0 {
            return self.max_in_flight;
        }
        match self.weight {
            Some(w) if base > 0 => ((base as f64 * w).round() as u64).max(1),
            _ => base,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Budget {
    pub period: BudgetPeriod,
    /// Tokens per period (0: no token budget).
    pub tokens: u64,
    /// USD per period (0: no cost budget).
    pub cost_usd: f64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            period: BudgetPeriod::Month,
            tokens: 0,
            cost_usd: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    Month,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Price {
    pub prompt_per_mtok: f64,
    pub completion_per_mtok: f64,
}

/// Admission by queue depth (messages pending per priority class) and age of the oldest
/// pending message. Past the `low` thresholds `low` is shed, past `normal` also `normal`;
/// `high` is admitted up to `high_max_depth`. 0 turns a threshold off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shedding {
    pub low_max_depth: u64,
    pub normal_max_depth: u64,
    pub high_max_depth: u64,
    #[serde(rename = "low_max_age_ms", with = "crate::duration::millis")]
    pub low_max_age: Duration,
    #[serde(rename = "normal_max_age_ms", with = "crate::duration::millis")]
    pub normal_max_age: Duration,
    /// How often ingest reads the queue state.
    #[serde(rename = "poll_ms", with = "crate::duration::millis")]
    pub poll: Duration,
}

impl Default for Shedding {
    fn default() -> Self {
        Shedding {
            low_max_depth: 0,
            normal_max_depth: 0,
            high_max_depth: 0,
            low_max_age: Duration::ZERO,
            normal_max_age: Duration::ZERO,
            poll: Duration::from_millis(500),
        }
    }
}

impl GovernanceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.window.is_zero() {
            return bad("governance.window_s must be positive".into());
        }
        let limits = [
            &self.global,
            &self.tenant,
            &self.key,
            &self.model,
            &self.agent,
            &self.chain,
        ];
        let named = self
            .models
            .values()
            .chain(self.tenants.values().filter_map(|t| t.limits.as_ref()));
        for l in limits.into_iter().chain(named) {
            if !(l.burst > 0.0 && l.burst <= 1000.0) {
                return bad("governance limits: burst must be in (0, 1000]".into());
            }
        }
        if !(self.budget_soft_ratio > 0.0 && self.budget_soft_ratio <= 1.0) {
            return bad("governance.budget_soft_ratio must be in (0, 1]".into());
        }
        for (id, t) in &self.tenants {
            if !sluice_protocol::subjects::is_token(id) {
                return bad(format!(
                    "governance.tenants: {id:?} is not a valid tenant id"
                ));
            }
            if t.weight
                .is_some_and(|w| !(w.is_finite() && w > 0.0 && w <= 1000.0))
            {
                return bad(format!(
                    "governance.tenants.{id}.weight must be in (0, 1000]"
                ));
            }
            if t.key_budgets
                .values()
                .any(|b| !(b.cost_usd >= 0.0 && b.cost_usd.is_finite()))
            {
                return bad(format!(
                    "governance.tenants.{id}.key_budgets: cost_usd must be a non-negative number"
                ));
            }
            if !(t.budget.cost_usd >= 0.0 && t.budget.cost_usd.is_finite()) {
                return bad(format!(
                    "governance.tenants.{id}.budget.cost_usd must be a non-negative number"
                ));
            }
        }
        for (m, p) in &self.prices {
            if !(p.prompt_per_mtok >= 0.0 && p.completion_per_mtok >= 0.0) {
                return bad(format!(
                    "governance.prices.{m:?}: prices must be non-negative"
                ));
            }
        }
        if let Some(h) = &self.admin_key_sha256
            && !(h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return bad("governance.admin_key_sha256 must be 64 hex digits".into());
        }
        if self.idempotency_ttl.is_zero()
            || self.key_cache_capacity == 0
            || self.shedding.poll.is_zero()
        {
            return bad("governance: idempotency_ttl_s, key_cache_capacity and shedding.poll_ms must be positive".into());
        }
        Ok(())
    }

    /// The tenant's policy (the default one when it has none).
    pub fn tenant_policy(&self, tenant: &str) -> Option<&TenantPolicy> {
        self.tenants.get(tenant)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::Config;

    #[test]
    fn the_readme_example_parses_and_nonsense_is_refused() -> Result<(), crate::ConfigError> {
        let text = r#"
[delivery]
models = ["sim-small", "sim-large", "gpt-4o-mini"]
[governance]
admin_key_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
max_in_flight_per_tenant = 32
loop_max_per_minute = 20
tenant = { requests = 600, tokens = 2000000, burst = 0.5 }
[governance.tenants.acme]
budget = { period = "month", tokens = 50000000, cost_usd = 200.0 }
[governance.prices.gpt-4o-mini]
prompt_per_mtok = 0.15
completion_per_mtok = 0.6
[governance.shedding]
low_max_depth = 50000
"#;
        let cfg = Config::from_toml_with_env(text, &[])?;
        assert_eq!(cfg.governance.tenant.requests, 600);
        assert_eq!(cfg.governance.tenants["acme"].budget.tokens, 50_000_000);
        assert_eq!(cfg.governance.shedding.low_max_depth, 50_000);
        let cfg = Config::from_toml_with_env(
            "[governance]\nwindow_s = 30\nidempotency_ttl_s = 600\ndefer_ms = 40\nkey_cache_ttl_ms = 250\n\
             [governance.shedding]\nlow_max_age_ms = 900\nnormal_max_age_ms = 1800\npoll_ms = 75\n",
            &[],
        )?;
        let (g, ms) = (&cfg.governance, Duration::from_millis);
        assert_eq!(
            (g.window, g.idempotency_ttl),
            (Duration::from_secs(30), Duration::from_secs(600))
        );
        assert_eq!((g.defer, g.key_cache_ttl), (ms(40), ms(250)));
        let s = &g.shedding;
        assert_eq!(
            (s.low_max_age, s.normal_max_age, s.poll),
            (ms(900), ms(1800), ms(75))
        );
        let bad = |t: &str| Config::from_toml_with_env(t, &[]).is_err();
        assert!(bad(
            "[governance]\ntenant = { requests = 1, burst = 0.0 }\n"
        ));
        assert!(bad("[governance]\nadmin_key_sha256 = \"abc\"\n"));
        assert!(bad("[governance.tenants.\"a.b\"]\n"));
        assert!(bad("[governance]\non_store_error = \"ignore\"\n"));
        Ok(())
    }

    #[test]
    fn weights_scale_the_default_in_flight_cap() {
        let p = |max_in_flight, weight| super::TenantPolicy {
            max_in_flight,
            weight,
            ..Default::default()
        };
        assert_eq!(p(0, None).in_flight_cap(8), 8);
        assert_eq!(p(0, Some(2.0)).in_flight_cap(8), 16);
        assert_eq!(p(0, Some(0.5)).in_flight_cap(8), 4);
        assert_eq!(p(0, Some(0.01)).in_flight_cap(8), 1, "never below one slot");
        assert_eq!(
            p(0, Some(3.0)).in_flight_cap(0),
            0,
            "no default cap: no cap"
        );
        assert_eq!(p(5, Some(3.0)).in_flight_cap(8), 5, "an explicit cap wins");
    }
}

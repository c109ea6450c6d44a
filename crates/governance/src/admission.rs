//! Admission: may this request become a job?
//!
//! One Lua script, one round trip: it checks the tenant's kill switch, counts the request
//! for loop detection, evaluates every configured rate limit with GCRA (requests cost 1,
//! token limits cost the estimate), the tenant's budgets and the API key's own budget (if
//! the tenant configures one for it) — and only when everything passes does it commit the
//! new arrival times, add the estimate to the budgets and store the job's reservation.
//! Redis runs a script atomically, so two replicas admitting at the same instant see each
//! other's effect: the limit holds exactly, and fifty concurrent first requests cannot
//! overrun a budget.
//!
//! What it costs Redis: one call, and within it one `HMGET` and one `HSET` per dimension
//! (a dimension's request and token limits share one hash, whose expiry moves about once a
//! window; the tenant dimension's state is in the tenant hash, read with the kill switch),
//! two `HINCRBY` per budget (added to, then taken back if that overruns it), one
//! `SET NX` for a new prompt's loop counter and one `SET` for the reservation. Only the
//! limits, budgets and checks the configuration turns on are passed, and the numbers are
//! prepared here: inside Redis, formatting a number costs about as much as a command.
//!
//! Every key is the tenant's (its hash tag) except the global limit's, the one cross-tenant
//! key (`gcra:{global}`, its own slot). Against a Redis Cluster it lives on another shard
//! than the tenant's keys, so a global limit there needs a call of its own (the same GCRA on
//! that hash alone, before the tenant's call, refunded if that refuses: not built yet); the
//! dimension list is built so it can be split off.
//!
//! GCRA: a limit of `L` per window `W` spaces arrivals `T = W / L` apart and tolerates
//! `tau = burst * W` of accumulated credit; an arrival of cost `c` is allowed when
//! `max(tat, now) + c*T - now <= tau`, and the retry delay is the excess.

use sluice_config::{GovernanceConfig, Limit};
use sluice_protocol::Reservation;
use uuid::Uuid;

use sluice_store::Lua;

use crate::{GovernanceError, Governor, estimate::Usage, period};

pub(crate) static ADMIT: Lua = Lua::new("admit", include_str!("../lua/admit.lua"));

/// How long an unsettled reservation is kept (a job that never ends keeps its estimate).
const RESERVATION_TTL_S: u64 = 7 * 24 * 3600;

/// A rate-limit dimension; its name is the error `code` suffix and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Global,
    Tenant,
    Key,
    Model,
    Agent,
    Chain,
}

impl Dimension {
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Global => "global",
            Dimension::Tenant => "tenant",
            Dimension::Key => "key",
            Dimension::Model => "model",
            Dimension::Agent => "agent",
            Dimension::Chain => "chain",
        }
    }
}

/// One request to admit.
#[derive(Debug, Clone)]
pub struct Admission<'a> {
    pub job: Uuid,
    pub tenant: &'a str,
    pub key_id: &'a str,
    pub model: &'a str,
    pub agent: Option<&'a str>,
    pub chain: Option<&'a str>,
    /// Hex digest of the prompt (for loop detection; may be empty when that is off).
    pub prompt_hash: &'a str,
    /// The request's expected usage; only read when [`Governor::reserves`] says so.
    pub estimate: Usage,
}

/// The limit a quota or refusal refers to (for `RateLimit-Policy` / `RateLimit` headers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub dimension: Dimension,
    /// `true` for a tokens-per-window limit, `false` for requests.
    pub tokens: bool,
    pub limit: u64,
    pub window_s: u64,
}

impl Policy {
    /// The policy name used in headers: `tenant-requests`, `model-tokens`, …
    pub fn name(&self) -> String {
        format!(
            "{}-{}",
            self.dimension.as_str(),
            if self.tokens { "tokens" } else { "requests" }
        )
    }
}

/// Admitted; the tightest limit and what is left of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub quota: Option<(Policy, u64, u64)>,
    /// Budget tokens in use after this reservation (0 without a budget).
    pub budget_tokens_used: u64,
    /// Budget cost in use after this reservation, micro-USD (0 without a cost budget).
    pub budget_cost_used_micro_usd: u64,
    /// A reservation was recorded, so the job's end must settle it.
    pub reserved: bool,
    /// With `reserved`: the counters the estimate went to, which its settlement corrects.
    pub reservation: Option<Reservation>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Disabled,
    Loop { retry_after_ms: u64 },
    RateLimited { policy: Policy, retry_after_ms: u64 },
    BudgetExhausted { cost: bool, retry_after_ms: u64 },
}

impl Refusal {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Disabled => "tenant_disabled",
            Refusal::Loop { .. } => "loop_detected",
            Refusal::RateLimited { policy, .. } => policy.dimension.as_str(),
            Refusal::BudgetExhausted { .. } => "budget",
        }
    }
}

/// The rate limits that apply to one request, worked out once from the configuration (its
/// dimensions, GCRA hashes, `T` and `tau`): [`Governor::rate_limits`]. Admission, the
/// question whether it reserves, the span's list of limits and a fallback reservation all
/// read the same one.
pub struct RateLimits {
    dims: Vec<DimArg>,
}

/// One rate-limit dimension as the script takes it: its GCRA hash and its request and token
/// limits (either may be off).
struct DimArg {
    key: String,
    requests: Option<Gcra>,
    tokens: Option<Gcra>,
}

/// One limit: `T` (ms per unit) and `tau` (ms of tolerated credit).
#[derive(Clone, Copy)]
struct Gcra {
    policy: Policy,
    t_ms: f64,
    tau_ms: f64,
}

impl DimArg {
    /// The dimension's limits, requests first (the order the script numbers them in).
    fn limits(&self) -> impl Iterator<Item = &Gcra> {
        self.requests.iter().chain(self.tokens.iter())
    }
}

/// The reservation of an admission with these dimensions and budget hashes.
fn reservation_in(
    dims: &[DimArg],
    tenant_budget: Option<String>,
    key_budget: Option<String>,
) -> Reservation {
    Reservation {
        budgets: tenant_budget.into_iter().chain(key_budget).collect(),
        token_limits: dims
            .iter()
            .filter_map(|d| d.tokens.map(|g| (d.key.clone(), g.t_ms)))
            .collect(),
    }
}

impl Governor {
    /// Checks and, if everything passes, commits the request's limits, budget and
    /// reservation. `Err` only when Redis could not be asked.
    pub async fn admit(
        &self,
        a: &Admission<'_>,
        now_ms: u64,
    ) -> Result<Result<Decision, Refusal>, GovernanceError> {
        self.admit_under(a, &self.rate_limits(a), now_ms).await
    }

    /// [`Governor::admit`] with `a`'s rate limits already worked out
    /// ([`Governor::rate_limits`]).
    pub async fn admit_under(
        &self,
        a: &Admission<'_>,
        limits: &RateLimits,
        now_ms: u64,
    ) -> Result<Result<Decision, Refusal>, GovernanceError> {
        let cfg = self.config();
        let policy = cfg.tenant_policy(a.tenant);
        if policy.is_some_and(|p| p.disabled) {
            return Ok(Err(Refusal::Disabled));
        }
        let dims = &limits.dims;
        let (budget_tokens, budget_cost, period_name, reset_ms) = match policy {
            Some(p) if p.budget.tokens > 0 || p.budget.cost_usd > 0.0 => {
                let (name, left) = period::current(p.budget.period, now_ms);
                (
                    p.budget.tokens,
                    (p.budget.cost_usd * 1e6).round() as u64,
                    name,
                    left,
                )
            }
            _ => (0, 0, "none".to_string(), 0),
        };
        // A budget of this API key, on top of the tenant's.
        let (key_tokens, key_cost, key_period, key_reset_ms) = match policy
            .and_then(|p| p.key_budgets.get(a.key_id))
            .filter(|b| b.tokens > 0 || b.cost_usd > 0.0)
        {
            Some(b) => {
                let (name, left) = period::current(b.period, now_ms);
                (b.tokens, (b.cost_usd * 1e6).round() as u64, name, left)
            }
            None => (0, 0, "none".to_string(), 0),
        };
        let est_cost = crate::estimate::cost_micro_usd(cfg, a.model, a.estimate);
        let reserve = self.reserves_under(a, limits);
        if dims.is_empty() && !reserve && cfg.loop_max_per_minute == 0 {
            // Nothing to count or reserve: only the tenant's kill switch applies, which a
            // plain read answers without running the script.
            return self.admit_unlimited(a, est_cost).await;
        }

        // Keys the call does not use are not built: the tenant's own key stands in for
        // them (same hash tag), so the script's key list keeps its shape.
        let tenant_key = self.keys().tenant(a.tenant);
        let tenant_budget = budget_tokens > 0 || budget_cost > 0;
        let key_budget = key_tokens > 0 || key_cost > 0;
        let budget_key = tenant_budget.then(|| self.keys().budget(a.tenant, &period_name));
        let key_budget_key =
            key_budget.then(|| self.keys().key_budget(a.tenant, a.key_id, &key_period));
        let mut inv = ADMIT.key(&tenant_key);
        if cfg.loop_max_per_minute > 0 {
            let chain = a.chain.unwrap_or("-");
            inv.key(self.keys().loop_counter(a.tenant, chain, a.prompt_hash));
        } else {
            inv.key(&tenant_key);
        }
        inv.key(budget_key.as_deref().unwrap_or(&tenant_key));
        if reserve {
            inv.key(self.keys().reservation(a.tenant, a.job));
        } else {
            inv.key(&tenant_key);
        }
        inv.key(key_budget_key.as_deref().unwrap_or(&tenant_key));
        for d in dims {
            inv.key(&d.key);
        }
        inv.arg(now_ms)
            .arg(cfg.loop_max_per_minute)
            .arg(budget_tokens)
            .arg(budget_cost)
            .arg(a.estimate.total())
            .arg(est_cost)
            .arg(RESERVATION_TTL_S)
            .arg(reset_ms / 1000 + 3600)
            .arg(if reserve { "1" } else { "0" })
            .arg(key_tokens)
            .arg(key_cost)
            .arg(key_reset_ms / 1000 + 3600)
            .arg(dims.len());
        for d in dims {
            for limit in [d.requests, d.tokens] {
                match limit {
                    Some(g) => inv.arg(g.t_ms).arg(g.tau_ms),
                    None => inv.arg(0).arg(0),
                };
            }
        }
        let reply: Vec<i64> = self.store().invoke(&inv).await?;
        let [code, idx, ms, rem, used, used_cost] = <[i64; 6]>::try_from(reply).map_err(|r| {
            GovernanceError::Protocol(format!("admission returned {} values", r.len()))
        })?;
        // Limit i is field (i - 1) % 2 (requests, tokens) of dimension (i - 1) / 2.
        let policy_at = |i: i64| {
            usize::try_from(i - 1)
                .ok()
                .and_then(|i| {
                    let d = dims.get(i / 2)?;
                    if i % 2 == 0 { d.requests } else { d.tokens }
                })
                .map(|g| g.policy)
                .ok_or_else(|| GovernanceError::Protocol(format!("admission named limit {i}")))
        };
        let ms = ms.max(0) as u64;
        Ok(match code {
            0 => Ok(Decision {
                quota: if idx > 0 {
                    Some((policy_at(idx)?, rem.max(0) as u64, ms))
                } else {
                    None
                },
                budget_tokens_used: used.max(0) as u64,
                budget_cost_used_micro_usd: used_cost.max(0) as u64,
                reserved: reserve,
                reservation: reserve.then(|| reservation_in(dims, budget_key, key_budget_key)),
            }),
            1 => Err(Refusal::Disabled),
            2 => Err(Refusal::Loop { retry_after_ms: ms }),
            3 => Err(Refusal::RateLimited {
                policy: policy_at(idx)?,
                retry_after_ms: ms,
            }),
            // 1, 2: the tenant's token or cost budget; 3, 4: the key's.
            4 => Err(Refusal::BudgetExhausted {
                cost: idx == 2 || idx == 4,
                retry_after_ms: if idx >= 3 { key_reset_ms } else { reset_ms },
            }),
            other => {
                return Err(GovernanceError::Protocol(format!(
                    "admission returned code {other}"
                )));
            }
        })
    }

    /// Whether `tenant`'s kill switch is on (in the config or set through the admin API).
    pub async fn is_disabled(&self, tenant: &str) -> Result<bool, GovernanceError> {
        if self
            .config()
            .tenant_policy(tenant)
            .is_some_and(|p| p.disabled)
        {
            return Ok(true);
        }
        let disabled: Option<String> = self
            .query(
                redis::cmd("HGET")
                    .arg(self.keys().tenant(tenant))
                    .arg("disabled")
                    .to_owned(),
            )
            .await?;
        Ok(disabled.as_deref() == Some("1"))
    }

    /// [`Governor::admit`] for a request no limit, budget or loop check applies to: what the
    /// script would answer, from one `HGET` of the tenant's kill switch.
    async fn admit_unlimited(
        &self,
        a: &Admission<'_>,
        est_cost: u64,
    ) -> Result<Result<Decision, Refusal>, GovernanceError> {
        let disabled: Option<String> = self
            .query(
                redis::cmd("HGET")
                    .arg(self.keys().tenant(a.tenant))
                    .arg("disabled")
                    .to_owned(),
            )
            .await?;
        if disabled.as_deref() == Some("1") {
            return Ok(Err(Refusal::Disabled));
        }
        Ok(Ok(Decision {
            quota: None,
            budget_tokens_used: a.estimate.total(),
            budget_cost_used_micro_usd: est_cost,
            reserved: false,
            reservation: None,
        }))
    }

    /// The counters admitting `a` at `now_ms` reserves its estimate in (what
    /// [`Decision::reservation`] says when it does): for settling a reservation whose
    /// admission call did not answer.
    pub fn reservation(&self, a: &Admission<'_>, now_ms: u64) -> Reservation {
        self.reservation_under(a, &self.rate_limits(a), now_ms)
    }

    /// [`Governor::reservation`] with `a`'s rate limits already worked out.
    pub fn reservation_under(
        &self,
        a: &Admission<'_>,
        limits: &RateLimits,
        now_ms: u64,
    ) -> Reservation {
        let cfg = self.config();
        let policy = cfg.tenant_policy(a.tenant);
        let budget = |b: &sluice_config::Budget| b.tokens > 0 || b.cost_usd > 0.0;
        let tenant_budget = policy.map(|p| &p.budget).filter(|b| budget(b)).map(|b| {
            self.keys()
                .budget(a.tenant, &period::current(b.period, now_ms).0)
        });
        let key_budget = policy
            .and_then(|p| p.key_budgets.get(a.key_id))
            .filter(|b| budget(b))
            .map(|b| {
                self.keys()
                    .key_budget(a.tenant, a.key_id, &period::current(b.period, now_ms).0)
            });
        reservation_in(&limits.dims, tenant_budget, key_budget)
    }

    /// Which limits apply to `a`, for the admission span: the rate-limit policies
    /// (`tenant-requests`, `model-tokens`, ...), the budgets (`tenant-budget`,
    /// `key-budget`), the loop check (`loop`) and the tenant's in-flight cap (`in-flight`,
    /// enforced by the workers). Pure: reads the configuration only.
    pub fn applied(&self, a: &Admission<'_>) -> Vec<String> {
        self.applied_under(a, &self.rate_limits(a))
    }

    /// [`Governor::applied`] with `a`'s rate limits already worked out.
    pub fn applied_under(&self, a: &Admission<'_>, limits: &RateLimits) -> Vec<String> {
        let cfg = self.config();
        let policy = cfg.tenant_policy(a.tenant);
        let budget = |b: &sluice_config::Budget| b.tokens > 0 || b.cost_usd > 0.0;
        let mut out: Vec<String> = limits
            .dims
            .iter()
            .flat_map(DimArg::limits)
            .map(|g| g.policy.name())
            .collect();
        if policy.is_some_and(|p| budget(&p.budget)) {
            out.push("tenant-budget".into());
        }
        if policy
            .and_then(|p| p.key_budgets.get(a.key_id))
            .is_some_and(budget)
        {
            out.push("key-budget".into());
        }
        if cfg.loop_max_per_minute > 0 {
            out.push("loop".into());
        }
        let cap = policy.map_or(cfg.max_in_flight_per_tenant, |p| {
            p.in_flight_cap(cfg.max_in_flight_per_tenant)
        });
        if cap > 0 {
            out.push("in-flight".into());
        }
        out
    }

    /// Whether admitting `a` may record a reservation: a budget (the tenant's or the key's)
    /// or a token rate limit applies to it. Only then does its token estimate matter, so a
    /// caller may leave [`Admission::estimate`] at zero otherwise and skip counting.
    pub fn reserves(&self, a: &Admission<'_>) -> bool {
        self.reserves_under(a, &self.rate_limits(a))
    }

    /// [`Governor::reserves`] with `a`'s rate limits already worked out.
    pub fn reserves_under(&self, a: &Admission<'_>, limits: &RateLimits) -> bool {
        let dims = &limits.dims;
        let policy = self.config().tenant_policy(a.tenant);
        let budget = |b: &sluice_config::Budget| b.tokens > 0 || b.cost_usd > 0.0;
        policy.is_some_and(|p| budget(&p.budget))
            || policy
                .and_then(|p| p.key_budgets.get(a.key_id))
                .is_some_and(budget)
            || dims.iter().any(|d| d.tokens.is_some())
    }

    /// The rate limits that apply to `a` (the dimensions with at least one limit, each with
    /// its GCRA hash), for the `*_under` calls: worked out once per request. Pure: reads the
    /// configuration only (the estimate does not enter).
    pub fn rate_limits(&self, a: &Admission<'_>) -> RateLimits {
        RateLimits {
            dims: self.dim_args(self.config(), a),
        }
    }

    /// The dimensions with at least one limit for `a`, each with its GCRA hash.
    fn dim_args(&self, cfg: &GovernanceConfig, a: &Admission<'_>) -> Vec<DimArg> {
        let tenant_limit = cfg
            .tenant_policy(a.tenant)
            .and_then(|p| p.limits)
            .unwrap_or(cfg.tenant);
        let model_limit = cfg.models.get(a.model).copied().unwrap_or(cfg.model);
        let keys = self.keys();
        let mut dims: Vec<(Dimension, Limit, Option<&str>)> = vec![
            (Dimension::Global, cfg.global, None),
            (Dimension::Tenant, tenant_limit, None),
            (Dimension::Key, cfg.key, Some(a.key_id)),
            (Dimension::Model, model_limit, Some(a.model)),
        ];
        if let Some(agent) = a.agent {
            dims.push((Dimension::Agent, cfg.agent, Some(agent)));
        }
        if let Some(chain) = a.chain {
            dims.push((Dimension::Chain, cfg.chain, Some(chain)));
        }
        let window_ms = cfg.window.as_secs_f64() * 1000.0;
        let gcra = |dimension, tokens, per_window: u64, burst: f64| {
            (per_window > 0).then(|| Gcra {
                policy: Policy {
                    dimension,
                    tokens,
                    limit: per_window,
                    window_s: cfg.window.as_secs(),
                },
                t_ms: window_ms / per_window as f64,
                tau_ms: burst * window_ms,
            })
        };
        dims.into_iter()
            .filter(|(_, limit, _)| limit.requests > 0 || limit.tokens > 0)
            .map(|(dim, limit, subject)| DimArg {
                key: match dim {
                    Dimension::Global => keys.gcra_global(),
                    // In the tenant hash, read with the kill switch (see admit.lua).
                    Dimension::Tenant => keys.tenant(a.tenant),
                    _ => keys.gcra(a.tenant, dim.as_str(), subject),
                },
                requests: gcra(dim, false, limit.requests, limit.burst),
                tokens: gcra(dim, true, limit.tokens, limit.burst),
            })
            .collect()
    }
}

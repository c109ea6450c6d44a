//! `[models]`: provider pools per model alias and the resilience policy the workers apply.
//!
//! Each `[[models.pools]]` entry maps a model alias (what clients send as `model`) to a list
//! of deployments: OpenAI-compatible base URLs (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp,
//! another gateway) with their own key, weight, concurrency and per-minute quotas. A model
//! without a pool is served by the `[upstream]` section as a single implicit deployment, so a
//! config without `[models]` keeps working unchanged.
//!
//! ```toml
//! [models]
//! retry_budget_ratio = 0.2
//! [[models.pools]]
//! alias = "gpt-4o"
//! fallback_model = "gpt-4o-mini"
//! degraded_message = "The assistant is busy; please try again shortly."
//! [[models.pools.deployments]]
//! name = "azure-eu"
//! base_url = "https://eu.openai.azure.com"
//! style = "azure"
//! azure_deployment = "gpt4o-prod"
//! api_key = "env::AZURE_EU_KEY"
//! rpm = 600
//! tpm = 150000
//! ```

use std::{collections::HashSet, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{ConfigError, SecretRef};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    pub pools: Vec<PoolConfig>,
    /// Upstream calls one delivery may make (first try, retries on other deployments, hedges).
    pub max_calls_per_attempt: u32,
    /// Backoff between calls inside one delivery: full jitter up to `base * 2^n`, capped.
    #[serde(rename = "retry_base_ms", with = "crate::duration::millis")]
    pub retry_base: Duration,
    #[serde(rename = "retry_max_ms", with = "crate::duration::millis")]
    pub retry_max: Duration,
    /// Retries (in-delivery retries and redeliveries) may be at most this fraction of first
    /// attempts over `retry_budget_window_s`, plus `retry_budget_min_per_s`.
    pub retry_budget_ratio: f64,
    pub retry_budget_min_per_s: f64,
    #[serde(rename = "retry_budget_window_s", with = "crate::duration::secs")]
    pub retry_budget_window: Duration,
    pub breaker: BreakerConfig,
    pub routing: RoutingConfig,
    /// Successful answers kept in memory per worker to serve as a stale fallback (0: off).
    pub stale_cache_entries: usize,
    /// A deployment whose remaining per-minute quota is below this fraction is skipped.
    pub quota_headroom: f64,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            pools: Vec::new(),
            max_calls_per_attempt: 3,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(2_000),
            retry_budget_ratio: 0.2,
            retry_budget_min_per_s: 1.0,
            retry_budget_window: Duration::from_secs(10),
            breaker: BreakerConfig::default(),
            routing: RoutingConfig::default(),
            stale_cache_entries: 1_024,
            quota_headroom: 0.05,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The model name clients use.
    pub alias: String,
    pub deployments: Vec<DeploymentConfig>,
    /// Another alias tried when every deployment of this one fails.
    #[serde(default)]
    pub fallback_model: Option<String>,
    /// Answer served (flagged `degraded: true`) when everything else failed on the last attempt.
    #[serde(default)]
    pub degraded_message: Option<String>,
    #[serde(default)]
    pub hedge: HedgeConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiStyle {
    /// `{base}/chat/completions`, `Authorization: Bearer`.
    #[default]
    Openai,
    /// `{base}/openai/deployments/{azure_deployment}/chat/completions?api-version=…`,
    /// `api-key` header.
    Azure,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Shown in metrics and logs.
    pub name: String,
    pub base_url: String,
    #[serde(default)]
    pub api_key: Option<SecretRef>,
    #[serde(default)]
    pub style: ApiStyle,
    #[serde(default)]
    pub azure_deployment: Option<String>,
    #[serde(default = "default_azure_api_version")]
    pub azure_api_version: String,
    /// Model name sent upstream (default: the alias).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Requests and tokens per minute (0: unlimited).
    #[serde(default)]
    pub rpm: u64,
    #[serde(default)]
    pub tpm: u64,
    #[serde(
        rename = "timeout_s",
        with = "crate::duration::secs",
        default = "default_timeout"
    )]
    pub timeout: Duration,
}

impl DeploymentConfig {
    /// An OpenAI-style deployment at `base_url` with every other setting at its default.
    pub fn new(name: &str, base_url: &str) -> DeploymentConfig {
        DeploymentConfig {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            style: ApiStyle::Openai,
            azure_deployment: None,
            azure_api_version: default_azure_api_version(),
            model: None,
            weight: one(),
            max_concurrency: default_concurrency(),
            rpm: 0,
            tpm: 0,
            timeout: default_timeout(),
        }
    }
}

fn default_azure_api_version() -> String {
    "2024-10-21".into()
}
fn one() -> u32 {
    1
}
fn default_concurrency() -> usize {
    256
}
fn default_timeout() -> Duration {
    Duration::from_secs(120)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HedgeConfig {
    pub enabled: bool,
    /// Start the second call after this long (0: the deployment's observed p95).
    #[serde(rename = "after_ms", with = "crate::duration::millis")]
    pub after: Duration,
    /// Most calls that may be hedges, as a fraction of calls.
    pub max_share: f64,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        HedgeConfig {
            enabled: false,
            after: Duration::ZERO,
            max_share: 0.1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Outcomes counted over this window.
    #[serde(rename = "window_s", with = "crate::duration::secs")]
    pub window: Duration,
    /// No opinion below this many calls in the window.
    pub min_calls: u32,
    /// Open when failures / calls reaches this.
    pub failure_ratio: f64,
    /// How long an open breaker refuses traffic before letting probes through.
    #[serde(rename = "open_s", with = "crate::duration::secs")]
    pub open_for: Duration,
    /// Probes allowed at once while half-open; that many successes close it.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 10,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }
}

/// `model: "auto"` (or `alias`) picks a tier from the request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// The routed alias; empty turns routing off.
    pub alias: String,
    pub cheap_model: String,
    pub strong_model: String,
    /// Requests whose message text is longer than this go to the strong tier.
    pub strong_if_chars_over: usize,
    /// Requests whose last user message contains one of these (case-insensitive) go strong.
    pub strong_keywords: Vec<String>,
    /// Optional classifier: `POST` the request body, answer `{"tier":"cheap"|"strong"}`.
    pub classifier_url: String,
    #[serde(rename = "classifier_timeout_ms", with = "crate::duration::millis")]
    pub classifier_timeout: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            alias: "auto".into(),
            cheap_model: "sim-small".into(),
            strong_model: "sim-large".into(),
            strong_if_chars_over: 2_000,
            strong_keywords: vec![
                "step by step".into(),
                "prove".into(),
                "analyze".into(),
                "analyse".into(),
            ],
            classifier_url: String::new(),
            classifier_timeout: Duration::from_millis(300),
        }
    }
}

impl ModelsConfig {
    pub fn pool(&self, alias: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.alias == alias)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let fraction = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if self.max_calls_per_attempt == 0 || self.max_calls_per_attempt > 10 {
            return bad("models.max_calls_per_attempt must be between 1 and 10".into());
        }
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        if !non_negative(self.retry_budget_ratio)
            || !non_negative(self.retry_budget_min_per_s)
            || self.retry_budget_window.is_zero()
        {
            return bad(
                "models.retry_budget_* must be non-negative and the window positive".into(),
            );
        }
        if !fraction(self.quota_headroom) {
            return bad("models.quota_headroom must be a fraction".into());
        }
        let b = &self.breaker;
        if b.window.is_zero()
            || b.open_for.is_zero()
            || b.half_open_probes == 0
            || !(fraction(b.failure_ratio) && b.failure_ratio > 0.0)
        {
            return bad("models.breaker: window_s, open_s, half_open_probes positive; failure_ratio in (0, 1]".into());
        }
        let mut aliases = HashSet::new();
        for p in &self.pools {
            if !aliases.insert(p.alias.as_str()) {
                return bad(format!("model pool {:?} is listed twice", p.alias));
            }
            if p.deployments.is_empty() {
                return bad(format!("model pool {:?} has no deployments", p.alias));
            }
            if !fraction(p.hedge.max_share) {
                return bad(format!(
                    "model pool {:?}: hedge.max_share must be a fraction",
                    p.alias
                ));
            }
            if p.fallback_model.as_deref() == Some(p.alias.as_str()) {
                return bad(format!("model pool {:?} falls back to itself", p.alias));
            }
            let mut names = HashSet::new();
            for d in &p.deployments {
                if !names.insert(d.name.as_str()) {
                    return bad(format!(
                        "deployment {:?} of pool {:?} is listed twice",
                        d.name, p.alias
                    ));
                }
                if !(d.base_url.starts_with("http://") || d.base_url.starts_with("https://")) {
                    return bad(format!(
                        "deployment {:?}: base_url must be an http(s) URL",
                        d.name
                    ));
                }
                if d.weight == 0 || d.max_concurrency == 0 || d.timeout.is_zero() {
                    return bad(format!(
                        "deployment {:?}: weight, max_concurrency and timeout_s must be positive",
                        d.name
                    ));
                }
                if d.style == ApiStyle::Azure
                    && d.azure_deployment.as_deref().is_none_or(str::is_empty)
                {
                    return bad(format!(
                        "deployment {:?}: style = \"azure\" needs azure_deployment",
                        d.name
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::Config;

    #[test]
    fn pools_parse_and_validate() {
        let toml = r#"
[delivery]
models = ["small", "sim-small", "sim-large"]
[models]
retry_budget_ratio = 0.1
[[models.pools]]
alias = "big"
fallback_model = "small"
degraded_message = "busy"
hedge = { enabled = true, after_ms = 200 }
[[models.pools.deployments]]
name = "a"
base_url = "http://127.0.0.1:1/v1"
rpm = 60
[[models.pools.deployments]]
name = "b"
base_url = "https://x.openai.azure.com"
style = "azure"
azure_deployment = "gpt"
api_key = "env::AZ"
weight = 3
"#;
        let cfg = Config::from_toml_with_env(toml, &[]).unwrap();
        let p = cfg.models.pool("big").unwrap();
        assert_eq!(p.deployments.len(), 2);
        assert_eq!(p.deployments[1].weight, 3);
        assert!(p.hedge.enabled);
        assert_eq!(p.hedge.max_share, 0.1);
        assert!(cfg.models.pool("other").is_none());
    }

    #[test]
    fn nonsense_is_refused() {
        let azure_without_deployment = "[[models.pools]]\nalias = \"m\"\n[[models.pools.deployments]]\nname = \"a\"\nbase_url = \"http://x\"\nstyle = \"azure\"\n";
        assert!(Config::from_toml_with_env(azure_without_deployment, &[]).is_err());
        let empty = "[[models.pools]]\nalias = \"m\"\ndeployments = []\n";
        assert!(Config::from_toml_with_env(empty, &[]).is_err());
        assert!(Config::from_toml_with_env("[models]\nquota_headroom = 2.0\n", &[]).is_err());
    }
}

//! The simulator's behaviour knobs: latency quantiles, injected failure rates, served models.
//!
//! A [`SimConfig`] comes from defaults, an optional TOML file and command-line flags (the
//! binary), from tests directly, or at run time from `PUT /sim/config`. It is checked once by
//! [`SimConfig::validate`] wherever it enters, so the request path can trust it.

use serde::{Deserialize, Serialize};

/// Latency quantiles in milliseconds; all zero means no added delay.
///
/// Samples reproduce these quantiles (see [`crate::latency`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

impl Latency {
    /// True when no delay is configured.
    pub fn is_zero(&self) -> bool {
        self.p50_ms == 0.0 && self.p95_ms == 0.0 && self.p99_ms == 0.0
    }
}

/// Everything that shapes the simulator's answers.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Delay before the first byte (plain) or the first chunk (streaming).
    pub latency: Latency,
    /// Fraction of inference requests answered `500`.
    pub error_rate: f64,
    /// Fraction of inference requests answered `429` with `Retry-After`.
    pub rate_429: f64,
    /// Value of the `Retry-After` header on `429` answers, in seconds.
    pub retry_after_s: u64,
    /// Model ids served; any other model is answered `404 model_not_found`.
    pub models: Vec<String>,
    /// Delay between streamed chunks, in milliseconds.
    pub stream_chunk_delay_ms: u64,
    /// Seed for the random draws (latency, injected failures); `None` seeds from the OS.
    pub seed: Option<u64>,
    /// Answer embeddings as float arrays whatever `encoding_format` asks, like the
    /// OpenAI-compatible servers that do not implement it.
    pub embeddings_floats_only: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency: Latency::default(),
            error_rate: 0.0,
            rate_429: 0.0,
            retry_after_s: 1,
            models: vec!["sim-small".into(), "sim-large".into(), "sim-embed".into()],
            stream_chunk_delay_ms: 0,
            seed: None,
            embeddings_floats_only: false,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{field} must be a fraction in [0, 1], got {value}")]
    Fraction { field: &'static str, value: f64 },
    #[error("error_rate + rate_429 must not exceed 1, got {0}")]
    RatesExceedOne(f64),
    #[error(
        "latency quantiles must be all zero or finite with 0 < p50_ms <= p95_ms <= p99_ms, got {0:?}"
    )]
    Latency(Latency),
    #[error("models must not contain empty names")]
    EmptyModel,
    #[error("invalid TOML: {0}")]
    Toml(String),
}

impl SimConfig {
    /// Parses a TOML document (unknown keys are refused) and validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the invariants the request path relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [("error_rate", self.error_rate), ("rate_429", self.rate_429)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::Fraction { field, value });
            }
        }
        let total = self.error_rate + self.rate_429;
        if total > 1.0 {
            return Err(ConfigError::RatesExceedOne(total));
        }
        let l = self.latency;
        let ordered = l.p50_ms.is_finite()
            && l.p95_ms.is_finite()
            && l.p99_ms.is_finite()
            && 0.0 < l.p50_ms
            && l.p50_ms <= l.p95_ms
            && l.p95_ms <= l.p99_ms;
        if !l.is_zero() && !ordered {
            return Err(ConfigError::Latency(l));
        }
        if self.models.iter().any(String::is_empty) {
            return Err(ConfigError::EmptyModel);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_serve_three_models() {
        let cfg = SimConfig::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.models, ["sim-small", "sim-large", "sim-embed"]);
        assert!(cfg.latency.is_zero());
    }

    #[test]
    fn toml_fills_defaults_and_refuses_unknown_keys() {
        let cfg = SimConfig::from_toml(
            "error_rate = 0.1\n[latency]\np50_ms = 100.0\np95_ms = 300.0\np99_ms = 900.0\n",
        )
        .unwrap();
        assert_eq!(cfg.error_rate, 0.1);
        assert_eq!(cfg.latency.p95_ms, 300.0);
        assert_eq!(cfg.models.len(), 3);
        let err = SimConfig::from_toml("eror_rate = 0.1\n").unwrap_err();
        assert!(err.to_string().contains("eror_rate"), "{err}");
    }

    #[test]
    fn validation_catches_nonsense() {
        let bad = |f: fn(&mut SimConfig)| {
            let mut cfg = SimConfig::default();
            f(&mut cfg);
            cfg.validate().is_err()
        };
        assert!(bad(|c| c.error_rate = 1.5));
        assert!(bad(|c| c.rate_429 = -0.1));
        assert!(bad(|c| c.error_rate = f64::NAN));
        assert!(bad(|c| {
            c.error_rate = 0.6;
            c.rate_429 = 0.6;
        }));
        assert!(bad(|c| c.latency = Latency {
            p50_ms: 100.0,
            p95_ms: 50.0,
            p99_ms: 200.0
        }));
        assert!(bad(|c| c.latency = Latency {
            p50_ms: 0.0,
            p95_ms: 50.0,
            p99_ms: 200.0
        }));
        assert!(bad(|c| c.models.push(String::new())));
    }
}

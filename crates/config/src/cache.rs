//! `[cache]`: the response cache (see `sluice-cache` and the README's "Response cache").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Which requests of a model are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Only requests that opt in with `X-Sluice-Cache: on`.
    Off,
    /// Requests with `temperature: 0` or a `seed` (the default for chat models).
    Deterministic,
    /// Every request (the default for embeddings, which are deterministic).
    Always,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Off: no lookup, no write, no `x-sluice-cache` header.
    pub enabled: bool,
    /// Lifetime of an entry unless its model says otherwise.
    pub ttl_s: u64,
    /// The in-process tier in front of Redis: bytes of answers it holds, and how long it
    /// holds one (the bound on how stale one replica's hit can be against Redis).
    pub local_max_bytes: u64,
    pub local_ttl_ms: u64,
    /// How long the job computing an entry holds its single-flight lease; identical
    /// requests arriving meanwhile wait for that job. Longer than a job normally takes.
    pub lease_ms: u64,
    /// Whether a hit counts against the request-rate limits (it never reserves tokens or
    /// budget, since it calls no provider).
    pub hits_count_against_limits: bool,
    /// Per-model mode and TTL, by the model name clients send.
    pub models: BTreeMap<String, CacheModelConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheModelConfig {
    pub mode: Option<CacheMode>,
    pub ttl_s: Option<u64>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl_s: 3600,
            local_max_bytes: 64 << 20,
            local_ttl_ms: 2_000,
            lease_ms: 60_000,
            hits_count_against_limits: true,
            models: BTreeMap::new(),
        }
    }
}

impl CacheConfig {
    /// The mode of `model` for a call of `embedding` or chat.
    pub fn mode(&self, model: &str, embedding: bool) -> CacheMode {
        match self.models.get(model).and_then(|m| m.mode) {
            Some(m) => m,
            None if embedding => CacheMode::Always,
            None => CacheMode::Deterministic,
        }
    }

    pub fn ttl_s(&self, model: &str) -> u64 {
        self.models
            .get(model)
            .and_then(|m| m.ttl_s)
            .unwrap_or(self.ttl_s)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.ttl_s == 0 || self.ttl_s > u64::from(u32::MAX) {
            return bad("cache.ttl_s must be between 1 and 4294967295".into());
        }
        if self.lease_ms == 0 {
            return bad("cache.lease_ms must be positive".into());
        }
        for (name, m) in &self.models {
            if m.ttl_s.is_some_and(|t| t == 0 || t > u64::from(u32::MAX)) {
                return bad(format!(
                    "cache.models.{name}.ttl_s must be between 1 and 4294967295"
                ));
            }
        }
        Ok(())
    }
}

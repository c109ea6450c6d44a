//! `[cache]`: the response cache (see `sluice-cache` and the README's "Response cache").

use std::{collections::BTreeMap, time::Duration};

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
    #[serde(rename = "ttl_s", with = "crate::duration::secs")]
    pub ttl: Duration,
    /// Stale-while-revalidate: how long after its TTL an entry may still be served
    /// (`x-sluice-cache: stale`) while one low-priority job refreshes it, unless its model
    /// says otherwise. 0: off, an expired entry is a miss.
    #[serde(rename = "stale_s", with = "crate::duration::secs")]
    pub stale: Duration,
    /// Negative entries: how long an upstream's deterministic refusal of a request (a 4xx
    /// stored as `upstream_rejected`) is cached and answered with the same error. 0: off.
    #[serde(rename = "negative_ttl_s", with = "crate::duration::secs")]
    pub negative_ttl: Duration,
    /// The in-process tier in front of Redis: bytes of answers it holds, and how long it
    /// holds one (the bound on how stale one replica's hit can be against Redis).
    pub local_max_bytes: u64,
    #[serde(rename = "local_ttl_ms", with = "crate::duration::millis")]
    pub local_ttl: Duration,
    /// How long the job computing an entry holds its single-flight lease; identical
    /// requests arriving meanwhile wait for that job. Longer than a job normally takes.
    #[serde(rename = "lease_ms", with = "crate::duration::millis")]
    pub lease: Duration,
    /// Whether a hit counts against the request-rate limits (it never reserves tokens or
    /// budget, since it calls no provider).
    pub hits_count_against_limits: bool,
    /// Per-model mode and TTL, by the model name clients send.
    pub models: BTreeMap<String, CacheModelConfig>,
    /// The semantic cache's embedding model, index and insertion stream (used only when a
    /// model sets `semantic`).
    pub semantic: SemanticConfig,
}

/// `[cache.semantic]`: shared by every model whose `semantic` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SemanticConfig {
    /// The model prompts are embedded with, served by the configured pools or upstream
    /// (`POST /v1/embeddings`). Required once a model enables the semantic cache.
    pub embedding_model: String,
    /// Entries one replica's index holds at most; past it the oldest are evicted.
    pub capacity: usize,
    /// Bounds of the insertion stream every replica builds its index from: by age (by
    /// default the longest cache TTL, so the stream holds nothing whose answer has expired)
    /// and by bytes.
    #[serde(rename = "stream_max_age_s", with = "crate::duration::secs_opt")]
    pub stream_max_age: Option<Duration>,
    pub stream_max_bytes: i64,
    /// How long a lookup waits for the embedding before the request runs uncached.
    #[serde(rename = "embed_timeout_ms", with = "crate::duration::millis")]
    pub embed_timeout: Duration,
}

impl Default for SemanticConfig {
    fn default() -> Self {
        SemanticConfig {
            embedding_model: String::new(),
            capacity: 100_000,
            stream_max_age: None,
            stream_max_bytes: 1 << 30,
            embed_timeout: Duration::from_millis(2_000),
        }
    }
}

/// `cache.models.<m>.semantic`: the model's semantic cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SemanticModelConfig {
    /// Cosine similarity a cached prompt needs to answer a new one. No default: a loose
    /// threshold serves different questions the same answer, so the operator chooses.
    pub threshold: Option<f32>,
    /// Conversations with more user turns than this are not looked up (nor stored).
    pub max_turns: u32,
    /// `true`: every cacheable request of the model is looked up; `false`: only requests
    /// that send `X-Sluice-Semantic: on`.
    pub always: bool,
}

impl Default for SemanticModelConfig {
    fn default() -> Self {
        SemanticModelConfig {
            threshold: None,
            max_turns: 1,
            always: true,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheModelConfig {
    pub mode: Option<CacheMode>,
    #[serde(rename = "ttl_s", with = "crate::duration::secs_opt")]
    pub ttl: Option<Duration>,
    #[serde(rename = "stale_s", with = "crate::duration::secs_opt")]
    pub stale: Option<Duration>,
    pub semantic: Option<SemanticModelConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl: Duration::from_secs(3600),
            stale: Duration::ZERO,
            negative_ttl: Duration::from_secs(30),
            local_max_bytes: 64 << 20,
            local_ttl: Duration::from_millis(2_000),
            lease: Duration::from_millis(60_000),
            hits_count_against_limits: true,
            models: BTreeMap::new(),
            semantic: SemanticConfig::default(),
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

    /// The lifetime of an entry of `model`.
    pub fn ttl(&self, model: &str) -> Duration {
        self.models
            .get(model)
            .and_then(|m| m.ttl)
            .unwrap_or(self.ttl)
    }

    /// How long past its TTL an entry of `model` may be served stale (zero: never).
    pub fn stale(&self, model: &str) -> Duration {
        self.models
            .get(model)
            .and_then(|m| m.stale)
            .unwrap_or(self.stale)
    }

    /// The semantic settings of `model`, when it has the semantic cache.
    pub fn semantic(&self, model: &str) -> Option<&SemanticModelConfig> {
        self.models.get(model).and_then(|m| m.semantic.as_ref())
    }

    /// Whether any model has the semantic cache (ingest then embeds and keeps an index).
    pub fn semantic_enabled(&self) -> bool {
        self.enabled && self.models.values().any(|m| m.semantic.is_some())
    }

    /// Retention of the insertion stream: `stream_max_age_s`, else the longest TTL.
    pub fn semantic_max_age(&self) -> Duration {
        self.semantic.stream_max_age.unwrap_or_else(|| {
            self.models
                .values()
                .filter_map(|m| m.ttl)
                .fold(self.ttl, Duration::max)
        })
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let ttl_ok = |t: Duration| !t.is_zero() && t <= Duration::from_secs(u32::MAX.into());
        if !ttl_ok(self.ttl) {
            return bad("cache.ttl_s must be between 1 and 4294967295".into());
        }
        let max = Duration::from_secs(u32::MAX.into());
        if self.stale > max || self.negative_ttl > max {
            return bad("cache.stale_s and cache.negative_ttl_s must be at most 4294967295".into());
        }
        if self.lease.is_zero() {
            return bad("cache.lease_ms must be positive".into());
        }
        for (name, m) in &self.models {
            if m.ttl.is_some_and(|t| !ttl_ok(t)) {
                return bad(format!(
                    "cache.models.{name}.ttl_s must be between 1 and 4294967295"
                ));
            }
            if m.stale.is_some_and(|t| t > max) {
                return bad(format!(
                    "cache.models.{name}.stale_s must be at most 4294967295"
                ));
            }
            if let Some(sem) = &m.semantic {
                match sem.threshold {
                    None => {
                        return bad(format!(
                            "cache.models.{name}.semantic.threshold is required (a cosine similarity, e.g. 0.95): there is no default"
                        ));
                    }
                    Some(t) if !(t > 0.0 && t <= 1.0) => {
                        return bad(format!(
                            "cache.models.{name}.semantic.threshold must be in (0, 1]"
                        ));
                    }
                    Some(_) => {}
                }
                if sem.max_turns == 0 {
                    return bad(format!(
                        "cache.models.{name}.semantic.max_turns must be at least 1"
                    ));
                }
            }
        }
        if self.models.values().any(|m| m.semantic.is_some()) {
            let s = &self.semantic;
            if s.embedding_model.is_empty() {
                return bad(
                    "cache.semantic.embedding_model is required when a model sets semantic".into(),
                );
            }
            if s.capacity == 0 || s.stream_max_bytes <= 0 || s.embed_timeout.is_zero() {
                return bad(
                    "cache.semantic.capacity, stream_max_bytes and embed_timeout_ms must be positive"
                        .into(),
                );
            }
            if s.stream_max_age.is_some_and(|a| a.is_zero()) {
                return bad("cache.semantic.stream_max_age_s must be positive".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use crate::Config;

    fn load(toml: &str) -> Result<Config, crate::ConfigError> {
        Config::from_toml_with_env(toml, &[])
    }

    #[test]
    fn semantic_needs_an_explicit_threshold_and_an_embedding_model() {
        let base = "[delivery]\nmodels = [\"m\", \"sim-small\", \"sim-large\", \"sim-embed-bow\"]\n[cache.semantic]\nembedding_model = \"sim-embed-bow\"\n";
        let err = load(&format!("{base}[cache.models.m.semantic]\nmax_turns = 2\n")).unwrap_err();
        assert!(err.to_string().contains("threshold is required"), "{err}");
        assert!(
            load(&format!(
                "{base}[cache.models.m.semantic]\nthreshold = 1.5\n"
            ))
            .is_err()
        );
        assert!(
            load(&format!(
                "{base}[cache.models.m.semantic]\nthreshold = 0.9\nmax_turns = 0\n"
            ))
            .is_err()
        );
        let err =
            load("[delivery]\nmodels = [\"m\", \"sim-small\", \"sim-large\"]\n[cache.models.m.semantic]\nthreshold = 0.95\n")
                .unwrap_err();
        assert!(err.to_string().contains("embedding_model"), "{err}");
        let cfg = load(&format!(
            "{base}[cache.models.m]\nttl_s = 7200\n[cache.models.m.semantic]\nthreshold = 0.95\n"
        ))
        .unwrap();
        let sem = cfg.cache.semantic("m").unwrap();
        assert_eq!(
            (sem.threshold, sem.max_turns, sem.always),
            (Some(0.95), 1, true)
        );
        assert!(cfg.cache.semantic_enabled());
        assert_eq!(cfg.cache.semantic_max_age(), Duration::from_secs(7200));
        assert_eq!(cfg.cache.ttl("m"), Duration::from_secs(7200));
        assert_eq!(cfg.cache.ttl("other"), Duration::from_secs(3600));
        assert!(!load("").unwrap().cache.semantic_enabled());
    }
}

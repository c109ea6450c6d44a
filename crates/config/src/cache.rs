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
    /// Stale-while-revalidate: how long after its TTL an entry may still be served
    /// (`x-sluice-cache: stale`) while one low-priority job refreshes it, unless its model
    /// says otherwise. 0: off, an expired entry is a miss.
    pub stale_s: u64,
    /// Negative entries: how long an upstream's deterministic refusal of a request (a 4xx
    /// stored as `upstream_rejected`) is cached and answered with the same error. 0: off.
    pub negative_ttl_s: u64,
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
    pub stream_max_age_s: Option<u64>,
    pub stream_max_bytes: i64,
    /// How long a lookup waits for the embedding before the request runs uncached.
    pub embed_timeout_ms: u64,
}

impl Default for SemanticConfig {
    fn default() -> Self {
        SemanticConfig {
            embedding_model: String::new(),
            capacity: 100_000,
            stream_max_age_s: None,
            stream_max_bytes: 1 << 30,
            embed_timeout_ms: 2_000,
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
    pub ttl_s: Option<u64>,
    pub stale_s: Option<u64>,
    pub semantic: Option<SemanticModelConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl_s: 3600,
            stale_s: 0,
            negative_ttl_s: 30,
            local_max_bytes: 64 << 20,
            local_ttl_ms: 2_000,
            lease_ms: 60_000,
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

    pub fn ttl_s(&self, model: &str) -> u64 {
        self.models
            .get(model)
            .and_then(|m| m.ttl_s)
            .unwrap_or(self.ttl_s)
    }

    /// How long past its TTL an entry of `model` may be served stale (0: never).
    pub fn stale_s(&self, model: &str) -> u64 {
        self.models
            .get(model)
            .and_then(|m| m.stale_s)
            .unwrap_or(self.stale_s)
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
    pub fn semantic_max_age_s(&self) -> u64 {
        self.semantic.stream_max_age_s.unwrap_or_else(|| {
            self.models
                .values()
                .filter_map(|m| m.ttl_s)
                .fold(self.ttl_s, u64::max)
        })
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.ttl_s == 0 || self.ttl_s > u64::from(u32::MAX) {
            return bad("cache.ttl_s must be between 1 and 4294967295".into());
        }
        let max = u64::from(u32::MAX);
        if self.stale_s > max || self.negative_ttl_s > max {
            return bad("cache.stale_s and cache.negative_ttl_s must be at most 4294967295".into());
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
            if m.stale_s.is_some_and(|t| t > max) {
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
            if s.capacity == 0 || s.stream_max_bytes <= 0 || s.embed_timeout_ms == 0 {
                return bad(
                    "cache.semantic.capacity, stream_max_bytes and embed_timeout_ms must be positive"
                        .into(),
                );
            }
            if s.stream_max_age_s == Some(0) {
                return bad("cache.semantic.stream_max_age_s must be positive".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
        assert_eq!(cfg.cache.semantic_max_age_s(), 7200);
        assert!(!load("").unwrap().cache.semantic_enabled());
    }
}

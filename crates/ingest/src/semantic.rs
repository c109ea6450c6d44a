//! The semantic cache at ingest: embed a cacheable chat prompt, look it up among cached
//! prompts of the same scope, and keep this replica's index in step with the others.
//!
//! ```text
//! exact miss ─ prompt (scope, text, turns) ─ embed (/v1/embeddings) ─ index.search
//!     ├─ a candidate ≥ threshold whose exact entry is still in Redis → hit (+ similarity)
//!     └─ otherwise → the job runs; its envelope carries (scope, vector), and the worker
//!        that stores the answer publishes an insertion on the SEMANTIC stream
//! SEMANTIC stream ─ ordered consumer, from the first message ─▶ index.insert (every replica)
//! ```
//!
//! The embedding is computed here, on the miss, because the lookup needs it anyway: the
//! envelope carries it to the worker, so a prompt is embedded once, not twice. Every
//! replica replays the whole stream at start (retention: the cache TTL and a byte bound),
//! so a new replica answers the same semantic hits as the old ones once it caught up.
//! Like the exact cache this is an optimization: an embedding call or a broker that fails
//! makes the request run uncached, counted in `sluice_cache_semantic_requests_total
//! {result="error"}`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, consumer, stream};
use axum::http::HeaderMap;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sluice_cache::{
    Entry, LocalTier, Scope,
    semantic::{self, IndexConfig, Insertion, Prompt, SemanticIndex},
};
use sluice_config::{CacheConfig, IngestSettings};
use sluice_protocol::SemanticWrite;
use sluice_providers::{CallKind, CallRequest, Pools};
use sluice_queue::Queue;
use sluice_store::{Store, now_ms};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Request header opting a request in (`on`) or out (`off`) of the semantic lookup, for
/// a model that has a threshold.
pub const OPT_HEADER: &str = "x-sluice-semantic";
/// Response header of a semantic hit: the cosine similarity of the cached prompt.
pub const SIMILARITY_HEADER: &str = "x-sluice-cache-similarity";
/// Candidates above the threshold tried in turn (one may have expired in Redis).
const CANDIDATES: usize = 3;

pub struct SemanticCache {
    cfg: CacheConfig,
    index: SemanticIndex,
    pools: Pools,
    /// Set once this replica's index has replayed the SEMANTIC stream as it stood at start
    /// (`/readyz` waits for it, so a fresh replica does not miss what others would hit).
    replayed: Arc<AtomicBool>,
}

/// A prompt ready for the lookup and for the insertion after the job.
pub struct Prepared {
    pub scope: semantic::ScopeId,
    pub vector: Vec<f32>,
    pub threshold: f32,
}

impl Prepared {
    /// The envelope's part: what the worker publishes once it stored the answer.
    pub fn write(&self) -> SemanticWrite {
        SemanticWrite {
            scope: self.scope.hex(),
            vector: semantic::vector_bytes(&self.vector),
        }
    }
}

/// A semantic hit: the exact entry of a similar prompt.
pub struct Similar {
    pub entry: Arc<Entry>,
    pub similarity: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum SemanticError {
    #[error("the embedding call failed: {0}")]
    Embed(String),
    #[error("the embedding model took longer than its timeout")]
    Timeout,
    #[error("the embedding answer has no usable vector")]
    BadVector,
}

impl SemanticCache {
    /// The semantic cache when a model has one (`providers` is then set).
    pub fn new(cfg: &IngestSettings) -> anyhow::Result<Option<SemanticCache>> {
        let Some(providers) = cfg
            .providers
            .as_ref()
            .filter(|_| cfg.cache.semantic_enabled())
        else {
            return Ok(None);
        };
        let pools = Pools::new(providers)?;
        Ok(Some(SemanticCache {
            cfg: cfg.cache.clone(),
            index: SemanticIndex::new(IndexConfig::new(cfg.cache.semantic.capacity)),
            pools,
            replayed: Arc::new(AtomicBool::new(false)),
        }))
    }

    pub fn index(&self) -> &SemanticIndex {
        &self.index
    }

    /// Whether the index has caught up with the stream (see [`follow_insertions`]).
    pub fn replayed(&self) -> bool {
        self.replayed.load(Ordering::Acquire)
    }

    /// The flag [`follow_insertions`] sets once the replay caught up.
    pub fn replayed_flag(&self) -> Arc<AtomicBool> {
        self.replayed.clone()
    }

    /// Whether chat `request` for `model` takes part, and if so its embedded prompt.
    /// `Ok(None)`: the model has no threshold, the request opted out (or did not opt in),
    /// or its conversation is too long or not text.
    pub async fn prepare(
        &self,
        tenant: &str,
        model: &str,
        request: &Value,
        headers: &HeaderMap,
    ) -> Result<Option<Prepared>, SemanticError> {
        let Some(sem) = self.cfg.semantic(model) else {
            return Ok(None);
        };
        let opt = headers
            .get(OPT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase());
        let wanted = match opt.as_deref() {
            Some("on" | "true" | "1") => true,
            Some("off" | "false" | "0") => false,
            _ => sem.always,
        };
        let (true, Some(threshold)) = (wanted, sem.threshold) else {
            return Ok(None);
        };
        let Some(Prompt { scope, text, turns }) =
            semantic::prompt(Scope::Tenant(tenant), model, request)
        else {
            return Ok(None);
        };
        if turns > sem.max_turns {
            metrics::counter!("sluice_cache_semantic_requests_total", "result" => "too_long")
                .increment(1);
            return Ok(None);
        }
        let started = Instant::now();
        let vector = self.embed(&text).await;
        metrics::histogram!("sluice_cache_semantic_embed_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(Some(Prepared {
            scope,
            vector: vector?,
            threshold,
        }))
    }

    /// The prompt's unit embedding from the configured embedding model.
    async fn embed(&self, text: &str) -> Result<Vec<f32>, SemanticError> {
        let model = &self.cfg.semantic.embedding_model;
        let body = json!({ "model": model, "input": text, "encoding_format": "float" });
        let body = serde_json::to_vec(&body).map_err(|e| SemanticError::Embed(e.to_string()))?;
        let limit = self.cfg.semantic.embed_timeout;
        let req = CallRequest {
            kind: CallKind::Embeddings,
            model,
            body: &body,
            redelivery: false,
            final_attempt: false,
            deadline: Some(Instant::now() + limit),
        };
        let answer = tokio::time::timeout(limit, self.pools.call(&req))
            .await
            .map_err(|_| SemanticError::Timeout)?
            .map_err(|e| SemanticError::Embed(e.code().as_str().to_string()))?;
        let v: Value =
            serde_json::from_slice(&answer.body).map_err(|_| SemanticError::BadVector)?;
        let floats = v
            .pointer("/data/0/embedding")
            .and_then(Value::as_array)
            .ok_or(SemanticError::BadVector)?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or(SemanticError::BadVector)?;
        semantic::normalized(floats).ok_or(SemanticError::BadVector)
    }

    /// The most similar cached prompt of `p`'s scope whose exact entry is still in Redis
    /// and acceptable to the request (`max_age_s`).
    pub async fn find(
        &self,
        store: &Store,
        tier: &LocalTier,
        p: &Prepared,
        max_age_s: Option<u64>,
    ) -> Result<Option<Similar>, sluice_store::StoreError> {
        let now = now_ms();
        let started = Instant::now();
        let candidates = self
            .index
            .search(&p.scope, &p.vector, p.threshold, CANDIDATES, now);
        metrics::histogram!("sluice_cache_semantic_lookup_seconds")
            .record(started.elapsed().as_secs_f64());
        for c in candidates {
            let entry = match tier.get(&c.key) {
                Some(e) => Some(e),
                None => store.cache_get(&c.key).await?.map(Arc::new),
            };
            // Only a fresh answer: a similar prompt's refusal or expired answer is not this
            // prompt's.
            if let Some(e) =
                entry.filter(|e| !e.negative && e.fresh(now) && e.acceptable(now, max_age_s))
            {
                return Ok(Some(Similar {
                    entry: e,
                    similarity: c.similarity,
                }));
            }
        }
        Ok(None)
    }
}

/// Keeps `index` in step with the SEMANTIC stream until `shutdown`: creates the stream,
/// replays it from the first message, then follows it; after a broker error it resumes
/// after the last message it applied. Also rebuilds the index's graphs as they need it.
/// Sets `replayed` once it applied every insertion the stream held when it started (or the
/// stream went quiet before: what it held expired meanwhile), and the graphs are built.
pub async fn follow_insertions(
    queue: Queue,
    index: SemanticIndex,
    cfg: CacheConfig,
    replayed: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut next_seq = 1u64;
    let mut last_maintained = Instant::now();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let mut progress = Progress {
            next_seq: &mut next_seq,
            last_maintained: &mut last_maintained,
            replayed: &replayed,
        };
        match consume(&queue, &index, &cfg, &shutdown, &mut progress).await {
            Ok(()) => return,
            Err(e) => {
                metrics::counter!("sluice_cache_semantic_stream_errors_total").increment(1);
                tracing::warn!(error = %e, "semantic cache stream unavailable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// The SEMANTIC stream's settings: limits retention, by age (the cache TTL) and bytes.
pub fn stream_config(queue: &Queue, cfg: &CacheConfig) -> stream::Config {
    let s = queue.subjects();
    stream::Config {
        name: s.semantic_stream(),
        subjects: vec![s.semantic_insertions()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_age: cfg.semantic_max_age(),
        max_bytes: cfg.semantic.stream_max_bytes,
        num_replicas: queue.config().replicas,
        ..Default::default()
    }
}

/// Where [`consume`] stands in the stream, kept across its restarts.
struct Progress<'a> {
    /// The next stream sequence to apply.
    next_seq: &'a mut u64,
    last_maintained: &'a mut Instant,
    replayed: &'a AtomicBool,
}

async fn consume(
    queue: &Queue,
    index: &SemanticIndex,
    cfg: &CacheConfig,
    shutdown: &CancellationToken,
    p: &mut Progress<'_>,
) -> anyhow::Result<()> {
    let js: &jetstream::Context = queue.jetstream();
    js.create_or_update_stream(stream_config(queue, cfg))
        .await?;
    let mut stream = js.get_stream(queue.subjects().semantic_stream()).await?;
    // The replay is complete once every insertion the stream holds now is applied.
    let state = stream.info().await?.state.clone();
    let target = if state.messages == 0 {
        0
    } else {
        state.last_sequence
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: *p.next_seq,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let maintain_every = Duration::from_millis(500);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = tokio::time::timeout(maintain_every, messages.next()) => m,
        };
        // Quiet for a while: nothing of the replay is left to come.
        let mut idle = false;
        match next {
            Ok(Some(Ok(m))) => {
                if let Ok(info) = m.info() {
                    *p.next_seq = info.stream_sequence + 1;
                }
                match Insertion::decode(&m.payload) {
                    Ok((scope, key, vector, expires_at_ms)) => {
                        if let Some(v) = semantic::normalized(vector) {
                            index.insert(scope, key, v, expires_at_ms, now_ms());
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "skipping a semantic insertion"),
                }
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => anyhow::bail!("the semantic stream's consumer ended"),
            Err(_) => idle = true,
        }
        let caught_up = !p.replayed.load(Ordering::Acquire) && (*p.next_seq > target || idle);
        if caught_up || p.last_maintained.elapsed() >= maintain_every {
            *p.last_maintained = Instant::now();
            let idx = index.clone();
            let _ = tokio::task::spawn_blocking(move || idx.maintain(now_ms())).await;
            metrics::gauge!("sluice_cache_semantic_entries").set(index.len() as f64);
        }
        if caught_up {
            tracing::info!(entries = index.len(), "semantic index replayed the stream");
            p.replayed.store(true, Ordering::Release);
        }
    }
}

//! The semantic cache's insertions: once a job's answer is stored in the exact cache, a job
//! ingest marked for the semantic cache (`cache.semantic` in its envelope: the prompt's
//! scope and embedding, computed by ingest on the miss) publishes an insertion on the
//! SEMANTIC stream, which every ingest replica adds to its index.
//!
//! The answer itself stays in the exact entry; the insertion only points at it. A publish
//! that fails is logged and counted (`sluice_cache_semantic_insertions_total
//! {result="error"}`): the job is done, and the next similar prompt simply misses.

use sluice_cache::{
    CacheKey,
    semantic::{Insertion, ScopeId, vector_from_bytes},
};
use sluice_protocol::JobEnvelope;
use sluice_store::now_ms;

use crate::Shared;

/// The insertion `env` asks for, encoded; `None` when it asks for none (or carries a
/// malformed one).
pub fn insertion(env: &JobEnvelope) -> Option<Vec<u8>> {
    let cache = env.cache.as_ref()?;
    let write = cache.semantic.as_ref()?;
    let key = CacheKey::from_hex(&cache.key)?;
    let scope = ScopeId::from_hex(&write.scope)?;
    let vector = vector_from_bytes(&write.vector)?;
    let expires = now_ms().saturating_add(u64::from(cache.ttl_s) * 1000);
    Insertion::new(scope, key, &vector, expires).encode().ok()
}

/// Publishes `env`'s insertion, if it has one, and waits (bounded) for the broker's ack.
pub async fn publish(shared: &Shared, env: &JobEnvelope) {
    let Some(payload) = insertion(env) else {
        return;
    };
    let subject = shared.queue.subjects().semantic_insertions();
    let limit = shared.cfg.nats.publish_timeout;
    let js = shared.queue.jetstream();
    let published = tokio::time::timeout(limit, async {
        js.publish(subject, payload.into()).await?.await?;
        Ok::<_, anyhow::Error>(())
    })
    .await;
    let result = match published {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(job = %env.id, error = %e, "cannot publish a semantic cache insertion");
            "error"
        }
        Err(_) => {
            tracing::warn!(job = %env.id, "publishing a semantic cache insertion timed out");
            "error"
        }
    };
    metrics::counter!("sluice_cache_semantic_insertions_total", "result" => result).increment(1);
}

#[cfg(test)]
mod tests {
    use sluice_protocol::{CacheWrite, SemanticWrite};

    use super::*;

    #[test]
    fn an_envelope_with_a_semantic_write_yields_its_insertion() {
        let mut env = JobEnvelope::decode(
            &std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../proto/samples/v1-chat.msgpack"
            ))
            .unwrap_or_default(),
        )
        .ok()
        .unwrap_or_else(|| panic!("the v1 chat sample decodes"));
        assert!(insertion(&env).is_none());
        env.cache = Some(CacheWrite {
            key: "ab".repeat(32),
            ttl_s: 60,
            stale_s: 0,
            negative_ttl_s: 0,
            semantic: Some(SemanticWrite {
                scope: "cd".repeat(32),
                vector: sluice_cache::semantic::vector_bytes(&[0.6, 0.8]),
            }),
        });
        let bytes = insertion(&env).unwrap_or_default();
        let (scope, key, vector, expires) =
            Insertion::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(scope.hex(), "cd".repeat(32));
        assert_eq!(key.hex(), "ab".repeat(32));
        assert_eq!(vector, vec![0.6, 0.8]);
        assert!(expires > now_ms());
    }
}

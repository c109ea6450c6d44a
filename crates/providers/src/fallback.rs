//! The end of the fallback chain: a stale cached answer (the last good answer to the same
//! request) or the pool's configured degradation message. Both are flagged in the result
//! (`degraded: true`, with `degraded_reason`), so a client can tell them from a fresh
//! answer.
//!
//! The stale answer comes from the shared response cache when the job has an entry there
//! ([`SharedStale`], read by the worker from Redis: any worker can serve it, and expired
//! entries are kept for the model's stale window). Only when that read fails, or for a job
//! the response cache does not cover, does the worker's own bounded map ([`StaleCache`])
//! answer.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, PoisonError},
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

type Key = [u8; 32];

/// The shared cache's last good answer to one job's request, for the end of the chain.
pub trait SharedStale: Send + Sync {
    /// `Ok(None)`: the shared cache holds no answer to this request (the chain then ends in
    /// the degradation message); `Err`: it could not be read.
    fn stale_answer(&self) -> BoxFuture<'_, Result<Option<Bytes>, SharedStaleError>>;
}

/// The shared cache could not be read (the worker's own map answers instead).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the shared cache could not be read")]
pub struct SharedStaleError;

/// Last good answers by (model alias, request body), first in first out.
pub struct StaleCache {
    capacity: usize,
    inner: Mutex<(HashMap<Key, Bytes>, VecDeque<Key>)>,
}

impl StaleCache {
    pub fn new(capacity: usize) -> StaleCache {
        StaleCache {
            capacity,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    fn key(model: &str, body: &[u8]) -> Key {
        let mut h = Sha256::new();
        h.update(model.as_bytes());
        h.update([0]);
        h.update(body);
        h.finalize().into()
    }

    pub fn put(&self, model: &str, body: &[u8], answer: &Bytes) {
        if self.capacity == 0 {
            return;
        }
        let key = Self::key(model, body);
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, order) = &mut *guard;
        if map.insert(key, answer.clone()).is_none() {
            order.push_back(key);
            while order.len() > self.capacity {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }

    pub fn get(&self, model: &str, body: &[u8]) -> Option<Bytes> {
        let key = Self::key(model, body);
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .get(&key)
            .cloned()
    }
}

/// A cached answer marked as stale and degraded.
pub fn mark_stale(answer: &[u8]) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(answer).ok()?;
    let obj = v.as_object_mut()?;
    obj.insert("degraded".into(), Value::Bool(true));
    obj.insert(
        "degraded_reason".into(),
        Value::String("stale_cache".into()),
    );
    obj.insert("stale".into(), Value::Bool(true));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// A chat completion carrying the configured degradation message.
pub fn degraded_completion(model: &str, message: &str) -> Bytes {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let v = json!({
        "id": format!("chatcmpl-degraded-{}", uuid::Uuid::now_v7().simple()),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": message }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0 },
        "degraded": true,
        "degraded_reason": "degradation_message",
    });
    Bytes::from(v.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_keyed_by_model_and_body() {
        let c = StaleCache::new(2);
        c.put("m", b"a", &Bytes::from_static(b"{\"x\":1}"));
        c.put("m", b"b", &Bytes::from_static(b"{\"x\":2}"));
        c.put("m", b"c", &Bytes::from_static(b"{\"x\":3}"));
        assert!(c.get("m", b"a").is_none(), "oldest evicted");
        assert!(c.get("other", b"b").is_none());
        let stale = mark_stale(&c.get("m", b"b").unwrap()).unwrap();
        let v: Value = serde_json::from_slice(&stale).unwrap();
        assert_eq!(
            (
                v["x"].as_i64(),
                v["degraded"].as_bool(),
                v["stale"].as_bool()
            ),
            (Some(2), Some(true), Some(true))
        );
        let d: Value = serde_json::from_slice(&degraded_completion("m", "busy")).unwrap();
        assert_eq!(d["choices"][0]["message"]["content"], "busy");
        assert_eq!(d["degraded"], true);
    }
}

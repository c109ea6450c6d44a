//! The in-process tier: a small, bounded cache in front of Redis for hot keys.
//!
//! It holds entries for at most `ttl` (a few seconds by default), so what one replica
//! serves from memory is at most that much older than Redis: a refresh (`no-cache`) or an
//! expiry in Redis reaches every replica within `ttl`. It is bounded by the bytes of the
//! answers it holds, and evicts the least recently used beyond that.

use std::{sync::Arc, time::Duration};

use crate::{entry::Entry, key::CacheKey};

/// Bytes counted per entry on top of its body (key, bookkeeping).
const ENTRY_OVERHEAD: u32 = 96;

#[derive(Clone)]
pub struct LocalTier {
    inner: Option<moka::sync::Cache<CacheKey, Arc<Entry>>>,
}

impl LocalTier {
    /// A tier of at most `max_bytes` whose entries live `ttl`; `max_bytes == 0` or a zero
    /// `ttl` disables it (every lookup goes to Redis).
    pub fn new(max_bytes: u64, ttl: Duration) -> LocalTier {
        if max_bytes == 0 || ttl.is_zero() {
            return LocalTier { inner: None };
        }
        let inner = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k, e: &Arc<Entry>| {
                u32::try_from(e.body.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(ENTRY_OVERHEAD)
            })
            .time_to_live(ttl)
            // Entries pushed out for room: a tier too small for the hot set shows here.
            .eviction_listener(|_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    metrics::counter!("sluice_cache_local_evictions_total").increment(1);
                }
            })
            .build();
        LocalTier { inner: Some(inner) }
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.inner.as_ref()?.get(key)
    }

    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        if let Some(c) = &self.inner {
            c.insert(key, entry);
        }
    }

    pub fn invalidate(&self, key: &CacheKey) {
        if let Some(c) = &self.inner {
            c.invalidate(key);
        }
    }

    /// Entries and weighed bytes held now (approximate: moka applies writes lazily).
    pub fn usage(&self) -> (u64, u64) {
        match &self.inner {
            Some(c) => {
                c.run_pending_tasks();
                (c.entry_count(), c.weighted_size())
            }
            None => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::entry::ENTRY_VERSION;

    fn entry(body_len: usize) -> Arc<Entry> {
        Arc::new(Entry {
            v: ENTRY_VERSION,
            source_job: Uuid::now_v7(),
            created_at_ms: 1,
            body: vec![b'x'; body_len],
            prompt_tokens: 0,
            completion_tokens: 0,
            fresh_until_ms: 0,
            negative: false,
        })
    }

    #[test]
    fn holds_entries_and_stays_within_its_bytes() {
        let tier = LocalTier::new(10_000, Duration::from_secs(60));
        let k = CacheKey([1; 32]);
        tier.insert(k, entry(10));
        assert!(tier.get(&k).is_some());
        for i in 0..200u8 {
            tier.insert(CacheKey([i; 32]), entry(500));
        }
        let (_, bytes) = tier.usage();
        assert!(bytes <= 10_000, "{bytes} bytes held");
        tier.invalidate(&CacheKey([199; 32]));
        assert!(tier.get(&CacheKey([199; 32])).is_none());
    }

    #[test]
    fn a_zero_size_tier_holds_nothing() {
        let tier = LocalTier::new(0, Duration::from_secs(5));
        tier.insert(CacheKey([1; 32]), entry(1));
        assert!(tier.get(&CacheKey([1; 32])).is_none());
    }
}

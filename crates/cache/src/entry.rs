//! A cached answer as stored in Redis (MessagePack) and held in the in-process tier.
//!
//! An entry is *fresh* until `fresh_until_ms`; past it, Redis keeps it only for a model with
//! stale-while-revalidate, which serves it *stale* while one job refreshes it. A *negative*
//! entry holds an upstream's deterministic refusal (the job's stored error, JSON) and is
//! answered with that error, never as a 200.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Newest entry layout this build writes. Version 2 added `fresh_until_ms` and
/// `negative`; a build that reads only version 1 misses on version 2 entries, so it can
/// never replay a negative entry as a 200.
pub const ENTRY_VERSION: u8 = 2;
/// Oldest layout this build still reads (version 1: fresh until Redis expires it).
pub const MIN_ENTRY_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub v: u8,
    /// The job whose upstream answer this is.
    pub source_job: Uuid,
    /// When that job completed (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// The completed result: the provider's `chat.completion` or embeddings list, JSON.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Usage of the original call: what a hit saves.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// When the entry stops being fresh (ms since the Unix epoch); 0: fresh for as long as
    /// Redis holds it (version 1 entries).
    #[serde(default)]
    pub fresh_until_ms: u64,
    /// A negative entry: `body` is the job's stored error (`{"code", "message", …}`).
    #[serde(default)]
    pub negative: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("cache entry does not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cache entry does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("cache entry version {0} is not {MIN_ENTRY_VERSION}..={ENTRY_VERSION}")]
    Version(u8),
}

impl Entry {
    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        let e: Entry = rmp_serde::from_slice(bytes)?;
        if !(MIN_ENTRY_VERSION..=ENTRY_VERSION).contains(&e.v) {
            return Err(EntryError::Version(e.v));
        }
        Ok(e)
    }

    /// Age in whole seconds at `now_ms` (0 for a clock that went backwards).
    pub fn age_s(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.created_at_ms) / 1000
    }

    /// Whether the entry is fresh at `now_ms` (past it, it may only be served stale).
    pub fn fresh(&self, now_ms: u64) -> bool {
        self.fresh_until_ms == 0 || now_ms < self.fresh_until_ms
    }

    /// Whether an expired entry may still be served stale at `now_ms`, `stale_s` seconds
    /// being the model's window past expiry. A negative entry is never served stale.
    pub fn servable_stale(&self, now_ms: u64, stale_s: u64) -> bool {
        !self.negative
            && !self.fresh(now_ms)
            && now_ms
                < self
                    .fresh_until_ms
                    .saturating_add(stale_s.saturating_mul(1000))
    }

    /// Whether a request accepting entries at most `max_age_s` old may use this one.
    pub fn acceptable(&self, now_ms: u64, max_age_s: Option<u64>) -> bool {
        max_age_s.is_none_or(|m| self.age_s(now_ms) <= m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            v: ENTRY_VERSION,
            source_job: Uuid::now_v7(),
            created_at_ms: 10_000,
            body: br#"{"object":"chat.completion"}"#.to_vec(),
            prompt_tokens: 3,
            completion_tokens: 4,
            fresh_until_ms: 0,
            negative: false,
        }
    }

    #[test]
    fn round_trips_and_refuses_other_versions() {
        let e = entry();
        assert_eq!(Entry::decode(&e.encode().unwrap()).unwrap(), e);
        let old = Entry { v: 9, ..entry() };
        assert!(matches!(
            Entry::decode(&old.encode().unwrap()),
            Err(EntryError::Version(9))
        ));
        assert!(Entry::decode(b"\xc1").is_err());
        // A version 1 entry (no freshness, no negative flag) still reads, as fresh.
        #[derive(Serialize)]
        struct V1 {
            v: u8,
            source_job: Uuid,
            created_at_ms: u64,
            #[serde(with = "serde_bytes")]
            body: Vec<u8>,
            prompt_tokens: u64,
            completion_tokens: u64,
        }
        let e = entry();
        let v1 = rmp_serde::to_vec_named(&V1 {
            v: 1,
            source_job: e.source_job,
            created_at_ms: e.created_at_ms,
            body: e.body.clone(),
            prompt_tokens: 3,
            completion_tokens: 4,
        })
        .unwrap();
        let read = Entry::decode(&v1).unwrap();
        assert!(read.fresh(u64::MAX) && !read.negative);
    }

    #[test]
    fn freshness_and_the_stale_window() {
        let e = Entry {
            fresh_until_ms: 20_000,
            ..entry()
        };
        assert!(e.fresh(19_999) && !e.fresh(20_000));
        assert!(!e.servable_stale(19_999, 10), "a fresh entry is not stale");
        assert!(e.servable_stale(20_000, 10) && e.servable_stale(29_999, 10));
        assert!(!e.servable_stale(30_000, 10), "past the window");
        assert!(!e.servable_stale(20_000, 0), "stale serving off");
        let neg = Entry {
            negative: true,
            ..e.clone()
        };
        assert!(
            !neg.servable_stale(20_000, 10),
            "a negative entry is never stale"
        );
    }

    #[test]
    fn max_age_bounds_what_a_request_accepts() {
        let e = entry();
        assert!(e.acceptable(15_999, Some(5)));
        assert!(!e.acceptable(16_000, Some(5)));
        assert!(e.acceptable(1_000_000, None));
        assert!(
            e.acceptable(0, Some(0)),
            "a clock behind the entry is age 0"
        );
    }
}

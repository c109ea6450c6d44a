//! A cached answer as stored in Redis (MessagePack) and held in the in-process tier.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Newest entry layout this build writes; an entry of another version is a miss.
pub const ENTRY_VERSION: u8 = 1;

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
}

#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("cache entry does not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cache entry does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("cache entry version {0} is not {ENTRY_VERSION}")]
    Version(u8),
}

impl Entry {
    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        let e: Entry = rmp_serde::from_slice(bytes)?;
        if e.v != ENTRY_VERSION {
            return Err(EntryError::Version(e.v));
        }
        Ok(e)
    }

    /// Age in whole seconds at `now_ms` (0 for a clock that went backwards).
    pub fn age_s(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.created_at_ms) / 1000
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

//! The response cache's logic, apart from Redis: what a request's key is, whether it reads
//! or writes the cache, what an entry holds, and the bounded in-process tier in front of
//! Redis. The store (`sluice-store`'s `cache` module) keeps the entries and the
//! single-flight leases; ingest answers hits, workers write entries.
//!
//! # Layout
//! - [`key`]: deterministic keys (canonical JSON, scope, model).
//! - [`policy`]: the read/write decision from mode, request and `Cache-Control`.
//! - [`entry`]: the stored answer and its age.
//! - [`tier`]: the in-process tier (moka), bounded in bytes and in staleness.
//! - [`semantic`]: the semantic cache's scope, prompt, insertion record and HNSW index.

pub mod entry;
pub mod key;
pub mod policy;
pub mod semantic;
pub mod tier;

pub use entry::Entry;
pub use key::{CacheKey, Call, Scope};
pub use policy::{Control, Decision, Mode};
pub use tier::LocalTier;

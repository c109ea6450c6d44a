//! The job envelope: what ingest publishes and workers consume.
//!
//! Encoded as MessagePack with named fields (`rmp_serde::to_vec_named`) so that a newer
//! producer can add optional fields without breaking older consumers, and an older message
//! still decodes after an upgrade. `schema` is bumped only for a change that older code
//! cannot read; decoders refuse a schema newer than they know instead of guessing.
//! `proto/README.md` documents the fields and `proto/samples/` holds golden encodings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Priority;

/// The newest schema this build writes and the newest it can read.
pub const SCHEMA_VERSION: u16 = 1;

/// What the upstream call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    #[default]
    ChatCompletion,
    Embedding,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEnvelope {
    /// Schema version of this envelope.
    pub schema: u16,
    /// Job id, a UUIDv7 (time-ordered).
    pub id: Uuid,
    pub tenant: String,
    pub priority: Priority,
    #[serde(default)]
    pub kind: JobKind,
    /// The model the client asked for (also inside `request`; here so routing and metrics
    /// need not parse the request).
    pub model: String,
    /// The OpenAI request body as JSON bytes, already validated by ingest; the worker
    /// forwards it without re-parsing.
    #[serde(with = "serde_bytes")]
    pub request: Vec<u8>,
    /// Milliseconds since the Unix epoch when ingest accepted the job.
    pub created_at_ms: u64,
    /// After this instant (ms since epoch) the job must not be sent upstream.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// How many times the job was (re)submitted by an operator replay; 0 for the original.
    #[serde(default)]
    pub replays: u32,
    /// W3C `traceparent` of the submitting request, for trace propagation.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// Client metadata (small string map), copied to the job record.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The request asked for a streamed answer: the worker calls upstream with `stream: true`
    /// and forwards the chunks as job events while it assembles the final result.
    #[serde(default)]
    pub stream: bool,
    /// Admission reserved tokens or cost for the job (a budget or a token rate limit applies),
    /// so its end settles them. Without a reservation there is nothing to settle, and the
    /// worker skips the round trip. Messages written before this field settle as before.
    #[serde(default = "reserved_unless_told")]
    pub reserved: bool,
    /// Store the answer in the response cache when the job completes (ingest decided the
    /// request is cacheable). Absent from messages of jobs that are not cached, so their
    /// encoding is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheWrite>,
    /// Where admission reserved the job's estimate, so its settlement passes every key it
    /// moves as a script key (what a Redis Cluster requires). Absent when nothing was
    /// reserved, so such messages encode as before, and from messages written before this
    /// field (their stored reservation still names its counters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Reservation>,
}

/// The counters admission added a job's estimate to: what its settlement corrects by the
/// difference between the actual usage and the estimate.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Reservation {
    /// The budget hashes (the tenant's, the API key's) of the period admission counted in.
    #[serde(default)]
    pub budgets: Vec<String>,
    /// The token limits: each GCRA hash and its `T` at admission (ms per token).
    #[serde(default)]
    pub token_limits: Vec<(String, f64)>,
}

/// Where a completed job's answer goes in the response cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheWrite {
    /// The cache key: 64 hex digits (see `sluice-cache`).
    pub key: String,
    /// How long the entry lives, in seconds.
    pub ttl_s: u32,
    /// Stale-while-revalidate: how long past `ttl_s` the entry is kept, to be served stale
    /// while one job refreshes it. Absent (0) when off, so the encoding is unchanged.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stale_s: u32,
    /// Negative entries: how long an upstream's deterministic refusal is kept (0: not at
    /// all, and absent from the encoding).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub negative_ttl_s: u32,
    /// The semantic cache's part: after storing the entry the worker publishes an insertion
    /// (scope, vector, key) that every ingest replica adds to its index. Absent for models
    /// without the semantic cache, so their encoding is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic: Option<SemanticWrite>,
}

/// The prompt's place in the semantic cache, computed by ingest on the miss (which had to
/// embed the prompt to look it up), so the worker need not embed it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemanticWrite {
    /// The scope digest (tenant, model, system prompt, tools, output parameters): 64 hex.
    pub scope: String,
    /// The prompt's unit embedding, little-endian `f32`s.
    #[serde(with = "serde_bytes")]
    pub vector: Vec<u8>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn reserved_unless_told() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding the job envelope failed: {0}")]
    Msgpack(#[from] rmp_serde::encode::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a job envelope: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    #[error("envelope schema {0} is newer than this build understands ({SCHEMA_VERSION})")]
    UnknownSchema(u16),
}

impl JobEnvelope {
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<JobEnvelope, DecodeError> {
        let env: JobEnvelope = rmp_serde::from_slice(bytes)?;
        if env.schema == 0 || env.schema > SCHEMA_VERSION {
            return Err(DecodeError::UnknownSchema(env.schema));
        }
        Ok(env)
    }

    /// The request body as a JSON value (for tools and tests; workers forward the bytes).
    pub fn request_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JobEnvelope {
        JobEnvelope {
            schema: SCHEMA_VERSION,
            id: Uuid::now_v7(),
            tenant: "acme".into(),
            priority: Priority::High,
            kind: JobKind::ChatCompletion,
            model: "sim-small".into(),
            request: br#"{"model":"sim-small","messages":[{"role":"user","content":"hi"}]}"#
                .to_vec(),
            created_at_ms: 1_700_000_000_000,
            deadline_ms: Some(1_700_000_060_000),
            replays: 0,
            traceparent: None,
            metadata: BTreeMap::from([("k".into(), "v".into())]),
            stream: false,
            reserved: true,
            cache: None,
            reservation: None,
        }
    }

    #[test]
    fn round_trips() {
        let env = sample();
        let bytes = env.encode().unwrap();
        assert_eq!(JobEnvelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn refuses_garbage_and_future_schemas() {
        assert!(matches!(
            JobEnvelope::decode(b"\xc1not msgpack"),
            Err(DecodeError::Malformed(_))
        ));
        let mut env = sample();
        env.schema = SCHEMA_VERSION + 1;
        let bytes = env.encode().unwrap();
        assert!(matches!(
            JobEnvelope::decode(&bytes),
            Err(DecodeError::UnknownSchema(_))
        ));
    }

    #[test]
    fn ignores_fields_it_does_not_know() {
        // A newer producer adding an optional field must not break this consumer.
        #[derive(Serialize)]
        struct Newer<'a> {
            #[serde(flatten)]
            env: &'a JobEnvelope,
            future_field: &'a str,
        }
        let env = sample();
        let bytes = rmp_serde::to_vec_named(&Newer {
            env: &env,
            future_field: "x",
        })
        .unwrap();
        assert_eq!(JobEnvelope::decode(&bytes).unwrap(), env);
    }
}

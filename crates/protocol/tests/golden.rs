//! Golden samples: envelopes encoded by earlier builds, kept in `proto/samples/`, must keep
//! decoding. A change that would strand messages already in flight fails here.
//!
//! To add a sample for a new schema, write it with `SLUICE_BLESS=1 cargo test -p
//! sluice-protocol --test golden` and commit the new file; never rewrite an existing one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeMap, path::PathBuf};

use sluice_protocol::{
    CacheWrite, JobEnvelope, JobKind, Priority, Reservation, SCHEMA_VERSION, SemanticWrite,
};
use uuid::Uuid;

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto/samples")
}

fn v1_chat() -> JobEnvelope {
    JobEnvelope {
        schema: 1,
        id: Uuid::parse_str("0192f0c1-7a4b-7cde-8f01-23456789abcd").unwrap(),
        tenant: "acme".into(),
        priority: Priority::High,
        kind: JobKind::ChatCompletion,
        model: "gpt-4o-mini".into(),
        request: br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}],"max_tokens":16}"#.to_vec(),
        created_at_ms: 1_730_000_000_000,
        deadline_ms: Some(1_730_000_060_000),
        replays: 0,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        metadata: BTreeMap::from([("order".into(), "42".into())]),
        stream: false,
        reserved: true,
        cache: None,
        reservation: None,
    }
}

fn v1_chat_streamed() -> JobEnvelope {
    JobEnvelope {
        id: Uuid::parse_str("0192f0c1-7a4b-7cde-8f01-000000000003").unwrap(),
        stream: true,
        ..v1_chat()
    }
}

fn v1_embedding_minimal() -> JobEnvelope {
    JobEnvelope {
        schema: 1,
        id: Uuid::parse_str("0192f0c1-7a4b-7cde-8f01-000000000002").unwrap(),
        tenant: "t-2".into(),
        priority: Priority::Low,
        kind: JobKind::Embedding,
        model: "text-embedding-3-small".into(),
        request: br#"{"model":"text-embedding-3-small","input":"hi"}"#.to_vec(),
        created_at_ms: 1_730_000_000_001,
        deadline_ms: None,
        replays: 2,
        traceparent: None,
        metadata: BTreeMap::new(),
        stream: false,
        reserved: true,
        cache: None,
        reservation: None,
    }
}

/// Written after `reserved` was added: a job admission reserved nothing for.
fn v1_unreserved() -> JobEnvelope {
    JobEnvelope {
        id: Uuid::parse_str("0192f0c1-7a4b-7cde-8f01-000000000004").unwrap(),
        reserved: false,
        ..v1_chat()
    }
}

/// Written after `cache` was added: a job whose answer goes to the response cache.
fn v1_cached() -> JobEnvelope {
    JobEnvelope {
        id: Uuid::parse_str("0192f0c1-7a4b-7cde-8f01-000000000005").unwrap(),
        cache: Some(CacheWrite {
            key: "ab".repeat(32),
            ttl_s: 3600,
            stale_s: 0,
            negative_ttl_s: 0,
            semantic: None,
        }),
        ..v1_chat()
    }
}

/// Written after `cache.semantic` was added: a job whose answer also goes to the semantic
/// cache.
fn v1_semantic() -> JobEnvelope {
    JobEnvelope {
        id: Uuid::parse_str("0192f0c1-7a4b-7cde-8f01-000000000006").unwrap(),
        cache: Some(CacheWrite {
            key: "ab".repeat(32),
            ttl_s: 3600,
            stale_s: 0,
            negative_ttl_s: 0,
            semantic: Some(SemanticWrite {
                scope: "cd".repeat(32),
                vector: [0.6f32, 0.8].iter().flat_map(|x| x.to_le_bytes()).collect(),
            }),
        }),
        ..v1_chat()
    }
}

/// Written after `reservation` was added: a job whose settlement names the counters
/// admission reserved its estimate in.
fn v1_reservation() -> JobEnvelope {
    JobEnvelope {
        id: Uuid::parse_str("0192f0c1-7a4b-7cde-8f01-000000000007").unwrap(),
        reservation: Some(Reservation {
            budgets: vec!["sluice:budget:{acme}:d20241027".into()],
            token_limits: vec![("sluice:gcra:{acme}:tenant".into(), 0.06)],
        }),
        ..v1_chat()
    }
}

fn check(name: &str, expected: JobEnvelope) {
    let path = samples().join(name);
    if std::env::var("SLUICE_BLESS").is_ok() && !path.exists() {
        std::fs::write(&path, expected.encode().unwrap()).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let decoded =
        JobEnvelope::decode(&bytes).unwrap_or_else(|e| panic!("{name} no longer decodes: {e}"));
    assert_eq!(decoded, expected, "{name} decodes to something else");
    assert!(decoded.schema <= SCHEMA_VERSION);
}

#[test]
fn v1_chat_completion_sample_decodes() {
    check("v1-chat.msgpack", v1_chat());
}

#[test]
fn v1_streamed_chat_sample_decodes() {
    check("v1-chat-stream.msgpack", v1_chat_streamed());
}

#[test]
fn v1_unreserved_sample_decodes() {
    check("v1-unreserved.msgpack", v1_unreserved());
}

#[test]
fn v1_cached_sample_decodes() {
    check("v1-cached.msgpack", v1_cached());
}

#[test]
fn v1_reservation_sample_decodes() {
    check("v1-reservation.msgpack", v1_reservation());
}

/// `reservation` is left out when absent: a job admission reserved nothing for encodes as
/// before the field existed.
#[test]
fn an_envelope_without_a_reservation_encodes_as_before() {
    let before = std::fs::read(samples().join("v1-semantic.msgpack")).unwrap();
    assert_eq!(v1_semantic().encode().unwrap(), before);
}

#[test]
fn v1_semantic_sample_decodes() {
    check("v1-semantic.msgpack", v1_semantic());
}

/// `cache.semantic` is left out when absent: a cached job without it encodes as before.
#[test]
fn a_cached_envelope_without_semantic_encodes_as_before() {
    let before = std::fs::read(samples().join("v1-cached.msgpack")).unwrap();
    assert_eq!(v1_cached().encode().unwrap(), before);
}

/// `cache` is left out of a message when absent: a job that is not cached encodes byte for
/// byte as it did before the field existed.
#[test]
fn an_uncached_envelope_encodes_as_before_the_cache_field() {
    // The newest sample written before `cache`.
    let before = std::fs::read(samples().join("v1-unreserved.msgpack")).unwrap();
    assert_eq!(v1_unreserved().encode().unwrap(), before);
}

#[test]
fn v1_embedding_sample_with_defaults_decodes() {
    check("v1-embedding.msgpack", v1_embedding_minimal());
}

/// A v1 message written without the optional fields (as a minimal producer would) still
/// decodes, with defaults.
#[test]
fn v1_minimal_sample_decodes_with_defaults() {
    let path = samples().join("v1-minimal.msgpack");
    if std::env::var("SLUICE_BLESS").is_ok() && !path.exists() {
        #[derive(serde::Serialize)]
        struct Minimal<'a> {
            schema: u16,
            id: Uuid,
            tenant: &'a str,
            priority: &'a str,
            model: &'a str,
            #[serde(with = "serde_bytes")]
            request: &'a [u8],
            created_at_ms: u64,
        }
        let m = Minimal {
            schema: 1,
            id: Uuid::nil(),
            tenant: "acme",
            priority: "normal",
            model: "m",
            request: b"{}",
            created_at_ms: 1,
        };
        std::fs::write(&path, rmp_serde::to_vec_named(&m).unwrap()).unwrap();
    }
    let env = JobEnvelope::decode(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(env.kind, JobKind::ChatCompletion);
    assert_eq!(env.deadline_ms, None);
    assert_eq!(env.replays, 0);
    assert!(env.metadata.is_empty());
    assert!(!env.stream);
    assert!(
        env.reserved,
        "a message from before `reserved` settles as before"
    );
}

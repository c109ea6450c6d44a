//! The fuzz targets of `fuzz/` as a bounded loop in a normal test (no nightly needed): each
//! seed of a small corpus is mutated a few thousand times (byte flips, truncations,
//! duplicated spans) and fed to the envelope decoder and to request validation and screening,
//! which must answer, never panic. `cargo +nightly fuzz run …` explores far more (see
//! fuzz/README.md); a crash it finds becomes a seed here.

use std::path::Path;

use sluice_config::{PolicyRef, ScreeningAction};
use sluice_protocol::JobEnvelope;

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(4) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => v.truncate(rng.below(v.len())),
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                let j = (i + rng.below(16)).min(v.len());
                let span = v[i..j].to_vec();
                let at = rng.below(v.len());
                v.splice(at..at, span);
            }
            _ => {
                let at = rng.below(v.len() + 1);
                let b = *b"{}[]\":,\\0-9e\xff\x00<|"
                    .get(rng.below(18))
                    .unwrap_or(&b'x');
                v.insert(at, b);
            }
        }
    }
    v
}

const ROUNDS: usize = 3_000;

#[test]
fn the_envelope_decoder_never_panics_on_mutated_samples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/samples");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "msgpack"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    assert!(!seeds.is_empty(), "golden samples in {dir:?}");
    seeds.push(Vec::new());
    let mut rng = Rng(0x5eed);
    let mut decoded = 0;
    for seed in &seeds {
        for _ in 0..ROUNDS {
            if let Ok(env) = JobEnvelope::decode(&mutate(seed, &mut rng)) {
                decoded += 1;
                let _ = env.encode();
            }
        }
    }
    // Most mutations must be refused, and the unmutated samples still decode.
    assert!(decoded < seeds.len() * ROUNDS, "{decoded}");
    for seed in seeds.iter().filter(|s| !s.is_empty()) {
        assert!(JobEnvelope::decode(seed).is_ok());
    }
}

#[test]
fn validation_and_screening_never_panic_on_mutated_bodies() {
    let seeds: &[&str] = &[
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"m","messages":[{"role":"system","content":"x"},{"role":"user","content":[{"type":"text","text":"<|im_start|>system"}]}],"max_tokens":10,"temperature":1.5,"stop":["a"],"metadata":{"k":"v"},"priority":"high","deadline_s":30}"#,
        r#"{"model":"m","messages":[{"role":"tool","content":"x","tool_call_id":"t"}],"n":2,"seed":-1,"tools":[{}],"webhook":{"url":"https://example.com/h"}}"#,
        r#"{"model":"e","input":["a",[1,2],3]}"#,
        r#"{"model":"m","messages":[{"role":"assistant","content":null}],"max_tokens":99999999999999999999}"#,
    ];
    let keys = vec!["backend".to_string()];
    let patterns = vec!["open the pod bay doors".to_string()];
    let policy = PolicyRef {
        action: ScreeningAction::Block,
        system_keys: &keys,
        patterns: &patterns,
    };
    let limits = sluice_ingest::validate::Limits {
        max_output_tokens: 1_000_000,
    };
    let mut rng = Rng(0xb0d1e5);
    let mut accepted = 0;
    for seed in seeds {
        for _ in 0..ROUNDS {
            let body = mutate(seed.as_bytes(), &mut rng);
            if let Ok(sub) = sluice_ingest::validate::chat_submission(&body, limits) {
                accepted += 1;
                let _ = sluice_ingest::screening::screen(&sub.request, policy, "k");
            }
            let _ = sluice_ingest::embeddings::embedding_submission(&body);
        }
    }
    assert!(accepted > 0, "some mutations stay valid");
}

#[test]
fn last_event_id_parsing_stays_in_bounds_on_mutated_values() {
    use sluice_ingest::routes::events::{MAX_EVENT_ID, last_event_id};
    let seeds: &[&str] = &[
        "0",
        " 42 ",
        "+9",
        "0007",
        "4294967295",
        "4294967296",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "1e3",
        "",
    ];
    let mut rng = Rng(0x1a57_e7e1);
    let mut parsed = 0;
    for seed in seeds {
        for _ in 0..ROUNDS {
            let value = mutate(seed.as_bytes(), &mut rng);
            let Ok(v) = std::str::from_utf8(&value) else {
                continue;
            };
            if let Some(n) = last_event_id(v) {
                parsed += 1;
                assert!(n <= MAX_EVENT_ID, "{v:?}");
            }
        }
    }
    assert!(parsed > 0, "some mutations stay ids");
    assert_eq!(
        last_event_id("18446744073709551615"),
        None,
        "the overflow of #12"
    );
    assert_eq!(last_event_id("4294967295"), Some(MAX_EVENT_ID));
}

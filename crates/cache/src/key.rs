//! Cache keys: a SHA-256 over the scope, the kind of call, the model alias and the request
//! in canonical form.
//!
//! Two requests that mean the same thing must get the same key, and two that can give
//! different answers must not. So the request is written with object members sorted by
//! name (JSON member order never changes an answer), numbers in one spelling (`0`, `0.0` and
//! `0e0` are one temperature), and without the fields that only shape the transport:
//! `stream` and `stream_options` (a streamed request and a plain one share an answer, which a
//! streamed hit re-chunks) and `user` / `safety_identifier` (end-user ids for abuse
//! monitoring, which do not change the output and would split every entry per end user).
//! Everything else that reaches the provider is part of the key: messages, tools,
//! `response_format`, sampling parameters, `n`, `stop`, `seed`, `encoding_format`, ...

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Request members that do not change the answer (see the module docs).
const TRANSPORT_FIELDS: &[&str] = &["stream", "stream_options", "user", "safety_identifier"];

/// Whose entries a lookup may read: the tenant's own, or a shared scope the tenant opted
/// into. The two never collide (the kind of scope is part of the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    Tenant(&'a str),
    Shared(&'a str),
}

/// The call an entry answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Chat,
    Embedding,
}

impl Call {
    fn as_str(self) -> &'static str {
        match self {
            Call::Chat => "chat",
            Call::Embedding => "embedding",
        }
    }
}

/// A cache key: 32 bytes, shown as 64 hex digits in Redis keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// The key of `request` (the body forwarded upstream) for `model` in `scope`.
    pub fn new(scope: Scope<'_>, call: Call, model: &str, request: &Value) -> CacheKey {
        let mut canon = Vec::with_capacity(256);
        let (kind, id) = match scope {
            Scope::Tenant(t) => ("t", t),
            Scope::Shared(s) => ("s", s),
        };
        // Length-prefixed parts: no choice of ids can make two different tuples one string.
        for part in [kind, id, call.as_str(), model] {
            canon.extend_from_slice(&(part.len() as u64).to_le_bytes());
            canon.extend_from_slice(part.as_bytes());
        }
        match request {
            Value::Object(map) => {
                let mut members: Vec<(&String, &Value)> = map
                    .iter()
                    .filter(|(k, _)| !TRANSPORT_FIELDS.contains(&k.as_str()))
                    .collect();
                members.sort_by(|a, b| a.0.cmp(b.0));
                write_object(&mut canon, members);
            }
            other => write_canonical(&mut canon, other),
        }
        CacheKey(Sha256::digest(&canon).into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<CacheKey> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(CacheKey(out))
    }
}

fn write_object(out: &mut Vec<u8>, members: Vec<(&String, &Value)>) {
    out.push(b'{');
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, k);
        out.push(b':');
        write_canonical(out, v);
    }
    out.push(b'}');
}

fn write_canonical(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            write_object(out, members);
        }
    }
}

/// One spelling per number: integers as integers, and a float with no fraction that fits
/// in an `i64` as that integer (`1.0` is `1`).
fn write_number(out: &mut Vec<u8>, n: &serde_json::Number) {
    if let Some(i) = n.as_i64() {
        out.extend_from_slice(i.to_string().as_bytes());
    } else if let Some(u) = n.as_u64() {
        out.extend_from_slice(u.to_string().as_bytes());
    } else if let Some(f) = n.as_f64() {
        if f.fract() == 0.0 && f.abs() < 9.0e15 {
            out.extend_from_slice((f as i64).to_string().as_bytes());
        } else {
            out.extend_from_slice(format!("{f:?}").as_bytes());
        }
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping is deterministic; a String value always serializes.
    out.extend_from_slice(Value::String(s.to_owned()).to_string().as_bytes());
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(scope: Scope<'_>, req: &Value) -> CacheKey {
        CacheKey::new(scope, Call::Chat, "m", req)
    }

    #[test]
    fn member_order_and_number_spelling_do_not_change_the_key() {
        let a: Value = serde_json::from_str(
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{"messages":[{"content":"hi","role":"user"}],"temperature":0.0,"model":"m"}"#,
        )
        .unwrap();
        assert_eq!(key(Scope::Tenant("t"), &a), key(Scope::Tenant("t"), &b));
    }

    #[test]
    fn transport_fields_do_not_change_the_key() {
        let plain = json!({"model":"m","messages":[{"role":"user","content":"hi"}]});
        let streamed = json!({"model":"m","messages":[{"role":"user","content":"hi"}],
            "stream":true,"stream_options":{"include_usage":true},"user":"u-1"});
        assert_eq!(
            key(Scope::Tenant("t"), &plain),
            key(Scope::Tenant("t"), &streamed)
        );
    }

    #[test]
    fn anything_that_shapes_the_answer_changes_the_key() {
        let base = json!({"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0});
        let k = key(Scope::Tenant("t"), &base);
        let variants = [
            json!({"model":"m","messages":[{"role":"user","content":"hi!"}],"temperature":0}),
            json!({"model":"m","messages":[{"role":"system","content":"x"},{"role":"user","content":"hi"}],"temperature":0}),
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.5}),
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"seed":1}),
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"n":2}),
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":5}),
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"tools":[{"type":"function","function":{"name":"f"}}]}),
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"response_format":{"type":"json_object"}}),
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"stop":["x"]}),
        ];
        for v in &variants {
            assert_ne!(k, key(Scope::Tenant("t"), v), "{v}");
        }
    }

    #[test]
    fn scopes_models_and_calls_never_share_a_key() {
        let req = json!({"input":"hi"});
        let keys = [
            CacheKey::new(Scope::Tenant("a"), Call::Embedding, "m", &req),
            CacheKey::new(Scope::Tenant("b"), Call::Embedding, "m", &req),
            CacheKey::new(Scope::Shared("a"), Call::Embedding, "m", &req),
            CacheKey::new(Scope::Tenant("a"), Call::Chat, "m", &req),
            CacheKey::new(Scope::Tenant("a"), Call::Embedding, "m2", &req),
            // Length prefixes: ("ab", "c") is not ("a", "bc").
            CacheKey::new(Scope::Tenant("ab"), Call::Embedding, "c", &req),
            CacheKey::new(Scope::Tenant("a"), Call::Embedding, "bc", &req),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn hex_round_trips() {
        let k = key(Scope::Tenant("t"), &json!({"a":1}));
        assert_eq!(CacheKey::from_hex(&k.hex()), Some(k));
        assert_eq!(CacheKey::from_hex("zz"), None);
    }
}

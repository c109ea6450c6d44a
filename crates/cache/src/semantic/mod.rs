//! The semantic cache's logic, apart from the network: which part of a chat request is
//! embedded and which part must match exactly (the scope), the insertion record every
//! replica's index is built from, and the index itself ([`index`]).
//!
//! A semantic hit never holds an answer of its own: an index entry points at an exact
//! cache entry (its [`CacheKey`]), which ingest reads from Redis as for an exact hit. So an
//! answer lives once, expires with its TTL, and a semantic match whose exact entry is gone
//! is a miss.
//!
//! # What must match, what may be near
//! - The **scope** must match exactly: the tenant (or its shared scope), the model, the
//!   system and developer messages, tools, `tool_choice`, `response_format` and every other
//!   parameter that shapes the output — everything of the request but the conversation's
//!   user and assistant turns. Two system prompts or two tool sets never share an answer.
//! - The **prompt** — the user and assistant turns' text, in order — is embedded and may
//!   be near: a paraphrase above the model's threshold shares the answer.
//! - A conversation with more user turns than the model allows, or with content that is
//!   not text (images, audio, tool calls and results), is not looked up or stored.

pub mod index;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::key::{CacheKey, Call, Scope};

pub use index::{Candidate, IndexConfig, SemanticIndex};

/// Newest insertion layout this build writes; another version is skipped.
pub const INSERTION_VERSION: u8 = 1;

/// Which scope an entry belongs to: a SHA-256 over the parts that must match exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeId(pub [u8; 32]);

impl ScopeId {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<ScopeId> {
        CacheKey::from_hex(s).map(|k| ScopeId(k.0))
    }
}

/// Roles whose messages are part of the scope, not of the embedded prompt.
const INSTRUCTION_ROLES: &[&str] = &["system", "developer"];

/// What a chat request gives the semantic cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub scope: ScopeId,
    /// The text to embed: the user and assistant turns, one per line.
    pub text: String,
    /// User messages in the conversation.
    pub turns: u32,
}

/// Splits chat `request` (as forwarded upstream) for `model` in `scope` into its scope and
/// the prompt to embed; `None` when the conversation holds anything but text turns.
pub fn prompt(scope: Scope<'_>, model: &str, request: &Value) -> Option<Prompt> {
    let messages = request.get("messages")?.as_array()?;
    let mut instructions = Vec::new();
    let mut lines = Vec::new();
    let mut turns = 0u32;
    for m in messages {
        let role = m.get("role")?.as_str()?;
        if INSTRUCTION_ROLES.contains(&role) {
            instructions.push(m.clone());
            continue;
        }
        if !matches!(role, "user" | "assistant")
            || m.get("tool_calls").is_some_and(|t| !t.is_null())
        {
            return None;
        }
        if role == "user" {
            turns += 1;
        }
        lines.push(text_of(m.get("content")?)?);
    }
    if turns == 0 {
        return None;
    }
    // The scope is the exact cache key of the request with only its instructions left as
    // messages, hashed once more so it is never mistaken for an entry's key.
    let mut shaped: Map<String, Value> = request.as_object()?.clone();
    shaped.insert("messages".into(), Value::Array(instructions));
    let key = CacheKey::new(scope, Call::Chat, model, &Value::Object(shaped));
    let mut h = Sha256::new();
    h.update(b"sluice-semantic-scope\0");
    h.update(key.0);
    Some(Prompt {
        scope: ScopeId(h.finalize().into()),
        text: lines.join("\n"),
        turns,
    })
}

/// A message's text: a string, or an array of text parts; anything else is not text.
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                if p.get("type")?.as_str()? != "text" {
                    return None;
                }
                out.push(p.get("text")?.as_str()?);
            }
            Some(out.join(" "))
        }
        _ => None,
    }
}

/// One entry of the semantic cache as published on the insertion stream: every ingest
/// replica adds it to its index (and a new replica replays the stream to catch up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Insertion {
    pub v: u8,
    #[serde(with = "serde_bytes")]
    pub scope: Vec<u8>,
    /// The exact cache key holding the answer.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The prompt's unit embedding, little-endian `f32`s.
    #[serde(with = "serde_bytes")]
    pub vector: Vec<u8>,
    /// When the exact entry expires (ms since the Unix epoch): the index entry goes with it.
    pub expires_at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum InsertionError {
    #[error("semantic insertion does not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("semantic insertion does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("semantic insertion is malformed ({0})")]
    Malformed(&'static str),
}

impl Insertion {
    pub fn new(scope: ScopeId, key: CacheKey, vector: &[f32], expires_at_ms: u64) -> Insertion {
        Insertion {
            v: INSERTION_VERSION,
            scope: scope.0.to_vec(),
            key: key.0.to_vec(),
            vector: vector_bytes(vector),
            expires_at_ms,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, InsertionError> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    /// Decodes and checks an insertion: its parts as the index takes them.
    pub fn decode(bytes: &[u8]) -> Result<(ScopeId, CacheKey, Vec<f32>, u64), InsertionError> {
        let i: Insertion = rmp_serde::from_slice(bytes)?;
        if i.v != INSERTION_VERSION {
            return Err(InsertionError::Malformed("version"));
        }
        let scope = <[u8; 32]>::try_from(i.scope.as_slice())
            .map_err(|_| InsertionError::Malformed("scope"))?;
        let key =
            <[u8; 32]>::try_from(i.key.as_slice()).map_err(|_| InsertionError::Malformed("key"))?;
        let vector = vector_from_bytes(&i.vector).ok_or(InsertionError::Malformed("vector"))?;
        Ok((ScopeId(scope), CacheKey(key), vector, i.expires_at_ms))
    }
}

/// `v` as little-endian `f32` bytes (the envelope's and the insertion's encoding).
pub fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The inverse of [`vector_bytes`]; `None` for a length that is not whole floats or zero.
pub fn vector_from_bytes(b: &[u8]) -> Option<Vec<f32>> {
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// `v` scaled to unit length (cosine similarity is then a dot product); `None` for a zero
/// or non-finite vector, which is similar to nothing.
pub fn normalized(mut v: Vec<f32>) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return None;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Some(v)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn p(req: Value) -> Option<Prompt> {
        prompt(Scope::Tenant("t"), "m", &req)
    }

    #[test]
    fn the_prompt_is_the_turns_and_the_scope_everything_else() {
        let a = p(json!({"model":"m","temperature":0,"messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":"What is the capital of France?"}]}))
        .unwrap();
        assert_eq!(a.text, "What is the capital of France?");
        assert_eq!(a.turns, 1);
        // Another question, same scope.
        let b = p(json!({"temperature":0,"model":"m","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Capital of Germany?"}]}]}))
        .unwrap();
        assert_eq!(a.scope, b.scope);
        assert_eq!(b.text, "Capital of Germany?");
        // Anything outside the turns changes the scope.
        let base = json!({"model":"m","temperature":0,"messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":"What is the capital of France?"}]});
        let mut variants = Vec::new();
        let mut v = base.clone();
        v["messages"][0]["content"] = json!("Be verbose.");
        variants.push(v);
        let mut v = base.clone();
        v["tools"] = json!([{"type":"function","function":{"name":"f"}}]);
        variants.push(v);
        let mut v = base.clone();
        v["max_tokens"] = json!(5);
        variants.push(v);
        let mut v = base.clone();
        v["response_format"] = json!({"type":"json_object"});
        variants.push(v);
        for v in variants {
            assert_ne!(p(v.clone()).unwrap().scope, a.scope, "{v}");
        }
        assert_ne!(
            prompt(Scope::Tenant("u"), "m", &base).unwrap().scope,
            a.scope
        );
        assert_ne!(
            prompt(Scope::Tenant("t"), "m2", &base).unwrap().scope,
            a.scope
        );
        // Transport fields do not.
        let mut v = base.clone();
        v["stream"] = json!(true);
        assert_eq!(p(v).unwrap().scope, a.scope);
    }

    #[test]
    fn conversations_count_turns_and_non_text_is_not_looked_up() {
        let c = p(json!({"messages":[
            {"role":"user","content":"hi"},{"role":"assistant","content":"hello"},
            {"role":"user","content":"how are you"}]}))
        .unwrap();
        assert_eq!((c.turns, c.text.as_str()), (2, "hi\nhello\nhow are you"));
        assert!(
            p(json!({"messages":[{"role":"user","content":[
            {"type":"image_url","image_url":{"url":"x"}}]}]}))
            .is_none()
        );
        assert!(
            p(json!({"messages":[{"role":"user","content":"a"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"1"}]},
            {"role":"tool","content":"r"}]}))
            .is_none()
        );
        assert!(p(json!({"messages":[{"role":"system","content":"s"}]})).is_none());
    }

    #[test]
    fn insertions_round_trip_and_refuse_garbage() {
        let i = Insertion::new(ScopeId([1; 32]), CacheKey([2; 32]), &[0.6, 0.8], 99);
        let (s, k, v, e) = Insertion::decode(&i.encode().unwrap()).unwrap();
        assert_eq!(
            (s, k, v, e),
            (ScopeId([1; 32]), CacheKey([2; 32]), vec![0.6, 0.8], 99)
        );
        let bad = Insertion {
            key: vec![1],
            ..i.clone()
        };
        assert!(Insertion::decode(&bad.encode().unwrap()).is_err());
        let bad = Insertion {
            vector: vec![1, 2, 3],
            ..i
        };
        assert!(Insertion::decode(&bad.encode().unwrap()).is_err());
        assert!(normalized(vec![0.0, 0.0]).is_none());
        assert_eq!(normalized(vec![3.0, 4.0]), Some(vec![0.6, 0.8]));
    }
}

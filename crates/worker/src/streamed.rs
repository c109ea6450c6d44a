//! Running a job whose request asked for `stream: true`.
//!
//! The upstream is called with streaming on; its chunks are forwarded as job events (one
//! `{"type":"chunks","chunks":[…]}` history entry per `delivery.stream_flush_ms`, so the
//! history grows with the call's duration, not its token count) and assembled into the
//! `chat.completion` object stored as the job's result. Chunks are kept verbatim, so the
//! OpenAI-compatible endpoint replays exactly what the upstream sent. A retried attempt
//! streams again after its own `in_progress` event; readers start over at that event.

use std::{collections::BTreeMap, sync::Mutex};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use sluice_governance::{estimate::Usage, settle::usage_from_response};
use sluice_protocol::JobEnvelope;
use sluice_providers::{CallError, CallRequest, ChunkStream, ProviderError};
use sluice_store::StoreError;

use crate::Shared;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Upstream(#[from] CallError),
    #[error("recording streamed chunks failed: {0}")]
    Store(#[from] StoreError),
}

impl From<ProviderError> for StreamError {
    fn from(e: ProviderError) -> Self {
        StreamError::Upstream(CallError::Upstream(e))
    }
}

/// What a streamed call has forwarded so far: read when the job is cancelled mid-stream, to
/// charge what reached the client rather than the whole reservation.
#[derive(Default)]
pub struct Progress {
    inner: Mutex<Forwarded>,
}

#[derive(Default)]
struct Forwarded {
    /// Generated text (content and tool-call arguments) of the chunks recorded as events.
    text: String,
    chunks: u64,
    /// The upstream's own usage, if a recorded chunk carried it.
    usage: Option<Usage>,
}

impl Progress {
    fn forwarded(&self, text: &str, chunks: u64, usage: Option<Usage>) {
        if let Ok(mut f) = self.inner.lock() {
            f.text.push_str(text);
            f.chunks += chunks;
            f.usage = usage.or(f.usage);
        }
    }

    /// What a cancelled job used: the upstream's usage when a chunk carried it, else the
    /// prompt estimate plus the tokens of the text that streamed; `None` when nothing
    /// streamed (a plain call, or a stream cancelled before its first chunk).
    pub fn used(&self, env: &JobEnvelope) -> Option<Usage> {
        let f = self.inner.lock().ok()?;
        if let Some(u) = f.usage {
            return Some(u);
        }
        if f.chunks == 0 {
            return None;
        }
        Some(Usage {
            prompt_tokens: crate::governance::reserved_usage(env).prompt_tokens,
            completion_tokens: sluice_governance::estimate::output_tokens(&env.model, &f.text),
        })
    }
}

/// Streams the call through the model pools (retried on other deployments until the first
/// byte), forwarding chunk batches; returns the assembled completion.
pub async fn run(
    shared: &Shared,
    env: &JobEnvelope,
    req: &CallRequest<'_>,
    progress: &Progress,
) -> Result<Bytes, StreamError> {
    let answer = shared.pools.stream(req).await?;
    let mut chunks = ChunkStream::new(answer.stream);
    let flush_every = shared.cfg.delivery.stream_flush;
    let mut asm = Assembler::default();
    let mut batch: Vec<Bytes> = Vec::new();
    let mut last_flush = tokio::time::Instant::now();
    loop {
        let next = if batch.is_empty() {
            chunks.next_chunk().await
        } else {
            match tokio::time::timeout_at(last_flush + flush_every, chunks.next_chunk()).await {
                Ok(r) => r,
                Err(_) => {
                    flush(shared, env, &mut batch, &mut asm, progress).await?;
                    last_flush = tokio::time::Instant::now();
                    continue;
                }
            }
        };
        let next = match next {
            Ok(next) => next,
            Err(e) => {
                // What the upstream sent before it failed is relayed, so readers see the
                // stream as it went (then the failure).
                flush(shared, env, &mut batch, &mut asm, progress).await?;
                return Err(e.into());
            }
        };
        let Some(chunk) = next else { break };
        asm.add(&chunk);
        batch.push(chunk);
        if last_flush.elapsed() >= flush_every {
            flush(shared, env, &mut batch, &mut asm, progress).await?;
            last_flush = tokio::time::Instant::now();
        }
    }
    flush(shared, env, &mut batch, &mut asm, progress).await?;
    Ok(Bytes::from(asm.finish(&env.model).to_string()))
}

/// Records the batch as one event; then its chunks reached the client (as far as Sluice
/// can tell), and `progress` counts them.
async fn flush(
    shared: &Shared,
    env: &JobEnvelope,
    batch: &mut Vec<Bytes>,
    asm: &mut Assembler,
    progress: &Progress,
) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    let chunks = batch.len() as u64;
    let mut event = Vec::with_capacity(batch.iter().map(Bytes::len).sum::<usize>() + 32);
    event.extend_from_slice(br#"{"type":"chunks","chunks":["#);
    for (i, c) in batch.drain(..).enumerate() {
        if i > 0 {
            event.push(b',');
        }
        event.extend_from_slice(&c);
    }
    event.extend_from_slice(b"]}");
    shared
        .store
        .append_event(env.id, &String::from_utf8_lossy(&event))
        .await?;
    shared.queue.notify_job_event(env.id, "chunks").await;
    let usage = asm.usage.as_ref().and_then(|u| {
        usage_from_response(serde_json::json!({ "usage": u }).to_string().as_bytes())
    });
    progress.forwarded(&std::mem::take(&mut asm.pending), chunks, usage);
    Ok(())
}

/// Builds a `chat.completion` from `chat.completion.chunk`s: content, role, tool calls'
/// argument text and finish reason per choice, and the usage of the last chunk carrying it.
#[derive(Default)]
pub struct Assembler {
    id: Option<String>,
    created: Option<Value>,
    model: Option<String>,
    choices: BTreeMap<u64, Choice>,
    usage: Option<Value>,
    /// Generated text added since the last flush took it.
    pending: String,
}

#[derive(Default)]
struct Choice {
    role: Option<String>,
    content: String,
    finish_reason: Option<Value>,
    /// By the delta's `index`: OpenAI sends a call's `id`, `type` and name first, then its
    /// argument text in pieces.
    tool_calls: BTreeMap<u64, ToolCall>,
}

#[derive(Default)]
struct ToolCall {
    id: Option<Value>,
    kind: Option<Value>,
    name: String,
    arguments: String,
}

impl ToolCall {
    fn add(&mut self, delta: &Value) {
        if let Some(id) = delta.get("id").filter(|v| !v.is_null()) {
            self.id = Some(id.clone());
        }
        if let Some(kind) = delta.get("type").filter(|v| !v.is_null()) {
            self.kind = Some(kind.clone());
        }
        if let Some(f) = delta.get("function") {
            if let Some(n) = f.get("name").and_then(Value::as_str) {
                self.name.push_str(n);
            }
            if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                self.arguments.push_str(a);
            }
        }
    }

    fn finish(self) -> Value {
        json!({
            "id": self.id.unwrap_or(Value::Null),
            "type": self.kind.unwrap_or_else(|| json!("function")),
            "function": { "name": self.name, "arguments": self.arguments },
        })
    }
}

impl Assembler {
    pub fn add(&mut self, chunk: &[u8]) {
        let Ok(Value::Object(c)) = serde_json::from_slice::<Value>(chunk) else {
            return;
        };
        if self.id.is_none() {
            self.id = c.get("id").and_then(Value::as_str).map(str::to_string);
            self.created = c.get("created").cloned();
            self.model = c.get("model").and_then(Value::as_str).map(str::to_string);
        }
        if let Some(u) = c.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        for ch in c
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = ch.get("index").and_then(Value::as_u64).unwrap_or(0);
            let slot = self.choices.entry(index).or_default();
            if let Some(delta) = ch.get("delta") {
                if let Some(r) = delta.get("role").and_then(Value::as_str) {
                    slot.role = Some(r.to_string());
                }
                if let Some(t) = delta.get("content").and_then(Value::as_str) {
                    slot.content.push_str(t);
                    self.pending.push_str(t);
                }
                for call in delta
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let i = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                    slot.tool_calls.entry(i).or_default().add(call);
                    if let Some(a) = call.pointer("/function/arguments").and_then(Value::as_str) {
                        self.pending.push_str(a);
                    }
                }
            }
            if let Some(f) = ch.get("finish_reason").filter(|f| !f.is_null()) {
                slot.finish_reason = Some(f.clone());
            }
        }
    }

    pub fn finish(self, model: &str) -> Value {
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, c)| {
                let role = c.role.unwrap_or_else(|| "assistant".into());
                let message = if c.tool_calls.is_empty() {
                    json!({ "role": role, "content": c.content })
                } else {
                    let calls: Vec<Value> =
                        c.tool_calls.into_values().map(ToolCall::finish).collect();
                    let content = (!c.content.is_empty()).then_some(c.content);
                    json!({ "role": role, "content": content, "tool_calls": calls })
                };
                json!({
                    "index": index,
                    "message": message,
                    "logprobs": null,
                    "finish_reason": c.finish_reason.unwrap_or(Value::Null),
                })
            })
            .collect();
        let mut out = Map::new();
        out.insert("id".into(), json!(self.id.unwrap_or_default()));
        out.insert("object".into(), json!("chat.completion"));
        out.insert("created".into(), self.created.unwrap_or(json!(0)));
        out.insert(
            "model".into(),
            json!(self.model.unwrap_or_else(|| model.to_string())),
        );
        out.insert("choices".into(), Value::Array(choices));
        if let Some(u) = self.usage {
            out.insert("usage".into(), u);
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_content_finish_reason_and_usage() {
        let mut a = Assembler::default();
        a.add(br#"{"id":"c1","created":5,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#);
        a.add(br#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#);
        a.add(
            br#"{"id":"c1","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
        );
        a.add(br#"{"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#);
        a.add(br#"{"id":"c1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#);
        a.add(b"not json");
        let v = a.finish("x");
        assert_eq!(v["id"], "c1");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "m");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 3);
    }

    #[test]
    fn assembles_tool_calls_from_their_deltas() {
        let mut a = Assembler::default();
        a.add(br#"{"id":"c2","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#);
        a.add(br#"{"id":"c2","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}"#);
        a.add(br#"{"id":"c2","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_2","type":"function","function":{"name":"get_time","arguments":"{}"}}]}}]}"#);
        a.add(br#"{"id":"c2","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}}]}"#);
        a.add(br#"{"id":"c2","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#);
        let v = a.finish("m");
        let msg = &v["choices"][0]["message"];
        assert!(msg["content"].is_null());
        assert_eq!(msg["tool_calls"][0]["id"], "call_1");
        assert_eq!(msg["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(
            msg["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(msg["tool_calls"][1]["function"]["name"], "get_time");
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    }
}

//! `POST /v1/chat/completions`, plain and streaming.
//!
//! The answer is derived from the model and messages (see [`crate::output`]), so a streamed
//! answer concatenates to exactly the plain one. Latency is slept before the response is
//! returned, so the headers and the first chunk leave together in one write; with
//! `stream_chunk_delay_ms = 0` the whole stream is a single write as well.

use std::borrow::Cow;
use std::convert::Infallible;
use std::mem;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::counters::{Endpoint, RequestGuard};
use crate::directives::Directives;
use crate::error::ApiError;
use crate::handlers::{parse_json, pause};
use crate::openai::{
    AssistantMessage, ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Delta,
    FunctionDelta, FunctionOut, ToolCallDelta, ToolCallOut, Usage,
};
use crate::output::{self, Completion};
use crate::state::{Live, Plan, SimState, unix_now};
use crate::tools;

pub async fn completions(State(state): State<SimState>, body: Bytes) -> Response {
    let guard = state.begin(Endpoint::ChatCompletions);
    let (req, plan, live) = match prepare(&state, &body) {
        Ok(prepared) => prepared,
        Err(e) => {
            guard.complete();
            return e.into_response();
        }
    };
    pause(plan.delay).await;
    if let Some(fault) = plan.fault {
        guard.complete();
        return fault.into_response();
    }
    let (completion, mut usage) = generate(&req);
    let reply = Reply::new(&state, &req, &completion);
    usage.completion_tokens = reply.tokens(&completion);
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    let id = state.next_id("chatcmpl");
    if req.stream.unwrap_or(false) {
        let chunk_delay = Duration::from_millis(live.cfg.stream_chunk_delay_ms);
        match render_stream(&id, &req, &reply, usage, !chunk_delay.is_zero()) {
            Ok(groups) => stream_response(groups, chunk_delay, guard),
            Err(e) => {
                guard.complete();
                ApiError::Internal(e.to_string()).into_response()
            }
        }
    } else {
        let (content, tool_calls) = match &reply {
            Reply::Text { content, .. } => (Some(content.as_str()), None),
            Reply::Tools(calls) => (
                None,
                Some(
                    calls
                        .iter()
                        .map(|(id, c)| ToolCallOut {
                            id,
                            kind: "function",
                            function: FunctionOut {
                                name: &c.name,
                                arguments: &c.arguments,
                            },
                        })
                        .collect(),
                ),
            ),
        };
        let response = Json(ChatCompletion {
            id: &id,
            object: "chat.completion",
            created: unix_now(),
            model: &req.model,
            choices: [Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content,
                    tool_calls,
                },
                logprobs: None,
                finish_reason: reply.finish_reason(),
            }],
            usage,
        })
        .into_response();
        guard.complete();
        response
    }
}

/// What the assistant answers: text (words, or a JSON document for a JSON `response_format`),
/// or tool calls (see [`crate::tools`]).
enum Reply {
    Text {
        content: String,
        /// Streamed pieces; they concatenate to `content`.
        pieces: Vec<String>,
        finish_reason: &'static str,
    },
    /// `(id, call)` pairs.
    Tools(Vec<(String, tools::ToolCall)>),
}

impl Reply {
    fn new(state: &SimState, req: &ChatRequest, completion: &Completion) -> Reply {
        let prompt = req.last_user_text().unwrap_or_default();
        let calls = tools::calls(
            req.tools.as_deref().unwrap_or_default(),
            req.tool_choice.as_ref(),
            req.parallel_tool_calls.unwrap_or(true),
            &prompt,
        );
        if !calls.is_empty() {
            return Reply::Tools(
                calls
                    .into_iter()
                    .map(|c| (state.next_id("call"), c))
                    .collect(),
            );
        }
        let words = completion.content();
        match tools::json_content(req.response_format.as_ref(), &words) {
            Some(json) => Reply::Text {
                pieces: vec![json.clone()],
                content: json,
                finish_reason: "stop",
            },
            None => Reply::Text {
                pieces: completion.pieces().collect(),
                content: words,
                finish_reason: completion.finish_reason.as_str(),
            },
        }
    }

    fn finish_reason(&self) -> &'static str {
        match self {
            Reply::Text { finish_reason, .. } => finish_reason,
            Reply::Tools(_) => "tool_calls",
        }
    }

    fn tokens(&self, completion: &Completion) -> u64 {
        match self {
            Reply::Text { pieces, .. } if pieces.len() == completion.words.len() => {
                completion.completion_tokens()
            }
            Reply::Text { content, .. } => output::text_tokens(content),
            Reply::Tools(calls) => calls
                .iter()
                .map(|(_, c)| output::text_tokens(&c.name) + output::text_tokens(&c.arguments))
                .sum(),
        }
    }
}

/// Parses and validates the request, then plans its delay and fate.
fn prepare(state: &SimState, body: &[u8]) -> Result<(ChatRequest, Plan, Arc<Live>), ApiError> {
    let req: ChatRequest = parse_json(body)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "'messages' must contain at least one message.",
        ));
    }
    let live = state.live();
    if !live.serves(&req.model) {
        return Err(ApiError::ModelNotFound(req.model));
    }
    state.record_model(&req.model);
    let directives = match req.last_user_text() {
        Some(text) => Directives::parse(&text)
            .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?,
        None => Directives::default(),
    };
    let plan = state.plan(&live, &directives);
    Ok((req, plan, live))
}

fn generate(req: &ChatRequest) -> (Completion, Usage) {
    let texts: Vec<(&str, Cow<'_, str>)> = req
        .messages
        .iter()
        .map(|m| (m.role.as_str(), m.text()))
        .collect();
    let completion = output::completion(
        &req.model,
        texts.iter().map(|(r, t)| (*r, t.as_ref())),
        req.token_limit(),
    );
    let prompt_tokens = output::prompt_tokens(texts.iter().map(|(_, t)| t.as_ref()));
    let completion_tokens = completion.completion_tokens();
    let usage = Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    };
    (completion, usage)
}

fn push_event<T: Serialize>(buf: &mut Vec<u8>, value: &T) -> Result<(), serde_json::Error> {
    buf.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut *buf, value)?;
    buf.extend_from_slice(b"\n\n");
    Ok(())
}

/// Renders the whole event stream into write groups: one group when `split` is false, else
/// the role and first piece, then one group per further piece (the last also carrying the
/// finish, usage and `[DONE]` events). Tool calls stream as OpenAI streams them: a first delta
/// per call with its `id`, `type` and `name`, then its argument text.
fn render_stream(
    id: &str,
    req: &ChatRequest,
    reply: &Reply,
    usage: Usage,
    split: bool,
) -> Result<Vec<Bytes>, serde_json::Error> {
    let include_usage = req.include_usage();
    let created = unix_now();
    let chunk = |delta: Delta<'_>,
                 finish_reason: Option<&'static str>|
     -> Result<Vec<u8>, serde_json::Error> {
        let mut buf = Vec::new();
        push_event(
            &mut buf,
            &ChatChunk {
                id,
                object: "chat.completion.chunk",
                created,
                model: &req.model,
                choices: vec![ChunkChoice {
                    index: 0,
                    delta,
                    logprobs: None,
                    finish_reason,
                }],
                usage: include_usage.then_some(None),
            },
        )?;
        Ok(buf)
    };

    let mut groups = Vec::new();
    let mut current;
    match reply {
        Reply::Text { pieces, .. } => {
            current = chunk(
                Delta {
                    role: Some("assistant"),
                    content: Some(""),
                    ..Delta::default()
                },
                None,
            )?;
            for (i, piece) in pieces.iter().enumerate() {
                if split && i > 0 {
                    groups.push(Bytes::from(mem::take(&mut current)));
                }
                current.extend(chunk(
                    Delta {
                        content: Some(piece),
                        ..Delta::default()
                    },
                    None,
                )?);
            }
        }
        Reply::Tools(calls) => {
            current = Vec::new();
            for (index, (call_id, call)) in calls.iter().enumerate() {
                current.extend(chunk(
                    Delta {
                        role: (index == 0).then_some("assistant"),
                        tool_calls: Some(vec![ToolCallDelta {
                            index,
                            id: Some(call_id),
                            kind: Some("function"),
                            function: FunctionDelta {
                                name: Some(&call.name),
                                arguments: "",
                            },
                        }]),
                        ..Delta::default()
                    },
                    None,
                )?);
                if split {
                    groups.push(Bytes::from(mem::take(&mut current)));
                }
                current.extend(chunk(
                    Delta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index,
                            id: None,
                            kind: None,
                            function: FunctionDelta {
                                name: None,
                                arguments: &call.arguments,
                            },
                        }]),
                        ..Delta::default()
                    },
                    None,
                )?);
            }
        }
    }
    current.extend(chunk(Delta::default(), Some(reply.finish_reason()))?);
    if include_usage {
        push_event(
            &mut current,
            &ChatChunk {
                id,
                object: "chat.completion.chunk",
                created,
                model: &req.model,
                choices: vec![],
                usage: Some(Some(usage)),
            },
        )?;
    }
    current.extend_from_slice(b"data: [DONE]\n\n");
    groups.push(Bytes::from(current));
    Ok(groups)
}

/// Sends the groups `chunk_delay` apart; the guard completes as the last group is handed
/// over, so a client that leaves mid-stream is counted as aborted.
struct Emitter {
    groups: std::vec::IntoIter<Bytes>,
    chunk_delay: Duration,
    first: bool,
    guard: Option<RequestGuard>,
}

fn stream_response(groups: Vec<Bytes>, chunk_delay: Duration, guard: RequestGuard) -> Response {
    let emitter = Emitter {
        groups: groups.into_iter(),
        chunk_delay,
        first: true,
        guard: Some(guard),
    };
    let stream = futures_util::stream::unfold(emitter, |mut e| async move {
        let group = e.groups.next()?;
        if !e.first {
            pause(e.chunk_delay).await;
        }
        e.first = false;
        if e.groups.len() == 0
            && let Some(guard) = e.guard.take()
        {
            guard.complete();
        }
        Some((Ok::<_, Infallible>(group), e))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

//! `POST /v1/chat/completions`, plain and streaming.
//!
//! The answer is derived from the model and messages (see [`crate::output`]), so a streamed
//! answer concatenates to exactly the plain one. Latency is slept before the response is
//! returned, so the headers and the first chunk leave together in one write; with
//! `stream_chunk_delay_ms = 0` the whole stream is a single write as well.

use std::borrow::Cow;
use std::convert::Infallible;
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
    AssistantMessage, ChatChunk, ChatCompletion, ChatRequest, Choice, ChoiceLogprobs, ChunkChoice,
    Delta, FunctionDelta, FunctionOut, MAX_N, MAX_STOP, MAX_TOP_LOGPROBS, SYSTEM_FINGERPRINT,
    TokenLogprobOut, ToolCallDelta, ToolCallOut, Usage,
};
use crate::output::{self, Completion, Variant};
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
    let texts: Vec<(&str, Cow<'_, str>)> = req
        .messages
        .iter()
        .map(|m| (m.role.as_str(), m.text()))
        .collect();
    let prompt_tokens = output::prompt_tokens(texts.iter().map(|(_, t)| t.as_ref()));
    let replies: Vec<Reply> = (0..req.choices())
        .map(|i| {
            let variant = Variant {
                seed: req.seed,
                index: u32::try_from(i).unwrap_or(u32::MAX),
            };
            let completion = output::completion_variant(
                &req.model,
                texts.iter().map(|(r, t)| (*r, t.as_ref())),
                req.token_limit(),
                variant,
            );
            Reply::new(&state, &req, &completion)
        })
        .collect();
    // `n` completions cost `n` times the output, as OpenAI bills them.
    let completion_tokens = replies.iter().map(Reply::tokens).sum();
    let usage = Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    };
    let id = state.next_id("chatcmpl");
    if req.stream.unwrap_or(false) {
        let chunk_delay = Duration::from_millis(live.cfg.stream_chunk_delay_ms);
        let split = !chunk_delay.is_zero();
        match render_stream(&id, &req, &replies, usage, split, plan.stream_error_after) {
            Ok(groups) => stream_response(groups, chunk_delay, guard),
            Err(e) => {
                guard.complete();
                ApiError::Internal(e.to_string()).into_response()
            }
        }
    } else {
        let choices = replies
            .iter()
            .zip(0u32..)
            .map(|(reply, index)| reply.choice(index))
            .collect();
        let response = Json(ChatCompletion {
            id: &id,
            object: "chat.completion",
            created: unix_now(),
            model: &req.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage,
        })
        .into_response();
        guard.complete();
        response
    }
}

/// What the assistant answers in one choice: text (words, or a JSON document for a JSON
/// `response_format`), or tool calls (see [`crate::tools`]).
enum Reply {
    Text {
        content: String,
        /// Streamed pieces, one token each; they concatenate to `content`.
        pieces: Vec<String>,
        finish_reason: &'static str,
        tokens: u64,
        /// One entry per piece, when the request asked for `logprobs`.
        logprobs: Option<Vec<TokenLogprobOut>>,
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
        let (mut pieces, mut finish_reason, json) =
            match tools::json_content(req.response_format.as_ref(), &words) {
                Some(json) => (vec![json], "stop", true),
                None => (
                    completion.pieces().collect(),
                    completion.finish_reason.as_str(),
                    false,
                ),
            };
        if output::apply_stop(&mut pieces, req.stop_sequences()) {
            finish_reason = "stop";
        }
        let content = pieces.concat();
        let tokens = if json {
            output::text_tokens(&content)
        } else {
            pieces.len() as u64
        };
        let logprobs = req.logprobs_top().map(|top| {
            pieces
                .iter()
                .enumerate()
                .map(|(i, p)| output::logprob(p, i, top).into())
                .collect()
        });
        Reply::Text {
            content,
            pieces,
            finish_reason,
            tokens,
            logprobs,
        }
    }

    fn finish_reason(&self) -> &'static str {
        match self {
            Reply::Text { finish_reason, .. } => finish_reason,
            Reply::Tools(_) => "tool_calls",
        }
    }

    fn tokens(&self) -> u64 {
        match self {
            Reply::Text { tokens, .. } => *tokens,
            Reply::Tools(calls) => calls
                .iter()
                .map(|(_, c)| output::text_tokens(&c.name) + output::text_tokens(&c.arguments))
                .sum(),
        }
    }

    /// The choice of a plain answer.
    fn choice(&self, index: u32) -> Choice<'_> {
        let (content, tool_calls, logprobs) = match self {
            Reply::Text {
                content, logprobs, ..
            } => (
                Some(content.as_str()),
                None,
                logprobs.as_ref().map(|c| ChoiceLogprobs {
                    content: c.clone(),
                    refusal: None,
                }),
            ),
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
                None,
            ),
        };
        Choice {
            index,
            message: AssistantMessage {
                role: "assistant",
                content,
                tool_calls,
            },
            logprobs,
            finish_reason: self.finish_reason(),
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
    check_sampling(&req)?;
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

/// The ranges OpenAI enforces on `n`, `top_logprobs` and `stop`.
fn check_sampling(req: &ChatRequest) -> Result<(), ApiError> {
    if !(1..=MAX_N).contains(&req.choices()) {
        return Err(ApiError::invalid_param(
            "n",
            format!("Invalid 'n': expected a value between 1 and {MAX_N}."),
        ));
    }
    if let Some(top) = req.top_logprobs {
        if top > MAX_TOP_LOGPROBS {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                format!(
                    "Invalid 'top_logprobs': expected a value between 0 and {MAX_TOP_LOGPROBS}."
                ),
            ));
        }
        if req.logprobs != Some(true) {
            return Err(ApiError::invalid_param(
                "logprobs",
                "'logprobs' must be set to true when 'top_logprobs' is used.",
            ));
        }
    }
    if req.stop_sequences().len() > MAX_STOP {
        return Err(ApiError::invalid_param(
            "stop",
            format!("Invalid 'stop': expected at most {MAX_STOP} sequences."),
        ));
    }
    Ok(())
}

fn push_event<T: Serialize>(buf: &mut Vec<u8>, value: &T) -> Result<(), serde_json::Error> {
    buf.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut *buf, value)?;
    buf.extend_from_slice(b"\n\n");
    Ok(())
}

/// Renders the whole event stream into write groups: one group when `split` is false, else
/// the roles and first pieces, then one group per further round of chunks (the last also
/// carrying the finishes, the usage and `[DONE]`). With `n` > 1 the choices' chunks are
/// interleaved, each carrying its choice's `index`, as OpenAI streams them. Tool calls stream
/// as OpenAI streams them: a first delta per call with its `id`, `type` and `name`, then its
/// argument text.
fn render_stream(
    id: &str,
    req: &ChatRequest,
    replies: &[Reply],
    usage: Usage,
    split: bool,
    error_after: Option<u32>,
) -> Result<Vec<Bytes>, serde_json::Error> {
    let include_usage = req.include_usage();
    let created = unix_now();
    let event = |choice: ChunkChoice<'_>| -> Result<Vec<u8>, serde_json::Error> {
        let mut buf = Vec::new();
        push_event(
            &mut buf,
            &ChatChunk {
                id,
                object: "chat.completion.chunk",
                created,
                model: &req.model,
                system_fingerprint: SYSTEM_FINGERPRINT,
                choices: vec![choice],
                usage: include_usage.then_some(None),
            },
        )?;
        Ok(buf)
    };
    let mut per_choice = Vec::with_capacity(replies.len());
    for (reply, index) in replies.iter().zip(0u32..) {
        let chunk = |delta: Delta<'_>, logprobs, finish_reason| {
            event(ChunkChoice {
                index,
                delta,
                logprobs,
                finish_reason,
            })
        };
        let mut events = Vec::new();
        match reply {
            Reply::Text {
                pieces, logprobs, ..
            } => {
                let role = Delta {
                    role: Some("assistant"),
                    content: Some(""),
                    ..Delta::default()
                };
                events.push(chunk(role, None, None)?);
                for (i, piece) in pieces.iter().enumerate() {
                    let lp = logprobs
                        .as_ref()
                        .and_then(|l| l.get(i))
                        .map(|t| ChoiceLogprobs {
                            content: vec![t.clone()],
                            refusal: None,
                        });
                    let delta = Delta {
                        content: Some(piece),
                        ..Delta::default()
                    };
                    events.push(chunk(delta, lp, None)?);
                }
            }
            Reply::Tools(calls) => {
                for (i, (call_id, call)) in calls.iter().enumerate() {
                    let head = ToolCallDelta {
                        index: i,
                        id: Some(call_id),
                        kind: Some("function"),
                        function: FunctionDelta {
                            name: Some(&call.name),
                            arguments: "",
                        },
                    };
                    let delta = Delta {
                        role: (i == 0).then_some("assistant"),
                        tool_calls: Some(vec![head]),
                        ..Delta::default()
                    };
                    events.push(chunk(delta, None, None)?);
                    let args = ToolCallDelta {
                        index: i,
                        id: None,
                        kind: None,
                        function: FunctionDelta {
                            name: None,
                            arguments: &call.arguments,
                        },
                    };
                    let delta = Delta {
                        tool_calls: Some(vec![args]),
                        ..Delta::default()
                    };
                    events.push(chunk(delta, None, None)?);
                }
            }
        }
        events.push(chunk(Delta::default(), None, Some(reply.finish_reason()))?);
        per_choice.push(events.into_iter());
    }

    let mut rounds: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut round = Vec::new();
        for events in &mut per_choice {
            if let Some(e) = events.next() {
                round.extend(e);
            }
        }
        if round.is_empty() {
            break;
        }
        rounds.push(round);
    }
    let failed = error_after.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    if let Some(n) = failed {
        // One chunk per round without `n`; the error replaces the rest of the stream.
        rounds.truncate(n);
        let mut error = Vec::new();
        push_event(&mut error, &ApiError::Internal(String::new()).body())?;
        rounds.push(error);
    }
    let last = rounds.len().saturating_sub(1);
    let mut groups: Vec<Vec<u8>> = Vec::new();
    for (r, round) in rounds.into_iter().enumerate() {
        // The first write carries the roles and the first pieces, the last one the last
        // pieces and the finishes.
        match groups.last_mut() {
            Some(g) if !split || r == 1 || r == last => g.extend(round),
            _ => groups.push(round),
        }
    }
    let mut current = groups.pop().unwrap_or_default();
    if failed.is_some() {
        groups.push(current);
        return Ok(groups.into_iter().map(Bytes::from).collect());
    }
    if include_usage {
        push_event(
            &mut current,
            &ChatChunk {
                id,
                object: "chat.completion.chunk",
                created,
                model: &req.model,
                system_fingerprint: SYSTEM_FINGERPRINT,
                choices: vec![],
                usage: Some(Some(usage)),
            },
        )?;
    }
    current.extend_from_slice(b"data: [DONE]\n\n");
    groups.push(current);
    Ok(groups.into_iter().map(Bytes::from).collect())
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

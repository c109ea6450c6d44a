//! The router in process with `tower::ServiceExt::oneshot`, no socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_sim::{SimConfig, SimState, router};
use tower::ServiceExt;

fn app_with(cfg: SimConfig) -> (Router, SimState) {
    let state = SimState::new(cfg).unwrap();
    (router(state.clone()), state)
}

fn app() -> (Router, SimState) {
    app_with(SimConfig {
        seed: Some(1),
        ..SimConfig::default()
    })
}

fn request(method: Method, uri: &str, body: Option<Value>) -> Request<Body> {
    let builder = Request::builder().method(method).uri(uri);
    match body {
        Some(v) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Bytes) {
    let response = app
        .clone()
        .oneshot(request(method, uri, body))
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

async fn call_json(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let (status, _, bytes) = call(app, method, uri, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn chat(content: &str) -> Value {
    json!({"model": "sim-small", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": content}
    ]})
}

/// The `data:` payloads of an event stream.
fn sse_data(body: &[u8]) -> Vec<String> {
    std::str::from_utf8(body)
        .unwrap()
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .expect("every event is a data line")
                .to_owned()
        })
        .collect()
}

fn streamed_content(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|v| {
            v["choices"]
                .get(0)
                .and_then(|c| c["delta"]["content"].as_str().map(str::to_owned))
        })
        .collect()
}

fn assert_openai_error(v: &Value, kind: &str) {
    let e = &v["error"];
    assert!(e["message"].is_string(), "{v}");
    assert_eq!(e["type"], kind, "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
}

#[tokio::test]
async fn models_are_listed() {
    let (app, _) = app();
    let (status, v) = call_json(&app, Method::GET, "/v1/models", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["sim-small", "sim-large", "sim-embed"]);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["owned_by"], "sluice-sim");
}

#[tokio::test]
async fn chat_completion_is_realistic_and_deterministic() {
    let (app, _) = app();
    let (status, a) = call_json(
        &app,
        Method::POST,
        "/v1/chat/completions",
        Some(chat("hello there")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(a["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["model"], "sim-small");
    assert!(a["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &a["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().unwrap();
    let words = content.split(' ').count() as u64;
    assert!((8..=64).contains(&words), "{content}");
    // (ceil(14/4) + 4) + (ceil(11/4) + 4) + 3
    assert_eq!(a["usage"]["prompt_tokens"], 18);
    assert_eq!(a["usage"]["completion_tokens"], words);
    assert_eq!(a["usage"]["total_tokens"], 18 + words);

    let (_, b) = call_json(
        &app,
        Method::POST,
        "/v1/chat/completions",
        Some(chat("hello there")),
    )
    .await;
    assert_eq!(b["choices"][0]["message"]["content"], content);
    assert_ne!(b["id"], a["id"]);
    let (_, c) = call_json(
        &app,
        Method::POST,
        "/v1/chat/completions",
        Some(chat("something else")),
    )
    .await;
    assert_ne!(c["choices"][0]["message"]["content"], content);
}

#[tokio::test]
async fn content_parts_and_max_tokens() {
    let (app, _) = app();
    let body = json!({"model": "sim-large", "max_tokens": 3, "temperature": 0.1,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
    let (status, v) = call_json(&app, Method::POST, "/v1/chat/completions", Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .split(' ')
            .count(),
        3
    );
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["prompt_tokens"], 1 + 4 + 3);
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let (app, _) = app();
    let body = json!({"model": "gpt-nope", "messages": [{"role": "user", "content": "x"}]});
    let (status, v) = call_json(&app, Method::POST, "/v1/chat/completions", Some(body)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_openai_error(&v, "invalid_request_error");
    assert_eq!(v["error"]["code"], "model_not_found");

    let (status, v) = call_json(
        &app,
        Method::POST,
        "/v1/chat/completions",
        Some(json!({"model": "sim-small"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&v, "invalid_request_error");

    let (status, v) = call_json(
        &app,
        Method::POST,
        "/v1/chat/completions",
        Some(chat("[[sim:sleep=oops]]")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&v, "invalid_request_error");

    let (status, v) = call_json(&app, Method::GET, "/v1/nowhere", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_openai_error(&v, "invalid_request_error");
}

#[tokio::test]
async fn stream_concatenates_to_the_plain_content() {
    let (app, _) = app();
    let (_, plain) = call_json(
        &app,
        Method::POST,
        "/v1/chat/completions",
        Some(chat("stream me")),
    )
    .await;
    let mut body = chat("stream me");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, headers, bytes) =
        call(&app, Method::POST, "/v1/chat/completions", Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
    let events = sse_data(&bytes);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"])
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let words = plain["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    // role, one per word, finish, usage
    assert_eq!(chunks.len(), 1 + words + 1 + 1);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], plain["usage"]);
    assert_eq!(
        streamed_content(&events),
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

#[tokio::test]
async fn stream_without_usage_and_with_chunk_delay() {
    let (app, _) = app_with(SimConfig {
        stream_chunk_delay_ms: 1,
        ..SimConfig::default()
    });
    let (_, plain) = call_json(
        &app,
        Method::POST,
        "/v1/chat/completions",
        Some(chat("slow drip")),
    )
    .await;
    let mut body = chat("slow drip");
    body["stream"] = json!(true);
    let response = app
        .clone()
        .oneshot(request(Method::POST, "/v1/chat/completions", Some(body)))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut frames = 0;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames += 1;
            bytes.extend_from_slice(&data);
        }
    }
    let words = plain["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(
        frames, words,
        "role and first word share a write, then one write per word"
    );
    let events = sse_data(&bytes);
    assert!(
        events
            .iter()
            .all(|e| e == "[DONE]" || !e.contains("\"usage\""))
    );
    assert_eq!(
        streamed_content(&events),
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

#[tokio::test]
async fn directives_inject_statuses_and_first_failures() {
    let (app, state) = app_with(SimConfig {
        retry_after_s: 7,
        ..SimConfig::default()
    });
    let (status, headers, bytes) = call(
        &app,
        Method::POST,
        "/v1/chat/completions",
        Some(chat("[[sim:status=429]]")),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers[header::RETRY_AFTER], "7");
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");

    let (status, v) = call_json(
        &app,
        Method::POST,
        "/v1/chat/completions",
        Some(chat("[[sim:status=503]]")),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_openai_error(&v, "server_error");

    let mut got = Vec::new();
    for _ in 0..4 {
        let (status, _) = call_json(
            &app,
            Method::POST,
            "/v1/chat/completions",
            Some(chat("x [[sim:fail_first=2:job-1]]")),
        )
        .await;
        got.push(status.as_u16());
    }
    assert_eq!(got, [500, 500, 200, 200]);

    // Directives apply to the last user message only.
    let body = json!({"model": "sim-small", "messages": [
        {"role": "user", "content": "[[sim:status=500]]"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "fine"}
    ]});
    let (status, _) = call_json(&app, Method::POST, "/v1/chat/completions", Some(body)).await;
    assert_eq!(status, StatusCode::OK);

    let c = state.counters();
    assert_eq!(c.injected_429, 1);
    assert_eq!(c.injected_errors, 3);
}

#[tokio::test]
async fn configured_rates_inject_errors() {
    let (app, state) = app_with(SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    });
    let (status, v) = call_json(&app, Method::POST, "/v1/chat/completions", Some(chat("x"))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_openai_error(&v, "server_error");

    state
        .set_config(SimConfig {
            rate_429: 1.0,
            retry_after_s: 3,
            ..SimConfig::default()
        })
        .unwrap();
    let mut body = json!({"model": "sim-embed", "input": "x"});
    let (status, headers, _) = call(&app, Method::POST, "/v1/embeddings", Some(body.clone())).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers[header::RETRY_AFTER], "3");
    // A streaming request fails before the stream starts, as plain JSON.
    body = chat("x");
    body["stream"] = json!(true);
    let (status, headers, _) = call(&app, Method::POST, "/v1/chat/completions", Some(body)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let c = state.counters();
    assert_eq!((c.injected_errors, c.injected_429), (1, 2));
}

#[tokio::test]
async fn embeddings_are_deterministic() {
    let (app, _) = app();
    let (status, v) = call_json(
        &app,
        Method::POST,
        "/v1/embeddings",
        Some(json!({"model": "sim-embed", "input": ["abcd", "hello"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "sim-embed");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["object"], "embedding");
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["embedding"].as_array().unwrap().len(), 16);
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));

    let (_, single) = call_json(
        &app,
        Method::POST,
        "/v1/embeddings",
        Some(json!({"model": "sim-embed", "input": "hello"})),
    )
    .await;
    assert_eq!(single["data"][0]["embedding"], data[1]["embedding"]);

    let (status, v) = call_json(
        &app,
        Method::POST,
        "/v1/embeddings",
        Some(json!({"model": "sim-embed", "input": [1, 2]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&v, "invalid_request_error");
    let (status, _) = call_json(
        &app,
        Method::POST,
        "/v1/embeddings",
        Some(json!({"model": "sim-embed", "input": []})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn embeddings_honour_encoding_format() {
    use base64::Engine as _;
    let (app, _) = app();
    let ask = |format: Option<&str>| {
        let mut body = json!({"model": "sim-embed", "input": ["abcd", "hello"]});
        if let Some(f) = format {
            body["encoding_format"] = json!(f);
        }
        call_json(&app, Method::POST, "/v1/embeddings", Some(body))
    };
    let (_, floats) = ask(None).await;
    let (_, explicit) = ask(Some("float")).await;
    assert_eq!(floats, explicit);
    let (status, b64) = ask(Some("base64")).await;
    assert_eq!(status, StatusCode::OK);
    for i in 0..2 {
        let text = b64["data"][i]["embedding"]
            .as_str()
            .expect("a base64 string");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let want: Vec<f32> = floats["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(decoded, want);
    }
    let (status, v) = ask(Some("int8")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["param"], "encoding_format");
}

#[tokio::test]
async fn counters_count_and_reset() {
    let (app, _) = app();
    call(&app, Method::POST, "/v1/chat/completions", Some(chat("a"))).await;
    call(&app, Method::POST, "/v1/chat/completions", Some(chat("b"))).await;
    call(
        &app,
        Method::POST,
        "/v1/embeddings",
        Some(json!({"model": "sim-embed", "input": "x"})),
    )
    .await;
    call(&app, Method::GET, "/v1/models", None).await;
    call(
        &app,
        Method::POST,
        "/v1/chat/completions",
        Some(json!({"model": "nope", "messages": []})),
    )
    .await;

    let (status, c) = call_json(&app, Method::GET, "/sim/counters", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(c["total_requests"], 5);
    assert_eq!(c["per_model"], json!({"sim-small": 2, "sim-embed": 1}));
    assert_eq!(
        c["per_endpoint"],
        json!({"chat_completions": 3, "embeddings": 1, "models": 1})
    );
    assert_eq!(c["completed"], 5);
    assert_eq!(
        (c["in_flight"].as_u64(), c["aborted"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        (c["injected_errors"].as_u64(), c["injected_429"].as_u64()),
        (Some(0), Some(0))
    );

    let (status, _, _) = call(&app, Method::POST, "/sim/reset", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, c) = call_json(&app, Method::GET, "/sim/counters", None).await;
    let zeroed: sluice_sim::Counters = serde_json::from_value(c).unwrap();
    assert_eq!(zeroed, sluice_sim::Counters::default());
}

#[tokio::test]
async fn config_can_be_replaced_at_run_time() {
    let (app, state) = app();
    let (status, v) = call_json(
        &app,
        Method::PUT,
        "/sim/config",
        Some(json!({"models": ["only-one"], "rate_429": 0.5})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["models"], json!(["only-one"]));
    assert_eq!(state.config().rate_429, 0.5);
    let (_, v) = call_json(&app, Method::GET, "/v1/models", None).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1);

    let (status, v) = call_json(
        &app,
        Method::PUT,
        "/sim/config",
        Some(json!({"error_rate": 3.0})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&v, "invalid_request_error");
    let (status, _) = call_json(&app, Method::PUT, "/sim/config", Some(json!({"bogus": 1}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, v) = call_json(&app, Method::GET, "/sim/config", None).await;
    assert_eq!(
        v["rate_429"], 0.5,
        "refused configurations leave the old one in force"
    );
}

#[tokio::test]
async fn a_client_leaving_during_latency_is_an_abort() {
    let (app, state) = app();
    let pending = app.clone().oneshot(request(
        Method::POST,
        "/v1/chat/completions",
        Some(chat("[[sim:sleep=60000]]")),
    ));
    // One poll reaches the sleep; dropping the future is what hyper does when the client goes.
    assert!(pending.now_or_never().is_none());
    let c = state.counters();
    assert_eq!(
        (c.total_requests, c.in_flight, c.completed, c.aborted),
        (1, 0, 0, 1)
    );
}

#[tokio::test]
async fn a_client_leaving_mid_stream_is_an_abort() {
    let (app, state) = app_with(SimConfig {
        stream_chunk_delay_ms: 60_000,
        ..SimConfig::default()
    });
    let mut body = chat("long stream");
    body["stream"] = json!(true);
    let response = app
        .clone()
        .oneshot(request(Method::POST, "/v1/chat/completions", Some(body)))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"data: "));
    assert_eq!(state.counters().in_flight, 1);
    drop(body);
    let c = state.counters();
    assert_eq!((c.in_flight, c.completed, c.aborted), (0, 0, 1));
}

#[tokio::test]
async fn n_choices_plain_and_streamed_with_their_index() {
    let (app, _) = app();
    let mut body = chat("three ways");
    body["n"] = json!(3);
    let (status, v) = call_json(
        &app,
        Method::POST,
        "/v1/chat/completions",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let (_, one) = call_json(
        &app,
        Method::POST,
        "/v1/chat/completions",
        Some(chat("three ways")),
    )
    .await;
    // Choice 0 is the answer without `n`; the others differ.
    assert_eq!(choices[0]["message"], one["choices"][0]["message"]);
    assert_ne!(choices[1]["message"], choices[0]["message"]);
    let words = |c: &Value| c["message"]["content"].as_str().unwrap().split(' ').count() as u64;
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64().unwrap(),
        choices.iter().map(words).sum::<u64>(),
        "n completions cost n times the output"
    );
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
    }

    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (_, _, bytes) = call(&app, Method::POST, "/v1/chat/completions", Some(body)).await;
    let events = sse_data(&bytes);
    let mut texts = vec![String::new(); 3];
    let mut finishes = 0;
    let mut usage = Value::Null;
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let c: Value = serde_json::from_str(e).unwrap();
        if let Some(choice) = c["choices"].get(0) {
            let i = choice["index"].as_u64().unwrap() as usize;
            texts[i] += choice["delta"]["content"].as_str().unwrap_or("");
            finishes += usize::from(choice["finish_reason"].is_string());
        } else {
            usage = c["usage"].clone();
        }
    }
    assert_eq!(finishes, 3);
    assert_eq!(usage, v["usage"]);
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(t, choices[i]["message"]["content"].as_str().unwrap());
    }
    // The stream interleaves the choices, as OpenAI's does.
    let second: Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(second["choices"][0]["index"], 1);
}

#[tokio::test]
async fn seeds_stops_and_logprobs() {
    let (app, _) = app();
    let ask = |extra: Value| {
        let mut body = chat("seeded");
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let app = app.clone();
        async move { call_json(&app, Method::POST, "/v1/chat/completions", Some(body)).await }
    };
    let content = |v: &Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (_, a) = ask(json!({"seed": 42})).await;
    let (_, b) = ask(json!({"seed": 42, "user": "u-1", "parallel_tool_calls": false})).await;
    let (_, c) = ask(json!({"seed": 43})).await;
    assert_eq!(content(&a), content(&b), "same seed, same answer");
    assert_ne!(content(&a), content(&c));
    assert_eq!(a["system_fingerprint"], "fp_sluice_sim");

    // `stop` cuts before the sequence, with finish_reason "stop".
    let text = content(&a);
    let third = text.split(' ').nth(2).unwrap();
    let (_, cut) = ask(json!({"seed": 42, "stop": [format!(" {third}"), "zzz"]})).await;
    let want = &text[..text.find(&format!(" {third}")).unwrap()];
    assert_eq!(content(&cut), want);
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        cut["usage"]["completion_tokens"].as_u64().unwrap() as usize,
        want.split(' ').count()
    );

    // logprobs: one entry per token, shaped like OpenAI's, the same every time.
    let (status, lp) = ask(json!({"seed": 42, "logprobs": true, "top_logprobs": 2})).await;
    assert_eq!(status, StatusCode::OK, "{lp}");
    let entries = lp["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        entries.len() as u64,
        lp["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let joined: String = entries
        .iter()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    assert_eq!(joined, text);
    let e0 = &entries[0];
    assert!(e0["logprob"].as_f64().unwrap() <= 0.0);
    assert_eq!(e0["bytes"], json!(e0["token"].as_str().unwrap().as_bytes()));
    assert_eq!(e0["top_logprobs"].as_array().unwrap().len(), 2);
    assert_eq!(e0["top_logprobs"][0]["token"], e0["token"]);
    assert!(lp["choices"][0]["logprobs"]["refusal"].is_null());
    let (_, again) = ask(json!({"seed": 42, "logprobs": true, "top_logprobs": 2})).await;
    assert_eq!(
        again["choices"][0]["logprobs"],
        lp["choices"][0]["logprobs"]
    );
    let (_, none) = ask(json!({"seed": 42})).await;
    assert!(none["choices"][0]["logprobs"].is_null());

    // Out of range, as OpenAI refuses them.
    for bad in [
        json!({"n": 0}),
        json!({"n": 129}),
        json!({"top_logprobs": 3}),
        json!({"logprobs": true, "top_logprobs": 21}),
        json!({"stop": ["a", "b", "c", "d", "e"]}),
    ] {
        let (status, v) = ask(bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_openai_error(&v, "invalid_request_error");
    }
}

#[tokio::test]
async fn a_stream_can_fail_mid_way_with_an_error_event() {
    let (app, _) = app();
    let mut body = chat("break it [[sim:stream_error_after=3]]");
    body["stream"] = json!(true);
    let (status, _, bytes) = call(&app, Method::POST, "/v1/chat/completions", Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    let events = sse_data(&bytes);
    assert_eq!(events.len(), 4, "{events:?}");
    let last: Value = serde_json::from_str(&events[3]).unwrap();
    assert_openai_error(&last, "server_error");
    assert!(
        events[..3]
            .iter()
            .all(|e| e.contains("chat.completion.chunk"))
    );
}

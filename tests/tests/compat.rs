//! OpenAI wire compatibility end to end (issue #13): what the official SDKs rely on beyond the
//! happy path — embeddings' `encoding_format`, the exact stream the client asked for, retry
//! hints, duplicate keys, tools and response formats, ids and error shapes.

use std::time::Duration;

use anyhow::{Context, Result};
use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use serde_json::{Value, json};
use sluice_config::{Budget, BudgetPeriod, TenantPolicy};
use sluice_e2e::{ACME_KEY, Api, TestEnv, chat_body, sse::SseReader, wait_until};
use sluice_sim::{SimConfig, SimHandle};

/// A simulator, an ingest and a worker for one test.
struct Stack {
    sim: SimHandle,
    ingest: sluice_ingest::Server,
    worker: sluice_worker::Worker,
    api: Api,
}

impl Stack {
    async fn start(env: &mut TestEnv, sim_cfg: SimConfig) -> Result<Stack> {
        let sim = env.sim(sim_cfg).await?;
        let ingest = env.ingest().await?;
        let worker = env.worker().await?;
        let api = Api::new(ingest.base_url(), ACME_KEY);
        Ok(Stack {
            sim,
            ingest,
            worker,
            api,
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<reqwest::Response> {
        Ok(self
            .api
            .http
            .post(format!("{}/v1/{path}", self.api.base))
            .bearer_auth(&self.api.key)
            .json(body)
            .send()
            .await?)
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let resp = self.post(path, body).await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn stop(self) {
        self.worker.shutdown().await;
        self.ingest.shutdown(Duration::from_secs(5)).await;
        self.sim.shutdown().await;
    }
}

fn decode_f32s(text: &str) -> Result<Vec<f32>> {
    let bytes = BASE64.decode(text)?;
    anyhow::ensure!(bytes.len() % 4 == 0, "{} bytes", bytes.len());
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn floats(v: &Value) -> Result<Vec<f32>> {
    v.as_array()
        .context("not a float array")?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32).context("not a number"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_come_back_in_the_encoding_format_the_client_asked_for() -> Result<()> {
    let mut env = TestEnv::new();
    let s = Stack::start(&mut env, SimConfig::default()).await?;
    let ask = |format: Option<&str>| {
        let mut body = json!({ "model": "sim-embed", "input": ["one", "two"] });
        if let Some(f) = format {
            body["encoding_format"] = json!(f);
        }
        body
    };
    let (status, plain) = s.post_json("embeddings", &ask(None)).await?;
    assert_eq!(status, 200, "{plain}");
    let want = [
        floats(&plain["data"][0]["embedding"])?,
        floats(&plain["data"][1]["embedding"])?,
    ];
    let (_, explicit) = s.post_json("embeddings", &ask(Some("float"))).await?;
    assert_eq!(explicit["data"], plain["data"]);

    // An upstream that honours base64, then one that only ever answers floats: the client
    // gets base64 of the same vectors either way.
    for floats_only in [false, true] {
        s.sim.set_config(SimConfig {
            embeddings_floats_only: floats_only,
            ..SimConfig::default()
        })?;
        let (status, b64) = s.post_json("embeddings", &ask(Some("base64"))).await?;
        assert_eq!(status, 200, "{b64}");
        for (i, w) in want.iter().enumerate() {
            let text = b64["data"][i]["embedding"]
                .as_str()
                .with_context(|| format!("floats_only={floats_only}: not base64: {b64}"))?;
            assert_eq!(&decode_f32s(text)?, w, "floats_only={floats_only}");
        }
        assert_eq!(b64["usage"], plain["usage"]);
    }

    let (status, err) = s.post_json("embeddings", &ask(Some("int8"))).await?;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "encoding_format");
    s.stop().await;
    Ok(())
}

/// The data of every event of a streamed answer, `[DONE]` included.
async fn stream_events(resp: reqwest::Response) -> Result<Vec<String>> {
    anyhow::ensure!(resp.status() == 200, "stream answered {}", resp.status());
    let events = SseReader::new(resp).collect().await?;
    Ok(events.into_iter().map(|e| e.data).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_exactly_the_one_the_client_asked_for() -> Result<()> {
    let mut env = TestEnv::new();
    let s = Stack::start(&mut env, SimConfig::default()).await?;
    let mut body = chat_body("Describe a lock on a canal.");
    body["stream"] = json!(true);
    let direct = |body: &Value| {
        env.http
            .post(format!("{}/chat/completions", s.sim.base_url()))
            .json(body)
            .send()
    };

    // Without include_usage: no `usage` member anywhere, every chunk has a choice (Sluice
    // still asked the upstream for usage, to settle the budget).
    let events = stream_events(s.post("chat/completions", &body).await?).await?;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d))
        .collect::<Result<_, _>>()?;
    assert!(chunks.len() > 2);
    for c in &chunks {
        assert!(c.get("usage").is_none(), "usage on an unasked stream: {c}");
        assert!(
            c["choices"].as_array().is_some_and(|a| !a.is_empty()),
            "a chunk without choices: {c}"
        );
    }
    let upstream = stream_events(direct(&body).await?).await?;
    assert_eq!(
        upstream.len(),
        events.len(),
        "the same chunks as the upstream's"
    );

    // With it: as OpenAI sends it, `usage: null` on every chunk, then one usage-only chunk.
    body["stream_options"] = json!({ "include_usage": true });
    let events = stream_events(s.post("chat/completions", &body).await?).await?;
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d))
        .collect::<Result<_, _>>()?;
    let (last, rest) = chunks.split_last().context("no chunks")?;
    assert!(
        rest.iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some())
    );
    assert_eq!(last["choices"], json!([]));
    assert!(
        last["usage"]["total_tokens"]
            .as_u64()
            .is_some_and(|t| t > 0)
    );
    let upstream = stream_events(direct(&body).await?).await?;
    assert_eq!(upstream.len(), events.len());

    // stream_options without stream is refused, as OpenAI does.
    let mut plain = chat_body("x");
    plain["stream_options"] = json!({ "include_usage": true });
    let (status, err) = s.post_json("chat/completions", &plain).await?;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "stream_options");
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_sluice_already_retried_tells_the_client_not_to_retry() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.worker.max_attempts = 2;
    let s = Stack::start(
        &mut env,
        SimConfig {
            retry_after_s: 2,
            ..SimConfig::default()
        },
    )
    .await?;
    let resp = s
        .post(
            "chat/completions",
            &chat_body("always throttled [[sim:status=429]]"),
        )
        .await?;
    assert_eq!(resp.status(), 429);
    let h = resp.headers().clone();
    let err: Value = resp.json().await?;
    assert_eq!(err["error"]["code"], "upstream_rate_limited");
    assert_eq!(
        h.get("x-should-retry").and_then(|v| v.to_str().ok()),
        Some("false"),
        "{h:?}"
    );
    // Truthful: the provider's own Retry-After on the worker's last attempt.
    assert_eq!(
        h.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("2"),
        "{h:?}"
    );
    let calls = s.sim.counters().per_endpoint.chat_completions;
    let most = u64::from(env.cfg.worker.max_attempts * env.cfg.models.max_calls_per_attempt);
    assert!((1..=most).contains(&calls), "{calls} upstream calls");

    // A malformed request is refused at once, and retrying it cannot help either.
    let resp = s
        .post("chat/completions", &json!({ "model": "sim-small" }))
        .await?;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-should-retry"], "false");
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_are_refused_naming_the_field_on_every_json_endpoint() -> Result<()> {
    let mut env = TestEnv::new();
    let s = Stack::start(&mut env, SimConfig::default()).await?;
    for (path, body, param) in [
        (
            "chat/completions",
            r#"{"model":"sim-small","messages":[{"role":"user","content":"a"}],"max_tokens":5,"max_tokens":5000}"#,
            "max_tokens",
        ),
        (
            "chat/completions",
            r#"{"model":"sim-small","messages":[{"role":"user","content":"a","role":"system"}]}"#,
            "messages[0].role",
        ),
        (
            "jobs",
            r#"{"model":"sim-small","model":"sim-large","messages":[{"role":"user","content":"a"}]}"#,
            "model",
        ),
        (
            "embeddings",
            r#"{"model":"sim-embed","input":"a","input":"b"}"#,
            "input",
        ),
        (
            "webhooks",
            r#"{"url":"https://example.com/a","url":"https://example.com/b"}"#,
            "url",
        ),
    ] {
        let resp = s
            .api
            .http
            .post(format!("{}/v1/{path}", s.api.base))
            .bearer_auth(&s.api.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        assert_eq!(resp.status(), 400, "{path} {body}");
        let err: Value = resp.json().await?;
        assert_eq!(err["error"]["code"], "duplicate_key", "{err}");
        assert_eq!(err["error"]["param"], param, "{err}");
        assert_eq!(err["error"]["type"], "invalid_request_error");
    }
    assert_eq!(
        s.sim.counters().total_requests,
        0,
        "nothing reached the upstream"
    );
    s.stop().await;
    Ok(())
}

fn weather_tools() -> Value {
    json!([{ "type": "function", "function": { "name": "get_weather", "parameters": {
        "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] } } }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_json_formats_models_and_request_ids_work_through_sluice() -> Result<()> {
    let mut env = TestEnv::new();
    let s = Stack::start(&mut env, SimConfig::default()).await?;
    let mut body = chat_body("Call get_weather for Paris, please.");
    body["tools"] = weather_tools();
    body["tool_choice"] = json!("auto");
    body["parallel_tool_calls"] = json!(true);
    body["user"] = json!("u-1");
    body["seed"] = json!(7);
    body["stop"] = json!(["\n\n"]);
    body["max_completion_tokens"] = json!(64);
    let resp = s.post("chat/completions", &body).await?;
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str()?.to_string();
    let plain: Value = resp.json().await?;
    let call = &plain["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or(""))?;
    assert!(args["city"].is_string(), "{args}");
    assert_eq!(plain["choices"][0]["finish_reason"], "tool_calls");
    // The request id is the job's: it can be read back.
    let (code, job) = s.api.job(&request_id).await?;
    assert_eq!((code, job["status"].as_str()), (200, Some("completed")));

    // Streamed: tool-call deltas arrive as the upstream sent them, and the stored result is
    // the assembled call.
    body["stream"] = json!(true);
    let resp = s.post("chat/completions", &body).await?;
    let job_id = resp.headers()["x-request-id"].to_str()?.to_string();
    let events = stream_events(resp).await?;
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d))
        .collect::<Result<_, _>>()?;
    let mut name = String::new();
    let mut arguments = String::new();
    for c in &chunks {
        for d in c["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            name.push_str(d["function"]["name"].as_str().unwrap_or(""));
            arguments.push_str(d["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(name, "get_weather");
    assert_eq!(
        arguments,
        call["function"]["arguments"].as_str().unwrap_or("")
    );
    let job = s
        .api
        .wait_status(&job_id, &["completed"], Duration::from_secs(10))
        .await?;
    let result = &job["result"];
    assert_eq!(
        result["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        call["function"]["arguments"],
        "{job}"
    );

    // A JSON schema answer is JSON matching it.
    let mut body = chat_body("Give me tags.");
    body["response_format"] = json!({ "type": "json_schema", "json_schema": { "name": "t", "strict": true,
        "schema": { "type": "object", "properties": { "tags": { "type": "array", "items": { "type": "string" } } }, "required": ["tags"] } } });
    let (status, v) = s.post_json("chat/completions", &body).await?;
    assert_eq!(status, 200, "{v}");
    let content: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap_or(""))?;
    assert!(content["tags"][0].is_string(), "{content}");

    // GET /v1/models/{id}, and the error shape of an unknown one.
    let get = |path: String| s.api.http.get(path).bearer_auth(&s.api.key).send();
    let resp = get(format!("{}/v1/models/sim-small", s.api.base)).await?;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let m: Value = resp.json().await?;
    assert_eq!(
        (m["id"].as_str(), m["object"].as_str()),
        (Some("sim-small"), Some("model"))
    );
    let resp = get(format!("{}/v1/models/nope", s.api.base)).await?;
    assert_eq!(resp.status(), 404);
    let e: Value = resp.json().await?;
    assert_eq!(e["error"]["code"], "model_not_found");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    s.stop().await;
    Ok(())
}

/// `n`, `seed`, `stop`, `logprobs` / `top_logprobs`, `max_completion_tokens`, `user` and
/// `parallel_tool_calls` reach the upstream unchanged; `n` completions are reserved and
/// settled as `n` times the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_parameters_pass_through_and_n_is_metered() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.governance.tenants.insert(
        "acme".into(),
        TenantPolicy {
            budget: Budget {
                period: BudgetPeriod::Month,
                tokens: 1000,
                cost_usd: 0.0,
            },
            ..Default::default()
        },
    );
    let s = Stack::start(&mut env, SimConfig::default()).await?;
    let mut body = chat_body("Three answers, please.");
    body["n"] = json!(3);
    body["seed"] = json!(11);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    body["user"] = json!("u-42");
    body["parallel_tool_calls"] = json!(false);
    // 3 x 400 output tokens do not fit a 1000-token budget; 1 x 400 would.
    body["max_completion_tokens"] = json!(400);
    let (status, err) = s.post_json("chat/completions", &body).await?;
    assert_eq!(status, 429, "{err}");
    assert_eq!(err["error"]["code"], "budget_exhausted");
    let mut one = body.clone();
    one["n"] = json!(1);
    let (status, v) = s.post_json("chat/completions", &one).await?;
    assert_eq!(status, 200, "{v}");
    let used = v["usage"]["total_tokens"].as_u64().context("usage")?;
    wait_until(Duration::from_secs(10), || async {
        Ok(env.budget_tokens_used("acme").await? == used)
    })
    .await?;

    body["max_completion_tokens"] = json!(12);
    let third = chat_body("Three answers, please.")["messages"].clone();
    body["messages"] = third;
    let (status, v) = s.post_json("chat/completions", &body).await?;
    assert_eq!(status, 200, "{v}");
    let direct: Value = reqwest::Client::new()
        .post(format!("{}/chat/completions", s.sim.base_url()))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    let choices = v["choices"].as_array().context("choices")?;
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        // What the upstream answers for these parameters, unchanged.
        assert_eq!(c["message"], direct["choices"][i]["message"]);
        assert_eq!(c["logprobs"], direct["choices"][i]["logprobs"]);
        assert!(c["logprobs"]["content"][0]["top_logprobs"][1]["token"].is_string());
    }
    assert_eq!(v["usage"], direct["usage"]);
    // Settled: the three completions' actual usage on top of the first request's.
    let total = v["usage"]["total_tokens"].as_u64().context("usage")?;
    wait_until(Duration::from_secs(10), || async {
        Ok(env.budget_tokens_used("acme").await? == used + total)
    })
    .await?;

    // `stop` and `seed` take effect upstream: the answer stops before the sequence.
    let content = choices[0]["message"]["content"].as_str().unwrap_or("");
    let word = content.split(' ').nth(1).context("two words")?;
    let mut stopped = chat_body("Three answers, please.");
    stopped["seed"] = json!(11);
    stopped["stop"] = json!(format!(" {word}"));
    let (_, cut) = s.post_json("chat/completions", &stopped).await?;
    let want = &content[..content.find(&format!(" {word}")).unwrap_or(0)];
    assert_eq!(cut["choices"][0]["message"]["content"], want, "{cut}");
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");

    // Streamed with n = 2: each chunk carries its choice's index, and the stored result
    // holds both choices.
    let mut streamed = chat_body("Two streams.");
    streamed["n"] = json!(2);
    streamed["stream"] = json!(true);
    let resp = s.post("chat/completions", &streamed).await?;
    let id = resp.headers()["x-request-id"].to_str()?.to_string();
    let events = stream_events(resp).await?;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut texts = [String::new(), String::new()];
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e)?;
        let choice = &c["choices"][0];
        let i = choice["index"].as_u64().context("index")? as usize;
        texts[i].push_str(choice["delta"]["content"].as_str().unwrap_or(""));
    }
    let job = s
        .api
        .wait_status(&id, &["completed"], Duration::from_secs(10))
        .await?;
    for (i, t) in texts.iter().enumerate() {
        assert!(!t.is_empty());
        assert_eq!(
            job["result"]["choices"][i]["message"]["content"], *t,
            "{job}"
        );
    }
    s.stop().await;
    Ok(())
}

/// The upstream fails a stream after a few chunks, on every attempt: the client gets those
/// chunks once (a retry's new stream is not spliced onto them), then OpenAI's framing of a
/// failure mid-stream, one `data: {"error": …}` event and no `[DONE]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_failing_mid_way_ends_with_an_error_event() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.worker.max_attempts = 2;
    // Chunks a while apart, so the first ones reach the client before the failure.
    env.cfg.delivery.stream_flush = Duration::from_millis(10);
    let sim = SimConfig {
        stream_chunk_delay_ms: 150,
        ..SimConfig::default()
    };
    let s = Stack::start(&mut env, sim).await?;
    let mut body = chat_body("Break after three. [[sim:stream_error_after=3]]");
    body["stream"] = json!(true);
    let resp = s.post("chat/completions", &body).await?;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str()?.to_string();
    let events = stream_events(resp).await?;
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let (last, chunks) = events.split_last().context("no events")?;
    assert_eq!(chunks.len(), 3, "{events:?}");
    for c in chunks {
        let c: Value = serde_json::from_str(c)?;
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
    }
    let err: Value = serde_json::from_str(last)?;
    assert_eq!(err["error"]["type"], "server_error", "{err}");
    assert!(err["error"]["message"].is_string());
    // The job did not complete with a broken result.
    let job = s
        .api
        .wait_status(&id, &["failed", "cancelled"], Duration::from_secs(10))
        .await?;
    assert!(job["result"].is_null(), "{job}");
    s.stop().await;
    Ok(())
}

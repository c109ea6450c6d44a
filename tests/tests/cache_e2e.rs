//! The response cache end to end, with the simulator's counters as the witness of what
//! reached the provider.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sluice_e2e::{ACME_KEY, Api, OTHER_KEY, TestEnv, sse::SseReader, unique};
use sluice_sim::SimConfig;

fn deterministic(content: &str) -> Value {
    json!({ "model": "sim-small", "temperature": 0,
            "messages": [{ "role": "user", "content": content }], "max_tokens": 16 })
}

struct Answer {
    status: u16,
    cache: Option<String>,
    body: Value,
}

async fn chat(api: &Api, body: &Value, headers: &[(&str, &str)]) -> Result<Answer> {
    let mut req = api
        .http
        .post(format!("{}/v1/chat/completions", api.base))
        .bearer_auth(&api.key)
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("x-sluice-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    Ok(Answer {
        status,
        cache,
        body,
    })
}

fn upstream_chats(sim: &sluice_sim::SimHandle) -> u64 {
    sim.counters().per_endpoint.chat_completions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_deterministic_request_reaches_upstream_once() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let _worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let body = deterministic(&unique("what is a sluice? "));

    let first = chat(&api, &body, &[]).await?;
    assert_eq!((first.status, first.cache.as_deref()), (200, Some("miss")));
    // Member order and number spelling do not make another key.
    let reordered: Value = serde_json::from_str(&format!(
        r#"{{"max_tokens":16,"messages":[{{"content":{},"role":"user"}}],"temperature":0.0,"model":"sim-small"}}"#,
        body["messages"][0]["content"]
    ))?;
    let second = chat(&api, &reordered, &[]).await?;
    assert_eq!((second.status, second.cache.as_deref()), (200, Some("hit")));
    assert_eq!(second.body, first.body, "a hit is the original answer");
    assert_eq!(upstream_chats(&sim), 1);
    // The hit counts the tokens it saved: the original answer's usage.
    let saved_output = first.body["usage"]["completion_tokens"]
        .as_u64()
        .context("usage")?;
    let metrics = env
        .http
        .get(format!("{}/metrics", ingest.base_url()))
        .send()
        .await?
        .text()
        .await?;
    let counted: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("sluice_cache_saved_tokens_total{") && l.contains(r#"type="output""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum();
    assert_eq!(counted, saved_output, "{metrics}");

    // Sampled requests are not cached unless they opt in.
    let mut sampled = body.clone();
    sampled["temperature"] = json!(0.9);
    for _ in 0..2 {
        assert_eq!(
            chat(&api, &sampled, &[]).await?.cache.as_deref(),
            Some("bypass")
        );
    }
    assert_eq!(upstream_chats(&sim), 3);
    assert_eq!(
        chat(&api, &sampled, &[("x-sluice-cache", "on")])
            .await?
            .cache
            .as_deref(),
        Some("miss")
    );
    assert_eq!(
        chat(&api, &sampled, &[("x-sluice-cache", "on")])
            .await?
            .cache
            .as_deref(),
        Some("hit")
    );
    assert_eq!(upstream_chats(&sim), 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_and_no_cache_behave_as_specified() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let _worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    // no-store neither reads nor writes.
    let body = deterministic(&unique("no-store "));
    let a = chat(&api, &body, &[("cache-control", "no-store")]).await?;
    assert_eq!(a.cache.as_deref(), Some("bypass"));
    assert_eq!(
        chat(&api, &body, &[]).await?.cache.as_deref(),
        Some("miss"),
        "nothing was stored"
    );
    assert_eq!(
        chat(&api, &body, &[("cache-control", "no-store")])
            .await?
            .cache
            .as_deref(),
        Some("bypass")
    );
    assert_eq!(upstream_chats(&sim), 3);

    // no-cache skips the lookup and refreshes the entry.
    let body = deterministic(&unique("no-cache "));
    chat(&api, &body, &[]).await?;
    let refreshed = chat(&api, &body, &[("cache-control", "no-cache")]).await?;
    assert_eq!(refreshed.cache.as_deref(), Some("miss"));
    let hit = chat(&api, &body, &[]).await?;
    assert_eq!(hit.cache.as_deref(), Some("hit"));
    assert_eq!(
        hit.body["id"], refreshed.body["id"],
        "the refresh replaced the entry"
    );
    assert_eq!(upstream_chats(&sim), 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_system_prompts_never_share_an_entry() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let _worker = env.worker().await?;
    let acme = Api::new(ingest.base_url(), ACME_KEY);
    let other = Api::new(ingest.base_url(), OTHER_KEY);
    let body = deterministic(&unique("shared question "));

    assert_eq!(
        chat(&acme, &body, &[]).await?.cache.as_deref(),
        Some("miss")
    );
    assert_eq!(
        chat(&other, &body, &[]).await?.cache.as_deref(),
        Some("miss")
    );
    let mut with_system = body.clone();
    with_system["messages"] = json!([{ "role": "system", "content": "Answer in French." },
                                     body["messages"][0].clone()]);
    assert_eq!(
        chat(&acme, &with_system, &[]).await?.cache.as_deref(),
        Some("miss")
    );
    let mut with_tools = body.clone();
    with_tools["tools"] = json!([{ "type": "function", "function": { "name": "lookup", "parameters": {"type": "object"} } }]);
    assert_eq!(
        chat(&acme, &with_tools, &[]).await?.cache.as_deref(),
        Some("miss")
    );
    assert_eq!(upstream_chats(&sim), 4);
    assert_eq!(
        chat(&other, &body, &[]).await?.cache.as_deref(),
        Some("hit")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_requests_through_two_replicas_make_one_upstream_call() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    let a = env.ingest().await?;
    let b = env.ingest().await?;
    let _worker = env.worker().await?;
    let apis = [
        Api::new(a.base_url(), ACME_KEY),
        Api::new(b.base_url(), ACME_KEY),
    ];
    // A slow upstream, so the whole burst arrives while the first call runs.
    let body = deterministic(&format!("{} [[sim:sleep=300]]", unique("storm ")));
    let answers = futures_util::future::join_all((0..100).map(|i| chat(&apis[i % 2], &body, &[])))
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    assert!(
        answers.iter().all(|a| a.status == 200),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    let first = &answers[0].body;
    assert!(
        answers.iter().all(|a| &a.body == first),
        "every caller gets the same answer"
    );
    assert_eq!(
        upstream_chats(&sim),
        1,
        "one upstream call for the whole burst"
    );
    let misses = answers
        .iter()
        .filter(|a| a.cache.as_deref() == Some("miss"))
        .count();
    assert_eq!(misses, 1, "one leader");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_answer_streams_as_a_valid_sse_stream_with_usage() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let _worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let body = deterministic(&unique("stream me "));
    let plain = chat(&api, &body, &[]).await?;
    assert_eq!(plain.cache.as_deref(), Some("miss"));

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({ "include_usage": true });
    let resp = api
        .http
        .post(format!("{}/v1/chat/completions", api.base))
        .bearer_auth(&api.key)
        .json(&streamed)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-sluice-cache"], "hit");
    assert!(
        resp.headers()["content-type"]
            .to_str()?
            .starts_with("text/event-stream")
    );
    let events = SseReader::new(resp).collect().await?;
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e.data))
        .collect::<Result<_, _>>()?;
    assert!(chunks.len() > 2, "re-chunked, not one aggregated chunk");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        plain.body["choices"][0]["message"]["content"]
            .as_str()
            .context("content")?
    );
    assert_eq!(
        chunks.last().context("chunks")?["usage"],
        plain.body["usage"]
    );
    assert_eq!(upstream_chats(&sim), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_error_is_never_cached() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.worker.max_attempts = 1;
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let _worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    // After a 429 or a 500 the deployment may cool down or open its breaker, and a retry
    // then fails fast without a call: only the 400 counts calls.
    for status in ["400", "429", "500"] {
        let body = deterministic(&format!("{} [[sim:status={status}]]", unique("err ")));
        let before = upstream_chats(&sim);
        let a = chat(&api, &body, &[]).await?;
        assert_ne!(a.status, 200);
        let b = chat(&api, &body, &[]).await?;
        assert_ne!(
            b.status, 200,
            "an error is not replayed as a 200 ({status})"
        );
        assert_ne!(b.cache.as_deref(), Some("hit"));
        if status == "400" {
            assert_eq!(
                upstream_chats(&sim),
                before + 2,
                "the retry called upstream itself: nothing cached, no lease kept ({status})"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_embeddings_are_answered_from_the_cache() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let _worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let body = deterministic(&unique("a job "));
    let first = api.submit_ok(&body).await?;
    let done = api
        .wait_status(&first, &["completed"], Duration::from_secs(20))
        .await?;
    let (status, headers, view) = api.submit(&body).await?;
    assert_eq!(status, 202);
    assert_eq!(headers["x-sluice-cache"], "hit");
    assert_eq!(view["status"], "completed");
    assert_eq!(view["cached"], true);
    assert_eq!(view["cached_from"], json!(first));
    let (_, read) = api.job(view["id"].as_str().context("id")?).await?;
    assert_eq!(read["result"], done["result"]);
    assert_eq!(read["cached_from"], json!(first));
    assert_eq!(upstream_chats(&sim), 1);

    // Embeddings are deterministic: cached by default.
    let emb = json!({ "model": "sim-embed", "input": unique("embed me ") });
    let url = format!("{}/v1/embeddings", api.base);
    let mut answers = Vec::new();
    for _ in 0..2 {
        let resp = api
            .http
            .post(&url)
            .bearer_auth(&api.key)
            .json(&emb)
            .send()
            .await?;
        assert_eq!(resp.status(), 200);
        let cache = resp.headers()["x-sluice-cache"].to_str()?.to_string();
        answers.push((cache, resp.json::<Value>().await?));
    }
    assert_eq!(answers[0].0, "miss");
    assert_eq!(answers[1].0, "hit");
    assert_eq!(answers[0].1, answers[1].1);
    assert_eq!(sim.counters().per_endpoint.embeddings, 1);
    Ok(())
}

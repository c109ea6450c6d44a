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
    /// The job whose answer this is (a hit's is the job that computed the entry).
    request_id: Option<String>,
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
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    Ok(Answer {
        status,
        cache,
        request_id,
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
    let metrics = metrics(&env, &ingest).await?;
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
    let odd: Vec<_> = answers
        .iter()
        .filter(|a| &a.body != first)
        .map(|a| (a.cache.as_deref(), &a.body))
        .collect();
    assert!(
        odd.is_empty(),
        "every caller gets the same answer: the first ({:?}) {first}, others {odd:?}",
        answers[0].cache
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
async fn an_upstream_error_is_never_cached_as_an_answer_and_a_400_is_a_negative_entry() -> Result<()>
{
    let mut env = TestEnv::new();
    env.cfg.worker.max_attempts = 1;
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let _worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    // The upstream refuses the request itself (400): a negative entry, answered with the
    // same status and OpenAI error body, without calling upstream again.
    let body = deterministic(&format!("{} [[sim:status=400]]", unique("bad ")));
    let before = upstream_chats(&sim);
    let a = chat(&api, &body, &[]).await?;
    assert_eq!(a.status, 400);
    assert!(a.body["error"]["message"].is_string(), "{}", a.body);
    for _ in 0..2 {
        let b = chat(&api, &body, &[]).await?;
        assert_eq!((b.status, b.cache.as_deref()), (400, Some("hit")));
        assert_eq!(b.body, a.body, "the same OpenAI error");
    }
    assert_eq!(upstream_chats(&sim), before + 1);
    // A stream request is refused the same way, before any chunk.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let s = chat(&api, &streamed, &[]).await?;
    assert_eq!((s.status, s.body.clone()), (400, a.body.clone()));
    // POST /v1/jobs cannot answer with an error: it runs its job.
    let (status, headers, _) = api.submit(&body).await?;
    assert_eq!(status, 202);
    assert_eq!(headers["x-sluice-cache"], "miss");
    assert!(
        metric_sum(&env, &ingest, "sluice_cache_negative_hits_total").await? >= 3.0,
        "negative hits are counted"
    );

    // The upstream refusing Sluice's own provider key (401, 403) is a gateway fault: 502
    // `upstream_unauthorized`, never a negative entry (the client's request was fine, and
    // the operator's fixed key must take effect at once), so each request calls upstream.
    for status in ["401", "403"] {
        let body = deterministic(&format!("{} [[sim:status={status}]]", unique("key ")));
        let mut calls = upstream_chats(&sim);
        for _ in 0..2 {
            let r = chat(&api, &body, &[]).await?;
            assert_eq!(r.status, 502, "{status}: {}", r.body);
            assert_eq!(
                r.body["error"]["code"], "upstream_unauthorized",
                "{}",
                r.body
            );
            assert_eq!(r.body["error"]["type"], "server_error");
            assert_ne!(r.cache.as_deref(), Some("hit"), "{status} is not cached");
            let now = upstream_chats(&sim);
            assert!(now > calls, "{status}: the request reached upstream");
            calls = now;
        }
    }

    // A 429 or a 500 is never cached, negative entries or not. (After one the deployment
    // may cool down or open its breaker, so these come last and calls are not counted.)
    for status in ["429", "500"] {
        let body = deterministic(&format!("{} [[sim:status={status}]]", unique("err ")));
        let a = chat(&api, &body, &[]).await?;
        assert_ne!(a.status, 200);
        let b = chat(&api, &body, &[]).await?;
        assert_ne!(
            b.status, 200,
            "an error is not replayed as a 200 ({status})"
        );
        assert_ne!(b.cache.as_deref(), Some("hit"), "{status} is not cached");
    }

    // With negative entries off, a 400 is not cached either.
    let mut env = TestEnv::new();
    env.cfg.worker.max_attempts = 1;
    env.cfg.cache.negative_ttl = Duration::ZERO;
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let _worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let body = deterministic(&format!("{} [[sim:status=400]]", unique("bad ")));
    for _ in 0..2 {
        let r = chat(&api, &body, &[]).await?;
        assert_eq!(r.status, 400);
        assert_ne!(r.cache.as_deref(), Some("hit"));
    }
    assert_eq!(
        upstream_chats(&sim),
        2,
        "the retry called upstream itself: nothing cached, no lease kept"
    );
    Ok(())
}

/// `ingest`'s `/metrics` text.
async fn metrics(env: &TestEnv, ingest: &sluice_ingest::Server) -> Result<String> {
    Ok(env
        .http
        .get(format!("{}/metrics", ingest.base_url()))
        .send()
        .await?
        .text()
        .await?)
}

/// The sum of every series of counter `name` on `ingest`'s `/metrics`.
async fn metric_sum(env: &TestEnv, ingest: &sluice_ingest::Server, name: &str) -> Result<f64> {
    Ok(metrics(env, ingest)
        .await?
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_entry_is_served_stale_while_one_low_priority_job_refreshes_it() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    env.cfg.cache.stale = Duration::from_secs(600);
    // Replica `a` writes entries fresh for 1 s, replica `b` for an hour: `a`'s entry expires
    // at once, and the refresh `b` queues writes one that stays fresh for the rest.
    env.cfg.cache.ttl = Duration::from_secs(1);
    let a = env.ingest().await?;
    env.cfg.cache.ttl = Duration::from_secs(3600);
    let b = env.ingest().await?;
    let _worker = env.worker().await?;
    let api_a = Api::new(a.base_url(), ACME_KEY);
    let api_b = Api::new(b.base_url(), ACME_KEY);
    let body = deterministic(&unique("stale "));

    let first = chat(&api_a, &body, &[]).await?;
    assert_eq!((first.status, first.cache.as_deref()), (200, Some("miss")));
    // Past the entry's freshness (it was written before the answer arrived).
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let burst = futures_util::future::join_all((0..10).map(|_| chat(&api_b, &body, &[])))
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    for s in &burst {
        assert_eq!((s.status, s.cache.as_deref()), (200, Some("stale")));
        assert_eq!(s.body, first.body, "a stale read is the old answer");
        assert_eq!(s.request_id, first.request_id);
    }
    // The refresh runs in the background; read until it has rewritten the entry.
    let refreshed = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = chat(&api_b, &body, &[]).await?;
            assert_eq!(r.status, 200);
            if r.cache.as_deref() == Some("hit") {
                break r;
            }
            assert_eq!(r.cache.as_deref(), Some("stale"), "until the refresh lands");
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the entry was never refreshed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(
        upstream_chats(&sim),
        2,
        "exactly one refresh for every stale read"
    );
    let refresh = refreshed.request_id.context("x-request-id")?;
    assert_ne!(Some(&refresh), first.request_id.as_ref(), "a new answer");
    let (_, job) = api_b.job(&refresh).await?;
    assert_eq!(
        job["priority"], "low",
        "the refresh is a low-priority job: {job}"
    );
    assert_eq!(job["status"], "completed");
    // Every replica now reads the refreshed entry.
    let again = chat(&api_a, &body, &[]).await?;
    assert_eq!(again.cache.as_deref(), Some("hit"));
    assert_eq!(again.request_id.as_ref(), Some(&refresh));
    assert_eq!(upstream_chats(&sim), 2);
    Ok(())
}

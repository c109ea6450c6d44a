//! Getting results: server-sent events with `Last-Event-ID` resume, and the synchronous
//! OpenAI-compatible endpoints (plain, streamed, embeddings, models, wait limit, a client
//! that disconnects).

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sluice_e2e::{
    ACME_KEY, Api, TestEnv, chat_body,
    sse::{SseEvent, SseReader},
    wait_jobs_settled, wait_until,
};
use sluice_sim::SimConfig;

const LONG: Duration = Duration::from_secs(30);

async fn open_events(api: &Api, id: &str, last: Option<&str>) -> Result<SseReader> {
    let mut req = api
        .http
        .get(format!("{}/v1/jobs/{id}/events", api.base))
        .bearer_auth(&api.key);
    if let Some(l) = last {
        req = req.header("last-event-id", l);
    }
    let resp = req.send().await?;
    anyhow::ensure!(resp.status() == 200, "events answered {}", resp.status());
    Ok(SseReader::new(resp))
}

fn chunk_text(events: &[SseEvent]) -> String {
    let mut out = String::new();
    for e in events
        .iter()
        .filter(|e| e.event.as_deref() == Some("chunks"))
    {
        let v: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
        for c in v["chunks"].as_array().into_iter().flatten() {
            out.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_with_last_event_id_without_loss_or_duplication() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.delivery.stream_flush = Duration::from_millis(10);
    let sim = env
        .sim(SimConfig {
            stream_chunk_delay_ms: 30,
            ..SimConfig::default()
        })
        .await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let mut body = chat_body("Tell me a long story about rivers and locks");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(12);
    let id = api.submit_ok(&body).await?;

    // Read two events, drop the connection, resume from the last id seen, repeat.
    let mut got: Vec<SseEvent> = Vec::new();
    let mut last: Option<String> = None;
    let mut connections = 0;
    loop {
        connections += 1;
        anyhow::ensure!(connections < 200, "too many reconnects");
        let mut reader = open_events(&api, &id, last.as_deref()).await?;
        let mut ended = false;
        for _ in 0..2 {
            match reader.next().await? {
                Some(e) if e.event.as_deref() == Some("result") => {
                    got.push(e);
                    ended = true;
                    break;
                }
                Some(e) => {
                    last = e.id.clone();
                    got.push(e);
                }
                None => break,
            }
        }
        drop(reader);
        if ended {
            break;
        }
    }
    assert!(
        connections > 2,
        "the test resumed several times ({connections})"
    );

    // Every event exactly once, in order: ids 1..=n without gaps.
    let ids: Vec<u64> = got
        .iter()
        .filter_map(|e| e.id.as_deref()?.parse().ok())
        .collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "{got:?}");
    let statuses: Vec<String> = got
        .iter()
        .filter(|e| e.event.as_deref() == Some("status"))
        .map(|e| {
            serde_json::from_str::<Value>(&e.data)
                .map(|v| v["status"].as_str().unwrap_or("").to_string())
        })
        .collect::<Result<_, _>>()?;
    assert_eq!(statuses, ["queued", "in_progress", "completed"]);
    assert!(
        got.iter()
            .filter(|e| e.event.as_deref() == Some("chunks"))
            .count()
            >= 2,
        "{got:?}"
    );

    // A late subscriber gets the same history and the end.
    let late = open_events(&api, &id, None).await?.collect().await?;
    assert_eq!(late.len(), got.len());
    for (a, b) in late
        .iter()
        .zip(&got)
        .filter(|(a, _)| a.event.as_deref() != Some("result"))
    {
        assert_eq!(a, b);
    }
    let result: Value = serde_json::from_str(&late.last().context("no events")?.data)?;
    assert_eq!(result["status"], "completed");
    let content = result["result"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!content.is_empty());
    assert_eq!(
        chunk_text(&got),
        content,
        "the chunks add up to the stored result"
    );
    assert_eq!(result["result"]["object"], "chat.completion");
    assert_eq!(sim.counters().per_endpoint.chat_completions, 1);

    // Resuming after the end yields just the result.
    let n = ids.len().to_string();
    let tail = open_events(&api, &id, Some(&n)).await?.collect().await?;
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].event.as_deref(), Some("result"));
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_sends_keepalive_comments_while_a_job_waits() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.delivery.keepalive = Duration::from_secs(1);
    let _sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let id = api.submit_ok(&chat_body("nobody runs me yet")).await?;
    let mut reader = open_events(&api, &id, None).await?;
    let first = reader.next().await?.context("queued event")?;
    assert_eq!(first.id.as_deref(), Some("1"));
    // No worker: the next thing on the wire can only be a keep-alive comment; the cancel
    // then ends the stream.
    let waited = tokio::time::timeout(LONG, async {
        while reader.comments == 0 {
            let resp = api
                .http
                .post(format!("{}/v1/jobs/{id}/cancel", api.base))
                .bearer_auth(&api.key);
            let next = tokio::time::timeout(Duration::from_millis(2500), reader.next()).await;
            if let Ok(ev) = next {
                let ev = ev?.context("stream ended before the cancel")?;
                anyhow::bail!("unexpected event {ev:?}");
            }
            drop(resp);
        }
        Ok(())
    })
    .await;
    waited.context("no keep-alive")??;
    let resp = api
        .http
        .post(format!("{}/v1/jobs/{id}/cancel", api.base))
        .bearer_auth(&api.key)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let rest = reader.collect().await?;
    let kinds: Vec<_> = rest
        .iter()
        .map(|e| e.event.clone().unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["status", "result"], "{rest:?}");
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_answers_in_openai_format_plain_and_streamed() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env
        .sim(SimConfig {
            stream_chunk_delay_ms: 5,
            ..SimConfig::default()
        })
        .await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let url = format!("{}/v1/chat/completions", api.base);

    let body = chat_body("What is a sluice gate?");
    let resp = api
        .http
        .post(&url)
        .bearer_auth(&api.key)
        .header("x-priority", "high")
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let plain: Value = resp.json().await?;
    let direct: Value = env
        .http
        .post(format!("{}/chat/completions", sim.base_url()))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(
        plain["choices"][0]["message"],
        direct["choices"][0]["message"]
    );
    assert_eq!(plain["usage"], direct["usage"]);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({ "include_usage": true });
    let resp = api
        .http
        .post(&url)
        .bearer_auth(&api.key)
        .json(&streamed)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
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
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        direct["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
    );
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let last = chunks.last().context("no chunks")?;
    assert_eq!(last["usage"], direct["usage"], "usage on the final chunk");

    // Bad priority header and unknown model.
    let resp = api
        .http
        .post(&url)
        .bearer_auth(&api.key)
        .header("x-priority", "urgent")
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    let mut unknown = body.clone();
    unknown["model"] = json!("no-such-model");
    let resp = api
        .http
        .post(&url)
        .bearer_auth(&api.key)
        .json(&unknown)
        .send()
        .await?;
    assert_eq!(resp.status(), 404);
    let err: Value = resp.json().await?;
    assert_eq!(err["error"]["code"], "model_not_found");

    // Models and embeddings.
    let models: Value = api
        .http
        .get(format!("{}/v1/models", api.base))
        .bearer_auth(&api.key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(models["object"], "list");
    assert!(
        models["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|m| m["id"] == "sim-embed"))
    );
    let emb = json!({ "model": "sim-embed", "input": ["a", "b"] });
    let resp = api
        .http
        .post(format!("{}/v1/embeddings", api.base))
        .bearer_auth(&api.key)
        .json(&emb)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let emb: Value = resp.json().await?;
    assert_eq!(emb["object"], "list");
    assert_eq!(emb["data"].as_array().map(Vec::len), Some(2));
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_past_the_limit_answers_202_with_the_job_to_poll() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.delivery.sync_wait = Duration::from_secs(1);
    let _sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let resp = api
        .http
        .post(format!("{}/v1/chat/completions", api.base))
        .bearer_auth(&api.key)
        .json(&chat_body("slow [[sim:sleep=2500]]"))
        .send()
        .await?;
    let code = resp.status();
    let job: Value = resp.json().await?;
    assert_eq!(code, 202, "{job}");
    let id = job["id"].as_str().context("id")?;
    let done = api
        .wait_status(id, &["completed", "failed", "cancelled"], LONG)
        .await?;
    assert_eq!(done["status"], "completed", "the work was not lost: {done}");
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_job() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env
        .sim(SimConfig {
            stream_chunk_delay_ms: 300,
            ..SimConfig::default()
        })
        .await?;
    let ingest = env.ingest().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let url = format!("{}/v1/chat/completions", api.base);

    // Before the job starts (no worker yet): the client gives up after a moment.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()?;
    let r = impatient
        .post(&url)
        .bearer_auth(&api.key)
        .json(&chat_body("never mind"))
        .send()
        .await;
    assert!(r.is_err(), "the request timed out client-side");

    // Mid-stream: read the first chunk, then hang up.
    let worker = env.worker().await?;
    let mut body = chat_body("Tell me a long story about rivers, boats and locks");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(64);
    let resp = api
        .http
        .post(&url)
        .bearer_auth(&api.key)
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let mut reader = SseReader::new(resp);
    let first = reader.next().await?.context("a first chunk")?;
    assert!(first.data.contains("chat.completion.chunk"));
    drop(reader);
    wait_until(LONG, || async { Ok(sim.counters().aborted == 1) }).await?;

    // The first request's job was cancelled while queued: only the streamed one ran.
    let queue = env.queue().await?;
    wait_jobs_settled(&queue, LONG).await?;
    assert_eq!(sim.counters().per_endpoint.chat_completions, 1);
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_before_its_first_chunk_is_an_http_error() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.worker.max_attempts = 1;
    let _sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let _worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let mut body = chat_body("Refuse this [[sim:status=400]]");
    body["stream"] = json!(true);
    let resp = api
        .http
        .post(format!("{}/v1/chat/completions", api.base))
        .bearer_auth(&api.key)
        .json(&body)
        .send()
        .await?;
    // Not a 200 stream carrying the error: the SDK raises a typed error before iterating.
    assert_eq!(resp.status(), 400);
    assert!(
        !resp.headers()["content-type"]
            .to_str()?
            .starts_with("text/event-stream")
    );
    let err: Value = resp.json().await?;
    assert_eq!(err["error"]["code"], "upstream_rejected");
    Ok(())
}

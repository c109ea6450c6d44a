//! The job pipeline end to end: ingest → JetStream → worker → Redis, with the simulator.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use sluice_e2e::{ACME_KEY, Api, OTHER_KEY, TestEnv, chat_body, wait_until};
use sluice_sim::SimConfig;

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_poll_completed_with_the_simulators_answer() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let body = chat_body("What is a sluice?");
    let (status, headers, accepted) = api
        .submit(&json!({
            "model": "sim-small",
            "messages": body["messages"],
            "max_tokens": 32,
            "priority": "high",
            "metadata": { "order": "42" },
        }))
        .await?;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(accepted["status"], "queued");
    assert_eq!(headers["location"], format!("/v1/jobs/{id}"));

    let job = api.wait_status(&id, &["completed", "failed"], LONG).await?;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["priority"], "high");
    assert_eq!(job["metadata"]["order"], "42");
    assert_eq!(job["attempts"], 1);
    let result = &job["result"];
    assert_eq!(result["object"], "chat.completion");
    assert!(
        result["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 0,
        "{result}"
    );
    assert!(
        result["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
        "{result}"
    );
    let t = &job["timings_ms"];
    assert!(t["queued_at"].as_u64() <= t["in_progress_at"].as_u64());
    assert!(t["in_progress_at"].as_u64() <= t["completed_at"].as_u64());

    // The answer is the simulator's, for exactly the request the client sent.
    let direct: Value = env
        .http
        .post(format!("{}/chat/completions", sim.base_url()))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        result["choices"][0]["message"]["content"],
        direct["choices"][0]["message"]["content"]
    );
    assert_eq!(
        sim.counters().per_model.get("sim-small").copied(),
        Some(2),
        "one call for the job, one direct"
    );

    // Another tenant cannot see it; an unknown id is 404 too.
    let other = Api::new(ingest.base_url(), OTHER_KEY);
    assert_eq!(other.job(&id).await?.0, 404);
    assert_eq!(api.job(&uuid::Uuid::now_v7().to_string()).await?.0, 404);
    assert_eq!(api.job("not-a-uuid").await?.0, 404);

    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_upstream_error_fails_the_job_without_leaking_upstream_text() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let id = api
        .submit_ok(&chat_body("refuse this [[sim:status=400]]"))
        .await?;
    let job = api.wait_status(&id, &["completed", "failed"], LONG).await?;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "upstream_rejected");
    assert_eq!(job["attempts"], 1, "a 400 is not retried");
    assert!(job["result"].is_null());
    assert_eq!(sim.counters().per_model.get("sim-small").copied(), Some(1));

    // A retryable error is retried and then succeeds.
    let id = api
        .submit_ok(&chat_body("flaky [[sim:fail_first=2:flaky-1]]"))
        .await?;
    let job = api.wait_status(&id, &["completed", "failed"], LONG).await?;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempts"], 3);

    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded_and_end_in_the_dead_letter_stream() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.worker.max_attempts = 3;
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let id = api
        .submit_ok(&chat_body("always down [[sim:status=503]]"))
        .await?;
    let job = api.wait_status(&id, &["completed", "failed"], LONG).await?;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "max_attempts_exceeded");
    assert_eq!(job["attempts"], 3);
    assert_eq!(sim.counters().per_model.get("sim-small").copied(), Some(3));

    let queue = env.queue().await?;
    let js = queue.jetstream();
    let dlq = queue.subjects().dlq_stream();
    wait_until(LONG, || async {
        let mut s = js.get_stream(&dlq).await?;
        Ok(s.info().await?.state.messages == 1)
    })
    .await?;
    let msg = js
        .get_stream(&dlq)
        .await?
        .get_last_raw_message_by_subject(&queue.subjects().dlq("max_attempts", "acme"))
        .await?;
    let headers = msg.headers;
    assert_eq!(
        headers.get("Sluice-Job-Id").map(|v| v.to_string()),
        Some(id.clone())
    );
    assert_eq!(
        queue.queued_messages().await?,
        0,
        "the original is removed from the work queue"
    );

    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_openai_errors_and_nothing_is_published() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.ingest.max_body_bytes = 4096;
    let ingest = env.ingest().await?;
    let queue = env.queue().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let msgs = json!([{ "role": "user", "content": "hi" }]);

    let cases: Vec<(Vec<u8>, u16, Option<&str>)> = vec![
        (b"{not json".to_vec(), 400, None),
        (b"\"a string\"".to_vec(), 400, None),
        (b"{\"model\":\"sim-small\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}".to_vec(), 400, None),
        (json!({ "messages": msgs }).to_string().into_bytes(), 400, Some("model")),
        (json!({ "model": "sim-small" }).to_string().into_bytes(), 400, Some("messages")),
        (json!({ "model": "sim-small", "messages": msgs, "bogus": 1 }).to_string().into_bytes(), 400, Some("bogus")),
        (json!({ "model": ["x"], "messages": msgs }).to_string().into_bytes(), 400, Some("model")),
        (json!({ "model": "sim-small", "messages": msgs, "temperature": 9 }).to_string().into_bytes(), 400, Some("temperature")),
        (br#"{"model":"sim-small","messages":[{"role":"user","content":"hi"}],"max_tokens":1e999}"#.to_vec(), 400, None),
        (json!({ "model": "sim-small", "messages": msgs, "max_tokens": 18446744073709551615u64 }).to_string().into_bytes(), 400, Some("max_tokens")),
        (json!({ "model": "sim-small", "messages": [{ "role": "robot", "content": "x" }] }).to_string().into_bytes(), 400, Some("messages[0].role")),
        (json!({ "model": "sim-small", "messages": msgs, "priority": "urgent" }).to_string().into_bytes(), 400, Some("priority")),
        (json!({ "model": "sim-small", "messages": msgs, "metadata": { "k": 5 } }).to_string().into_bytes(), 400, Some("metadata.k")),
        (json!({ "model": "sim-small", "messages": [{ "role": "user", "content": "x".repeat(5000) }] }).to_string().into_bytes(), 413, None),
    ];
    for (body, want, param) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        let (status, _, json) = api.submit_raw(body).await?;
        assert_eq!(status, want, "{shown} → {json}");
        let err = &json["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{shown} → {json}"
        );
        assert!(
            err.get("type").is_some() && err.get("param").is_some() && err.get("code").is_some(),
            "{json}"
        );
        if let Some(p) = param {
            assert_eq!(err["param"], p, "{shown} → {json}");
        }
    }

    // Authentication: missing, wrong, and malformed keys.
    let resp = env
        .http
        .post(format!("{}/v1/jobs", ingest.base_url()))
        .json(&chat_body("x"))
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let wrong = Api::new(ingest.base_url(), "sk-wrong");
    assert_eq!(wrong.submit(&chat_body("x")).await?.0, 401);
    // Unknown routes and methods answer in the same error shape.
    let resp = env
        .http
        .get(format!("{}/v1/nope", ingest.base_url()))
        .bearer_auth(ACME_KEY)
        .send()
        .await?;
    assert_eq!(resp.status(), 404);
    assert!(resp.json::<Value>().await?["error"]["message"].is_string());
    let resp = env
        .http
        .delete(format!("{}/v1/jobs", ingest.base_url()))
        .bearer_auth(ACME_KEY)
        .send()
        .await?;
    assert_eq!(resp.status(), 405);

    assert_eq!(
        queue.queued_messages().await?,
        0,
        "nothing reached the broker"
    );
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() -> Result<()> {
    let env = TestEnv::new();
    let ingest = env.ingest().await?;
    let base = ingest.base_url();
    assert_eq!(
        env.http
            .get(format!("{base}/healthz"))
            .send()
            .await?
            .status(),
        200
    );
    wait_until(LONG, || async {
        Ok(env
            .http
            .get(format!("{base}/readyz"))
            .send()
            .await?
            .status()
            == 200)
    })
    .await?;
    let metrics = env.http.get(format!("{base}/metrics")).send().await?;
    assert_eq!(metrics.status(), 200, "metrics are open");
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

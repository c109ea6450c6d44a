//! The submission path end to end: what admission takes (idempotency claim, reservation,
//! `queued` record) is given back when the job is not published, whatever the endpoint and
//! however the request ends; an idempotent retry answers with a job that exists; a retry
//! never cancels the job it replays; `fail_open` covers idempotent requests; a job queued
//! for longer than `result_ttl_s` keeps its record.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use sluice_config::{Budget, BudgetPeriod, FailPolicy, TenantPolicy};
use sluice_e2e::{ACME_KEY, Api, TestEnv, chat_body, own_nats::OwnNats, wait_until};
use sluice_sim::SimConfig;

const LONG: Duration = Duration::from_secs(40);

/// Tenant `acme` with a token budget, so every admitted job holds a reservation.
fn with_budget(env: &mut TestEnv) {
    env.cfg.governance.tenants.insert(
        "acme".into(),
        TenantPolicy {
            budget: Budget {
                period: BudgetPeriod::Month,
                tokens: 1_000_000,
                cost_usd: 0.0,
            },
            ..Default::default()
        },
    );
}

/// The keys under this test's prefix that match `pattern` (`res:*`, `idem:*`, …).
async fn keys(env: &TestEnv, pattern: &str) -> Result<Vec<String>> {
    let mut redis = redis::Client::open(env.cfg.redis.url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    Ok(redis::cmd("KEYS")
        .arg(format!("{}{pattern}", env.cfg.redis.prefix))
        .query_async(&mut redis)
        .await?)
}

/// Tokens in use in the tenant's budget (reserved or settled).
async fn budget_used(env: &TestEnv) -> Result<i64> {
    let mut redis = redis::Client::open(env.cfg.redis.url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let mut used = 0;
    for k in keys(env, "budget:{acme}:*").await? {
        let t: Option<i64> = redis::cmd("HGET")
            .arg(&k)
            .arg("tokens")
            .query_async(&mut redis)
            .await?;
        used += t.unwrap_or(0);
    }
    Ok(used)
}

/// Nothing admission took is left: no claim, no reservation, no job record, a zero budget.
async fn nothing_held(env: &TestEnv) -> Result<bool> {
    Ok(keys(env, "idem:*").await?.is_empty()
        && keys(env, "res:*").await?.is_empty()
        && keys(env, "job:*").await?.is_empty()
        && budget_used(env).await? == 0)
}

async fn post(
    env: &TestEnv,
    base: &str,
    path: &str,
    key: &str,
    body: &Value,
    timeout: Duration,
) -> Result<(u16, Value)> {
    let r = env
        .http
        .post(format!("{base}{path}"))
        .bearer_auth(ACME_KEY)
        .header("idempotency-key", key)
        .timeout(timeout)
        .json(body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

fn embedding_body() -> Value {
    json!({"model": "sim-embed", "input": "hello"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_leaves_no_claim_and_no_reservation_on_any_endpoint() -> Result<()> {
    let mut env = TestEnv::new();
    with_budget(&mut env);
    let ingest = env.ingest().await?;
    let base = ingest.base_url();
    // The stream goes away under the running ingest: every publish is refused.
    let queue = env.queue().await?;
    queue
        .jetstream()
        .delete_stream(queue.subjects().jobs_stream())
        .await?;
    let short = Duration::from_secs(20);
    for (path, body) in [
        ("/v1/jobs", chat_body("refused")),
        ("/v1/chat/completions", chat_body("refused")),
        ("/v1/embeddings", embedding_body()),
    ] {
        let (status, answer) = post(&env, &base, path, "refused-1", &body, short).await?;
        assert_eq!(status, 503, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "queue_unavailable", "{path}");
        assert!(nothing_held(&env).await?, "{path} left state behind");
    }
    // The key is free again: once the stream is back, the same key makes a job.
    queue.ensure_streams().await?;
    let (status, job) = post(
        &env,
        &base,
        "/v1/jobs",
        "refused-1",
        &chat_body("refused"),
        short,
    )
    .await?;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap_or_default();
    assert_eq!(Api::new(base.clone(), ACME_KEY).job(id).await?.0, 200);
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// An ingest on a NATS server of the test's own, with a short publish timeout.
async fn on_own_nats(env: &mut TestEnv) -> Result<OwnNats> {
    let mut nats = OwnNats::new()?;
    nats.start().await?;
    env.cfg.nats.url = nats.url();
    env.cfg.nats.publish_timeout = Duration::from_millis(1_500);
    Ok(nats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_publish_ack_gives_back_its_claim_and_reservation()
-> Result<()> {
    let mut env = TestEnv::new();
    with_budget(&mut env);
    let nats = on_own_nats(&mut env).await?;
    env.cfg.nats.publish_timeout = Duration::from_millis(10_000);
    let ingest = env.ingest().await?;
    let base = ingest.base_url();
    nats.pause(true)?;
    // The synchronous client gives up while ingest still waits for the broker.
    for (path, body) in [
        ("/v1/chat/completions", chat_body("abandoned")),
        ("/v1/jobs", chat_body("abandoned too")),
    ] {
        let gone = post(&env, &base, path, path, &body, Duration::from_millis(1_500)).await;
        assert!(
            gone.is_err(),
            "{path} answered while the broker hangs: {gone:?}"
        );
    }
    let released = wait_until(Duration::from_secs(20), || async {
        nothing_held(&env).await
    })
    .await;
    nats.pause(false)?;
    released?;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_during_a_failing_first_publish_never_gets_a_202_for_a_missing_job() -> Result<()>
{
    let mut env = TestEnv::new();
    let nats = on_own_nats(&mut env).await?;
    let ingest = env.ingest().await?;
    let base = ingest.base_url();
    let body = chat_body("exactly once, or not at all");
    nats.pause(true)?;
    let first = {
        let (env_http, base, body) = (env.http.clone(), base.clone(), body.clone());
        tokio::spawn(async move {
            let r = env_http
                .post(format!("{base}/v1/jobs"))
                .bearer_auth(ACME_KEY)
                .header("idempotency-key", "order-7")
                .json(&body)
                .send()
                .await?;
            Ok::<_, anyhow::Error>(r.status().as_u16())
        })
    };
    // The retry arrives while the first request waits for the broker's acknowledgement.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, retry) = post(&env, &base, "/v1/jobs", "order-7", &body, LONG).await?;
    let first = first.await??;
    nats.pause(false)?;
    assert_eq!(first, 503);
    assert_ne!(
        status, 202,
        "a 202 for a job the broker never took: {retry}"
    );
    assert!(matches!(status, 503 | 409), "{status} {retry}");

    // Once the broker answers again, the same key makes one job, which exists.
    let api = Api::new(base.clone(), ACME_KEY);
    let started = std::time::Instant::now();
    let id = loop {
        let (status, job) = post(&env, &base, "/v1/jobs", "order-7", &body, LONG).await?;
        if status == 202 {
            break job["id"].as_str().unwrap_or_default().to_string();
        }
        anyhow::ensure!(
            started.elapsed() < LONG,
            "no 202 after the broker came back: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(api.job(&id).await?.0, 200);
    let (status, again) = post(&env, &base, "/v1/jobs", "order-7", &body, LONG).await?;
    assert_eq!((status, again["id"].as_str()), (202, Some(id.as_str())));
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_disconnects_does_not_cancel_the_job_it_replays() -> Result<()> {
    let mut env = TestEnv::new();
    let _sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let base = ingest.base_url();
    let body = chat_body("take your time [[sim:sleep=2000]]");
    let (status, job) = post(&env, &base, "/v1/jobs", "slow-1", &body, LONG).await?;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap_or_default().to_string();
    // The same key and body on the synchronous endpoint follows that job; this caller
    // leaves before the answer.
    let gone = post(
        &env,
        &base,
        "/v1/chat/completions",
        "slow-1",
        &body,
        Duration::from_millis(500),
    )
    .await;
    assert!(gone.is_err(), "{gone:?}");
    let api = Api::new(base, ACME_KEY);
    let done = api
        .wait_status(&id, &["completed", "failed", "cancelled"], LONG)
        .await?;
    assert_eq!(done["status"], "completed", "{done}");
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_admits_requests_with_an_idempotency_key() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.redis.url = "redis://127.0.0.1:1".into();
    env.cfg.redis.command_timeout = Duration::from_millis(200);
    env.cfg.governance.on_store_error = FailPolicy::FailOpen;
    // The streams exist before ingest (it cannot report ready without Redis).
    env.queue().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ingest = sluice_ingest::Server::start(env.ingest_settings()?, listener).await?;
    let base = ingest.base_url();
    let (status, job) = post(
        &env,
        &base,
        "/v1/jobs",
        "open-1",
        &chat_body("unchecked"),
        LONG,
    )
    .await?;
    assert_eq!(status, 202, "{job}");
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_queued_longer_than_the_result_ttl_keeps_its_record() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.redis.result_ttl = Duration::from_secs(2);
    let _sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    // No worker yet: the job waits in the queue for longer than the result TTL.
    let id = api.submit_ok(&chat_body("patient")).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, job) = api.job(&id).await?;
    assert_eq!(
        (status, job["status"].as_str()),
        (200, Some("queued")),
        "{job}"
    );
    let worker = env.worker().await?;
    api.wait_status(&id, &["completed"], LONG).await?;
    // From its end on, the record is kept for the result TTL.
    let mut redis = redis::Client::open(env.cfg.redis.url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let ttl: i64 = redis::cmd("TTL")
        .arg(sluice_store::Keys::new(&env.cfg.redis.prefix).job(id.parse()?))
        .query_async(&mut redis)
        .await?;
    assert!((0..=2).contains(&ttl), "{ttl}");
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

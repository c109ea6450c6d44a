//! The edge under slow and greedy clients: connections that never finish a request head or
//! body, idle keep-alive connections and a flood of connections are closed or held off by
//! ingest's own bounds while well-behaved clients are served; probes never queue behind
//! traffic; a tenant's share of synchronous waits and event streams is bounded.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use sluice_e2e::{ACME_KEY, Api, OTHER_KEY, TestEnv, chat_body, wait_until};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Far above every configured timeout here: a connection still open after it was never
/// going to close.
const PATIENCE: Duration = Duration::from_secs(15);

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(tcp: &mut TcpStream) -> Result<String> {
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut got))
        .await
        .context("the server kept the connection open")??;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_slow_bodies_and_idle_connections_are_closed_while_others_are_served()
-> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.ingest.header_read_timeout = Duration::from_millis(500);
    env.cfg.ingest.idle_timeout = Duration::from_millis(1_000);
    env.cfg.ingest.body_read_timeout = Duration::from_millis(500);
    let ingest = env.ingest().await?;
    let addr = ingest.addr;

    // A head that never ends.
    let mut slow_head = TcpStream::connect(addr).await?;
    slow_head
        .write_all(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
        .await?;
    // A body that never ends.
    let mut slow_body = TcpStream::connect(addr).await?;
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":"
    );
    slow_body.write_all(head.as_bytes()).await?;
    // A keep-alive connection that goes quiet after one request.
    let mut idle = TcpStream::connect(addr).await?;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;

    // Meanwhile a normal client is served.
    let models = env
        .http
        .get(format!("{}/v1/models", ingest.base_url()))
        .bearer_auth(ACME_KEY)
        .send()
        .await?;
    assert_eq!(models.status(), 200);

    let answer = read_to_close(&mut slow_head).await?;
    assert!(
        answer.is_empty(),
        "nothing to answer a partial head: {answer}"
    );
    let answer = read_to_close(&mut slow_body).await?;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    let answer = read_to_close(&mut idle).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_wait_for_a_free_slot() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.ingest.max_connections = 3;
    let ingest = env.ingest().await?;
    // `env.ingest()` waited for readiness; its client's pooled connection holds a slot.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(ingest.addr).await?);
    }
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_millis(1_500))
        .build()?;
    let url = format!("{}/healthz", ingest.base_url());
    assert!(
        fresh.get(&url).send().await.is_err(),
        "a connection past the cap is not served"
    );
    held.clear();
    drop(env.http);
    let fresh = reqwest::Client::builder().timeout(PATIENCE).build()?;
    assert_eq!(fresh.get(&url).send().await?.status(), 200);
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// Starts a synchronous chat completion that waits (no worker runs the job); the answer is
/// dropped when the test ends.
fn hold_sync_wait(env: &TestEnv, base: &str, key: &str) -> tokio::task::JoinHandle<()> {
    let req = env
        .http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body("wait for me"));
    tokio::spawn(async move {
        let _ = req.send().await;
    })
}

/// The value of gauge `name` with `labels` in ingest's `/metrics`.
async fn gauge(env: &TestEnv, base: &str, series: &str) -> Result<f64> {
    let text = env
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_every_permit_waits_and_a_tenant_gets_only_its_share() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.ingest.max_concurrent_requests = 4;
    env.cfg.delivery.sync_waits_per_tenant = 2;
    env.cfg.delivery.sync_wait = Duration::from_secs(60);
    let ingest = env.ingest().await?;
    let base = ingest.base_url();
    // No worker: every synchronous request waits, holding a permit.
    let series = "sluice_ingest_slots_open{kind=\"sync_wait\"}";
    let mut held: Vec<_> = [ACME_KEY, ACME_KEY]
        .into_iter()
        .map(|k| hold_sync_wait(&env, &base, k))
        .collect();
    wait_until(PATIENCE, || async {
        Ok(gauge(&env, &base, series).await? == 2.0)
    })
    .await?;
    // A tenant past its share is told so, though permits are free.
    let r = env
        .http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(ACME_KEY)
        .json(&chat_body("one more"))
        .send()
        .await?;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "too_many_sync_waits");

    // Another tenant takes the rest: every permit is held, and the probes still answer.
    held.extend([OTHER_KEY, OTHER_KEY].map(|k| hold_sync_wait(&env, &base, k)));
    wait_until(PATIENCE, || async {
        Ok(gauge(&env, &base, series).await? == 4.0)
    })
    .await?;
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let r = env.http.get(format!("{base}{probe}")).send().await?;
        assert_eq!(r.status(), 200, "{probe} while every permit is held");
    }
    for h in held {
        h.abort();
    }
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_per_tenant_and_in_total() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.delivery.streams_per_tenant = 2;
    env.cfg.delivery.max_streams = 3;
    env.cfg.delivery.keepalive = Duration::from_secs(1);
    let ingest = env.ingest().await?;
    let (acme, other) = (
        Api::new(ingest.base_url(), ACME_KEY),
        Api::new(ingest.base_url(), OTHER_KEY),
    );
    // No worker: the jobs stay queued and their streams stay open.
    let acme_job = acme.submit_ok(&chat_body("stream me")).await?;
    let other_job = other.submit_ok(&chat_body("stream me too")).await?;
    let open = |key: &'static str, job: &str| {
        env.http
            .get(format!("{}/v1/jobs/{job}/events", ingest.base_url()))
            .bearer_auth(key)
            .send()
    };
    let a1 = open(ACME_KEY, &acme_job).await?;
    let a2 = open(ACME_KEY, &acme_job).await?;
    assert_eq!((a1.status().as_u16(), a2.status().as_u16()), (200, 200));
    let refused = open(ACME_KEY, &acme_job).await?;
    assert_eq!(refused.status(), 429, "past the tenant's share");
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await?;
    assert_eq!(body["error"]["code"], "too_many_streams");

    let o1 = open(OTHER_KEY, &other_job).await?;
    assert_eq!(o1.status(), 200, "another tenant still gets a stream");
    assert_eq!(
        open(OTHER_KEY, &other_job).await?.status(),
        429,
        "past the replica's total"
    );
    // A closed stream gives its place back.
    drop(a1);
    wait_until(PATIENCE, || async {
        Ok(open(ACME_KEY, &acme_job).await?.status() == 200)
    })
    .await?;
    drop((a2, o1));
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_range_last_event_id_is_a_400() -> Result<()> {
    let env = TestEnv::new();
    let ingest = env.ingest().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let job = api.submit_ok(&chat_body("resume me")).await?;
    let r = env
        .http
        .get(format!("{}/v1/jobs/{job}/events", ingest.base_url()))
        .bearer_auth(ACME_KEY)
        .header("last-event-id", u64::MAX.to_string())
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "invalid_value");
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_readyz_reports_eviction() -> Result<()> {
    let env = TestEnv::new();
    let ingest = env.ingest().await?;
    let r = env
        .http
        .get(format!("{}/v1/models", ingest.base_url()))
        .header("authorization", format!("bearer {ACME_KEY}"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let ready: Value = env
        .http
        .get(format!("{}/readyz", ingest.base_url()))
        .send()
        .await?
        .json()
        .await?;
    let mut redis = redis::Client::open(sluice_e2e::redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let (_, policy): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut redis)
        .await?;
    assert_eq!(ready["redis_maxmemory_policy"], policy.as_str());
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_tenant_opens_no_event_stream() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.governance.admin_key_sha256 = Some(sluice_config::hash_api_key("sk-test-admin"));
    let ingest = env.ingest().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let job = api.submit_ok(&chat_body("watch me")).await?;
    let off = env
        .http
        .put(format!("{}/v1/admin/tenants/acme", ingest.base_url()))
        .bearer_auth("sk-test-admin")
        .json(&serde_json::json!({"disabled": true}))
        .send()
        .await?;
    assert_eq!(off.status(), 200);
    let r = env
        .http
        .get(format!("{}/v1/jobs/{job}/events", ingest.base_url()))
        .bearer_auth(ACME_KEY)
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "tenant_disabled");
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

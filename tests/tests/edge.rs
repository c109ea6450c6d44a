//! The edge under slow and greedy clients: connections that never finish a request head or
//! body, idle keep-alive connections and a flood of connections are closed or held off by
//! ingest's own bounds while well-behaved clients are served; probes never queue behind
//! traffic; a tenant's share of synchronous waits and event streams is bounded.

use std::time::Duration;

use anyhow::{Context, Result};
use sluice_e2e::{ACME_KEY, TestEnv};
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
    env.cfg.ingest.header_read_timeout_ms = 500;
    env.cfg.ingest.idle_timeout_ms = 1_000;
    env.cfg.ingest.body_read_timeout_ms = 500;
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

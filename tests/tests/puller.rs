//! The long-lived pull inboxes against a real JetStream consumer.

use std::time::Duration;

use anyhow::Result;
use sluice_e2e::TestEnv;
use sluice_protocol::Priority;
use sluice_queue::{puller::Puller, setup::ConsumerSettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_returns_what_is_there_at_once_and_counts_exactly() -> Result<()> {
    let env = TestEnv::new();
    let queue = env.queue().await?;
    let settings = ConsumerSettings {
        ack_wait: Duration::from_secs(30),
        max_attempts: 3,
    };
    queue.ensure_consumer(Priority::Normal, settings).await?;
    let s = queue.subjects().clone();
    let mut puller = Puller::new(&queue, &s.jobs_stream(), &s.consumer(Priority::Normal)).await?;

    // Empty: answers at once with nothing.
    let started = std::time::Instant::now();
    assert!(puller.fetch(10, Duration::from_secs(5)).await?.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "an empty fetch must not wait for expiry"
    );

    for i in 0..3 {
        queue
            .jetstream()
            .publish(s.job(Priority::Normal, "acme"), format!("m{i}").into())
            .await?
            .await?;
    }
    // Fewer than asked: all of them, and the request ends.
    let got = puller.fetch(10, Duration::from_secs(5)).await?;
    assert_eq!(got.len(), 3);
    for m in &got {
        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    // Exactly as many as there are: no status needed to end it.
    for i in 0..2 {
        queue
            .jetstream()
            .publish(s.job(Priority::Normal, "acme"), format!("n{i}").into())
            .await?
            .await?;
    }
    let got = puller.fetch(2, Duration::from_secs(5)).await?;
    assert_eq!(got.len(), 2);
    for m in &got {
        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    // And the next request is not confused by anything left over.
    assert!(puller.fetch(5, Duration::from_secs(5)).await?.is_empty());

    Ok(())
}

/// The doorbell rings at most once per `nats.ring_gap_ms` per class however often it is
/// asked, and a ring always follows the last ask (so no stored job waits for a re-check).
#[tokio::test]
async fn rings_are_coalesced_and_the_last_ask_is_always_rung() -> Result<()> {
    for gap_ms in [1, 10] {
        let (rings, bound) = rings_for_asks_over_30_ms(gap_ms).await?;
        assert!(
            rings <= bound,
            "{rings} rings at a {gap_ms} ms gap (at most {bound})"
        );
    }
    Ok(())
}

/// Asks for a ring continuously for 30 ms; returns the rings heard and the most the gap
/// allows.
async fn rings_for_asks_over_30_ms(gap_ms: u64) -> Result<(u128, u128)> {
    use futures_util::StreamExt;
    let mut env = TestEnv::new();
    env.cfg.nats.ring_gap = Duration::from_millis(gap_ms);
    let queue = env.queue().await?;
    let mut rings = queue
        .client()
        .subscribe(queue.subjects().ring(Priority::High))
        .await?;
    queue.client().flush().await?;

    let first_ask = std::time::Instant::now();
    while first_ask.elapsed() < Duration::from_millis(30) {
        queue.ring(Priority::High).await;
        tokio::task::yield_now().await;
    }
    let last_ask = std::time::Instant::now();

    let mut heard = Vec::new();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), rings.next()).await {
        heard.push(std::time::Instant::now());
    }
    let last_heard = *heard
        .last()
        .ok_or_else(|| anyhow::anyhow!("no ring at all"))?;
    assert!(last_heard > last_ask, "a ring followed the last ask");
    // Rings are sent at least the gap apart, from the first ask until just after the last.
    let bound = (last_ask - first_ask).as_micros() / u128::from(gap_ms * 1000) + 2;
    Ok((heard.len() as u128, bound))
}

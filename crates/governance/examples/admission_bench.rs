//! Admission-path latency: what authentication, every rate limit and the budget add to a
//! request, measured against a real Redis (`SLUICE_BENCH_REDIS_URL`, default loopback).
//!
//! Each iteration does what ingest does per request: hash the presented key and look it up
//! in the key cache (a hit, as in steady state), estimate the request's tokens, then one
//! admission script with the global, tenant, key and model limits on requests and tokens,
//! loop detection and a token budget (limits set high enough never to refuse). Prints
//! p50/p90/p99/max at concurrency 1 and at `--concurrency`.
//!
//! `cargo run --release -p sluice-governance --example admission_bench -- [secs] [concurrency]`

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use sha2::{Digest, Sha256};
use sluice_config::{BudgetPeriod, GovernanceConfig, RedisConfig};
use sluice_governance::{
    Admission, Governor,
    apikeys::{KeyCache, KeyInfo},
    estimate,
};
use uuid::Uuid;

mod common;

fn config() -> GovernanceConfig {
    common::governed(BudgetPeriod::Month, 0.0)
}

async fn one(
    gov: &Governor,
    cache: &KeyCache,
    key: &str,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let info = cache
        .get(&digest)
        .flatten()
        .ok_or_else(|| anyhow::anyhow!("cache miss"))?;
    let prompt_hash = hex::encode(&Sha256::digest(body["messages"].to_string().as_bytes())[..16]);
    let a = Admission {
        job: Uuid::now_v7(),
        tenant: &info.tenant,
        key_id: &info.key_id,
        model: "gpt-4o-mini",
        agent: None,
        chain: None,
        prompt_hash: &prompt_hash,
        estimate: estimate::chat_request(body),
    };
    match gov.admit(&a, sluice_store::now_ms()).await? {
        Ok(_) => Ok(()),
        Err(r) => anyhow::bail!("refused: {r:?}"),
    }
}

async fn run(
    gov: &Governor,
    cache: &KeyCache,
    secs: f64,
    concurrency: usize,
) -> anyhow::Result<Histogram<u64>> {
    let body = json!({"model":"gpt-4o-mini","messages":[{"role":"user","content":"Summarise the admission path in one line."}],"max_tokens":64});
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (gov, cache, body) = (gov.clone(), cache.clone(), body.clone());
        set.spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            while Instant::now() < deadline {
                let t = Instant::now();
                one(&gov, &cache, "sk-bench", &body).await?;
                h.record(t.elapsed().as_micros() as u64)?;
            }
            Ok::<_, anyhow::Error>(h)
        });
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    while let Some(h) = set.join_next().await {
        total.add(h??)?;
    }
    Ok(total)
}

fn print(label: &str, h: &Histogram<u64>, secs: f64) {
    println!(
        "{label:<16} n={:<8} rate={:>8.0}/s p50={:>5}us p90={:>5}us p99={:>5}us max={:>6}us",
        h.len(),
        h.len() as f64 / secs,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.max()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let concurrency: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(16);
    let redis = RedisConfig {
        url: std::env::var("SLUICE_BENCH_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        prefix: format!("bench{}:", Uuid::now_v7().simple()),
        ..RedisConfig::default()
    };
    let gov = Governor::new(sluice_store::Store::new(&redis)?, config());
    let cache = KeyCache::new(Duration::from_secs(3600), 1000);
    let digest: [u8; 32] = Sha256::digest(b"sk-bench").into();
    cache.put(
        digest,
        Some(KeyInfo {
            tenant: "bench".into(),
            key_id: "k1".into(),
            created_at_ms: 0,
            expires_at_ms: None,
        }),
    );
    // Warm the pool and the script cache.
    run(&gov, &cache, 1.0, concurrency).await?;
    println!(
        "admission path (key lookup + 8 rate limits + loop check + budget), one Redis round trip"
    );
    print("concurrency 1", &run(&gov, &cache, secs, 1).await?, secs);
    print(
        &format!("concurrency {concurrency}"),
        &run(&gov, &cache, secs, concurrency).await?,
        secs,
    );
    Ok(())
}

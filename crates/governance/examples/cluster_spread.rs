//! How a Redis Cluster shares the store's work: runs `jobs` governed jobs (idempotency claim,
//! admission, record created, in-flight lease, started, completed, settlement: every Redis
//! call of a job) spread over `tenants` tenants, and prints for each primary its Redis CPU
//! per job (`INFO cpu`, user + sys), its share of the commands (`INFO commandstats`) and of
//! the keys. `SLUICE_BENCH_REDIS_URL` names the cluster's seed nodes (comma-separated); run
//! it against a private cluster only: every client's work counts.
//!
//! `cargo run --release -p sluice-governance --example cluster_spread -- [jobs] [tenants]`

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use futures_util::future::try_join_all;
use sluice_config::{BudgetPeriod, Limit, RedisConfig};
use sluice_governance::{Admission, Governor, estimate::Usage};
use sluice_protocol::{JobEnvelope, JobKind, Priority, SCHEMA_VERSION};
use sluice_store::Store;
use uuid::Uuid;

mod common;

/// One primary's counters: CPU seconds (user + sys), commands, keys.
async fn node_stats(url: &str) -> anyhow::Result<(f64, u64, u64)> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let (mut cpu, mut calls) = (0.0, 0);
    for line in info.lines() {
        if let Some(v) = line
            .strip_prefix("used_cpu_user:")
            .or_else(|| line.strip_prefix("used_cpu_sys:"))
        {
            cpu += v.trim().parse::<f64>().unwrap_or(0.0);
        }
        if line.starts_with("cmdstat_") {
            for part in line.split([':', ',']) {
                if let Some(v) = part.strip_prefix("calls=") {
                    calls += v.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
    Ok((cpu, calls, keys))
}

/// The primaries of the cluster, as `redis://host:port` URLs (from `CLUSTER NODES`).
async fn primaries(seed: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = redis::Client::open(seed)?
        .get_multiplexed_async_connection()
        .await?;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await?;
    let mut out: Vec<String> = nodes
        .lines()
        .filter(|l| l.contains("master"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|a| a.split('@').next())
        .map(|a| format!("redis://{a}"))
        .collect();
    out.sort();
    Ok(out)
}

fn envelope(tenant: &str) -> JobEnvelope {
    JobEnvelope {
        schema: SCHEMA_VERSION,
        id: Uuid::now_v7(),
        tenant: tenant.into(),
        priority: Priority::Normal,
        kind: JobKind::ChatCompletion,
        model: "m".into(),
        request: b"{}".to_vec(),
        created_at_ms: sluice_store::now_ms(),
        deadline_ms: None,
        replays: 0,
        traceparent: None,
        metadata: BTreeMap::new(),
        stream: false,
        reserved: true,
        cache: None,
        reservation: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let tenants: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(100)
        .max(1);
    let url = std::env::var("SLUICE_BENCH_REDIS_URL")?;
    let redis = RedisConfig {
        url: url.clone(),
        cluster: true,
        prefix: format!("cs{}:", Uuid::now_v7().simple()),
        command_timeout: std::time::Duration::from_secs(60),
        ..RedisConfig::default()
    };
    let store = Store::new(&redis)?;
    // Issue 17's realistic configuration (tenant, key and model limits, a daily budget, loop
    // detection, an in-flight cap), with no global limit: a cluster refuses one.
    let mut cfg = common::governed(BudgetPeriod::Day, 1e12);
    cfg.global = Limit::default();
    cfg.max_in_flight_per_tenant = 1_000_000;
    let gov = Governor::new(store.clone(), cfg);
    let nodes = primaries(url.split(',').next().unwrap_or_default().trim()).await?;
    let names: Vec<String> = (0..tenants).map(|t| format!("t{t}")).collect();
    let jobs: Vec<JobEnvelope> = (0..n).map(|i| envelope(&names[i % tenants])).collect();
    let usage = Usage {
        prompt_tokens: 20,
        completion_tokens: 30,
    };
    let result = br#"{"usage":{"prompt_tokens":20,"completion_tokens":30}}"#;
    let before = try_join_all(nodes.iter().map(|u| node_stats(u))).await?;
    let now = sluice_store::now_ms();
    let started = std::time::Instant::now();
    let (store, gov) = (&store, &gov);
    for (c, chunk) in jobs.chunks(64).enumerate() {
        try_join_all(chunk.iter().enumerate().map(|(i, env)| async move {
            let i = c * 64 + i;
            let t = env.tenant.as_str();
            gov.claim_idempotency(t, &format!("k{i}"), "body", env.id, 30)
                .await?;
            let a = Admission {
                job: env.id,
                tenant: t,
                key_id: "k1",
                model: "m",
                agent: None,
                chain: None,
                prompt_hash: &format!("h{}", i % 1000),
                estimate: usage,
            };
            let d = gov
                .admit(&a, now)
                .await?
                .map_err(|r| anyhow::anyhow!("{r:?}"))?;
            store.create_queued(env.into()).await?;
            gov.acquire_in_flight(t, env.id, 30_000, now).await?;
            store.record_started(env, 1).await?;
            store.record_completed(env, result).await?;
            gov.release_in_flight(t, env.id).await?;
            gov.settle(t, env.id, "m", usage, now, d.reservation.as_ref())
                .await?;
            anyhow::Ok(())
        }))
        .await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let after = try_join_all(nodes.iter().map(|u| node_stats(u))).await?;
    let total_calls: u64 = before.iter().zip(&after).map(|(b, a)| a.1 - b.1).sum();
    println!(
        "{n} jobs over {tenants} tenants in {secs:.1} s ({:.0} jobs/s)",
        n as f64 / secs
    );
    println!("primary                   cpu µs/job  commands  share  keys");
    let mut cpu_total = 0.0;
    for ((u, b), a) in nodes.iter().zip(&before).zip(&after) {
        let cpu = (a.0 - b.0) * 1e6 / n as f64;
        cpu_total += cpu;
        let calls = a.1 - b.1;
        println!(
            "{u:<25} {cpu:>10.1} {calls:>9} {:>5.1}% {:>5}",
            100.0 * calls as f64 / total_calls.max(1) as f64,
            a.2
        );
    }
    println!("all primaries             {cpu_total:>10.1}");
    Ok(())
}

//! Where a governed job's Redis time goes: each Redis call one job makes from admission to
//! settlement, run for `N` jobs phase by phase against a Redis of its own
//! (`SLUICE_BENCH_REDIS_URL`; its statistics are reset), with Redis's own accounting
//! (`INFO commandstats`, `usec`) read after each phase. The configuration is the realistic
//! one of issue 17: tenant, key and model limits on requests and tokens, a daily token and
//! cost budget, loop detection and an in-flight cap. Prints µs of Redis time per job per
//! phase. Run it against a private Redis only: every client's commands count.
//!
//! `cargo run --release -p sluice-governance --example job_redis_cost -- [jobs]`

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use futures_util::future::try_join_all;
use sluice_config::{BudgetPeriod, GovernanceConfig, Limit, Price, RedisConfig};
use sluice_governance::{Admission, Governor, estimate::Usage};
use sluice_protocol::{JobEnvelope, JobKind, Priority, SCHEMA_VERSION};
use sluice_store::Store;
use uuid::Uuid;

mod common;

/// Issue 17's realistic configuration: the shared governed one (limits, loop detection, a
/// daily token and cost budget) with a price for the model and an in-flight cap.
fn config() -> GovernanceConfig {
    let mut cfg = common::governed(BudgetPeriod::Day, 1e12);
    // Tenant, key and model limits; no global one.
    cfg.global = Limit::default();
    cfg.max_in_flight_per_tenant = 1_000_000;
    cfg.prices.insert(
        "m".into(),
        Price {
            prompt_per_mtok: 0.15,
            completion_per_mtok: 0.6,
        },
    );
    cfg
}

fn envelope(id: Uuid) -> JobEnvelope {
    JobEnvelope {
        schema: SCHEMA_VERSION,
        id,
        tenant: "bench".into(),
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
    }
}

/// Total `usec` and calls over every command since the last reset, then resets.
async fn take_stats(store: &Store) -> (u64, u64) {
    let mut conn = store.conn().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (mut usec, mut calls) = (0, 0);
    for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        for part in line.split([':', ',']) {
            if let Some(v) = part.strip_prefix("usec=") {
                usec += v.parse::<u64>().unwrap_or(0);
            }
            if let Some(v) = part.strip_prefix("calls=") {
                calls += v.parse::<u64>().unwrap_or(0);
            }
        }
    }
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    (usec, calls)
}

/// Runs `call` for every job, 64 at a time, and returns Redis's time and calls for them.
async fn run<'a, F, Fut, T, E>(jobs: &'a [JobEnvelope], call: F) -> anyhow::Result<(u64, u64)>
where
    F: Fn(usize, &'a JobEnvelope) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let store = STORE.get().ok_or_else(|| anyhow::anyhow!("no store"))?;
    for (c, chunk) in jobs.chunks(64).enumerate() {
        try_join_all(chunk.iter().enumerate().map(|(i, env)| {
            let f = call(c * 64 + i, env);
            async move { f.await.map(|_| ()).map_err(|e| anyhow::anyhow!("{e}")) }
        }))
        .await?;
    }
    Ok(take_stats(store).await)
}

static STORE: std::sync::OnceLock<Store> = std::sync::OnceLock::new();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let redis = RedisConfig {
        url: std::env::var("SLUICE_BENCH_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        prefix: format!("jc{}:", Uuid::now_v7().simple()),
        command_timeout_ms: 60_000,
        ..RedisConfig::default()
    };
    let store = Store::new(&redis)?;
    let _ = STORE.set(store.clone());
    let gov = Governor::new(store.clone(), config());
    let jobs: &'static [JobEnvelope] =
        Vec::leak((0..n).map(|_| envelope(Uuid::now_v7())).collect());
    let usage = Usage {
        prompt_tokens: 20,
        completion_tokens: 30,
    };
    take_stats(&store).await;
    let now = sluice_store::now_ms();
    let (store, gov) = (&store, &gov);
    let mut rows = Vec::new();
    let result = br#"{"usage":{"prompt_tokens":20,"completion_tokens":30}}"#;
    rows.push((
        "idempotency claim",
        run(jobs, |i, env| async move {
            gov.claim_idempotency("bench", &format!("k{i}"), "body", env.id, 30)
                .await
        })
        .await?,
    ));
    rows.push((
        "admission",
        run(jobs, |i, env| async move {
            let a = Admission {
                job: env.id,
                tenant: "bench",
                key_id: "k1",
                model: "m",
                agent: None,
                chain: None,
                prompt_hash: &format!("h{}", i % 1000),
                estimate: usage,
            };
            gov.admit(&a, now).await
        })
        .await?,
    ));
    rows.push((
        "record created",
        run(jobs, |_, env| store.create_queued(env.into())).await?,
    ));
    // Acquired and released per job, as a worker does around the call, so at most 64 leases
    // are held at once (the acquire script reads every lease the tenant holds).
    let lease = |_, env: &'static JobEnvelope| async move {
        gov.acquire_in_flight("bench", env.id, 30_000, now).await?;
        gov.release_in_flight("bench", env.id).await
    };
    rows.push(("in-flight lease", run(jobs, lease).await?));
    rows.push((
        "record started",
        run(jobs, |_, env| store.record_started(env, 1)).await?,
    ));
    rows.push((
        "record completed",
        run(jobs, |_, env| store.record_completed(env, result)).await?,
    ));
    rows.push((
        "settlement",
        run(jobs, |_, env| {
            gov.settle(&env.tenant, env.id, "m", usage, now)
        })
        .await?,
    ));
    println!("phase                 µs/job  calls/job");
    let mut total = 0.0;
    for (name, (usec, calls)) in rows {
        let per = usec as f64 / n as f64;
        total += per;
        // The statistics read itself is one call per phase.
        println!(
            "{name:<20} {per:>7.1} {:>9.2}",
            (calls - 1) as f64 / n as f64
        );
    }
    println!("total                {total:>7.1}");
    Ok(())
}

//! Where a governed job's Redis time goes: each Redis call one job makes from admission to
//! settlement, run for `N` jobs phase by phase against a Redis of its own
//! (`SLUICE_BENCH_REDIS_URL`; its SLOWLOG is set to log every call), with Redis's own
//! accounting (each call's time in the SLOWLOG) read after each phase. The configuration is the realistic
//! one of issue 17: tenant, key and model limits on requests and tokens, a daily token and
//! cost budget, loop detection and an in-flight cap. Prints µs of Redis time per job per
//! phase. Run it against a private Redis only: every client's commands count. (Redis's
//! execution time only: reading and writing the sockets, about as much again, is not in it.)
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
        reservation: None,
    }
}

/// Total `usec` and calls of the commands Redis ran since the last reset (its SLOWLOG at
/// threshold 0: top-level calls only, so a script's own commands are not counted twice),
/// then resets.
async fn take_stats(store: &Store) -> (u64, u64) {
    let mut conn = store.conn().await.unwrap();
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (mut usec, mut calls) = (0, 0);
    for entry in entries {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let command = match fields.get(3) {
            Some(redis::Value::Array(args)) => match args.first() {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).to_lowercase(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        // A command run by a script is logged as well, with no client address.
        let inner = matches!(fields.get(4), Some(redis::Value::BulkString(a)) if a == b"?:0");
        if command == "slowlog" || inner {
            continue;
        }
        if let Some(redis::Value::Int(d)) = fields.get(2) {
            usec += u64::try_from(*d).unwrap_or(0);
            calls += 1;
        }
    }
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
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
        command_timeout: std::time::Duration::from_secs(60),
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
    {
        let mut conn = store.conn().await?;
        for (name, value) in [
            ("slowlog-max-len", "10000000"),
            ("slowlog-log-slower-than", "0"),
        ] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(value)
                .query_async(&mut conn)
                .await?;
        }
    }
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
    // Acquired per job, as a worker does before the call; the settlement frees it. Every
    // job's lease is held until then, so the tenant holds `N` at once.
    let lease = |_, env: &'static JobEnvelope| async move {
        gov.acquire_in_flight("bench", env.id, 30_000, now).await
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
            gov.settle_and_release("bench", env.id, "m", usage, now, None)
        })
        .await?,
    ));
    println!("phase                 µs/job  calls/job");
    let mut total = 0.0;
    for (name, (usec, calls)) in rows {
        let per = usec as f64 / n as f64;
        total += per;
        println!("{name:<20} {per:>7.1} {:>9.2}", calls as f64 / n as f64);
    }
    println!("total                {total:>7.1}");
    Ok(())
}

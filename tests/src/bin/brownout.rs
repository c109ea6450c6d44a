//! Brownout benchmark: jobs per second and upstream calls per job while a model pool's
//! deployments fail. Prints figures; asserts nothing.
//!
//! Three simulators form the pool of `sim-small`; jobs are submitted open-loop at a fixed
//! rate through the HTTP API. Two scenarios:
//! - `brownout`: after a healthy quarter, deployment `a` browns out (50% 5xx, slower) and
//!   `b` answers 429 with `Retry-After` on 30% of calls; `c` stays healthy.
//! - `outage`: all three answer 5xx during the middle third of the load.
//!
//! Each runs with the resilience policy (breaker, retries on other deployments, retry
//! budget, degradation message on the last attempt) and with it switched off (one call per
//! attempt, no breaker, unlimited budget; retries only by broker redelivery). The balancer's
//! latency and 429 feedback stay on in both.
//!
//! ```text
//! SLUICE_TEST_NATS_URL=nats://127.0.0.1:4222 SLUICE_TEST_REDIS_URL=redis://127.0.0.1:6379 \
//!   cargo run --release -p sluice-e2e --bin brownout -- 40 10
//! ```
//! Arguments: jobs per second (default 40), seconds of load per run (default 10).

use std::time::{Duration, Instant};

use anyhow::Result;
use sluice_config::{DeploymentConfig, HedgeConfig, PoolConfig};
use sluice_e2e::{ACME_KEY, Api, TestEnv, chat_body};
use sluice_sim::{Latency, SimConfig, SimHandle};

fn deployment(name: &str, sim: &SimHandle) -> DeploymentConfig {
    DeploymentConfig {
        max_concurrency: 64,
        timeout: Duration::from_secs(30),
        ..DeploymentConfig::new(name, &sim.base_url())
    }
}

struct Figures {
    jobs: usize,
    completed: usize,
    failed: usize,
    degraded: usize,
    upstream_calls: u64,
    wall: Duration,
    p50_ms: u64,
    p95_ms: u64,
}

async fn scenario(outage: bool, resilient: bool, rate: f64, seconds: f64) -> Result<Figures> {
    let mut env = TestEnv::new();
    let healthy = SimConfig {
        latency: Latency {
            p50_ms: 40.0,
            p95_ms: 120.0,
            p99_ms: 250.0,
        },
        ..SimConfig::default()
    };
    let sims = [
        sluice_sim::start(healthy.clone(), "127.0.0.1:0".parse()?).await?,
        sluice_sim::start(healthy.clone(), "127.0.0.1:0".parse()?).await?,
        sluice_sim::start(healthy.clone(), "127.0.0.1:0".parse()?).await?,
    ];
    env.cfg.models.pools = vec![PoolConfig {
        alias: "sim-small".into(),
        deployments: vec![
            deployment("a", &sims[0]),
            deployment("b", &sims[1]),
            deployment("c", &sims[2]),
        ],
        fallback_model: None,
        degraded_message: Some("busy".into()),
        hedge: HedgeConfig::default(),
    }];
    env.cfg.worker.concurrency = 64;
    env.cfg.worker.max_attempts = 5;
    if !resilient {
        env.cfg.models.max_calls_per_attempt = 1;
        env.cfg.models.breaker.min_calls = u32::MAX;
        env.cfg.models.retry_budget_ratio = 1_000.0;
        env.cfg.models.retry_budget_min_per_s = 1_000.0;
    }
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let total = (rate * seconds) as usize;
    let every = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut ids = Vec::with_capacity(total);
    let mut tick = tokio::time::interval(every);
    for i in 0..total {
        tick.tick().await;
        if outage && i == total / 3 {
            for s in &sims {
                s.set_config(SimConfig {
                    error_rate: 1.0,
                    ..healthy.clone()
                })?;
            }
        }
        if outage && i == 2 * total / 3 {
            for s in &sims {
                s.set_config(healthy.clone())?;
            }
        }
        if !outage && i == total / 4 {
            sims[0].set_config(SimConfig {
                error_rate: 0.5,
                latency: Latency {
                    p50_ms: 200.0,
                    p95_ms: 800.0,
                    p99_ms: 1500.0,
                },
                ..SimConfig::default()
            })?;
            sims[1].set_config(SimConfig {
                rate_429: 0.3,
                retry_after_s: 1,
                ..healthy.clone()
            })?;
        }
        match api
            .submit_ok(&chat_body(&format!("brownout job {i}")))
            .await
        {
            Ok(id) => ids.push(id),
            Err(e) => eprintln!("submit failed: {e}"),
        }
    }
    let (mut completed, mut failed, mut degraded) = (0, 0, 0);
    let mut latencies = Vec::with_capacity(ids.len());
    for id in &ids {
        let job = api
            .wait_status(id, &["completed", "failed"], Duration::from_secs(120))
            .await?;
        if job["status"] == "completed" {
            completed += 1;
            if job["result"]["degraded"] == true {
                degraded += 1;
            }
        } else {
            failed += 1;
        }
        let t = &job["timings_ms"];
        let end = t["completed_at"]
            .as_u64()
            .or(t["failed_at"].as_u64())
            .unwrap_or(0);
        latencies.push(end.saturating_sub(t["queued_at"].as_u64().unwrap_or(end)));
    }
    let wall = start.elapsed();
    latencies.sort_unstable();
    let q = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let upstream_calls = sims
        .iter()
        .map(|s| s.counters().per_endpoint.chat_completions)
        .sum();
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    // Leave the broker as found: streams reserve their max_bytes of JetStream storage.
    let queue = env.queue().await?;
    for name in [
        queue.subjects().jobs_stream(),
        queue.subjects().dlq_stream(),
    ] {
        let _ = queue.jetstream().delete_stream(name).await;
    }
    for s in sims {
        s.shutdown().await;
    }
    Ok(Figures {
        jobs: ids.len(),
        completed,
        failed,
        degraded,
        upstream_calls,
        wall,
        p50_ms: q(0.5),
        p95_ms: q(0.95),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let rate: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(40.0);
    let seconds: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10.0);
    println!("{rate} jobs/s for {seconds} s per run; 3 deployments; max_attempts 5");
    println!(
        "{:<9} {:<10} {:>6} {:>9} {:>6} {:>8} {:>10} {:>13} {:>8} {:>8}",
        "scenario",
        "policy",
        "jobs",
        "completed",
        "failed",
        "degraded",
        "jobs/s",
        "calls per job",
        "p50 ms",
        "p95 ms"
    );
    for (scenario_name, outage, name, resilient) in [
        ("brownout", false, "resilient", true),
        ("brownout", false, "naive", false),
        ("outage", true, "resilient", true),
        ("outage", true, "naive", false),
    ] {
        let f = scenario(outage, resilient, rate, seconds).await?;
        println!(
            "{:<9} {:<10} {:>6} {:>9} {:>6} {:>8} {:>10.1} {:>13.2} {:>8} {:>8}",
            scenario_name,
            name,
            f.jobs,
            f.completed,
            f.failed,
            f.degraded,
            f.completed as f64 / f.wall.as_secs_f64(),
            f.upstream_calls as f64 / f.jobs.max(1) as f64,
            f.p50_ms,
            f.p95_ms
        );
    }
    Ok(())
}

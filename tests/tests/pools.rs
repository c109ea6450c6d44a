//! Provider pools under fault: several simulators as the deployments of one model alias.
//! A 429 with `Retry-After` sidelines a deployment; a brownout opens its breaker; the retry
//! budget caps upstream calls in a full outage; hedging beats a slow primary and cancels it;
//! the fallback chain ends in a flagged degraded answer; `model: "auto"` is routed.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use sluice_config::{DeploymentConfig, HedgeConfig, PoolConfig};
use sluice_e2e::{ACME_KEY, Api, TestEnv, chat_body, wait_until};
use sluice_sim::{Latency, SimConfig, SimHandle};

const LONG: Duration = Duration::from_secs(40);

async fn sim(cfg: SimConfig) -> Result<SimHandle> {
    Ok(sluice_sim::start(cfg, "127.0.0.1:0".parse()?).await?)
}

fn deployment(name: &str, sim: &SimHandle, weight: u32) -> DeploymentConfig {
    DeploymentConfig {
        weight,
        max_concurrency: 64,
        timeout: Duration::from_secs(30),
        ..DeploymentConfig::new(name, &sim.base_url())
    }
}

fn pool(alias: &str, deployments: Vec<DeploymentConfig>) -> PoolConfig {
    PoolConfig {
        alias: alias.into(),
        deployments,
        fallback_model: None,
        degraded_message: None,
        hedge: HedgeConfig::default(),
    }
}

async fn complete_all(api: &Api, ids: &[String]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for id in ids {
        out.push(api.wait_status(id, &["completed", "failed"], LONG).await?);
    }
    Ok(out)
}

fn metric(name_and_labels: &str) -> f64 {
    sluice_telemetry::render_metrics()
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_answering_429_gets_no_traffic_until_retry_after_and_jobs_complete_on_another()
-> Result<()> {
    let mut env = TestEnv::new();
    let limited = sim(SimConfig {
        rate_429: 1.0,
        retry_after_s: 60,
        ..SimConfig::default()
    })
    .await?;
    let healthy = sim(SimConfig::default()).await?;
    // The heavy weight makes the limited deployment the balancer's first choice.
    env.cfg.models.pools = vec![pool(
        "sim-small",
        vec![
            deployment("limited", &limited, 100),
            deployment("healthy", &healthy, 1),
        ],
    )];
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let first = api.submit_ok(&chat_body("first")).await?;
    let job = api
        .wait_status(&first, &["completed", "failed"], LONG)
        .await?;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(
        job["attempts"], 1,
        "retried on the other deployment within the attempt"
    );
    assert_eq!(limited.counters().injected_429, 1);

    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(api.submit_ok(&chat_body(&format!("job {i}"))).await?);
    }
    for job in complete_all(&api, &ids).await? {
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
    }
    assert_eq!(
        limited.counters().total_requests,
        1,
        "no traffic inside the Retry-After window"
    );
    assert_eq!(
        healthy.counters().per_model.get("sim-small").copied(),
        Some(11)
    );

    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brownout_opens_the_breaker_and_jobs_still_complete_via_the_pool() -> Result<()> {
    let mut env = TestEnv::new();
    let brownout = sim(SimConfig {
        error_rate: 0.7,
        seed: Some(7),
        ..SimConfig::default()
    })
    .await?;
    let healthy = sim(SimConfig::default()).await?;
    env.cfg.models.pools = vec![pool(
        "sim-small",
        vec![
            deployment("brownout", &brownout, 100),
            deployment("healthy2", &healthy, 1),
        ],
    )];
    env.cfg.models.breaker.min_calls = 4;
    env.cfg.models.breaker.open_for = Duration::from_secs(60);
    env.cfg.models.retry_budget_ratio = 1.0;
    env.cfg.worker.concurrency = 2;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(api.submit_ok(&chat_body(&format!("brownout {i}"))).await?);
    }
    for job in complete_all(&api, &ids).await? {
        assert_eq!(job["status"], "completed", "{job}");
    }
    assert_eq!(
        metric("sluice_breaker_opened_total{deployment=\"brownout\"}"),
        1.0
    );
    assert_eq!(
        metric("sluice_breaker_state{deployment=\"brownout\"}"),
        1.0,
        "still open"
    );
    let to_brownout = brownout.counters().total_requests;
    assert!(
        to_brownout < 20,
        "the open breaker kept traffic away: {to_brownout} calls"
    );
    assert_eq!(
        healthy.counters().total_requests + to_brownout - brownout.counters().injected_errors,
        40
    );

    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_upstream_calls_during_a_full_outage() -> Result<()> {
    let mut env = TestEnv::new();
    let down = env
        .sim(SimConfig {
            error_rate: 1.0,
            ..SimConfig::default()
        })
        .await?;
    env.cfg.worker.max_attempts = 5;
    env.cfg.models.retry_budget_ratio = 0.1;
    env.cfg.models.retry_budget_min_per_s = 0.0;
    env.cfg.models.retry_budget_window = Duration::from_secs(600);
    // Keep the breaker out of it: this test is about the budget alone.
    env.cfg.models.breaker.min_calls = 100_000;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(api.submit_ok(&chat_body(&format!("outage {i}"))).await?);
    }
    for job in complete_all(&api, &ids).await? {
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["error"]["code"], "max_attempts_exceeded");
    }
    let calls = down.counters().total_requests;
    // Without the budget: 20 jobs × 5 attempts = 100 calls.
    assert!(
        (20..=22).contains(&calls),
        "20 first calls plus at most 10% retries, got {calls}"
    );
    assert!(metric("sluice_retry_budget_exhausted_total") > 0.0);

    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_completes_a_job_whose_primary_is_slow_and_cancels_the_loser() -> Result<()> {
    let mut env = TestEnv::new();
    let slow = sim(SimConfig {
        latency: Latency {
            p50_ms: 8000.0,
            p95_ms: 8000.0,
            p99_ms: 8000.0,
        },
        ..SimConfig::default()
    })
    .await?;
    let fast = sim(SimConfig::default()).await?;
    let mut p = pool(
        "sim-small",
        vec![deployment("slow", &slow, 100), deployment("fast", &fast, 1)],
    );
    p.hedge = HedgeConfig {
        enabled: true,
        after: Duration::from_millis(200),
        max_share: 0.5,
    };
    env.cfg.models.pools = vec![p];
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let started = std::time::Instant::now();
    let id = api.submit_ok(&chat_body("hedge me")).await?;
    let job = api.wait_status(&id, &["completed", "failed"], LONG).await?;
    assert_eq!(job["status"], "completed", "{job}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the hedge answered before the slow primary"
    );
    assert_eq!(fast.counters().completed, 1);
    // The losing call on the slow deployment was cancelled, not waited for.
    wait_until(LONG, || async { Ok(slow.counters().aborted == 1) }).await?;
    assert_eq!(slow.counters().completed, 0);
    assert_eq!(metric("sluice_hedges_total{event=\"hedge_won\"}"), 1.0);

    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_chain_goes_to_the_fallback_model_then_a_stale_answer_then_a_degraded_message()
-> Result<()> {
    let mut env = TestEnv::new();
    let primary = sim(SimConfig::default()).await?;
    let secondary = sim(SimConfig::default()).await?;
    let mut small = pool("sim-small", vec![deployment("primary", &primary, 1)]);
    small.fallback_model = Some("sim-large".into());
    small.degraded_message = Some("We are busy; please try again shortly.".into());
    env.cfg.models.pools = vec![
        small,
        pool("sim-large", vec![deployment("secondary", &secondary, 1)]),
    ];
    env.cfg.models.retry_budget_ratio = 1.0;
    env.cfg.worker.max_attempts = 2;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let down = SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    };

    let fresh = api
        .wait_status(
            &api.submit_ok(&chat_body("remember me")).await?,
            &["completed", "failed"],
            LONG,
        )
        .await?;
    assert_eq!(fresh["result"]["model"], "sim-small", "{fresh}");
    assert!(fresh["result"].get("degraded").is_none());

    primary.set_config(down.clone())?;
    let job = api
        .wait_status(
            &api.submit_ok(&chat_body("fall back")).await?,
            &["completed", "failed"],
            LONG,
        )
        .await?;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(
        job["result"]["model"], "sim-large",
        "answered by the fallback model: {job}"
    );
    assert!(job["result"].get("degraded").is_none());

    secondary.set_config(down)?;
    let job = api
        .wait_status(
            &api.submit_ok(&chat_body("remember me")).await?,
            &["completed", "failed"],
            LONG,
        )
        .await?;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["result"]["degraded"], true);
    assert_eq!(job["result"]["stale"], true);
    assert_eq!(
        job["result"]["choices"][0]["message"]["content"],
        fresh["result"]["choices"][0]["message"]["content"]
    );
    assert_eq!(job["attempts"], 2, "stale answers only on the last attempt");

    let job = api
        .wait_status(
            &api.submit_ok(&chat_body("never seen")).await?,
            &["completed", "failed"],
            LONG,
        )
        .await?;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["result"]["degraded"], true);
    assert_eq!(job["result"]["degraded_reason"], "degradation_message");
    assert_eq!(
        job["result"]["choices"][0]["message"]["content"],
        "We are busy; please try again shortly."
    );

    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stale_answer_comes_from_the_shared_cache_so_any_worker_serves_it() -> Result<()> {
    let mut env = TestEnv::new();
    let upstream = sim(SimConfig::default()).await?;
    let mut small = pool("sim-small", vec![deployment("only", &upstream, 1)]);
    small.degraded_message = Some("We are busy; please try again shortly.".into());
    env.cfg.models.pools = vec![small];
    env.cfg.worker.max_attempts = 1;
    // Entries are fresh for 1 s and kept for the stale window after.
    env.cfg.cache.ttl = Duration::from_secs(1);
    env.cfg.cache.stale = Duration::from_secs(600);
    let ingest = env.ingest().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let body = json!({ "model": "sim-small", "temperature": 0, "max_tokens": 16,
                       "messages": [{ "role": "user", "content": sluice_e2e::unique("shared stale ") }] });
    let post = |headers: &'static [(&'static str, &'static str)]| {
        let mut req = api
            .http
            .post(format!("{}/v1/chat/completions", api.base))
            .bearer_auth(&api.key)
            .json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        async move {
            let resp = req.send().await?;
            let cache = resp
                .headers()
                .get("x-sluice-cache")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            anyhow::Ok((resp.status().as_u16(), cache, resp.json::<Value>().await?))
        }
    };

    // One worker answers and stores the entry, then goes away with its own map.
    let first_worker = env.worker().await?;
    let (status, cache, fresh) = post(&[]).await?;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")), "{fresh}");
    first_worker.shutdown().await;

    // Another worker, the upstream down, the entry expired but kept: the chain's stale
    // answer is the shared entry (this worker never saw the request).
    let _worker = env.worker().await?;
    upstream.set_config(SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    })?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (status, _, stale) = post(&[("cache-control", "no-cache")]).await?;
    assert_eq!(status, 200, "{stale}");
    assert_eq!(stale["degraded"], true, "{stale}");
    assert_eq!(stale["degraded_reason"], "stale_cache", "{stale}");
    assert_eq!(
        stale["choices"][0]["message"]["content"],
        fresh["choices"][0]["message"]["content"]
    );
    // The degraded answer did not replace the entry: a plain read still gets the original.
    let (status, cache, again) = post(&[]).await?;
    assert_eq!((status, cache.as_deref()), (200, Some("stale")));
    assert_eq!(again, fresh, "the stored answer, not the degraded one");
    assert!(metric(r#"sluice_stale_answer_lookups_total{result="hit"}"#) >= 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_auto_is_routed_by_rules_and_the_decision_is_recorded() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let ask = |text: &str| json!({ "model": "auto", "messages": [{ "role": "user", "content": text }], "max_tokens": 16 });
    let simple = api
        .wait_status(
            &api.submit_ok(&ask("hi there")).await?,
            &["completed", "failed"],
            LONG,
        )
        .await?;
    assert_eq!(simple["result"]["model"], "sim-small", "{simple}");
    assert_eq!(simple["route"]["tier"], "cheap");
    assert_eq!(simple["route"]["rule"], "default");
    assert_eq!(
        simple["model"], "auto",
        "the job keeps what the client asked for"
    );

    let hard = api
        .wait_status(
            &api.submit_ok(&ask("Prove that there are infinitely many primes."))
                .await?,
            &["completed", "failed"],
            LONG,
        )
        .await?;
    assert_eq!(hard["result"]["model"], "sim-large", "{hard}");
    assert_eq!(hard["route"]["tier"], "strong");
    assert_eq!(hard["route"]["rule"], "keyword");
    assert_eq!(sim.counters().per_model.get("sim-large").copied(), Some(1));
    assert_eq!(
        metric("sluice_route_decisions_total{tier=\"strong\",rule=\"keyword\"}"),
        1.0
    );

    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

//! Observability under a scripted workload: every metric operators alert on appears on
//! `/metrics` of ingest and of a worker process with plausible values, and the live
//! dashboard renders in headless Chromium with numbers that move (a screenshot is saved to
//! `target/artefacts/dashboard.png`).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sluice_config::{Budget, TenantPolicy};
use sluice_e2e::{ACME_KEY, Api, OTHER_KEY, TestEnv, chat_body, receiver::Receiver, wait_until};
use sluice_sim::SimConfig;

const LONG: Duration = Duration::from_secs(60);
const ADMIN: &str = "sk-test-admin-dashboard";

/// A metric check: name, labels the series must carry, lowest and highest plausible value.
type Check<'a> = (&'a str, &'a [(&'a str, &'a str)], f64, f64);

/// Sum of the samples of `name` whose labels include every `want` pair.
fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            continue;
        }
        if want
            .iter()
            .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")))
            && let Ok(v) = value.parse::<f64>()
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

async fn text(http: &reqwest::Client, url: &str) -> Result<String> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A budget for `acme` (so the used-ratio gauge has a subject) and a rate limit that
/// `other`'s burst runs into.
fn governed(env: &mut TestEnv) {
    env.cfg.governance.admin_key_sha256 = Some(sluice_config::hash_api_key(ADMIN));
    env.cfg.governance.tenants.insert(
        "acme".into(),
        TenantPolicy {
            budget: Budget {
                tokens: 1_000_000,
                ..Budget::default()
            },
            ..TenantPolicy::default()
        },
    );
    env.cfg.governance.tenants.insert(
        "other".into(),
        TenantPolicy {
            limits: Some(sluice_config::Limit {
                requests: 2,
                tokens: 0,
                burst: 1.0,
            }),
            ..TenantPolicy::default()
        },
    );
    env.cfg.webhooks.allow_private = vec!["127.0.0.1".into(), "::1".into()];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_metric_appears_with_plausible_values_after_a_workload() -> Result<()> {
    let mut env = TestEnv::new();
    governed(&mut env);
    let sim = env.sim(SimConfig::default()).await?;
    let rx = Receiver::start().await?;
    let dir = std::env::temp_dir().join(sluice_e2e::unique("sluice-metrics-"));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let file = dir.join("worker.toml");
    std::fs::write(
        &file,
        format!(
            "[worker]\nmax_attempts = 2\nmetrics_listen = \"127.0.0.1:{port}\"\n\
             [webhooks]\nallow_private = [\"127.0.0.1\", \"::1\"]\n\
             [governance.prices.sim-small]\nprompt_per_mtok = 1.0\ncompletion_per_mtok = 2.0\n"
        ),
    )?;
    let ingest = env.ingest().await?;
    let worker = env.worker_process_with(Some(&file), &[])?;
    let worker_metrics = format!("http://127.0.0.1:{port}/metrics");
    wait_until(LONG, || async {
        Ok(env.http.get(&worker_metrics).send().await.is_ok())
    })
    .await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    // Completed jobs (one with a webhook), a permanent failure, a job that exhausts its
    // attempts, a streamed chat completion, and a burst over `other`'s rate limit.
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut body = chat_body(&format!("metrics {i}"));
        if i == 0 {
            body["webhook"] = json!({ "url": rx.url("job") });
        }
        ids.push(api.submit_ok(&body).await?);
    }
    let failed = api.submit_ok(&chat_body("no [[sim:status=400]]")).await?;
    let dead = api.submit_ok(&chat_body("down [[sim:status=500]]")).await?;
    let mut stream = chat_body("stream me");
    stream["stream"] = json!(true);
    let streamed = api
        .http
        .post(format!("{}/v1/chat/completions", api.base))
        .bearer_auth(ACME_KEY)
        .json(&stream)
        .send()
        .await?;
    ensure!(streamed.status() == 200, "stream: {}", streamed.status());
    streamed.bytes().await?;
    let other = Api::new(ingest.base_url(), OTHER_KEY);
    let mut refused = 0;
    for i in 0..6 {
        let (status, _, _) = other.submit(&chat_body(&format!("burst {i}"))).await?;
        refused += u32::from(status == 429);
    }
    ensure!(refused > 0, "the burst ran into the rate limit");
    for id in &ids {
        api.wait_status(id, &["completed"], LONG).await?;
    }
    api.wait_status(&failed, &["failed"], LONG).await?;
    api.wait_status(&dead, &["failed"], LONG).await?;
    wait_until(LONG, || async { Ok(!rx.received("job").is_empty()) }).await?;

    // Ingest's own metrics.
    let at_ingest = text(&env.http, &format!("{}/metrics", ingest.base_url())).await?;
    let checks_ingest: &[Check] = &[
        (
            "http_server_request_duration_seconds_count",
            &[("route", "/v1/jobs"), ("status", "202")],
            7.0,
            1e6,
        ),
        ("sluice_jobs_accepted_total", &[], 7.0, 1e6),
        (
            "sluice_ingest_rate_limited_total",
            &[("dimension", "tenant")],
            1.0,
            1e6,
        ),
        (
            "sluice_budget_used_ratio",
            &[("tenant", "acme"), ("budget", "tokens")],
            1e-6,
            1.0,
        ),
    ];
    // The worker's, once its queue poll and webhook dispatch have run.
    let mut at_worker = String::new();
    wait_until(LONG, || {
        let http = env.http.clone();
        let url = worker_metrics.clone();
        async move {
            let t = text(&http, &url).await?;
            let ready = sample(&t, "sluice_webhook_attempts_total", &[]).is_some()
                && sample(&t, "sluice_worker_dead_letters_total", &[]).is_some();
            Ok(ready)
        }
    })
    .await?;
    at_worker.push_str(&text(&env.http, &worker_metrics).await?);
    let checks_worker: &[Check] = &[
        (
            "sluice_queue_depth_messages",
            &[("priority", "normal")],
            0.0,
            1e6,
        ),
        (
            "sluice_consumer_lag_messages",
            &[("priority", "normal")],
            0.0,
            1e6,
        ),
        (
            "sluice_queue_oldest_age_seconds",
            &[("priority", "normal")],
            0.0,
            3600.0,
        ),
        ("sluice_worker_in_flight", &[], 0.0, 8.0),
        ("sluice_worker_free_slots", &[], 0.0, 8.0),
        ("sluice_job_queue_wait_seconds_count", &[], 8.0, 1e6),
        (
            "sluice_job_duration_seconds_count",
            &[("outcome", "done")],
            7.0,
            1e6,
        ),
        (
            "sluice_job_duration_seconds_count",
            &[("outcome", "dead_letter")],
            1.0,
            1e6,
        ),
        (
            "gen_ai_client_operation_duration_seconds_count",
            &[("gen_ai_request_model", "sim-small")],
            8.0,
            1e6,
        ),
        (
            "gen_ai_server_time_to_first_token_seconds_count",
            &[("gen_ai_request_model", "sim-small")],
            1.0,
            1e6,
        ),
        (
            "gen_ai_server_request_duration_seconds_count",
            &[],
            6.0,
            1e6,
        ),
        (
            "gen_ai_client_token_usage_count",
            &[("gen_ai_token_type", "output"), ("tenant", "acme")],
            5.0,
            1e6,
        ),
        (
            "sluice_tokens_total",
            &[("type", "input"), ("tenant", "acme")],
            6.0,
            1e7,
        ),
        (
            "sluice_cost_microusd_total",
            &[("tenant", "acme")],
            1.0,
            1e7,
        ),
        (
            "sluice_breaker_state",
            &[("deployment", "upstream")],
            0.0,
            2.0,
        ),
        ("sluice_worker_retries_total", &[], 1.0, 1e6),
        ("sluice_worker_upstream_errors_total", &[], 2.0, 1e6),
        ("sluice_worker_dead_letters_total", &[], 1.0, 1e6),
        ("sluice_webhook_attempts_total", &[], 1.0, 1e6),
        (
            "sluice_worker_jobs_total",
            &[("outcome", "completed")],
            6.0,
            1e6,
        ),
        (
            "sluice_worker_jobs_total",
            &[("outcome", "failed")],
            1.0,
            1e6,
        ),
    ];
    let mut wrong = Vec::new();
    for (where_, text, checks) in [
        ("ingest", &at_ingest, checks_ingest),
        ("worker", &at_worker, checks_worker),
    ] {
        for (name, labels, lo, hi) in checks {
            match sample(text, name, labels) {
                Some(v) if v >= *lo && v <= *hi => {}
                other => wrong.push(format!(
                    "{where_}: {name}{labels:?} = {other:?}, want {lo}..={hi}"
                )),
            }
        }
    }
    ensure!(
        wrong.is_empty(),
        "metrics missing or implausible:\n{}\n--- worker ---\n{at_worker}",
        wrong.join("\n")
    );
    // Bounded labels: no job id is a label value anywhere.
    for id in ids.iter().chain([&failed, &dead]) {
        ensure!(!at_ingest.contains(id.as_str()) && !at_worker.contains(id.as_str()));
    }
    sluice_e2e::terminate(&worker)?;
    ingest.shutdown(Duration::from_secs(5)).await;
    drop(sim);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_json_needs_the_admin_key_and_reports_the_workers() -> Result<()> {
    let mut env = TestEnv::new();
    governed(&mut env);
    let _sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let url = format!("{}/v1/admin/dashboard", ingest.base_url());
    let tenant = env.http.get(&url).bearer_auth(ACME_KEY).send().await?;
    assert_eq!(tenant.status(), 403, "a tenant key does not open it");
    let page = env
        .http
        .get(format!("{}/dashboard", ingest.base_url()))
        .send()
        .await?;
    assert_eq!(page.status(), 200);
    assert!(page.headers().contains_key("content-security-policy"));
    for i in 0..4 {
        let id = api.submit_ok(&chat_body(&format!("dash {i}"))).await?;
        api.wait_status(&id, &["completed"], LONG).await?;
    }
    // The worker reports every two seconds.
    let started = std::time::Instant::now();
    let seen: Value = loop {
        let seen: Value = env
            .http
            .get(&url)
            .bearer_auth(ADMIN)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if seen["tenants"][0]["tenant"] == "acme" {
            break seen;
        }
        ensure!(started.elapsed() < LONG, "no worker report: {seen}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(seen["workers"], 1, "{seen}");
    assert_eq!(
        seen["tenants"][0]["input_tokens"].as_u64().map(|n| n > 0),
        Some(true)
    );
    assert_eq!(seen["breakers"][0]["deployment"], "upstream");
    assert_eq!(seen["breakers"][0]["state"], "closed");
    assert_eq!(seen["queues"].as_array().map(Vec::len), Some(3), "{seen}");
    assert_eq!(seen["budgets"][0]["tenant"], "acme");
    assert_eq!(seen["budgets"][0]["tokens_limit"], 1_000_000);
    assert_eq!(
        seen["budgets"][0]["tokens_used"].as_u64().map(|n| n > 0),
        Some(true)
    );
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// The page in headless Chromium: `scripts/test.sh` installs Debian's `chromium` and
/// `playwright-core` (under `.tools/browser`); without them the test says so and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_in_chromium_with_numbers_that_move() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let modules = std::env::var("SLUICE_TEST_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join(".tools/browser/node_modules"));
    let missing: Vec<String> = [
        (PathBuf::from(&chromium), "chromium"),
        (modules.join("playwright-core"), "playwright-core"),
    ]
    .into_iter()
    .filter(|(p, _)| !p.exists())
    .map(|(p, what)| format!("{what} ({})", p.display()))
    .collect();
    if !missing.is_empty()
        || std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!(
            "SKIPPED: the dashboard browser test needs node and {missing:?}; scripts/test.sh installs them"
        );
        return Ok(());
    }
    let mut env = TestEnv::new();
    governed(&mut env);
    let _sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    // A steady workload for the page to watch: a job every 50 ms until the browser is done.
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let api = Api::new(ingest.base_url(), ACME_KEY);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.is_cancelled() {
                let _ = api
                    .submit(&chat_body(&format!("watch {i} [[sim:sleep=20]]")))
                    .await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            i
        })
    };
    let shot = root.join("target/artefacts/dashboard.png");
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg(root.join("tests/browser/dashboard.mjs"))
            .arg(ingest.base_url())
            .arg(ADMIN)
            .arg(&shot)
            .env("NODE_PATH", &modules)
            .env("CHROMIUM", &chromium)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the browser run timed out")??;
    stop.cancel();
    let submitted = load.await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the browser check failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let read: Value = serde_json::from_str(stdout.trim()).context("the script's JSON")?;
    let (first, second) = (&read["first"], &read["second"]);
    assert!(
        read["tokens_second"].as_f64() > read["tokens_first"].as_f64(),
        "{read}"
    );
    assert_eq!(second["workers"], "1", "{read}");
    let jobs_per_s: f64 = second["jobs_per_s"]
        .as_str()
        .unwrap_or("")
        .parse()
        .unwrap_or(0.0);
    assert!(jobs_per_s > 0.0, "jobs/s shows the workload: {read}");
    assert!(
        second["p50"]
            .as_str()
            .is_some_and(|p| p.parse::<f64>().is_ok()),
        "{read}"
    );
    assert_ne!(
        first["status"], second["status"],
        "the page refreshed: {read}"
    );
    let tenants: BTreeMap<String, Value> = second["tenants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|row| Some((row[0].as_str()?.to_owned(), row.clone())))
        .collect();
    assert!(tenants.contains_key("acme"), "{read}");
    assert_eq!(second["queues"].as_array().map(Vec::len), Some(3), "{read}");
    assert!(shot.exists(), "the screenshot is saved");
    assert!(submitted > 10);
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

//! Signed webhooks end to end: Standard Webhooks signatures, retries with a stable id,
//! `410` disabling an endpoint, dead letters after the schedule, secret rotation, per-job
//! webhooks, `job.cancelled`, and the SSRF guard at registration and at connect time.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sluice_e2e::{
    ACME_KEY, Api, TestEnv, chat_body,
    receiver::{Received, Receiver},
    wait_until,
};
use sluice_sim::SimConfig;
use sluice_webhooks::sign::sign;

const LONG: Duration = Duration::from_secs(30);

async fn register(api: &Api, url: &str, events: Option<Value>) -> Result<(u16, Value)> {
    let mut body = json!({ "url": url });
    if let Some(e) = events {
        body["events"] = e;
    }
    let resp = api
        .http
        .post(format!("{}/v1/webhooks", api.base))
        .bearer_auth(&api.key)
        .json(&body)
        .send()
        .await?;
    Ok((
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    ))
}

async fn get(api: &Api, path: &str) -> Result<Value> {
    Ok(api
        .http
        .get(format!("{}{path}", api.base))
        .bearer_auth(&api.key)
        .send()
        .await?
        .json()
        .await?)
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Whether one of the request's signatures verifies under `secret`.
fn verifies(r: &Received, secret: &str) -> bool {
    let ts: u64 = header(r, "webhook-timestamp").parse().unwrap_or(0);
    let expected = sign(secret, header(r, "webhook-id"), ts, &r.body).unwrap_or_default();
    header(r, "webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

/// A test environment whose webhooks retry after each of `schedule_ms`.
fn hooks_env(schedule_ms: Vec<u64>) -> TestEnv {
    let mut env = TestEnv::new();
    env.cfg.webhooks.allow_private = vec!["127.0.0.1".into(), "::1".into()];
    env.cfg.webhooks.schedule = schedule_ms.into_iter().map(Duration::from_millis).collect();
    env.cfg.webhooks.jitter = 0.0;
    env.cfg.webhooks.timeout = Duration::from_millis(5_000);
    // The breaker has its own test; here every failure is an attempt on the schedule.
    env.cfg.webhooks.breaker_failures = 0;
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_retried_with_the_same_id_and_logged() -> Result<()> {
    let mut env = hooks_env(vec![50, 50, 50]);
    let _sim = env.sim(SimConfig::default()).await?;
    let rx = Receiver::start().await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let (code, ep) = register(&api, &rx.url("ep"), None).await?;
    assert_eq!(code, 201, "{ep}");
    let secret = ep["secret"]
        .as_str()
        .context("secret shown at creation")?
        .to_string();
    assert!(secret.starts_with("whsec_"));
    let listed = get(&api, "/v1/webhooks").await?;
    assert_eq!(listed["data"][0]["id"], ep["id"]);
    assert!(
        listed["data"][0].get("secret").is_none(),
        "the secret is shown once"
    );

    // The endpoint fails twice, then accepts; the job's own webhook accepts at once.
    rx.script("ep", &[500, 503, 200]);
    let mut body = chat_body("hello hooks");
    body["webhook"] = json!({ "url": rx.url("job") });
    let (status, _, accepted) = api.submit(&body).await?;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().context("id")?.to_string();
    let job_secret = accepted["webhook"]["secret"]
        .as_str()
        .context("job webhook secret")?
        .to_string();

    wait_until(LONG, || async {
        Ok(rx.received("ep").len() >= 3 && !rx.received("job").is_empty())
    })
    .await?;
    let got = rx.received("ep");
    assert_eq!(got.len(), 3);
    let ids: Vec<&str> = got.iter().map(|r| header(r, "webhook-id")).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0] && !i.is_empty()),
        "same id on every attempt: {ids:?}"
    );
    for r in &got {
        assert!(verifies(r, &secret), "signature verifies");
        assert!(!verifies(r, &job_secret));
    }
    let payload: Value = serde_json::from_slice(&got[2].body)?;
    assert_eq!(payload["type"], "job.completed");
    assert_eq!(payload["data"]["id"], id.as_str());
    assert_eq!(payload["id"], ids[0]);
    assert!(
        payload.get("data").and_then(|d| d.get("result")).is_none(),
        "thin payload"
    );

    let job_hook = rx.received("job");
    assert_eq!(job_hook.len(), 1);
    assert!(verifies(&job_hook[0], &job_secret));
    assert_eq!(header(&job_hook[0], "webhook-id"), ids[0]);

    let ep_id = ep["id"].as_str().context("endpoint id")?;
    let log = get(&api, &format!("/v1/webhooks/{ep_id}/deliveries")).await?;
    let outcomes: Vec<&str> = log["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert_eq!(
        outcomes,
        ["delivered", "retry", "retry"],
        "newest first: {log}"
    );

    // Rotation: the next delivery carries both signatures, each verifying with its secret.
    let rotated: Value = api
        .http
        .post(format!("{}/v1/webhooks/{ep_id}/rotate", api.base))
        .bearer_auth(&api.key)
        .send()
        .await?
        .json()
        .await?;
    let new_secret = rotated["secret"]
        .as_str()
        .context("new secret")?
        .to_string();
    assert_ne!(new_secret, secret);
    let id2 = api.submit_ok(&chat_body("after rotation")).await?;
    wait_until(LONG, || async { Ok(rx.received("ep").len() >= 4) }).await?;
    let last = rx.received("ep").pop().context("a delivery")?;
    assert_eq!(header(&last, "webhook-signature").split(' ').count(), 2);
    assert!(verifies(&last, &new_secret) && verifies(&last, &secret));
    let payload: Value = serde_json::from_slice(&last.body)?;
    assert_eq!(payload["data"]["id"], id2.as_str());

    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_and_exhausted_deliveries_are_dead_lettered() -> Result<()> {
    let mut env = hooks_env(vec![20, 20]);
    let _sim = env.sim(SimConfig::default()).await?;
    let rx = Receiver::start().await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    rx.script("gone", &[410]);
    rx.script("down", &[500]);
    register(&api, &rx.url("gone"), None).await?;
    let (_, down) = register(&api, &rx.url("down"), Some(json!(["job.completed"]))).await?;
    let first = api.submit_ok(&chat_body("one")).await?;
    api.wait_status(&first, &["completed"], LONG).await?;
    wait_until(LONG, || async {
        Ok(rx.received("gone").len() == 1 && rx.received("down").len() == 3)
    })
    .await?;
    let eps = get(&api, "/v1/webhooks").await?;
    let gone = eps["data"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"].as_str().is_some_and(|u| u.ends_with("/gone")));
    assert_eq!(gone.map(|g| g["status"].clone()), Some(json!("disabled")));

    // The exhausted delivery is in the dead-letter stream.
    let queue = env.queue().await?;
    let dlq = queue
        .jetstream()
        .get_stream(queue.subjects().dlq_stream())
        .await?;
    let subject = queue.subjects().dlq("webhook_exhausted", "acme");
    let start = std::time::Instant::now();
    while dlq.get_last_raw_message_by_subject(&subject).await.is_err() {
        anyhow::ensure!(start.elapsed() < LONG, "no dead letter");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let down_id = down["id"].as_str().context("id")?;
    let log = get(&api, &format!("/v1/webhooks/{down_id}/deliveries")).await?;
    assert_eq!(log["data"][0]["outcome"], "exhausted", "{log}");

    // A second job: nothing more reaches the disabled endpoint.
    let second = api.submit_ok(&chat_body("two")).await?;
    api.wait_status(&second, &["completed"], LONG).await?;
    wait_until(LONG, || async { Ok(rx.received("down").len() == 6) }).await?;
    let mut hooks = queue
        .jetstream()
        .get_stream(queue.subjects().hooks_stream())
        .await?;
    let start = std::time::Instant::now();
    while hooks.info().await?.state.messages > 0 {
        anyhow::ensure!(start.elapsed() < LONG, "hooks not drained");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(rx.received("gone").len(), 1, "nothing after a 410");
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_sends_job_cancelled() -> Result<()> {
    let mut env = hooks_env(vec![50]);
    let _sim = env.sim(SimConfig::default()).await?;
    let rx = Receiver::start().await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    register(&api, &rx.url("ep"), Some(json!(["job.cancelled"]))).await?;
    let id = api
        .submit_ok(&chat_body("slow [[sim:sleep=60000]]"))
        .await?;
    api.wait_status(&id, &["in_progress"], LONG).await?;
    let resp = api
        .http
        .post(format!("{}/v1/jobs/{id}/cancel", api.base))
        .bearer_auth(&api.key)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    wait_until(LONG, || async { Ok(!rx.received("ep").is_empty()) }).await?;
    let payload: Value = serde_json::from_slice(&rx.received("ep")[0].body)?;
    assert_eq!(payload["type"], "job.cancelled");
    assert_eq!(payload["data"]["id"], id.as_str());
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_urls_are_refused_at_registration_and_at_connect_time() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.webhooks.schedule = vec![Duration::from_millis(20)];
    env.cfg.webhooks.jitter = 0.0;
    let _sim = env.sim(SimConfig::default()).await?;
    let rx = Receiver::start().await?;
    let strict = env.ingest().await?;
    let api = Api::new(strict.base_url(), ACME_KEY);
    let port = rx.addr.map(|a| a.port()).unwrap_or(9);
    for url in [
        rx.url("x"),
        format!("http://localhost:{port}/x"),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://10.0.0.1/hook".to_string(),
        "http://[::1]/hook".to_string(),
        "http://[::ffff:127.0.0.1]/hook".to_string(),
    ] {
        let (code, body) = register(&api, &url, None).await?;
        assert_eq!(code, 400, "{url}: {body}");
        assert_eq!(body["error"]["code"], "url_not_allowed", "{url}");
    }
    assert_eq!(register(&api, "ftp://example.com/x", None).await?.0, 400);
    let mut body = chat_body("x");
    body["webhook"] = json!({ "url": "http://127.0.0.1:9/x" });
    let (code, _, err) = api.submit(&body).await?;
    assert_eq!(code, 400, "{err}");

    // An operator allowlist at registration, but not where the dispatcher connects: the name
    // resolves to loopback at connect time and the connection is refused.
    let mut lenient = env.cfg.clone();
    lenient.webhooks.allow_private = vec!["127.0.0.1".into(), "::1".into()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let open =
        sluice_ingest::Server::start(sluice_config::IngestSettings::new(&lenient)?, listener)
            .await?;
    let api2 = Api::new(open.base_url(), ACME_KEY);
    wait_until(LONG, || async {
        Ok(api2
            .http
            .get(format!("{}/readyz", api2.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200))
    })
    .await?;
    let (code, ep) = register(&api2, &format!("http://localhost:{port}/x"), None).await?;
    assert_eq!(code, 201, "{ep}");
    let worker = env.worker().await?;
    let id = api2.submit_ok(&chat_body("y")).await?;
    api2.wait_status(&id, &["completed"], LONG).await?;
    let ep_id = ep["id"].as_str().context("id")?;
    wait_until(LONG, || async {
        let log = get(&api2, &format!("/v1/webhooks/{ep_id}/deliveries")).await?;
        Ok(log["data"][0]["outcome"] == "exhausted")
    })
    .await?;
    assert!(
        rx.received("x").is_empty(),
        "the receiver never saw a request"
    );
    worker.shutdown().await;
    open.shutdown(Duration::from_secs(5)).await;
    strict.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// Before, every store error while preparing a delivery NAKed it: each counted a delivery,
/// and past the consumer's `max_deliver` the server stopped delivering it, so the receiver
/// never got it and the message stayed in `HOOKS` for ever. Then, once exhausted, the dead
/// letter is replayed like a job's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_burns_no_webhook_delivery_and_exhausted_ones_are_replayable() -> Result<()>
{
    let redis = sluice_e2e::own_redis::OwnRedis::start()?;
    // Two retries after 2 s each: the outage falls between the first attempt and the retry.
    let mut env = hooks_env(vec![2_000, 2_000]);
    env.cfg.redis.url = redis.url();
    env.cfg.redis.command_timeout = Duration::from_millis(500);
    let _sim = env.sim(SimConfig::default()).await?;
    let rx = Receiver::start().await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    rx.script("ep", &[500, 200]);
    rx.script("down", &[500]);
    let (code, ep) = register(&api, &rx.url("ep"), None).await?;
    assert_eq!(code, 201, "{ep}");
    register(&api, &rx.url("down"), None).await?;
    let id = api
        .submit_ok(&chat_body("hooked through an outage"))
        .await?;
    api.wait_status(&id, &["completed"], LONG).await?;
    wait_until(LONG, || async { Ok(rx.received("ep").len() == 1) }).await?;

    // The retry comes due while Redis hangs (about five 1 s NAKs' worth and more).
    redis.signal("-STOP")?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    redis.signal("-CONT")?;

    wait_until(LONG, || async { Ok(rx.received("ep").len() == 2) }).await?;
    let ep_id = ep["id"].as_str().context("id")?;
    let path = format!("/v1/webhooks/{ep_id}/deliveries");
    // The log is written after the receiver answered.
    wait_until(LONG, || async {
        Ok(get(&api, &path).await?["data"][0]["outcome"] == "delivered")
    })
    .await?;
    let log = get(&api, &path).await?;
    assert_eq!(
        log["data"][0]["attempt"], 2,
        "the outage was not an attempt: {log}"
    );

    // `down` fails its three attempts and is dead-lettered, not left in HOOKS.
    wait_until(LONG, || async { Ok(rx.received("down").len() == 3) }).await?;
    let queue = env.queue().await?;
    let filter = sluice_queue::dlq::DlqFilter {
        reason: Some("webhook_exhausted".into()),
        limit: 10,
        ..Default::default()
    };
    wait_until(LONG, || async {
        Ok(queue.dlq_list(&filter).await?.len() == 1)
    })
    .await?;
    wait_until(LONG, || async {
        let mut hooks = queue
            .jetstream()
            .get_stream(queue.subjects().hooks_stream())
            .await?;
        Ok(hooks.info().await?.state.messages == 0)
    })
    .await?;

    // Replayed: delivered again (a fresh schedule), and gone from the dead letters.
    rx.script("down", &[200]);
    let opts = sluice_queue::dlq::ReplayOptions {
        rate_per_s: 100.0,
        dry_run: false,
        actor: "test".into(),
    };
    let report = queue.dlq_replay(&env.store()?, &filter, &opts).await?;
    assert_eq!(report.replayed.len(), 1, "{report:?}");
    wait_until(LONG, || async { Ok(rx.received("down").len() == 4) }).await?;
    assert!(queue.dlq_list(&filter).await?.is_empty());
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// The per-tenant endpoint cap holds under parallel registrations: the count and the add are
/// one step in Redis, so 40 concurrent registrations against a cap of 16 store exactly 16.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_registrations_cannot_pass_the_endpoint_cap() -> Result<()> {
    let env = TestEnv::new();
    let store = env.store()?;
    let tenant = sluice_e2e::unique("capped-");
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (store, tenant) = (store.clone(), tenant.clone());
            tokio::spawn(async move {
                let ep = sluice_store::webhooks::Endpoint {
                    id: format!("{tenant}-ep-{i}"),
                    tenant,
                    url: format!("https://example.com/hook/{i}"),
                    events: vec!["job.completed".into()],
                    secret: "whsec_test".into(),
                    old_secret: None,
                    disabled: false,
                    created_at_ms: 1,
                };
                store.create_endpoint(&ep, 16).await
            })
        })
        .collect();
    let mut added = 0;
    for t in tasks {
        if t.await?? {
            added += 1;
        }
    }
    assert_eq!(added, 16, "registrations that reported success");
    assert_eq!(
        store.endpoints(&tenant).await?.len(),
        16,
        "endpoints stored"
    );
    Ok(())
}

/// Item 8 of #12: one FIFO for every tenant let a tenant whose receivers never answer hold
/// every dispatcher slot. Now a tenant holds at most its share (here one of two slots) and
/// an endpoint its own slots, so the other tenant's deliveries all arrive while the tar
/// pit's first attempt still hangs (the old dispatcher delivered them only after the tar
/// pit's 20 s attempt time limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tar_pit_receiver_of_one_tenant_does_not_delay_another_tenants_deliveries() -> Result<()>
{
    let mut env = hooks_env(vec![60_000]);
    env.cfg.webhooks.timeout = Duration::from_millis(20_000);
    env.cfg.webhooks.concurrency = 2;
    env.cfg.webhooks.tenant_share = 0.5;
    env.cfg.webhooks.endpoint_concurrency = 2;
    let _sim = env.sim(SimConfig::default()).await?;
    let rx = Receiver::start().await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let acme = Api::new(ingest.base_url(), ACME_KEY);
    let other = Api::new(ingest.base_url(), sluice_e2e::OTHER_KEY);

    // acme's two endpoints are tar pits: they take each request and never answer.
    rx.script("pit1", &[0]);
    rx.script("pit2", &[0]);
    for path in ["pit1", "pit2"] {
        let (code, ep) = register(&acme, &rx.url(path), None).await?;
        assert_eq!(code, 201, "{ep}");
    }
    let (code, ep) = register(&other, &rx.url("fast"), None).await?;
    assert_eq!(code, 201, "{ep}");

    for i in 0..3 {
        let id = acme.submit_ok(&chat_body(&format!("acme {i}"))).await?;
        acme.wait_status(&id, &["completed"], LONG).await?;
    }
    wait_until(LONG, || async {
        Ok(rx.received("pit1").len() + rx.received("pit2").len() >= 1)
    })
    .await?;
    let hanging_since = std::time::Instant::now();

    for i in 0..3 {
        other.submit_ok(&chat_body(&format!("other {i}"))).await?;
    }
    wait_until(Duration::from_secs(15), || async {
        Ok(rx.received("fast").len() == 3)
    })
    .await
    .context("the other tenant's deliveries waited behind the tar pit")?;
    assert!(
        hanging_since.elapsed() < Duration::from_secs(20),
        "the tar pit's first attempt is still hanging"
    );
    // acme never had more than its share in flight.
    assert!(rx.received("pit1").len() + rx.received("pit2").len() <= 1);
    drop(worker);
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// An endpoint that keeps failing opens its breaker after `breaker_failures` attempts: its
/// delivery waits out the cool-down in `HOOKS` instead of being retried on the 50 ms
/// schedule, then one probe goes through (failing: open again; succeeding: closed). The
/// waits spend no attempt: the log numbers the five attempts 1 to 5, although the broker
/// delivered the message more often than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_opens_its_breaker_and_is_probed_after_the_cool_down() -> Result<()> {
    let mut env = hooks_env(vec![50; 10]);
    env.cfg.webhooks.breaker_failures = 3;
    env.cfg.webhooks.breaker_cooldown = Duration::from_millis(3_000);
    let _sim = env.sim(SimConfig::default()).await?;
    let rx = Receiver::start().await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    rx.script("flaky", &[500, 500, 500, 500, 200]);
    let (code, ep) = register(&api, &rx.url("flaky"), None).await?;
    assert_eq!(code, 201, "{ep}");
    let id = api.submit_ok(&chat_body("through a breaker")).await?;
    api.wait_status(&id, &["completed"], LONG).await?;
    wait_until(LONG, || async { Ok(rx.received("flaky").len() == 5) }).await?;

    let got = rx.received("flaky");
    let gap = |i: usize| got[i + 1].at.duration_since(got[i].at);
    let cool = Duration::from_millis(2_900);
    assert!(gap(2) >= cool, "open after three failures: {:?}", gap(2));
    assert!(
        gap(3) >= cool,
        "the failed probe opened it again: {:?}",
        gap(3)
    );

    let ep_id = ep["id"].as_str().context("endpoint id")?;
    let path = format!("/v1/webhooks/{ep_id}/deliveries");
    wait_until(LONG, || async {
        Ok(get(&api, &path).await?["data"][0]["outcome"] == "delivered")
    })
    .await?;
    let log = get(&api, &path).await?;
    let attempts: Vec<u64> = log["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["attempt"].as_u64())
        .collect();
    assert_eq!(attempts, [5, 4, 3, 2, 1], "newest first: {log}");
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// A full `HOOKS` stream held every finishing job in its worker (five minutes each, slot
/// taken), so with one slot the third job never ran. Now the event waits in the outbox and
/// the job's message is acknowledged: every job completes and the queue drains. The outbox
/// is bounded: what does not fit is dropped where the operator sees it (the endpoint's
/// log), and the rest is delivered once a dispatcher runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hook_stream_holds_no_job_and_its_events_are_delivered_later() -> Result<()> {
    let mut env = hooks_env(vec![50]);
    env.cfg.webhooks.stream_max_msgs = 1;
    env.cfg.webhooks.outbox_max = 3;
    env.cfg.webhooks.dispatcher = false;
    env.cfg.worker.concurrency = 1;
    let _sim = env.sim(SimConfig::default()).await?;
    let rx = Receiver::start().await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let (code, ep) = register(&api, &rx.url("ep"), None).await?;
    assert_eq!(code, 201, "{ep}");

    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(api.submit_ok(&chat_body(&format!("full {i}"))).await?);
    }
    for id in &ids {
        api.wait_status(id, &["completed"], LONG).await?;
    }
    let queue = env.queue().await?;
    sluice_e2e::wait_jobs_settled(&queue, LONG).await?;
    // One event in HOOKS, three in the outbox, two dropped.
    let store = env.store()?;
    assert_eq!(store.outbox_len().await?, 3);
    let ep_id = ep["id"].as_str().context("endpoint id")?;
    let path = format!("/v1/webhooks/{ep_id}/deliveries");
    let outcomes = |log: &Value, outcome: &str| {
        log["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["outcome"] == outcome)
            .count()
    };
    assert_eq!(outcomes(&get(&api, &path).await?, "dropped"), 2);

    // A dispatcher drains HOOKS and the outbox through the one-message stream.
    env.cfg.webhooks.dispatcher = true;
    let dispatcher = env.worker().await?;
    wait_until(LONG, || async { Ok(rx.received("ep").len() == 4) }).await?;
    wait_until(LONG, || async { Ok(store.outbox_len().await? == 0) }).await?;
    wait_until(LONG, || async {
        Ok(outcomes(&get(&api, &path).await?, "delivered") == 4)
    })
    .await?;
    let mut delivered: Vec<String> = rx
        .received("ep")
        .iter()
        .map(|r| header(r, "webhook-id").to_string())
        .collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 4, "four different events");
    dispatcher.shutdown().await;
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

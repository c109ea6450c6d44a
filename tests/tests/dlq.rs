//! Dead letters and replay: a failed job and a poison message go to the DLQ with their
//! reasons, can be listed, filtered and shown, and a replay re-queues the failed job with
//! its id and history (poison stays put); a message the server stopped delivering is moved
//! by the max-deliveries advisory.

use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use serde_json::Value;
use sluice_e2e::{ACME_KEY, Api, TestEnv, chat_body, wait_until};
use sluice_protocol::Priority;
use sluice_queue::dlq::{DlqFilter, ReplayOptions};
use sluice_sim::SimConfig;

const LONG: Duration = Duration::from_secs(40);

fn all() -> DlqFilter {
    DlqFilter {
        limit: 100,
        ..Default::default()
    }
}

fn replay(dry_run: bool) -> ReplayOptions {
    ReplayOptions {
        rate_per_s: 50.0,
        dry_run,
        actor: "test".into(),
    }
}

async fn events(env: &TestEnv, id: &str) -> Result<Vec<Value>> {
    let raw = env
        .store()?
        .events_after(uuid::Uuid::parse_str(id)?, 0)
        .await?;
    Ok(raw
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_round_trips_through_the_dead_letter_stream_and_replay() -> Result<()> {
    let mut env = TestEnv::new();
    env.cfg.worker.max_attempts = 2;
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let queue = env.queue().await?;
    let store = env.store()?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    // Fails on both attempts, succeeds on the third call (after the replay).
    let id = api
        .submit_ok(&chat_body("flaky [[sim:fail_first=2:dlq-round-trip]]"))
        .await?;
    let job = api.wait_status(&id, &["completed", "failed"], LONG).await?;
    assert_eq!(job["status"], "failed", "{job}");
    wait_until(LONG, || async {
        Ok(queue.dlq_list(&all()).await?.len() == 1)
    })
    .await?;

    let entries = queue.dlq_list(&all()).await?;
    let e = &entries[0];
    assert_eq!(
        (e.reason.as_str(), e.tenant.as_str()),
        ("max_attempts", "acme")
    );
    assert_eq!(e.job_id.as_deref(), Some(id.as_str()));
    assert_eq!(e.model.as_deref(), Some("sim-small"));
    assert_eq!(e.attempts, 2);
    assert!(
        e.original_subject.ends_with("jobs.normal.acme"),
        "{}",
        e.original_subject
    );
    let shown = queue
        .dlq_show(e.seq)
        .await?
        .ok_or_else(|| anyhow::anyhow!("not shown"))?;
    assert_eq!(shown.job_id, e.job_id);
    assert!(queue.dlq_show(e.seq + 1000).await?.is_none());

    // Filters.
    let queue_ref = &queue;
    let none = |f: DlqFilter| async move {
        Ok::<_, anyhow::Error>(queue_ref.dlq_list(&f).await?.is_empty())
    };
    assert!(
        none(DlqFilter {
            tenant: Some("other".into()),
            ..all()
        })
        .await?
    );
    assert!(
        none(DlqFilter {
            reason: Some("undecodable".into()),
            ..all()
        })
        .await?
    );
    assert!(
        none(DlqFilter {
            model: Some("sim-large".into()),
            ..all()
        })
        .await?
    );
    assert!(
        none(DlqFilter {
            since_ms: Some(sluice_store::now_ms() + 3_600_000),
            ..all()
        })
        .await?
    );
    assert!(
        !none(DlqFilter {
            tenant: Some("acme".into()),
            model: Some("sim-small".into()),
            ..all()
        })
        .await?
    );

    // A dry run changes nothing.
    let report = queue.dlq_replay(&store, &all(), &replay(true)).await?;
    assert_eq!(report.replayed, vec![(e.seq, id.clone())]);
    assert_eq!(api.job(&id).await?.1["status"], "failed");
    assert_eq!(queue.dlq_list(&all()).await?.len(), 1);

    let report = queue.dlq_replay(&store, &all(), &replay(false)).await?;
    assert_eq!(report.replayed.len(), 1);
    let job = api.wait_status(&id, &["completed"], LONG).await?;
    assert_eq!(job["id"], id.as_str(), "same job id");
    assert_eq!(sim.counters().per_model.get("sim-small").copied(), Some(3));
    assert!(
        queue.dlq_list(&all()).await?.is_empty(),
        "the replayed entry left the DLQ"
    );
    // The history is kept and says what happened, in order.
    let evs = events(&env, &id).await?;
    let kinds: Vec<String> = evs
        .iter()
        .map(|e| {
            format!(
                "{}{}",
                e["type"].as_str().unwrap_or(""),
                e["status"]
                    .as_str()
                    .map(|s| format!(":{s}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "status:queued",
            "status:in_progress",
            "status:in_progress",
            "status:failed",
            "replay",
            "status:queued",
            "status:in_progress",
            "status:completed"
        ],
    );
    assert_eq!(evs[4]["by"], "test");
    // A second replay finds nothing, and a completed job cannot be replayed.
    let report = queue.dlq_replay(&store, &all(), &replay(false)).await?;
    assert!(report.replayed.is_empty());
    assert!(matches!(
        store
            .record_replay(uuid::Uuid::parse_str(&id)?, "test", "x")
            .await?,
        sluice_store::Replay::Refused {
            current: Some(sluice_protocol::JobStatus::Completed)
        }
    ));

    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// A running worker that has dead-lettered one undecodable message sent on `jobs.<p>.<tenant>`.
async fn poisoned(
    priority: Priority,
    tenant: &str,
) -> Result<(
    TestEnv,
    sluice_sim::SimHandle,
    sluice_worker::Worker,
    sluice_queue::Queue,
    String,
)> {
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    let worker = env.worker().await?;
    let queue = env.queue().await?;
    let subject = queue.subjects().job(priority, tenant);
    queue
        .jetstream()
        .publish(subject.clone(), b"\xc1 not msgpack".to_vec().into())
        .await?
        .await?;
    wait_until(LONG, || async {
        Ok(queue.dlq_list(&all()).await?.len() == 1)
    })
    .await?;
    Ok((env, sim, worker, queue, subject))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_listed_and_shown_but_never_replayed() -> Result<()> {
    let (env, _sim, worker, queue, subject) = poisoned(Priority::High, "acme").await?;
    let store = env.store()?;
    let e = &queue
        .dlq_list(&DlqFilter {
            reason: Some("undecodable".into()),
            ..all()
        })
        .await?[0];
    assert_eq!(
        (e.tenant.as_str(), e.job_id.as_deref(), e.model.as_deref()),
        ("unknown", None, None)
    );
    assert_eq!(e.original_subject, subject);

    let report = queue.dlq_replay(&store, &all(), &replay(false)).await?;
    assert!(report.replayed.is_empty());
    assert_eq!(report.skipped.len(), 1);
    assert!(report.skipped[0].1.contains("undecodable"));
    assert_eq!(
        queue.dlq_list(&all()).await?.len(),
        1,
        "the poison message stays for inspection"
    );
    assert_eq!(queue.queued_messages().await?, 0);

    worker.shutdown().await;
    Ok(())
}

type Pull =
    async_nats::jetstream::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>;

/// One pull of at most one message, waiting up to `wait`.
async fn pull_one(
    consumer: &Pull,
    wait: Duration,
) -> Result<Option<async_nats::jetstream::Message>> {
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(wait)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(match batch.next().await {
        Some(Ok(m)) => Some(m),
        _ => None,
    })
}

/// Workers count attempts themselves and their consumers set no server delivery limit; an
/// operator may still set one (`max_deliver`), and then the server gives up on a message
/// on its own. This sets it to 3 and delivers the job three times to "workers" that die
/// without settling (simulated with NAKs).
async fn strand(env: &TestEnv, api: &Api) -> Result<(String, Pull)> {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    let queue = env.queue().await?;
    let stream = queue
        .jetstream()
        .get_stream(queue.subjects().jobs_stream())
        .await?;
    let name = queue.subjects().consumer(Priority::Normal);
    let consumer: Pull = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.clone()),
            name: Some(name),
            filter_subject: queue.subjects().priority_filter(Priority::Normal),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(5),
            max_deliver: 3,
            ..Default::default()
        })
        .await?;
    let id = api.submit_ok(&chat_body("stranded")).await?;
    for delivery in 1..=3 {
        let m = pull_one(&consumer, Duration::from_secs(5))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no delivery {delivery}"))?;
        assert_eq!(
            m.info().map_err(|e| anyhow::anyhow!("{e}"))?.delivered,
            delivery
        );
        m.ack_with(async_nats::jetstream::AckKind::Nak(None))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    assert_eq!(queue.queued_messages().await?, 1, "still in the work queue");
    Ok((id, consumer))
}

async fn assert_moved(env: &TestEnv, api: &Api, id: &str) -> Result<()> {
    let queue = env.queue().await?;
    let job = api.wait_status(id, &["failed", "completed"], LONG).await?;
    assert_eq!(job["status"], "failed", "{job}");
    wait_until(LONG, || async { Ok(queue.queued_messages().await? == 0) }).await?;
    let entries = queue.dlq_list(&all()).await?;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].reason, "max_deliveries");
    assert_eq!(entries[0].job_id.as_deref(), Some(id));
    assert_eq!(entries[0].attempts, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_server_gave_up_on_is_moved_by_the_advisory_handler() -> Result<()> {
    let env = TestEnv::new();
    let ingest = env.ingest().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let (id, consumer) = strand(&env, &api).await?;

    let queue = env.queue().await?;
    let sub = sluice_worker::advisory::subscribe(&queue)
        .await
        .ok_or_else(|| anyhow::anyhow!("no subscription"))?;
    let stop = tokio_util::sync::CancellationToken::new();
    let handler = tokio::spawn(sluice_worker::advisory::run(
        sub,
        queue,
        env.store()?,
        stop.clone(),
    ));
    // The next pull makes the server give up on the message and publish the advisory.
    assert!(
        pull_one(&consumer, Duration::from_millis(500))
            .await?
            .is_none(),
        "delivered a fourth time"
    );
    assert_moved(&env, &api, &id).await?;

    stop.cancel();
    handler.await?;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_advisory_nobody_heard_is_moved_by_the_sweep() -> Result<()> {
    let env = TestEnv::new();
    let ingest = env.ingest().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let (id, consumer) = strand(&env, &api).await?;
    // The server gives up while nobody listens for the advisory.
    assert!(
        pull_one(&consumer, Duration::from_millis(500))
            .await?
            .is_none(),
        "delivered a fourth time"
    );
    let queue = env.queue().await?;
    assert_eq!(queue.queued_messages().await?, 1);

    assert_eq!(
        sluice_worker::advisory::sweep(&queue, &env.store()?).await?,
        1
    );
    assert_moved(&env, &api, &id).await?;
    assert_eq!(
        sluice_worker::advisory::sweep(&queue, &env.store()?).await?,
        0,
        "nothing left to move"
    );

    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sluice_cli_lists_shows_and_dry_runs_a_replay() -> Result<()> {
    let (env, _sim, worker, queue, subject) = poisoned(Priority::Low, "other").await?;
    let seq = queue.dlq_list(&all()).await?[0].seq;

    let c = &env.cfg;
    let sluice = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(sluice_e2e::binary("sluice")?);
        cmd.env_clear()
            .env("SLUICE_NATS__URL", &c.nats.url)
            .env("SLUICE_NATS__NAMESPACE", &c.nats.namespace)
            .env("SLUICE_REDIS__URL", &c.redis.url)
            .env("SLUICE_REDIS__PREFIX", format!("\"{}\"", c.redis.prefix))
            .args(args)
            .kill_on_drop(true);
        Ok::<_, anyhow::Error>(cmd)
    };
    let out = sluice(&["dlq", "list", "--json", "--tenant", "unknown"])?
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(line["seq"], seq);
    assert_eq!(line["reason"], "undecodable");
    assert!(
        line.get("payload").is_none(),
        "listings never carry the message body"
    );
    let out = sluice(&["dlq", "list", "--json", "--reason", "max_attempts"])?
        .output()
        .await?;
    assert!(out.status.success() && out.stdout.is_empty());

    let out = sluice(&["dlq", "show", &seq.to_string()])?.output().await?;
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout)?["original_subject"],
        subject
    );
    let out = sluice(&["dlq", "show", "999999"])?.output().await?;
    assert!(!out.status.success());

    let out = sluice(&["dlq", "replay", "--dry-run"])?.output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("0 would replay, 1 skipped"),
        "{text}"
    );
    assert_eq!(queue.dlq_list(&all()).await?.len(), 1);

    worker.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_shows_and_replays_dead_letters() -> Result<()> {
    const ADMIN: &str = "sk-test-admin-dlq";
    let mut env = TestEnv::new();
    env.cfg.worker.max_attempts = 2;
    env.cfg.governance.admin_key_sha256 = Some(sluice_config::hash_api_key(ADMIN));
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let admin = |method: reqwest::Method, path: &str, key: &str| {
        env.http
            .request(method, format!("{}/v1/admin/dlq{path}", ingest.base_url()))
            .bearer_auth(key)
    };

    let id = api
        .submit_ok(&chat_body("flaky [[sim:fail_first=2:dlq-admin]]"))
        .await?;
    api.wait_status(&id, &["failed"], LONG).await?;
    let started = std::time::Instant::now();
    let listed = loop {
        let listed: Value = admin(
            reqwest::Method::GET,
            "?tenant=acme&reason=max_attempts",
            ADMIN,
        )
        .send()
        .await?
        .json()
        .await?;
        if listed["data"].as_array().is_some_and(|d| d.len() == 1) {
            break listed;
        }
        anyhow::ensure!(started.elapsed() < LONG, "no dead letter listed: {listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let entry = &listed["data"][0];
    assert_eq!(entry["job_id"], id.as_str());
    assert!(
        entry.get("payload").is_none(),
        "listings never carry the request"
    );
    let seq = entry["seq"].as_u64().unwrap_or_default();

    // Tenant keys cannot reach it; filters that match nothing list nothing.
    let resp = admin(reqwest::Method::GET, "", ACME_KEY).send().await?;
    assert_eq!(resp.status(), 403);
    let none: Value = admin(reqwest::Method::GET, "?tenant=other", ADMIN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(none["data"].as_array().map(Vec::len), Some(0));
    let shown: Value = admin(reqwest::Method::GET, &format!("/{seq}"), ADMIN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(shown["reason"], "max_attempts");
    assert_eq!(
        admin(reqwest::Method::GET, "/999999", ADMIN)
            .send()
            .await?
            .status(),
        404
    );
    let bad = admin(reqwest::Method::POST, "/replay", ADMIN)
        .json(&serde_json::json!({ "rate_per_s": 0 }))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);

    // A dry run changes nothing; the replay re-queues the job, which now completes.
    let dry: Value = admin(reqwest::Method::POST, "/replay", ADMIN)
        .json(&serde_json::json!({ "sequences": [seq], "dry_run": true }))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(dry["replayed"].as_array().map(Vec::len), Some(1), "{dry}");
    assert_eq!(api.job(&id).await?.1["status"], "failed");
    let done: Value = admin(reqwest::Method::POST, "/replay", ADMIN)
        .json(&serde_json::json!({ "sequences": [seq] }))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(done["replayed"].as_array().map(Vec::len), Some(1), "{done}");
    let job = api.wait_status(&id, &["completed"], LONG).await?;
    assert_eq!(job["id"], id.as_str());
    assert_eq!(sim.counters().per_model.get("sim-small").copied(), Some(3));

    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

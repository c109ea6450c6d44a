//! Cancellation and deadlines: a cancelled queued job never runs, a cancelled running job's
//! upstream call is dropped (the simulator counts it as aborted), an expired job is never
//! sent upstream.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use sluice_e2e::{ACME_KEY, Api, OTHER_KEY, TestEnv, chat_body, wait_jobs_settled, wait_until};
use sluice_sim::SimConfig;

const LONG: Duration = Duration::from_secs(30);

async fn cancel(api: &Api, id: &str) -> Result<(u16, Value)> {
    let resp = api
        .http
        .post(format!("{}/v1/jobs/{id}/cancel", api.base))
        .bearer_auth(&api.key)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_queued_job_never_runs() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    // No worker yet: the job waits in the queue.
    let id = api.submit_ok(&chat_body("never run me")).await?;
    assert_eq!(
        Api::new(ingest.base_url(), OTHER_KEY).job(&id).await?.0,
        404
    );
    let (other, _) = cancel(&Api::new(ingest.base_url(), OTHER_KEY), &id).await?;
    assert_eq!(other, 404, "another tenant cannot cancel it");
    let (code, job) = cancel(&api, &id).await?;
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["error"]["code"], "cancelled");
    let (again, _) = cancel(&api, &id).await?;
    assert_eq!(again, 200, "cancelling twice is harmless");

    // A worker now takes the queue; a job submitted after the cancelled one completes, so
    // the cancelled one was delivered first and acknowledged without an upstream call.
    let worker = env.worker().await?;
    let later = api.submit_ok(&chat_body("run me")).await?;
    let done = api
        .wait_status(&later, &["completed", "failed"], LONG)
        .await?;
    assert_eq!(done["status"], "completed");
    let queue = env.queue().await?;
    wait_jobs_settled(&queue, LONG).await?;
    assert_eq!(
        sim.counters().per_endpoint.chat_completions,
        1,
        "only the second job reached upstream"
    );
    let (_, job) = api.job(&id).await?;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["attempts"], 0);

    // A finished job cannot be cancelled.
    let (code, body) = cancel(&api, &later).await?;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_aborts_the_upstream_call() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let id = api
        .submit_ok(&chat_body("think for a long time [[sim:sleep=60000]]"))
        .await?;
    api.wait_status(&id, &["in_progress"], LONG).await?;
    wait_until(LONG, || async { Ok(sim.counters().in_flight == 1) }).await?;
    let (code, job) = cancel(&api, &id).await?;
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["status"], "cancelled");
    wait_until(LONG, || async { Ok(sim.counters().aborted == 1) }).await?;
    assert_eq!(sim.counters().in_flight, 0);
    assert_eq!(sim.counters().completed, 0);
    // The message is settled: nothing is redelivered to call upstream again.
    let queue = env.queue().await?;
    wait_jobs_settled(&queue, LONG).await?;
    assert_eq!(sim.counters().per_endpoint.chat_completions, 1);
    assert_eq!(api.job(&id).await?.1["status"], "cancelled");
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_deadline_passed_in_the_queue_expires_without_an_upstream_call() -> Result<()> {
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    let ingest = env.ingest().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let mut body = chat_body("too late");
    body["deadline_s"] = json!(1);
    let late = api.submit_ok(&body).await?;
    let mut body = chat_body("in time");
    body["deadline_s"] = json!(600);
    let timely = api.submit_ok(&body).await?;
    // Let the first deadline pass while nothing consumes the queue.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let worker = env.worker().await?;
    let job = api
        .wait_status(&late, &["completed", "failed", "expired"], LONG)
        .await?;
    assert_eq!(job["status"], "expired", "{job}");
    assert_eq!(job["error"]["code"], "deadline_exceeded");
    let job = api
        .wait_status(&timely, &["completed", "failed", "expired"], LONG)
        .await?;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(
        sim.counters().per_endpoint.chat_completions,
        1,
        "the expired job never reached upstream"
    );
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

//! With no `OTEL_EXPORTER_OTLP_ENDPOINT`, nothing is exported and nothing is injected: the
//! upstream sees no `traceparent` of Sluice's making. (Its own test binary: the trace
//! exporter is process-wide.)

use std::time::Duration;

use anyhow::Result;
use sluice_e2e::{ACME_KEY, Api, TestEnv, chat_body, otlp::Proxy};
use sluice_sim::SimConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_no_span_is_built_or_propagated() -> Result<()> {
    assert_eq!(
        sluice_telemetry::trace::Export::from_env("x")
            .ok()
            .flatten(),
        None
    );
    assert!(sluice_telemetry::init("sluice-e2e", "warn").is_none());
    assert!(!sluice_telemetry::trace::exporting());
    let mut env = TestEnv::new();
    let sim = env.sim(SimConfig::default()).await?;
    let proxy = Proxy::start(sim.base_url()).await?;
    env.cfg.upstream.base_url = format!("{}/v1", proxy.base_url());
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);
    let id = api.submit_ok(&chat_body("no traces")).await?;
    api.wait_status(&id, &["completed"], Duration::from_secs(30))
        .await?;
    let seen = proxy.seen();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|h| h.get("traceparent").is_none()));
    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

//! One trace from the client through the broker to the provider and the webhook: a job
//! submitted with a `traceparent` is exported (OTLP/HTTP, to a collector in this test) as
//! ingest's server span, the PRODUCER publish span, the worker's CONSUMER process span and
//! the GenAI client span, all in the client's trace; the upstream and the webhook receiver
//! see that trace id in their `traceparent`.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use sluice_e2e::{
    ACME_KEY, Api, TestEnv, chat_body,
    otlp::{Collector, Proxy, SpanRecord},
    receiver::Receiver,
    wait_until,
};
use sluice_sim::SimConfig;

const LONG: Duration = Duration::from_secs(30);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn one<'a>(
    spans: &'a [SpanRecord],
    what: &str,
    f: impl Fn(&SpanRecord) -> bool,
) -> Result<&'a SpanRecord> {
    spans.iter().find(|s| f(s)).with_context(|| {
        format!(
            "no {what} span among {:#?}",
            spans.iter().map(|s| (&s.name, s.kind)).collect::<Vec<_>>()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_client_through_the_broker_to_the_provider_and_the_webhook()
-> Result<()> {
    let collector = Collector::start().await?;
    let export = sluice_telemetry::trace::Export {
        traces_url: collector.traces_url(),
        service_name: "sluice-e2e".into(),
    };
    let tracing = sluice_telemetry::init_with("info", Some(&export))
        .context("the test process installs the trace exporter")?;

    let mut env = TestEnv::new();
    env.cfg.webhooks.allow_private = vec!["127.0.0.1".into(), "::1".into()];
    // Limits for the admission span to name: a tenant request rate and the in-flight cap.
    env.cfg.governance.tenant.requests = 10_000;
    env.cfg.governance.max_in_flight_per_tenant = 100;
    let sim = env.sim(SimConfig::default()).await?;
    let proxy = Proxy::start(sim.base_url()).await?;
    env.cfg.upstream.base_url = format!("{}/v1", proxy.base_url());
    let rx = Receiver::start().await?;
    let ingest = env.ingest().await?;
    let worker = env.worker().await?;
    let api = Api::new(ingest.base_url(), ACME_KEY);

    let mut body = chat_body("trace me");
    body["webhook"] = json!({ "url": rx.url("job") });
    let resp = api
        .http
        .post(format!("{}/v1/jobs", api.base))
        .bearer_auth(ACME_KEY)
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await?["id"]
        .as_str()
        .context("id")?
        .to_string();
    api.wait_status(&id, &["completed"], LONG).await?;
    wait_until(LONG, || async { Ok(!rx.received("job").is_empty()) }).await?;

    // The upstream and the webhook receiver were called within the client's trace.
    let upstream_tp: Vec<String> = proxy
        .seen()
        .iter()
        .filter_map(|h| h.get("traceparent")?.to_str().ok().map(str::to_string))
        .collect();
    assert!(
        upstream_tp.iter().any(|tp| tp.contains(TRACE)),
        "the simulator saw the trace: {upstream_tp:?}"
    );
    let hook = &rx.received("job")[0];
    let hook_tp = hook
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        hook_tp.contains(TRACE),
        "the webhook carries the trace: {hook_tp:?}"
    );

    let mut spans = Vec::new();
    wait_until(LONG, || {
        tracing.flush();
        spans = collector.spans();
        let done = spans.iter().filter(|s| s.trace_id == TRACE).count() >= 6;
        async move { Ok(done) }
    })
    .await?;
    let ours: Vec<SpanRecord> = spans.into_iter().filter(|s| s.trace_id == TRACE).collect();
    let server = one(&ours, "ingest server", |s| {
        s.kind == 2 && s.name == "POST /v1/jobs"
    })?;
    assert_eq!(
        server.parent_span_id, "00f067aa0ba902b7",
        "a child of the client's span"
    );
    assert_eq!(server.attr("sluice.tenant"), Some("acme"));
    assert_eq!(server.attr("sluice.job_id"), Some(id.as_str()));
    assert_eq!(server.attr("http.response.status_code"), Some("202"));
    let admission = one(&ours, "admission", |s| s.name == "admission")?;
    assert_eq!(
        admission.parent_span_id, server.span_id,
        "inside the request"
    );
    assert_eq!(
        admission.attr("sluice.admission.limits"),
        Some("tenant-requests,in-flight"),
        "names the limits that applied"
    );
    assert_eq!(admission.attr("sluice.admission.outcome"), Some("admitted"));
    assert_eq!(
        admission.attr("sluice.admission.tightest"),
        Some("tenant-requests")
    );
    let publish = one(&ours, "publish", |s| {
        s.kind == 4 && s.name == "publish jobs"
    })?;
    assert_eq!(publish.attr("messaging.system"), Some("nats"));
    assert_eq!(publish.attr("messaging.message.id"), Some(id.as_str()));
    let process = one(&ours, "process", |s| {
        s.kind == 5 && s.name == "process jobs"
    })?;
    assert_eq!(
        process.parent_span_id, publish.span_id,
        "processed in the publish's context"
    );
    assert_eq!(
        process.links,
        vec![TRACE.to_string()],
        "linked to the creation context"
    );
    assert_eq!(process.attr("messaging.system"), Some("nats"));
    assert!(
        process
            .attr("messaging.destination.name")
            .is_some_and(|d| d.ends_with("jobs.normal.acme"))
    );
    assert!(
        process
            .attr("messaging.consumer.group.name")
            .is_some_and(|c| c.ends_with("workers-normal"))
    );
    assert_eq!(process.attr("messaging.message.id"), Some(id.as_str()));
    assert_eq!(process.attr("sluice.tenant"), Some("acme"));
    assert_eq!(process.attr("sluice.priority"), Some("normal"));
    let chat = one(&ours, "GenAI client", |s| {
        s.kind == 3 && s.name.starts_with("chat ")
    })?;
    assert_eq!(chat.parent_span_id, process.span_id);
    assert_eq!(chat.attr("gen_ai.operation.name"), Some("chat"));
    assert_eq!(chat.attr("gen_ai.provider.name"), Some("openai"));
    assert!(chat.attr("gen_ai.request.model").is_some());
    assert!(chat.attr("gen_ai.response.model").is_some());
    let tokens = |k: &str| {
        chat.attr(k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        tokens("gen_ai.usage.input_tokens") > 0,
        "{:?}",
        chat.attributes
    );
    assert!(
        tokens("gen_ai.usage.output_tokens") > 0,
        "{:?}",
        chat.attributes
    );
    assert!(
        chat.attr("gen_ai.response.finish_reasons")
            .is_some_and(|r| !r.is_empty())
    );
    // The webhook's delivery is processed in the same trace.
    one(&ours, "webhook delivery", |s| {
        s.kind == 5 && s.name == "process hooks"
    })?;
    // No content: the prompt appears in no attribute.
    assert!(
        ours.iter()
            .all(|s| s.attributes.values().all(|v| !v.contains("trace me")))
    );

    worker.shutdown().await;
    ingest.shutdown(Duration::from_secs(5)).await;
    tracing.shutdown();
    Ok(())
}

//! What a worker reports about each delivery: the CONSUMER span the job runs in (see
//! `sluice_queue::trace`), tenant / job id / priority / attempt on it, and the job metrics:
//!
//! - `sluice_job_queue_wait_seconds{priority}`: publish to first delivery;
//! - `sluice_job_duration_seconds{priority, outcome}`: publish to the delivery's settlement,
//!   for deliveries that end the job (`done`, `dead_letter`);
//! - `sluice_worker_in_flight`, `sluice_worker_free_slots`: slots in use and free.

use std::sync::atomic::{AtomicI64, Ordering};

use async_nats::jetstream::Message;
use sluice_store::now_ms;
use tracing::Span;

static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);

/// Per delivery: when it was published and its class, for the metrics at its end.
pub struct Observed {
    published_ms: Option<u64>,
    priority: &'static str,
    pub span: Span,
}

/// Called as a message is handed to a slot.
pub fn delivered(shared: &crate::Shared, msg: &Message) -> Observed {
    let priority = shared
        .queue
        .subjects()
        .priority_of(&msg.subject)
        .map_or("unknown", |p| p.as_str());
    let info = msg.info().ok();
    let published_ms = info
        .as_ref()
        .and_then(|i| u64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).ok());
    if let (Some(p), Some(i)) = (published_ms, &info)
        && i.delivered <= 1
    {
        metrics::histogram!("sluice_job_queue_wait_seconds", "priority" => priority)
            .record(now_ms().saturating_sub(p) as f64 / 1000.0);
    }
    let span = sluice_queue::trace::process_span(
        "jobs",
        info.as_ref().map_or("", |i| i.consumer),
        &msg.subject,
        msg.headers.as_ref(),
        None,
    );
    if sluice_telemetry::trace::exporting() {
        use sluice_telemetry::trace::set_attribute;
        let tenant = msg.subject.rsplit('.').next().unwrap_or_default();
        set_attribute(&span, "sluice.tenant", tenant.to_string());
        set_attribute(&span, "sluice.priority", priority);
        if let Some(id) = msg.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")) {
            set_attribute(&span, "sluice.job_id", id.to_string());
        }
        if let Some(i) = &info {
            set_attribute(&span, "sluice.attempt", i.delivered);
            if let Some(p) = published_ms {
                set_attribute(
                    &span,
                    "sluice.queue_wait_ms",
                    now_ms().saturating_sub(p) as i64,
                );
            }
        }
    }
    slots(shared, 1);
    Observed {
        published_ms,
        priority,
        span,
    }
}

/// Called with how the delivery ended the job (`done`, `dead_letter`), if it did.
pub fn ended(obs: &Observed, ended: Option<&'static str>) {
    let Some(label) = ended else {
        return;
    };
    if let Some(p) = obs.published_ms {
        metrics::histogram!("sluice_job_duration_seconds", "priority" => obs.priority, "outcome" => label)
            .record(now_ms().saturating_sub(p) as f64 / 1000.0);
    }
    if label == "dead_letter" {
        sluice_telemetry::trace::set_error(&obs.span, "dead_letter");
    }
}

/// Called once the delivery is settled.
pub fn settled(shared: &crate::Shared) {
    slots(shared, -1);
}

/// Slots in use now.
pub fn in_flight() -> u64 {
    IN_FLIGHT.load(Ordering::Relaxed).max(0) as u64
}

fn slots(shared: &crate::Shared, delta: i64) {
    let now = IN_FLIGHT.fetch_add(delta, Ordering::Relaxed) + delta;
    metrics::gauge!("sluice_worker_in_flight").set(now as f64);
    let total = shared.cfg.worker.concurrency as i64;
    metrics::gauge!("sluice_worker_free_slots").set((total - now).max(0) as f64);
}

/// A job's answer was recorded: its token usage and cost per tenant and model, and the
/// job's duration as Sluice served it.
///
/// - `gen_ai_client_token_usage{gen_ai_token_type, gen_ai_request_model, tenant}`: a
///   histogram of tokens per answer (`input` / `output`), the GenAI conventions' name;
/// - `sluice_tokens_total{type, model, tenant}` and `sluice_cost_microusd_total{model, tenant}`
///   (priced by `governance.prices`);
/// - `gen_ai_server_request_duration_seconds{gen_ai_request_model}`: submission to answer.
pub fn completed(shared: &crate::Shared, env: &sluice_protocol::JobEnvelope, response: &[u8]) {
    if sluice_telemetry::redact::content_logging() {
        // Opt-in only, and redacted first (see `sluice_telemetry::redact`).
        let text =
            |b: &[u8]| sluice_telemetry::redact::redact(&String::from_utf8_lossy(b)).into_owned();
        tracing::debug!(target: "sluice::content", job = %env.id, tenant = %env.tenant, request = %text(&env.request), response = %text(response), "job content");
    }
    let facts = sluice_providers::genai::AnswerFacts::read(response);
    metrics::histogram!("gen_ai_server_request_duration_seconds", "gen_ai_request_model" => env.model.clone())
        .record(now_ms().saturating_sub(env.created_at_ms) as f64 / 1000.0);
    let Some(usage) = facts.usage else { return };
    let (input, output) = (
        usage.prompt_tokens.unwrap_or(0),
        usage.completion_tokens.unwrap_or(0),
    );
    for (kind, n) in [("input", input), ("output", output)] {
        metrics::histogram!("gen_ai_client_token_usage", "gen_ai_token_type" => kind, "gen_ai_request_model" => env.model.clone(), "tenant" => env.tenant.clone())
            .record(n as f64);
        metrics::counter!("sluice_tokens_total", "type" => kind, "model" => env.model.clone(), "tenant" => env.tenant.clone())
            .increment(n);
    }
    // Priced as budgets settle it; counters are integers, so cost accrues in micro-dollars.
    let micro_usd = sluice_governance::estimate::cost_micro_usd(
        &shared.cfg.governance,
        &env.model,
        sluice_governance::estimate::Usage {
            prompt_tokens: input,
            completion_tokens: output,
        },
    );
    shared
        .summary
        .usage(&env.tenant, input, output, micro_usd as f64 / 1e6);
    if shared.cfg.governance.prices.contains_key(&env.model) {
        metrics::counter!("sluice_cost_microusd_total", "model" => env.model.clone(), "tenant" => env.tenant.clone())
            .increment(micro_usd);
    }
}

/// Every `every`, the queue gauges per priority class, from the class's consumer:
/// `sluice_queue_depth_messages` (not yet delivered), `sluice_consumer_lag_messages`
/// (undelivered + unacknowledged: what KEDA scales on) and `sluice_queue_oldest_age_seconds`.
pub async fn poll_queues(
    queue: sluice_queue::Queue,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        for p in sluice_protocol::Priority::ALL {
            let read = tokio::time::timeout(every, queue.backlog(p)).await;
            let Ok(Ok(b)) = read else { continue };
            let label = p.as_str();
            metrics::gauge!("sluice_queue_depth_messages", "priority" => label)
                .set(b.pending as f64);
            metrics::gauge!("sluice_consumer_lag_messages", "priority" => label)
                .set((b.pending + b.ack_pending) as f64);
            let age = b.oldest_ms.map_or(0, |o| now_ms().saturating_sub(o));
            metrics::gauge!("sluice_queue_oldest_age_seconds", "priority" => label)
                .set(age as f64 / 1000.0);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

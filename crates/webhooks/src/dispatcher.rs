//! The dispatcher: consumes `HOOKS` and makes each delivery.
//!
//! Deliveries are scheduled fairly ([`crate::fair`]): each takes a slot of its tenant's share
//! of `webhooks.concurrency` and one of its endpoint's `webhooks.endpoint_concurrency`, and
//! passes the endpoint's circuit breaker; one that cannot is NAKed with a short delay (or
//! the breaker's remaining cool-down) and waits in `HOOKS`. That is not an attempt.
//!
//! Attempts are numbered from the failures recorded for the delivery in the store
//! (`{p}hookatt:{<job>}`), not from the broker's delivery count, so a redelivery after a
//! dispatcher crash, a held delivery and a deferred one spend none. Success (`2xx`) acks;
//! `410 Gone` disables the endpoint and acks; anything else (`3xx` included, since redirects
//! are not followed, `4xx`, `5xx`, timeouts, refused addresses) is recorded as a failed
//! attempt and NAKs with the next delay of `webhooks.schedule_ms` plus jitter, or the
//! receiver's `Retry-After` if longer. After the schedule the delivery goes to the
//! dead-letter stream (`dlq.webhook_exhausted.<tenant>`, listed and replayed like job dead
//! letters), as does one older than the whole schedule (held behind an open breaker that
//! long). Every attempt is written to the endpoint's delivery log.
//!
//! Our own infrastructure failing is not an attempt: when the store cannot be read (the
//! endpoint, the job's webhook, the attempts) or the dead letter cannot be written, the
//! dispatcher keeps the message — in-progress heartbeats, backoff, the same step again — for
//! up to [`HOLD_LIMIT`], then NAKs it. The consumer sets no server-side `max_deliver`: the
//! dispatcher dead-letters on its own once the schedule is spent, and a server cut-off would
//! leave the message in `HOOKS` for ever.
//!
//! Beside it runs the outbox sweeper ([`crate::outbox::run`]), which enqueues again the
//! events a full `HOOKS` refused.

use std::{sync::Arc, time::Duration};
use tracing::Instrument;

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind, consumer},
};
use futures_util::StreamExt;
use rand::Rng;
use serde_json::json;
use sluice_config::WebhooksConfig;
use sluice_queue::Queue;
use sluice_store::{Store, now_ms};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    HookError,
    emit::{Delivery, ensure_stream},
    fair::{Fair, Wait},
    sign::sign,
    ssrf::{self, Policy, literal_ip},
};

/// Longest `Retry-After` honoured (a day).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Longest a delivery is kept in the dispatcher waiting for the store or the dead-letter
/// stream; past it the message is NAKed (and that delivery counts).
pub const HOLD_LIMIT: Duration = Duration::from_secs(300);
/// Pauses between tries of a held step: doubling from the first to the last.
const HOLD_FIRST: Duration = Duration::from_millis(250);
const HOLD_MAX: Duration = Duration::from_secs(5);

struct Ctx {
    cfg: WebhooksConfig,
    queue: Queue,
    store: Store,
    http: reqwest::Client,
    policy: Arc<Policy>,
    fair: Arc<Fair>,
}

/// What one attempt came to.
#[derive(Debug)]
enum Attempt {
    Delivered(u16),
    Gone,
    Failed {
        status: Option<u16>,
        reason: &'static str,
        retry_after: Option<Duration>,
    },
    /// Nothing to deliver to (endpoint deleted or disabled, not subscribed, job expired).
    Skipped(&'static str),
}

/// Runs until `stop`; in-flight deliveries finish (bounded by the attempt timeout).
pub async fn run(cfg: WebhooksConfig, queue: Queue, store: Store, stop: CancellationToken) {
    let policy = Arc::new(Policy::new(&cfg.allow_private));
    let http = match ssrf::client_builder(policy.clone())
        .tcp_nodelay(true)
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
        .user_agent("Sluice-Webhooks/1")
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; dispatcher not running");
            return;
        }
    };
    let ctx = Arc::new(Ctx {
        fair: Fair::new(&cfg),
        cfg,
        queue,
        store,
        http,
        policy,
    });
    let Some(consumer) = setup(&ctx, &stop).await else {
        return;
    };
    let slots = Arc::new(Semaphore::new(ctx.cfg.concurrency));
    let tasks = TaskTracker::new();
    tasks.spawn(crate::outbox::run(
        ctx.cfg.clone(),
        ctx.queue.clone(),
        ctx.store.clone(),
        stop.clone(),
    ));
    while !stop.is_cancelled() {
        let free = slots.available_permits().max(1);
        let batch = consumer
            .fetch()
            .max_messages(free)
            .expires(Duration::from_millis(500))
            .messages()
            .await;
        let mut msgs = match batch {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "webhook fetch failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = stop.cancelled() => break,
                }
            }
        };
        while let Some(m) = msgs.next().await {
            let Ok(msg) = m else { continue };
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = stop.cancelled() => break,
            };
            let ctx = ctx.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                let _permit = permit;
                handle(&ctx, msg, &stop).await;
            });
        }
    }
    tasks.close();
    let _ = tokio::time::timeout(ctx.cfg.timeout + Duration::from_secs(2), tasks.wait()).await;
}

async fn setup(
    ctx: &Ctx,
    stop: &CancellationToken,
) -> Option<consumer::Consumer<consumer::pull::Config>> {
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            ensure_stream(&ctx.queue, &ctx.cfg).await?;
            let s = ctx.queue.subjects();
            let stream = ctx
                .queue
                .jetstream()
                .get_stream(s.hooks_stream())
                .await
                .map_err(q)?;
            let name = s.hooks_consumer();
            stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    name: Some(name),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: ctx.cfg.timeout + Duration::from_secs(15),
                    // No server cut-off (see the module docs).
                    max_deliver: -1,
                    max_ack_pending: 100_000,
                    ..Default::default()
                })
                .await
                .map_err(q)
        };
        match attempt.await {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot set up the webhook consumer yet; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn q<E: std::fmt::Display>(e: E) -> HookError {
    HookError::Queue(sluice_queue::QueueError::Broker(e.to_string()))
}

/// Keeps a message whose step failed on our side: a heartbeat, a pause, `true` to try the
/// step again; `false` when the hold is over (its limit, or the dispatcher stopping) and the
/// message went back to the broker (NAKed with `then`).
struct Hold {
    since: tokio::time::Instant,
    pause: Duration,
}

impl Hold {
    fn new() -> Hold {
        Hold {
            since: tokio::time::Instant::now(),
            pause: HOLD_FIRST,
        }
    }

    async fn wait(
        &mut self,
        msg: &jetstream::Message,
        stop: &CancellationToken,
        then: Duration,
    ) -> bool {
        let held = self.since.elapsed() < HOLD_LIMIT && !stop.is_cancelled() && {
            metrics::counter!("sluice_webhook_holds_total").increment(1);
            if let Err(e) = msg.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "webhook heartbeat failed");
            }
            let pause = self.pause;
            self.pause = (self.pause * 2).min(HOLD_MAX);
            tokio::select! {
                _ = tokio::time::sleep(pause) => true,
                _ = stop.cancelled() => false,
            }
        };
        if !held && let Err(e) = msg.ack_with(AckKind::Nak(Some(then))).await {
            tracing::debug!(error = %e, "releasing a held webhook delivery failed");
        }
        held
    }
}

/// What the store says about a delivery before it is attempted.
enum Prepared {
    /// Nothing to deliver to (endpoint deleted or disabled, not subscribed, job expired).
    Skip(&'static str),
    Send {
        url: String,
        secrets: Vec<String>,
        /// Failed attempts recorded so far.
        failed: u64,
    },
}

async fn handle(ctx: &Ctx, msg: jetstream::Message, stop: &CancellationToken) {
    let stream_seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let Ok(d) = serde_json::from_slice::<Delivery>(&msg.payload) else {
        tracing::warn!("undecodable webhook delivery; terminated");
        let _ = msg.ack_with(AckKind::Term).await;
        return;
    };
    // A tenant holds at most its share of the dispatcher.
    let _tenant = match ctx.fair.tenant(&d.tenant) {
        Ok(slot) => slot,
        Err(wait) => return defer(ctx, &msg, wait).await,
    };
    let span = sluice_queue::trace::process_span(
        "hooks",
        msg.info().map_or("", |i| i.consumer),
        &msg.subject,
        msg.headers.as_ref(),
        None,
    );
    let retries = ctx.cfg.schedule.len() as u64;
    // When the message entered HOOKS (a replay enters afresh).
    let now_s = now_ms() / 1000;
    let enqueued_s = msg.info().map_or(now_s, |i| {
        u64::try_from(i.published.unix_timestamp()).unwrap_or(now_s)
    });
    let mut hold = Hold::new();
    let prepared = loop {
        match prepare(ctx, &d).await {
            Ok(p) => break p,
            Err(e) => {
                // Our own store is unavailable: not the receiver's fault, not an attempt.
                tracing::warn!(error = %e, "webhook delivery could not be prepared; holding it");
                if !hold.wait(&msg, stop, Duration::from_secs(1)).await {
                    return;
                }
            }
        }
    };
    let (result, attempt) = match prepared {
        Prepared::Skip(why) => (Attempt::Skipped(why), 1),
        // Past the schedule already: the last attempt failed but could not be
        // dead-lettered, or it waited longer than the whole schedule. Move it without
        // calling the receiver again.
        Prepared::Send { failed, .. }
            if failed > retries || now_s > enqueued_s + max_age_s(&ctx.cfg) =>
        {
            let exhausted = Attempt::Failed {
                status: None,
                reason: "exhausted",
                retry_after: None,
            };
            (exhausted, retries + 1)
        }
        Prepared::Send {
            url,
            secrets,
            failed,
        } => {
            let attempt = failed + 1;
            let Ok(parsed) = crate::ssrf::parse(&url) else {
                let invalid = Attempt::Failed {
                    status: None,
                    reason: "invalid_url",
                    retry_after: None,
                };
                return settle(ctx, &msg, &d, stream_seq, attempt, invalid, &span, stop).await;
            };
            // One endpoint: a registered one, or the host of per-job webhook URLs.
            let endpoint = if d.target == "job" {
                format!(
                    "job:{}:{}",
                    parsed.host_str().unwrap_or_default(),
                    parsed.port_or_known_default().unwrap_or(0)
                )
            } else {
                format!("ep:{}", d.target)
            };
            let lane = match ctx.fair.endpoint(&endpoint) {
                Ok(lane) => lane,
                Err(wait) => return defer(ctx, &msg, wait).await,
            };
            let r = send(ctx, &d, parsed, &secrets)
                .instrument(span.clone())
                .await;
            lane.report(matches!(r, Attempt::Delivered(_)));
            (r, attempt)
        }
    };
    settle(ctx, &msg, &d, stream_seq, attempt, result, &span, stop).await;
}

/// A delivery gets no slot now: back to `HOOKS` for a while, not an attempt.
async fn defer(ctx: &Ctx, msg: &jetstream::Message, wait: Wait) {
    metrics::counter!("sluice_webhook_deferrals_total", "reason" => wait.as_str()).increment(1);
    let delay = match wait {
        Wait::CircuitOpen(left) => left,
        // A slot frees when a delivery ends: at most one attempt's time limit.
        Wait::TenantShare | Wait::EndpointBusy => {
            (ctx.cfg.timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(2))
        }
    };
    let jitter = rand::rng().random_range(0.0..=0.25);
    let delay = delay + delay.mul_f64(jitter);
    if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::debug!(error = %e, "deferring a webhook delivery failed; it is redelivered");
    }
}

/// The longest a delivery is kept: its whole schedule with the most jitter and one longest
/// `Retry-After`, plus a day.
fn max_age_s(cfg: &WebhooksConfig) -> u64 {
    let schedule: Duration = cfg.schedule.iter().sum();
    schedule.mul_f64(1.0 + cfg.jitter).as_secs() + MAX_RETRY_AFTER.as_secs() + 24 * 3600
}

/// Records what the attempt came to, logs it, and acks, NAKs or dead-letters the message.
#[allow(clippy::too_many_arguments)]
async fn settle(
    ctx: &Ctx,
    msg: &jetstream::Message,
    d: &Delivery,
    stream_seq: u64,
    attempt: u64,
    result: Attempt,
    span: &tracing::Span,
    stop: &CancellationToken,
) {
    let retries = ctx.cfg.schedule.len() as u64;
    let mut hold = Hold::new();
    let (outcome, ack, next) = match &result {
        Attempt::Delivered(_) => ("delivered", AckKind::Ack, None),
        Attempt::Skipped(_) => ("skipped", AckKind::Ack, None),
        Attempt::Gone => {
            if d.target != "job"
                && let Err(e) = ctx.store.disable_endpoint(&d.target).await
            {
                tracing::warn!(error = %e, "cannot disable a gone endpoint");
            }
            ("gone", AckKind::Ack, None)
        }
        Attempt::Failed { retry_after, .. } if attempt <= retries => {
            let delay = next_delay(&ctx.cfg, attempt, *retry_after);
            ("retry", AckKind::Nak(Some(delay)), Some(delay))
        }
        Attempt::Failed { .. } => ("exhausted", AckKind::Term, None),
    };
    if matches!(result, Attempt::Failed { reason, .. } if reason != "exhausted")
        && let Err(e) = ctx
            .store
            .hook_attempt_failed(d.job_id, &d.attempts_field(), max_age_s(&ctx.cfg))
            .await
    {
        // The attempt is made again under the same number: at least once, never skipped.
        tracing::warn!(error = %e, "a failed webhook attempt could not be recorded");
    }
    metrics::counter!("sluice_webhook_attempts_total", "outcome" => outcome).increment(1);
    sluice_telemetry::trace::set_attribute(span, "sluice.webhook.outcome", outcome);
    match &result {
        Attempt::Skipped(why) => tracing::debug!(why, "webhook delivery skipped"),
        // Logged when it was exhausted.
        Attempt::Failed {
            reason: "exhausted",
            ..
        } => {}
        _ => log_attempt(ctx, d, attempt, &result, outcome, next).await,
    }
    if outcome == "exhausted" {
        let last = match &result {
            Attempt::Failed {
                status: Some(s), ..
            } => format!("HTTP {s}"),
            Attempt::Failed { reason, .. } => (*reason).to_string(),
            _ => String::new(),
        };
        let error = format!("The webhook delivery failed on every attempt (last: {last}).");
        while let Err(e) = dead_letter(ctx, d, msg, stream_seq, attempt, &error).await {
            tracing::warn!(error = %e, "cannot dead-letter an exhausted webhook; holding it");
            if !hold.wait(msg, stop, Duration::from_secs(5)).await {
                return;
            }
        }
        // A replay of the dead letter gets a fresh schedule.
        if let Err(e) = ctx
            .store
            .hook_attempts_reset(d.job_id, &d.attempts_field())
            .await
        {
            tracing::warn!(error = %e, "the dead-lettered delivery's attempts were not reset; a replay of it is dead-lettered again");
        }
    }
    if let Err(e) = msg.ack_with(ack).await {
        tracing::debug!(error = %e, "settling a webhook delivery failed; it is redelivered");
    }
}

/// The delay before retry `attempt` (1-based): the schedule's entry plus jitter, or the
/// receiver's `Retry-After` if that is longer.
pub fn next_delay(cfg: &WebhooksConfig, attempt: u64, retry_after: Option<Duration>) -> Duration {
    let idx = usize::try_from(attempt.saturating_sub(1))
        .unwrap_or(usize::MAX)
        .min(cfg.schedule.len().saturating_sub(1));
    let base = cfg.schedule.get(idx).copied().unwrap_or_default();
    let jitter = if cfg.jitter > 0.0 {
        rand::rng().random_range(0.0..=cfg.jitter)
    } else {
        0.0
    };
    let scheduled = base + base.mul_f64(jitter);
    scheduled.max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))
}

async fn prepare(ctx: &Ctx, d: &Delivery) -> Result<Prepared, HookError> {
    let (url, secrets) = if d.target == "job" {
        match ctx.store.job_hook(d.job_id).await? {
            Some((url, secret)) => (url, vec![secret]),
            None => return Ok(Prepared::Skip("the job and its webhook expired")),
        }
    } else {
        let Some(ep) = ctx.store.endpoint(&d.target).await? else {
            return Ok(Prepared::Skip("endpoint deleted"));
        };
        if ep.disabled {
            return Ok(Prepared::Skip("endpoint disabled"));
        }
        if !ep.events.is_empty() && !ep.events.contains(&d.kind) {
            return Ok(Prepared::Skip("endpoint not subscribed to this event"));
        }
        let mut secrets = vec![ep.secret];
        if let Some((old, until)) = ep.old_secret
            && until > now_ms()
        {
            secrets.push(old);
        }
        (ep.url, secrets)
    };
    let failed = ctx
        .store
        .hook_attempts(d.job_id, &d.attempts_field())
        .await?;
    Ok(Prepared::Send {
        url,
        secrets,
        failed,
    })
}

/// One attempt: sign, POST, classify the answer.
async fn send(ctx: &Ctx, d: &Delivery, parsed: reqwest::Url, secrets: &[String]) -> Attempt {
    if literal_ip(&parsed).is_some_and(|ip| !ctx.policy.permits(ip)) {
        return Attempt::Failed {
            status: None,
            reason: "address_refused",
            retry_after: None,
        };
    }
    let body = d.payload().to_string().into_bytes();
    let ts = now_ms() / 1000;
    let sigs: Vec<String> = secrets
        .iter()
        .filter_map(|s| sign(s, &d.event_id, ts, &body))
        .collect();
    let req = ctx
        .http
        .post(parsed)
        .header("content-type", "application/json")
        .header("webhook-id", &d.event_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sigs.join(" "))
        .body(body);
    let req = sluice_telemetry::trace::headers_of(&tracing::Span::current())
        .into_iter()
        .fold(req, |r, (name, value)| r.header(name, value));
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            match status {
                200..=299 => Attempt::Delivered(status),
                410 => Attempt::Gone,
                300..=399 => Attempt::Failed {
                    status: Some(status),
                    reason: "redirect",
                    retry_after: None,
                },
                _ => Attempt::Failed {
                    status: Some(status),
                    reason: "http_error",
                    retry_after,
                },
            }
        }
        Err(e) => {
            let reason = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else {
                "transport"
            };
            Attempt::Failed {
                status: None,
                reason,
                retry_after: None,
            }
        }
    }
}

async fn log_attempt(
    ctx: &Ctx,
    d: &Delivery,
    attempt: u64,
    result: &Attempt,
    outcome: &str,
    next: Option<Duration>,
) {
    let (status, reason) = match result {
        Attempt::Delivered(s) => (Some(*s), None),
        Attempt::Gone => (Some(410), None),
        Attempt::Failed { status, reason, .. } => (*status, Some(*reason)),
        Attempt::Skipped(_) => (None, None),
    };
    if d.target == "job" {
        return;
    }
    let entry = json!({
        "object": "webhook.delivery",
        "webhook_id": d.event_id,
        "type": d.kind,
        "job_id": d.job_id,
        "attempt": attempt,
        "at": now_ms(),
        "status_code": status,
        "outcome": outcome,
        "error": reason,
        "next_attempt_in_ms": next.map(|n| n.as_millis() as u64),
    });
    if let Err(e) = ctx
        .store
        .log_delivery(&d.target, &entry.to_string(), ctx.cfg.log_len)
        .await
    {
        tracing::debug!(error = %e, "delivery log not written");
    }
}

async fn dead_letter(
    ctx: &Ctx,
    d: &Delivery,
    msg: &jetstream::Message,
    seq: u64,
    attempts: u64,
    error: &str,
) -> Result<(), HookError> {
    let s = ctx.queue.subjects();
    let subject = s.dlq("webhook_exhausted", &d.tenant);
    let mut h = HeaderMap::new();
    h.insert(
        "Nats-Msg-Id",
        format!("dlq-{}-{}", s.hooks_stream(), seq).as_str(),
    );
    h.insert("Sluice-Reason", "webhook_exhausted");
    h.insert("Sluice-Attempts", attempts.to_string().as_str());
    h.insert("Sluice-Job-Id", d.job_id.to_string().as_str());
    h.insert("Sluice-Webhook-Target", d.target.as_str());
    h.insert("Sluice-Original-Subject", msg.subject.as_str());
    h.insert("Sluice-Error", error);
    let ack = ctx
        .queue
        .jetstream()
        .publish_with_headers(subject, h, msg.payload.clone())
        .await
        .map_err(q)?;
    tokio::time::timeout(Duration::from_secs(5), ack)
        .await
        .map_err(|_| q("dead-letter ack timed out"))?
        .map_err(q)?;
    metrics::counter!("sluice_webhook_dead_letters_total").increment(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_schedule_with_bounded_jitter_and_retry_after() {
        let cfg = WebhooksConfig {
            schedule: vec![Duration::from_secs(1), Duration::from_secs(60)],
            jitter: 0.2,
            ..WebhooksConfig::default()
        };
        for _ in 0..50 {
            let d = next_delay(&cfg, 1, None);
            assert!(
                d >= Duration::from_millis(1000) && d <= Duration::from_millis(1200),
                "{d:?}"
            );
        }
        let d = next_delay(&cfg, 2, None);
        assert!(d >= Duration::from_secs(60) && d <= Duration::from_secs(72));
        assert_eq!(
            next_delay(&cfg, 1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            next_delay(&cfg, 1, Some(Duration::from_secs(999_999))),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn the_default_schedule_spans_about_three_days() {
        let total: Duration = WebhooksConfig::default().schedule.iter().sum();
        let days = total.as_secs_f64() / 86_400.0;
        assert!((2.5..=3.5).contains(&days), "{days}");
    }
}

//! The broker hop of a trace, after OpenTelemetry's messaging conventions: a PRODUCER span
//! around each publish whose context travels in the message's `traceparent` / `tracestate`
//! headers (the creation context), and a CONSUMER span around each message's processing,
//! a child of that context and linked to it. Attributes: `messaging.system = nats`, the
//! destination (subject), the consumer group (durable consumer), the message id
//! (`Nats-Msg-Id`). Spans are built only while they are exported
//! ([`sluice_telemetry::trace::exporting`]).

use async_nats::HeaderMap;
use tracing::Span;

/// The PRODUCER span of a publish to `subject` with message id `id`. `stream` names the
/// destination in the span name (`jobs`, `hooks`): the subject has the tenant in it.
pub fn publish_span(stream: &'static str, subject: &str, id: impl std::fmt::Display) -> Span {
    if !sluice_telemetry::trace::exporting() {
        return Span::none();
    }
    tracing::info_span!(
        "publish",
        otel.name = %format_args!("publish {stream}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = %subject,
        messaging.message.id = %id,
    )
}

/// Puts `span`'s trace context into the message headers.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    for (name, value) in sluice_telemetry::trace::headers_of(span) {
        headers.insert(name, value.as_str());
    }
}

/// The CONSUMER span of processing one message: a child of the context in its headers
/// (or of `fallback`, the `traceparent` the payload carries), linked to it.
pub fn process_span(
    stream: &'static str,
    consumer: &str,
    subject: &str,
    headers: Option<&HeaderMap>,
    fallback: Option<&str>,
) -> Span {
    if !sluice_telemetry::trace::exporting() {
        return Span::none();
    }
    let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let id = get("Nats-Msg-Id").unwrap_or_default();
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {stream}"),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %subject,
        messaging.consumer.group.name = %consumer,
        messaging.message.id = %id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let parent = get("traceparent").or(fallback);
    let state = get("tracestate");
    sluice_telemetry::trace::set_parent(&span, parent, state);
    sluice_telemetry::trace::link(&span, parent, state);
    sluice_telemetry::trace::record_ids(&span);
    span
}

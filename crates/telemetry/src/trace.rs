//! Distributed traces: OpenTelemetry spans exported over OTLP, and the W3C trace context
//! carried across every hop (HTTP headers, JetStream message headers).
//!
//! Export is on only when the standard variables ask for it: `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) names a collector. `OTEL_EXPORTER_OTLP_PROTOCOL`
//! may be `http/protobuf` (the only protocol built in; anything else leaves export off with a
//! warning), `OTEL_SERVICE_NAME` overrides the process's name and `OTEL_TRACES_SAMPLER` /
//! `OTEL_TRACES_SAMPLER_ARG` pick the sampler (default `parentbased_always_on`). With no
//! endpoint nothing is installed: instrumented call sites check [`exporting`] and build no
//! span at all, so tracing off costs one relaxed load per site.
//!
//! Spans go through a batch processor with a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`,
//! default 2,048) drained by its own thread: a slow or dead collector fills the queue and
//! spans are dropped, a request never waits for it.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{BatchSpanProcessor, SdkTracerProvider},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: call sites build their spans only then.
#[inline]
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Where and as what to export, resolved from the environment (or given by a test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The full traces URL (`…/v1/traces`).
    pub traces_url: String,
    pub service_name: String,
}

impl Export {
    /// The export the standard `OTEL_*` variables ask for, `Ok(None)` when they ask for none,
    /// `Err` with the reason when they ask for something this build cannot do.
    pub fn from_env(default_service: &str) -> Result<Option<Export>, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Export::resolve(&var, default_service)
    }

    fn resolve(
        var: &dyn Fn(&str) -> Option<String>,
        default_service: &str,
    ) -> Result<Option<Export>, String> {
        let traces_url = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => url,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        if protocol != "http/protobuf" {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported (only http/protobuf is built in)"
            ));
        }
        Ok(Some(Export {
            traces_url,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.into()),
        }))
    }
}

/// The tracer provider of an installed export; flushes and stops on [`Tracing::shutdown`].
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Exports every span ended so far (tests), from its own thread like [`Tracing::shutdown`].
    pub fn flush(&self) {
        let provider = self.provider.clone();
        let _ = std::thread::spawn(move || {
            let _ = provider.force_flush();
        })
        .join();
    }

    /// Exports what is still queued (bounded by the export timeout) and stops the exporter.
    /// Runs on its own thread: the exporter's blocking client must not be dropped inside
    /// the async runtime.
    pub fn shutdown(self) {
        let provider = self.provider;
        EXPORTING.store(false, Ordering::Relaxed);
        let _ = std::thread::spawn(move || {
            let _ = provider.shutdown();
        })
        .join();
    }
}

/// Builds the exporter and the `tracing` layer that turns spans into OpenTelemetry spans.
pub(crate) fn layer<S>(
    export: &Export,
) -> Result<(impl tracing_subscriber::Layer<S>, Tracing), String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(export.traces_url.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_resource(
            Resource::builder()
                .with_service_name(export.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("sluice");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false);
    EXPORTING.store(true, Ordering::Relaxed);
    Ok((layer, Tracing { provider }))
}

/// The W3C `traceparent` and `tracestate` of `span`, as header name and value pairs (none
/// when nothing is exported or the span has no valid context).
pub fn headers_of(span: &tracing::Span) -> Vec<(&'static str, String)> {
    if !exporting() {
        return Vec::new();
    }
    let mut out = Pairs(Vec::with_capacity(2));
    TraceContextPropagator::new().inject_context(&span.context(), &mut out);
    out.0
}

/// The `traceparent` of the current span, when spans are exported.
pub fn current_traceparent() -> Option<String> {
    headers_of(&tracing::Span::current())
        .into_iter()
        .find(|(k, _)| *k == "traceparent")
        .map(|(_, v)| v)
}

/// The remote context a `traceparent` (and optional `tracestate`) names, if valid.
pub fn remote(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Context> {
    let carrier = Carrier {
        traceparent: traceparent?,
        tracestate,
    };
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` a child of the remote context, when there is one and spans are exported.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if exporting()
        && let Some(cx) = remote(traceparent, tracestate)
    {
        let _ = span.set_parent(cx);
    }
}

/// Links `span` to the remote context (the messaging conventions' creation-context link).
pub fn link(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if exporting()
        && let Some(cx) = remote(traceparent, tracestate)
    {
        span.add_link(cx.span().span_context().clone());
    }
}

/// Sets an attribute on `span` after it was created (a no-op when nothing is exported).
pub fn set_attribute(
    span: &tracing::Span,
    key: &'static str,
    value: impl Into<opentelemetry::Value>,
) {
    if exporting() {
        span.set_attribute(key, value);
    }
}

/// Marks `span` as failed with a short, content-free reason (an error code).
pub fn set_error(span: &tracing::Span, code: &'static str) {
    if exporting() {
        span.set_status(opentelemetry::trace::Status::error(code));
        span.set_attribute("error.type", code);
    }
}

/// Records the span's trace and span ids as its `trace_id` / `span_id` fields (declared
/// `Empty` by the caller), so log lines written inside it carry them.
pub fn record_ids(span: &tracing::Span) {
    if !exporting() {
        return;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
        span.record("span_id", tracing::field::display(sc.span_id()));
    }
}

struct Pairs(Vec<(&'static str, String)>);

impl Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.0.push(("traceparent", value)),
            "tracestate" if !value.is_empty() => self.0.push(("tracestate", value)),
            _ => {}
        }
    }
}

struct Carrier<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn export_is_off_without_an_endpoint_and_follows_the_standard_variables() {
        assert_eq!(Export::resolve(&env(&[]), "svc"), Ok(None));
        let e = Export::resolve(
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]),
            "svc",
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.traces_url, "http://c:4318/v1/traces");
        assert_eq!(e.service_name, "svc");
        let e = Export::resolve(
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t/x"),
                ("OTEL_SERVICE_NAME", "mine"),
            ]),
            "svc",
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.traces_url, "http://t/x");
        assert_eq!(e.service_name, "mine");
        assert!(
            Export::resolve(
                &env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ]),
                "svc",
            )
            .is_err()
        );
    }

    #[test]
    fn a_valid_traceparent_is_a_remote_context_and_garbage_is_not() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = remote(Some(tp), Some("k=v")).unwrap();
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_remote());
        assert!(remote(Some("00-zz-00f067aa0ba902b7-01"), None).is_none());
        assert!(
            remote(
                Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
                None
            )
            .is_none()
        );
        assert!(remote(None, None).is_none());
    }

    #[test]
    fn nothing_is_injected_while_nothing_is_exported() {
        assert!(headers_of(&tracing::Span::current()).is_empty());
        assert!(current_traceparent().is_none());
    }
}

//! The outermost layer: one server span per request (a child of the client's
//! `traceparent` when spans are exported) and the HTTP metrics.
//!
//! `http_server_request_duration_seconds{method, route, status}` is a histogram (its
//! `_count` is the request count): `route` is the matched route template (`/v1/jobs/{id}`),
//! or `unmatched`, so neither ids nor probing URLs become labels.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use tracing::Instrument;

pub async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let span = if sluice_telemetry::trace::exporting() {
        let span = tracing::info_span!(
            "request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            http.request.method = %method,
            http.route = %route,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        sluice_telemetry::trace::set_parent(&span, header("traceparent"), header("tracestate"));
        sluice_telemetry::trace::record_ids(&span);
        span
    } else {
        tracing::Span::none()
    };
    let resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status();
    sluice_telemetry::trace::set_attribute(
        &span,
        "http.response.status_code",
        i64::from(status.as_u16()),
    );
    if status.is_server_error() {
        sluice_telemetry::trace::set_error(&span, "server_error");
    }
    metrics::histogram!(
        "http_server_request_duration_seconds",
        "method" => method.as_str().to_owned(),
        "route" => route,
        "status" => status.as_str().to_owned(),
    )
    .record(started.elapsed().as_secs_f64());
    resp
}

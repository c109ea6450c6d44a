//! Logging and metrics for every Sluice process.
//!
//! Logs go to stderr through `tracing` (`RUST_LOG` filters, `SLUICE_LOG_FORMAT=json` for
//! JSON lines). Metrics use the `metrics` facade with one process-wide Prometheus recorder;
//! services render it at `GET /metrics`. Log lines never carry prompts, keys or upstream
//! bodies: call sites log ids, tenants, models and error kinds only.

pub mod redact;
pub mod runtime;
pub mod trace;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber (call once from `main`): logs to stderr, and
/// OpenTelemetry spans when the `OTEL_*` variables name a collector (see [`trace`]).
/// `service` is the default `service.name`. Keep the returned value until shutdown and call
/// [`trace::Tracing::shutdown`] on it to flush the last spans.
pub fn init(service: &str, default_filter: &str) -> Option<trace::Tracing> {
    match trace::Export::from_env(service) {
        Ok(export) => init_with(default_filter, export.as_ref()),
        Err(reason) => {
            let t = init_with(default_filter, None);
            tracing::warn!(%reason, "trace export stays off");
            t
        }
    }
}

/// [`init`] with the export given rather than read from the environment (tests).
pub fn init_with(default_filter: &str, export: Option<&trace::Export>) -> Option<trace::Tracing> {
    use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("SLUICE_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Spans are exported whatever `RUST_LOG` says of log lines: the log filter applies to
    // the log layer only, and the trace layer takes Sluice's own spans at info level and up
    // (with `RUST_LOG=warn` a global filter would build no span at all).
    let spans =
        tracing_subscriber::filter::Targets::new().with_target("sluice", tracing::Level::INFO);
    let (otel, tracing, failed) = match export.map(trace::layer) {
        Some(Ok((layer, tracing))) => (Some(layer.with_filter(spans)), Some(tracing), None),
        Some(Err(e)) => (None, None, Some(e)),
        None => (None, None, None),
    };
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let installed = tracing_subscriber::registry()
        .with(otel)
        .with(fmt.with_filter(filter))
        .try_init()
        .is_ok();
    if let Some(e) = failed {
        tracing::warn!(error = %e, "cannot build the trace exporter; export stays off");
    }
    if !installed {
        // Another subscriber came first (tests running several services in one process):
        // spans would go nowhere, so none are built.
        if let Some(t) = tracing {
            t.shutdown();
        }
        return None;
    }
    tracing
}

/// Logging only, without trace export (tools and tests).
pub fn init_logging(default_filter: &str) {
    let _ = init_with(default_filter, None);
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use. Several services in one
/// process (as in tests) share it. `None` only if another recorder was installed first.
pub fn metrics_handle() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|()| handle)
        })
        .as_ref()
}

/// Prometheus text exposition of every metric recorded so far.
pub fn render_metrics() -> String {
    metrics_handle()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// Resolves on Ctrl-C or SIGTERM: what every service's `main` waits for before draining.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

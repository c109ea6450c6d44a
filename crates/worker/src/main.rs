//! `sluice-worker`: consumes jobs and calls providers. Wiring only.

/// mimalloc: the request path allocates many small, short-lived buffers, where glibc's
/// allocator showed up as a fifth of the CPU profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use axum::{Router, routing::get, serve::ListenerExt};
use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Sluice worker: runs queued AI jobs against the providers"
)]
struct Args {
    /// TOML config file (SLUICE_… environment variables override it).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    sluice_telemetry::runtime::build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let traces = sluice_telemetry::init("sluice-worker", "info");
    sluice_telemetry::metrics_handle();
    let args = Args::parse();
    let cfg = sluice_config::Config::load(args.config.as_deref())?;
    let settings = sluice_config::WorkerSettings::new(&cfg)?;
    let metrics_listen = settings.worker.metrics_listen.clone();
    let worker = sluice_worker::Worker::start(settings).await?;
    let ops = if metrics_listen.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&metrics_listen)
            .await?
            .tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
        let app = Router::new()
            .route(
                "/metrics",
                get(|| async { sluice_telemetry::render_metrics() }),
            )
            .route("/healthz", get(|| async { "ok" }));
        Some(tokio::spawn(
            async move { axum::serve(listener, app).await },
        ))
    };
    tracing::info!("worker running");
    sluice_telemetry::shutdown_signal().await;
    tracing::info!("draining");
    worker.shutdown().await;
    if let Some(ops) = ops {
        ops.abort();
    }
    if let Some(t) = traces {
        t.shutdown();
    }
    Ok(())
}

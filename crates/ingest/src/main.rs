//! `sluice-ingest`: the HTTP front door. Wiring only; see the library for the logic.

/// mimalloc: the request path allocates many small, short-lived buffers, where glibc's
/// allocator showed up as a fifth of the CPU profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{path::PathBuf, time::Duration};

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Sluice ingest: authenticates, validates and enqueues AI jobs"
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
    let traces = sluice_telemetry::init("sluice-ingest", "info");
    sluice_telemetry::metrics_handle();
    let args = Args::parse();
    let cfg = sluice_config::Config::load(args.config.as_deref())?;
    let settings = sluice_config::IngestSettings::new(&cfg)?;
    let listener = tokio::net::TcpListener::bind(&settings.ingest.listen).await?;
    let server = sluice_ingest::Server::start(settings, listener).await?;
    tracing::info!(addr = %server.addr, "ingest listening");
    sluice_telemetry::shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown(Duration::from_secs(10)).await;
    if let Some(t) = traces {
        t.shutdown();
    }
    Ok(())
}

//! `sluice-sim`: runs the upstream simulator on a socket.
//!
//! Configuration: defaults, then `--config <file.toml>`, then the flags below.

/// mimalloc: the request path allocates many small, short-lived buffers, where glibc's
/// allocator showed up as a fifth of the CPU profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sluice_sim::SimConfig;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-sim",
    version,
    about = "OpenAI-compatible upstream simulator"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// TOML file with a SimConfig.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    p50_ms: Option<f64>,
    #[arg(long)]
    p95_ms: Option<f64>,
    #[arg(long)]
    p99_ms: Option<f64>,
    /// Fraction of requests answered 500.
    #[arg(long)]
    error_rate: Option<f64>,
    /// Fraction of requests answered 429.
    #[arg(long)]
    rate_429: Option<f64>,
    /// Delay between streamed chunks.
    #[arg(long)]
    stream_chunk_delay_ms: Option<u64>,
    /// Seed for latency and failure draws.
    #[arg(long)]
    seed: Option<u64>,
}

impl Args {
    fn config(&self) -> anyhow::Result<SimConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => SimConfig::default(),
        };
        let overrides = [
            (self.p50_ms, &mut cfg.latency.p50_ms),
            (self.p95_ms, &mut cfg.latency.p95_ms),
            (self.p99_ms, &mut cfg.latency.p99_ms),
            (self.error_rate, &mut cfg.error_rate),
            (self.rate_429, &mut cfg.rate_429),
        ];
        for (flag, field) in overrides {
            if let Some(value) = flag {
                *field = value;
            }
        }
        if let Some(ms) = self.stream_chunk_delay_ms {
            cfg.stream_chunk_delay_ms = ms;
        }
        if self.seed.is_some() {
            cfg.seed = self.seed;
        }
        cfg.validate().context("invalid simulator configuration")?;
        Ok(cfg)
    }
}

fn main() -> anyhow::Result<()> {
    sluice_telemetry::runtime::build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let cfg = args.config()?;
    let sim = sluice_sim::start(cfg, args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(addr = %sim.addr(), base_url = %sim.base_url(), config = ?sim.config(), "simulator listening");
    shutdown_signal().await;
    tracing::info!("shutting down");
    sim.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

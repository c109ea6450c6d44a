//! `sluice`: the operators' command line. Wiring only; each command group is a module.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Sluice operators' tool")]
struct Cli {
    /// TOML config file (SLUICE_… environment variables override it).
    #[arg(long, env = "SLUICE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Dead letters: list, show, replay.
    #[command(subcommand)]
    Dlq(sluice_cli::dlq::DlqCommand),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = sluice_config::Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Dlq(cmd) => sluice_cli::dlq::run(&cfg, cmd).await,
    }
}

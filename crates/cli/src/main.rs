//! `sluice`: the operators' command line. One enum variant per command group; a new group
//! (say `dlq`) is a module with its own `Subcommand` enum and one line in [`Command`].

use anyhow::Result;
use clap::{Parser, Subcommand};
use sluice_cli::{admin::AdminClient, keys::KeysCmd, tenants::TenantsCmd};

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Operate a Sluice deployment")]
struct Cli {
    /// Base URL of an ingest replica.
    #[arg(
        long,
        global = true,
        env = "SLUICE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// The admin key (its SHA-256 is `governance.admin_key_sha256`).
    #[arg(long, global = true, env = "SLUICE_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// API keys: create, list, revoke, rotate, hash.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Tenants and their kill switch.
    #[command(subcommand)]
    Tenants(TenantsCmd),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let admin = match &cli.admin_key {
        Some(k) => Some(AdminClient::new(&cli.url, k)?),
        None => None,
    };
    let need = || {
        admin
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("set --admin-key or SLUICE_ADMIN_KEY"))
    };
    match cli.command {
        Command::Keys(cmd) => {
            let a = if cmd.needs_server() {
                Some(need()?)
            } else {
                None
            };
            cmd.run(a).await
        }
        Command::Tenants(cmd) => cmd.run(need()?).await,
    }
}

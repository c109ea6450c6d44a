//! `sluice dlq list | show | replay`: the operators' view of the dead-letter stream.
//!
//! Self-contained: [`DlqCommand`] is a clap subcommand and [`run`] executes it against the
//! configured NATS and Redis. Listings never print the request (prompts stay private); a
//! replay is rate-limited and can be tried first with `--dry-run`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use sluice_config::{Config, NatsSettings};
use sluice_queue::{
    Queue,
    dlq::{DlqEntry, DlqFilter, ReplayOptions},
};
use sluice_store::Store;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Lists dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows one dead letter by its DLQ sequence.
    Show { seq: u64 },
    /// Re-queues dead letters (keeps each job's id and history).
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Only these DLQ sequences.
        #[arg(long = "seq")]
        sequences: Vec<u64>,
        /// Replays per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Report what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args, Clone)]
pub struct FilterArgs {
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    /// `max_attempts`, `max_deliveries`, `undecodable`, …
    #[arg(long)]
    pub reason: Option<String>,
    /// Dead-lettered within this long (`30m`, `2h`, `7d`) or since epoch milliseconds.
    #[arg(long)]
    pub since: Option<String>,
    /// Dead-lettered before this long ago, or before epoch milliseconds.
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

/// `30s`, `15m`, `2h`, `7d` ago, or absolute epoch milliseconds.
fn instant_ms(s: &str, now_ms: u64) -> Result<u64> {
    let s = s.trim();
    if let Ok(abs) = s.parse::<u64>() {
        return Ok(abs);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("bad time {s:?}"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("bad time {s:?}: use 30s, 15m, 2h, 7d or epoch milliseconds"),
    };
    Ok(now_ms.saturating_sub(secs * 1000))
}

impl FilterArgs {
    fn to_filter(&self, sequences: Vec<u64>) -> Result<DlqFilter> {
        let now = sluice_store::now_ms();
        Ok(DlqFilter {
            tenant: self.tenant.clone(),
            reason: self.reason.clone(),
            model: self.model.clone(),
            since_ms: self
                .since
                .as_deref()
                .map(|s| instant_ms(s, now))
                .transpose()?,
            until_ms: self
                .until
                .as_deref()
                .map(|s| instant_ms(s, now))
                .transpose()?,
            sequences,
            limit: self.limit,
        })
    }
}

async fn connect(cfg: &Config) -> Result<Queue> {
    let q = Queue::connect(&NatsSettings::new(&cfg.nats)?, "sluice-cli").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !q.is_connected() {
        if tokio::time::Instant::now() > deadline {
            bail!("cannot reach NATS at {}", cfg.nats.url);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(q)
}

fn line(e: &DlqEntry) -> String {
    format!(
        "{:>8}  {:<14}  {:<12}  {:<12}  {:>3}  {}  {}",
        e.seq,
        e.reason,
        e.tenant,
        e.model.as_deref().unwrap_or("-"),
        e.attempts,
        e.job_id.as_deref().unwrap_or("-"),
        e.error
    )
}

/// Runs a `sluice dlq` command, writing to stdout.
pub async fn run(cfg: &Config, cmd: DlqCommand) -> Result<()> {
    let queue = connect(cfg).await?;
    match cmd {
        DlqCommand::List { filter, json } => {
            let entries = queue.dlq_list(&filter.to_filter(Vec::new())?).await?;
            if json {
                for e in &entries {
                    println!("{}", serde_json::to_string(e)?);
                }
            } else {
                println!(
                    "{:>8}  {:<14}  {:<12}  {:<12}  {:>3}  job / error",
                    "seq", "reason", "tenant", "model", "att"
                );
                for e in &entries {
                    println!("{}", line(e));
                }
                println!(
                    "{} entr{}",
                    entries.len(),
                    if entries.len() == 1 { "y" } else { "ies" }
                );
            }
        }
        DlqCommand::Show { seq } => match queue.dlq_show(seq).await? {
            Some(e) => println!("{}", serde_json::to_string_pretty(&e)?),
            None => bail!("no dead letter with sequence {seq}"),
        },
        DlqCommand::Replay {
            filter,
            sequences,
            rate,
            dry_run,
        } => {
            let store = Store::new(&cfg.redis)?;
            let actor = format!(
                "cli:{}",
                std::env::var("USER").unwrap_or_else(|_| "unknown".into())
            );
            let opts = ReplayOptions {
                rate_per_s: rate,
                dry_run,
                actor,
            };
            let report = queue
                .dlq_replay(&store, &filter.to_filter(sequences)?, &opts)
                .await?;
            let verb = if dry_run { "would replay" } else { "replayed" };
            for (seq, job) in &report.replayed {
                println!("{verb} {seq} (job {job})");
            }
            for (seq, why) in &report.skipped {
                println!("skipped {seq}: {why}");
            }
            println!(
                "{} {verb}, {} skipped",
                report.replayed.len(),
                report.skipped.len()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_absolute_times() {
        assert_eq!(
            instant_ms("2h", 10_000_000).unwrap(),
            10_000_000 - 7_200_000
        );
        assert_eq!(instant_ms("1700000000000", 5).unwrap(), 1_700_000_000_000);
        assert!(instant_ms("2 weeks", 5).is_err());
    }
}

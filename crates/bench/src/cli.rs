//! Command-line flags and their validation into [`Settings`].
//!
//! One flat set of flags with `--mode` choosing the workload, so scripts can keep one command
//! line and switch modes; a flag that does not apply to the chosen mode is ignored.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::schedule::Schedule;

/// Which workload to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Open-loop `POST /v1/jobs` at `--rate`, then poll a sample of the jobs to completion.
    Submit,
    /// Closed loop: `--concurrency` workers calling `--path` back to back.
    Sync,
    /// Open-loop `--path` (synchronous chat completions) at `--rate`.
    Rate,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Sync => "sync",
            Self::Rate => "rate",
        }
    }
}

/// Open-loop HTTP load generator for Sluice (and any OpenAI-compatible endpoint).
#[derive(Debug, Clone, Parser)]
#[command(name = "sluice-bench", version, about)]
pub struct Args {
    /// Workload: submit (async jobs, default), sync (closed loop), rate (open-loop sync).
    #[arg(long, value_enum, default_value_t = Mode::Submit)]
    pub mode: Mode,

    /// Base URL of the service under test.
    #[arg(
        long,
        env = "SLUICE_BENCH_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,

    /// API key sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "SLUICE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Send no Authorization header (e.g. straight at the simulator).
    #[arg(long)]
    pub no_auth: bool,

    /// Request path for sync and rate modes.
    #[arg(long, default_value = "/v1/chat/completions")]
    pub path: String,

    /// Arrival rate in requests per second (submit, rate).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,

    /// Measured phase length in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Seconds of load before the measured phase, sent but not recorded.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// Most requests in flight at once (submit, rate); a request due while the cap is
    /// reached is not sent and counts as dropped by the generator.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: u32,

    /// Closed-loop workers (sync).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,

    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,

    /// Seconds to wait for the sampled jobs to become terminal (submit).
    #[arg(long, default_value_t = 120.0)]
    pub drain_timeout: f64,

    /// Accepted jobs polled for end-to-end latency, chosen uniformly; 0 skips the phase.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub e2e_sample: u32,

    /// Concurrent status polls while draining (submit).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub poll_concurrency: u32,

    /// Pause between polling rounds, in milliseconds (submit).
    #[arg(long, default_value_t = 250)]
    pub poll_interval_ms: u64,

    /// Model named in each request.
    #[arg(long, default_value = "sim-small")]
    pub model: String,

    /// `max_tokens` in each request.
    #[arg(long, default_value_t = 16)]
    pub max_tokens: u32,

    /// Job priority; submit sends `normal` unless told, sync and rate only when given.
    #[arg(long)]
    pub priority: Option<String>,

    /// Cycle through this many distinct prompts, sent with `temperature: 0` so the response
    /// cache may answer repeats (the cache-hit benchmark); 0 (the default) makes every prompt
    /// unique and uncacheable.
    #[arg(long, default_value_t = 0)]
    pub repeat: u64,

    /// Runtime threads. One (the default) runs the generator on a single thread, which costs
    /// the least per request and leaves the cores to the system under test; more spread it
    /// over a multi-threaded runtime, for targets on other machines.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Validated settings of one run; echoed in the JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub mode: Mode,
    pub url: String,
    #[serde(skip)]
    pub api_key: Option<String>,
    pub path: String,
    pub rate: f64,
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    #[serde(serialize_with = "secs")]
    pub warmup: Duration,
    pub max_in_flight: u32,
    pub concurrency: u32,
    #[serde(serialize_with = "secs")]
    pub timeout: Duration,
    #[serde(serialize_with = "secs")]
    pub drain_timeout: Duration,
    pub e2e_sample: u32,
    pub poll_concurrency: u32,
    #[serde(serialize_with = "secs")]
    pub poll_interval: Duration,
    pub model: String,
    pub max_tokens: u32,
    pub priority: Option<String>,
    pub repeat: u64,
    #[serde(skip)]
    pub quiet: bool,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Longest a run phase or timeout may be: a day.
const MAX_SECONDS: f64 = 86_400.0;

fn seconds(flag: &str, value: f64, allow_zero: bool) -> anyhow::Result<Duration> {
    let ok =
        value.is_finite() && value <= MAX_SECONDS && (value > 0.0 || allow_zero && value == 0.0);
    if !ok {
        let low = if allow_zero { "0" } else { "above 0" };
        bail!("--{flag} must be {low} and at most {MAX_SECONDS} seconds, got {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

impl Args {
    /// Checks the flags once, so the run itself never meets a bad value.
    pub fn validate(&self) -> anyhow::Result<Settings> {
        let url = self.url.trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!(
                "--url must start with http:// or https://, got {:?}",
                self.url
            );
        }
        reqwest::Url::parse(&url).with_context(|| format!("--url {:?} is not a URL", self.url))?;
        if !self.path.starts_with('/') {
            bail!("--path must start with '/', got {:?}", self.path);
        }
        let api_key = if self.no_auth {
            None
        } else {
            match &self.api_key {
                Some(key) if !key.is_empty() => Some(key.clone()),
                _ => bail!("give --api-key (or SLUICE_API_KEY), or --no-auth to send none"),
            }
        };
        let settings = Settings {
            mode: self.mode,
            url,
            api_key,
            path: self.path.clone(),
            rate: self.rate,
            duration: seconds("duration", self.duration, false)?,
            warmup: seconds("warmup", self.warmup, true)?,
            max_in_flight: self.max_in_flight,
            concurrency: self.concurrency,
            timeout: seconds("timeout", self.timeout, false)?,
            drain_timeout: seconds("drain-timeout", self.drain_timeout, true)?,
            e2e_sample: self.e2e_sample,
            poll_concurrency: self.poll_concurrency,
            poll_interval: Duration::from_millis(self.poll_interval_ms.min(60_000)),
            model: self.model.clone(),
            max_tokens: self.max_tokens,
            priority: self.priority.clone(),
            repeat: self.repeat,
            quiet: self.quiet,
        };
        if matches!(self.mode, Mode::Submit | Mode::Rate) {
            settings.schedule()?;
        }
        Ok(settings)
    }
}

impl Settings {
    /// The open-loop schedule for `--rate`, `--warmup` and `--duration`.
    pub fn schedule(&self) -> anyhow::Result<Schedule> {
        Schedule::new(self.rate, self.warmup, self.duration).context("--rate/--duration")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Settings> {
        let argv = std::iter::once("sluice-bench").chain(args.iter().copied());
        Args::try_parse_from(argv)?.validate()
    }

    #[test]
    fn defaults_are_submit_at_a_thousand_per_second() -> anyhow::Result<()> {
        let s = parse(&["--api-key", "k"])?;
        assert_eq!(s.mode, Mode::Submit);
        assert_eq!(s.rate, 1000.0);
        assert_eq!(s.max_in_flight, 4096);
        assert_eq!(s.e2e_sample, 20_000);
        assert_eq!(s.drain_timeout, Duration::from_secs(120));
        assert_eq!(s.api_key.as_deref(), Some("k"));
        Ok(())
    }

    #[test]
    fn a_key_or_no_auth_is_required() -> anyhow::Result<()> {
        let no_key = Args::try_parse_from(["sluice-bench"])?;
        if no_key.api_key.is_none() {
            assert!(no_key.validate().is_err());
        }
        let s = parse(&["--no-auth", "--api-key", "k"])?;
        assert_eq!(s.api_key, None);
        Ok(())
    }

    #[test]
    fn bad_values_are_rejected() {
        for bad in [
            &["--no-auth", "--rate", "0"][..],
            &["--no-auth", "--duration", "0"],
            &["--no-auth", "--duration", "-1"],
            &["--no-auth", "--warmup", "NaN"],
            &["--no-auth", "--url", "localhost:8080"],
            &["--no-auth", "--path", "v1/x"],
            &["--no-auth", "--max-in-flight", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn trailing_slash_is_trimmed() -> anyhow::Result<()> {
        let s = parse(&["--no-auth", "--url", "http://h:1/"])?;
        assert_eq!(s.url, "http://h:1");
        Ok(())
    }
}

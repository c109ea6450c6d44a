//! Open-loop load generator printing throughput and latency percentiles.
//!
//! `sluice-bench` drives a Sluice gateway (or any OpenAI-compatible endpoint) and prints
//! figures: achieved rates, outcome counts, latency percentiles, and for job submissions the
//! end-to-end submit-to-completed latency and completion throughput. It is a program that
//! prints numbers, not a test that fails on a slow machine.
//!
//! # Layout
//!
//! - [`cli`]: flags and their validation into [`cli::Settings`];
//! - [`schedule`]: when each open-loop request is due;
//! - [`open_loop`]: the ticker that issues requests on schedule under an in-flight cap;
//! - [`http`]: the shared keep-alive client and the requests each mode makes;
//! - [`stats`]: outcome counts and latency histograms;
//! - [`sample`]: the bounded uniform sample of accepted jobs;
//! - [`e2e`]: polling sampled jobs to completion, end-to-end latency and throughput;
//! - [`modes`]: `submit`, `sync` and `rate`, each producing a [`report::Report`];
//! - [`report`]: the human summary, the JSON report and the `RESULT` line.

pub mod cli;
pub mod e2e;
pub mod http;
pub mod modes;
pub mod open_loop;
pub mod raw;
pub mod report;
pub mod sample;
pub mod schedule;
pub mod stats;
pub mod timer;

use cli::{Mode, Settings};
use report::Report;

/// Runs the workload `settings` describe and returns its figures.
pub async fn run(settings: &Settings) -> anyhow::Result<Report> {
    match settings.mode {
        Mode::Submit => modes::submit::run(settings).await,
        Mode::Sync => modes::sync::run(settings).await,
        Mode::Rate => modes::rate::run(settings).await,
    }
}

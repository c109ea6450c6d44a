//! `rate`: open-loop synchronous chat completions at `--rate`, e.g. to read the latency
//! Sluice adds at 500 req/s by comparing with the same run straight at the simulator.
//!
//! Series: `sync` (due time to the answer) and `sync_service` (actual send to the answer).

use std::sync::Arc;

use crate::cli::Settings;
use crate::http::{self, BodyTemplate, ChatCompletion, Target};
use crate::open_loop::{self, OpenLoopOptions};
use crate::report::{Report, Series};

use super::{FINISH_GRACE, load_figures};

pub async fn run(settings: &Settings) -> anyhow::Result<Report> {
    let schedule = settings.schedule()?;
    let max_in_flight = settings.max_in_flight as usize;
    let target = Target::new(http::client(settings, max_in_flight)?, settings).await?;
    let body = BodyTemplate::new(settings, settings.priority.clone());
    let op = Arc::new(ChatCompletion::new(target.clone(), &settings.path, body));
    if !settings.quiet {
        eprintln!(
            "calling {} at {} req/s, {} requests ({} warm-up)",
            target.url(&settings.path),
            schedule.rate(),
            schedule.total(),
            schedule.warmup_count()
        );
    }
    let opts = OpenLoopOptions {
        max_in_flight,
        sample: 0,
        finish_timeout: settings.timeout + FINISH_GRACE,
        quiet: settings.quiet,
    };
    let run = open_loop::run(op, &schedule, &opts).await?;
    Ok(Report {
        mode: settings.mode,
        target: target.url(&settings.path),
        settings: settings.clone(),
        load: load_figures(
            Some(schedule.rate()),
            &run.stats,
            settings.duration,
            run.issue_span,
        ),
        latency: vec![
            Series::new("sync", "due -> answer", &run.stats.latency),
            Series::new("sync_service", "sent -> answer", &run.stats.service),
        ],
        end_to_end: None,
    })
}

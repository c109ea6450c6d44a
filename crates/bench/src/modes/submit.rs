//! `submit`: open-loop job submissions, then the end-to-end drain.
//!
//! Series: `submit` (due time to the 202), `submit_service` (actual send to the 202),
//! `e2e` (due time to `completed_at`) and `e2e_started` (due time to `in_progress_at`).

use std::sync::Arc;

use crate::cli::Settings;
use crate::e2e::{self, DrainOptions, SubmitWindow};
use crate::http::{self, BodyTemplate, SubmitJob, Target};
use crate::open_loop::{self, OpenLoopOptions};
use crate::report::{EndToEnd, Report, Series};

use super::{FINISH_GRACE, load_figures};

pub async fn run(settings: &Settings) -> anyhow::Result<Report> {
    let schedule = settings.schedule()?;
    let max_in_flight = settings.max_in_flight as usize;
    let target = Target::new(http::client(settings, max_in_flight)?, settings).await?;
    let priority = settings
        .priority
        .clone()
        .unwrap_or_else(|| "normal".to_owned());
    let op = Arc::new(SubmitJob::new(
        target.clone(),
        BodyTemplate::new(settings, Some(priority)),
    ));
    if !settings.quiet {
        eprintln!(
            "submitting {} jobs at {} req/s ({} warm-up) to {}",
            schedule.total(),
            schedule.rate(),
            schedule.warmup_count(),
            target.url("/v1/jobs")
        );
    }
    let opts = OpenLoopOptions {
        max_in_flight,
        sample: settings.e2e_sample as usize,
        finish_timeout: settings.timeout + FINISH_GRACE,
        quiet: settings.quiet,
    };
    let run = open_loop::run(op, &schedule, &opts).await?;
    let load = load_figures(
        Some(schedule.rate()),
        &run.stats,
        settings.duration,
        run.issue_span,
    );
    let mut latency = vec![
        Series::new("submit", "due -> 202 accepted", &run.stats.latency),
        Series::new("submit_service", "sent -> 202 accepted", &run.stats.service),
    ];

    let end_to_end = if settings.e2e_sample > 0 {
        let wall_ms =
            |offset: std::time::Duration| run.wall_start_ms + offset.as_secs_f64() * 1000.0;
        let window = SubmitWindow {
            accepted: run.accepted_jobs,
            measure_start_wall_ms: wall_ms(schedule.measure_start()),
            last_due_wall_ms: wall_ms(schedule.last_measured().unwrap_or_default()),
            duration: settings.duration,
        };
        if !settings.quiet {
            eprintln!(
                "polling {} of {} accepted jobs until terminal",
                run.sample.len(),
                run.accepted_jobs
            );
        }
        let drain_opts = DrainOptions {
            concurrency: settings.poll_concurrency as usize,
            timeout: settings.drain_timeout,
            pause: settings.poll_interval,
            quiet: settings.quiet,
        };
        let e = e2e::drain(&target, run.sample, &window, &drain_opts).await;
        latency.push(Series::new("e2e", "due -> completed_at", &e.e2e));
        latency.push(Series::new(
            "e2e_started",
            "due -> in_progress_at",
            &e.started,
        ));
        Some(EndToEnd {
            counts: e.counts,
            throughput: e.throughput,
        })
    } else {
        None
    };

    Ok(Report {
        mode: settings.mode,
        target: target.url("/v1/jobs"),
        settings: settings.clone(),
        load,
        latency,
        end_to_end,
    })
}

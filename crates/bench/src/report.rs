//! The figures a run prints: a human-readable summary, the JSON report, and the one-line
//! `RESULT key=value …` summary for scripts.

use std::fmt;

use serde::Serialize;

use crate::cli::{Mode, Settings};
use crate::e2e::{CompletionThroughput, E2eCounts};
use crate::stats::{Counts, Latency};

/// Latency percentiles of one series, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// `None` for an empty series.
    pub fn of(latency: &Latency) -> Option<Self> {
        let h = latency.histogram();
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
    }
}

/// One named latency series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub name: &'static str,
    /// What is timed, from when to when.
    pub measures: &'static str,
    #[serde(flatten)]
    pub percentiles: Option<Percentiles>,
}

impl Series {
    pub fn new(name: &'static str, measures: &'static str, latency: &Latency) -> Self {
        Self {
            name,
            measures,
            percentiles: Percentiles::of(latency),
        }
    }
}

/// Throughput and counts of the load phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadFigures {
    /// The open-loop arrival rate asked for (`None` in closed loop).
    pub offered_rps: Option<f64>,
    /// Requests started per second over the measured phase.
    pub sent_rps: f64,
    /// Successful answers per second, over the measured phase or until its last answer.
    pub ok_rps: f64,
    pub window_seconds: f64,
    #[serde(flatten)]
    pub counts: Counts,
}

/// The end-to-end figures of `submit`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndToEnd {
    #[serde(flatten)]
    pub counts: E2eCounts,
    pub throughput: Option<CompletionThroughput>,
}

/// Everything one run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: Mode,
    /// The URL the load phase called.
    pub target: String,
    pub settings: Settings,
    pub load: LoadFigures,
    pub latency: Vec<Series>,
    pub end_to_end: Option<EndToEnd>,
}

impl Report {
    fn series(&self, name: &str) -> Option<&Percentiles> {
        self.latency
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.percentiles.as_ref())
    }

    /// The `RESULT` line's numbers, in order; `None` prints as `nan`.
    pub fn result_fields(&self) -> Vec<(&'static str, Option<f64>)> {
        let c = &self.load.counts;
        let mut fields = match self.mode {
            Mode::Submit => {
                let e2e = self.series("e2e");
                let completed_rps = self
                    .end_to_end
                    .as_ref()
                    .and_then(|e| e.throughput.as_ref())
                    .map(|t| t.completed_rps);
                vec![
                    ("submit_rps", Some(self.load.ok_rps)),
                    ("submit_p50_ms", self.series("submit").map(|p| p.p50_ms)),
                    ("submit_p99_ms", self.series("submit").map(|p| p.p99_ms)),
                    ("e2e_p50_ms", e2e.map(|p| p.p50_ms)),
                    ("e2e_p99_ms", e2e.map(|p| p.p99_ms)),
                    ("completed_rps", completed_rps),
                ]
            }
            Mode::Sync | Mode::Rate => vec![
                ("sync_rps", Some(self.load.ok_rps)),
                ("sync_p50_ms", self.series("sync").map(|p| p.p50_ms)),
                ("sync_p99_ms", self.series("sync").map(|p| p.p99_ms)),
                ("sync_p999_ms", self.series("sync").map(|p| p.p999_ms)),
            ],
        };
        fields.extend([
            ("ok", Some(c.ok as f64)),
            ("rejected", Some(c.rejected() as f64)),
            ("errors", Some(c.errors() as f64)),
            ("dropped", Some(c.dropped_by_generator as f64)),
        ]);
        if let Some(e) = &self.end_to_end {
            fields.extend([
                ("e2e_completed", Some(e.counts.completed as f64)),
                ("e2e_failed", Some(e.counts.failed as f64)),
                ("e2e_not_terminal", Some(e.counts.not_terminal as f64)),
            ]);
        }
        fields
    }

    /// `RESULT mode=submit submit_rps=… …`, one line, no trailing newline.
    pub fn result_line(&self) -> String {
        let mut line = format!("RESULT mode={}", self.mode.name());
        for (key, value) in self.result_fields() {
            line.push(' ');
            line.push_str(key);
            line.push('=');
            line.push_str(&number(value));
        }
        line
    }
}

/// Whole numbers without decimals, others with three; missing as `nan`.
fn number(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => "nan".to_owned(),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        let l = &self.load;
        let c = &l.counts;
        writeln!(f, "sluice-bench {} -> {}", self.mode.name(), self.target)?;
        match l.offered_rps {
            Some(rate) => writeln!(
                f,
                "  load       open loop, {rate:.1} req/s for {:.1} s after {:.1} s warm-up, max in flight {}",
                s.duration.as_secs_f64(),
                s.warmup.as_secs_f64(),
                s.max_in_flight
            )?,
            None => writeln!(
                f,
                "  load       closed loop, {} workers for {:.1} s after {:.1} s warm-up",
                s.concurrency,
                s.duration.as_secs_f64(),
                s.warmup.as_secs_f64()
            )?,
        }
        if l.offered_rps.is_some() {
            writeln!(
                f,
                "  sent       {} of {} scheduled ({:.1} req/s), dropped by generator {}",
                c.sent, c.scheduled, l.sent_rps, c.dropped_by_generator
            )?;
        } else {
            writeln!(f, "  sent       {} ({:.1} req/s)", c.sent, l.sent_rps)?;
        }
        writeln!(
            f,
            "  answers    ok {} ({:.1} req/s over {:.2} s), rejected {} (429: {}, 503: {}), errors {}",
            c.ok,
            l.ok_rps,
            l.window_seconds,
            c.rejected(),
            c.rejected_429,
            c.rejected_503,
            c.errors()
        )?;
        if c.errors() > 0 || c.unfinished > 0 {
            let statuses: Vec<String> = c
                .http_errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            writeln!(
                f,
                "  errors     http {} [{}], bad response {}, timeout {}, connect {}, transport {}, unfinished {}",
                c.http_error_total(),
                statuses.join(", "),
                c.bad_responses,
                c.timeouts,
                c.connect_errors,
                c.transport_errors,
                c.unfinished
            )?;
        }
        writeln!(
            f,
            "latency (ms)       {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "count", "p50", "p90", "p95", "p99", "p99.9", "max", "mean"
        )?;
        for series in &self.latency {
            match &series.percentiles {
                Some(p) => writeln!(
                    f,
                    "  {:<16} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}   {}",
                    series.name,
                    p.count,
                    p.p50_ms,
                    p.p90_ms,
                    p.p95_ms,
                    p.p99_ms,
                    p.p999_ms,
                    p.max_ms,
                    p.mean_ms,
                    series.measures
                )?,
                None => writeln!(f, "  {:<16} {:>8}   {}", series.name, 0, series.measures)?,
            }
        }
        if let Some(e) = &self.end_to_end {
            let k = &e.counts;
            writeln!(
                f,
                "end to end (sample of {} of {} accepted jobs, drained in {:.1} s)",
                k.sampled, k.accepted, k.drain_seconds
            )?;
            writeln!(
                f,
                "  terminal   completed {}, failed {}, cancelled {}, expired {}",
                k.completed, k.failed, k.cancelled, k.expired
            )?;
            writeln!(
                f,
                "  pending    {} not terminal at timeout (queued {}, in progress {}, not found {}, poll failed {}); {} polls, {} poll errors",
                k.not_terminal,
                k.not_terminal_queued,
                k.not_terminal_in_progress,
                k.not_found,
                k.poll_failed,
                k.polls,
                k.poll_errors
            )?;
            if k.missing_timestamps > 0 {
                writeln!(
                    f,
                    "  warning    {} completed jobs had no completed_at",
                    k.missing_timestamps
                )?;
            }
            match &e.throughput {
                Some(t) => writeln!(
                    f,
                    "  completion {:.1} jobs/s over {:.1} s; last completion {:.0} ms after the last submission ({}, {:.2} of the run)",
                    t.completed_rps,
                    t.span_seconds,
                    t.last_completion_lag_ms,
                    if t.kept_up { "kept up" } else { "fell behind" },
                    t.keep_up_fraction
                )?,
                None => writeln!(f, "  completion too few completions for a rate")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cli::Args;
    use clap::Parser;

    /// Values below 2048 µs are exact at 3 significant digits, so tests can compare exactly.
    fn latency(values_us: &[u64]) -> Latency {
        let mut l = Latency::new();
        for &us in values_us {
            l.record(Duration::from_micros(us));
        }
        l
    }

    /// 0.01 ms, 0.02 ms, … 1.00 ms.
    fn hundred() -> Latency {
        latency(&(1..=100).map(|i| i * 10).collect::<Vec<_>>())
    }

    fn report(mode: Mode) -> anyhow::Result<Report> {
        let settings = Args::try_parse_from(["sluice-bench", "--no-auth"])?.validate()?;
        let counts = Counts {
            scheduled: 100,
            sent: 98,
            ok: 90,
            rejected_429: 5,
            rejected_503: 1,
            http_errors: [(500, 2)].into_iter().collect(),
            dropped_by_generator: 2,
            ..Counts::default()
        };
        Ok(Report {
            mode,
            target: "http://127.0.0.1:8080/v1/jobs".into(),
            settings,
            load: LoadFigures {
                offered_rps: Some(10.0),
                sent_rps: 9.8,
                ok_rps: 9.0,
                window_seconds: 10.0,
                counts,
            },
            latency: vec![
                Series::new("submit", "due -> 202", &hundred()),
                Series::new("e2e", "due -> completed_at", &Latency::new()),
            ],
            end_to_end: None,
        })
    }

    #[test]
    fn percentiles_come_from_the_histogram_in_ms() {
        let p = Percentiles::of(&hundred());
        let p = p.as_ref();
        assert_eq!(p.map(|p| p.count), Some(100));
        assert_eq!(p.map(|p| p.p50_ms), Some(0.5));
        assert_eq!(p.map(|p| p.p90_ms), Some(0.9));
        assert_eq!(p.map(|p| p.p99_ms), Some(0.99));
        assert_eq!(p.map(|p| p.p999_ms), Some(1.0));
        assert_eq!(p.map(|p| p.max_ms), Some(1.0));
        assert_eq!(p.map(|p| p.mean_ms), Some(0.505));
        assert_eq!(Percentiles::of(&Latency::new()), None);

        // Larger values keep 3 significant digits (hdrhistogram reports the top of the
        // value's bucket).
        let p = Percentiles::of(&latency(&[50_000]));
        assert!(
            p.as_ref().is_some_and(|p| (p.p50_ms - 50.0).abs() <= 0.05),
            "{p:?}"
        );
    }

    #[test]
    fn result_line_has_the_script_keys() -> anyhow::Result<()> {
        let line = report(Mode::Submit)?.result_line();
        assert!(
            line.starts_with(
                "RESULT mode=submit submit_rps=9 submit_p50_ms=0.500 submit_p99_ms=0.990 "
            ),
            "{line}"
        );
        assert!(
            line.contains(" e2e_p50_ms=nan e2e_p99_ms=nan completed_rps=nan "),
            "{line}"
        );
        assert!(
            line.ends_with(" ok=90 rejected=6 errors=2 dropped=2"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        Ok(())
    }

    #[test]
    fn sync_result_line_uses_sync_keys() -> anyhow::Result<()> {
        let mut r = report(Mode::Rate)?;
        r.latency = vec![Series::new(
            "sync",
            "due -> 200",
            &latency(&[2000, 2000, 2000]),
        )];
        let line = r.result_line();
        assert!(
            line.starts_with(
                "RESULT mode=rate sync_rps=9 sync_p50_ms=2 sync_p99_ms=2 sync_p999_ms=2 "
            ),
            "{line}"
        );
        Ok(())
    }

    #[test]
    fn numbers_print_compactly() {
        assert_eq!(number(Some(3.0)), "3");
        assert_eq!(number(Some(2.5)), "2.500");
        assert_eq!(number(None), "nan");
        assert_eq!(number(Some(f64::NAN)), "nan");
    }

    #[test]
    fn human_report_shows_counts_and_a_row_per_series() -> anyhow::Result<()> {
        let text = report(Mode::Submit)?.to_string();
        assert!(
            text.starts_with("sluice-bench submit -> http://127.0.0.1:8080/v1/jobs\n"),
            "{text}"
        );
        assert!(
            text.contains("98 of 100 scheduled (9.8 req/s), dropped by generator 2"),
            "{text}"
        );
        assert!(
            text.contains("rejected 6 (429: 5, 503: 1), errors 2"),
            "{text}"
        );
        assert!(text.contains("http 2 [500: 2]"), "{text}");
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("submit "))
            .unwrap_or_default();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols.get(..4),
            Some(&["submit", "100", "0.500", "0.900"][..]),
            "{row}"
        );
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("e2e ") && l.contains(" 0 ")),
            "{text}"
        );
        Ok(())
    }

    #[test]
    fn json_report_names_each_series() -> anyhow::Result<()> {
        let json = serde_json::to_value(report(Mode::Submit)?)?;
        assert_eq!(json["mode"], "submit");
        assert_eq!(json["latency"][0]["name"], "submit");
        assert_eq!(json["latency"][0]["p50_ms"], 0.5);
        assert_eq!(json["load"]["rejected_429"], 5);
        assert_eq!(json["settings"]["rate"], 1000.0);
        assert!(json["settings"].get("api_key").is_none());
        Ok(())
    }
}

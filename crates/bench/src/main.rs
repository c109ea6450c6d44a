//! `sluice-bench`: parse flags, run the workload, print the figures (and write them as JSON
//! with `--json`). Progress goes to stderr so stdout holds only the figures.

/// mimalloc: the request path allocates many small, short-lived buffers, where glibc's
/// allocator showed up as a fifth of the CPU profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use sluice_bench::cli::Args;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = args.validate()?;
    let mut runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        rt.worker_threads(args.threads);
        rt
    };
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = runtime.block_on(sluice_bench::run(&settings))?;

    let mut out = std::io::stdout().lock();
    write!(out, "{report}")?;
    writeln!(out, "{}", report.result_line())?;
    out.flush()?;
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report).context("encoding the JSON report")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

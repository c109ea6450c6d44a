//! The sluice operators' command line: one module per command group, each exposing a clap
//! subcommand type and a `run` function, so `main.rs` only dispatches.
//!
//! - [`dlq`]: `sluice dlq list | show | replay`.

pub mod dlq;

//! Sluice's upstream simulator: an OpenAI-compatible server with configurable latency
//! distributions, injected errors and 429s, streaming, embeddings and request counters.
//!
//! It is the default upstream for local runs, tests and benchmarks, so everything works with
//! no API key. Tests start it in process:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let sim = sluice_sim::start(sluice_sim::SimConfig::default(), "127.0.0.1:0".parse().unwrap()).await?;
//! let base_url = sim.base_url(); // http://127.0.0.1:PORT/v1
//! # let _ = base_url;
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Answers are deterministic for a given model and prompt, and per-request directives in the
//! last user message (`[[sim:sleep=MS]]`, `[[sim:status=CODE]]`, `[[sim:fail_first=N:KEY]]`,
//! `[[sim:stream_error_after=N]]`)
//! let one simulator serve tests with different needs.
//!
//! # Layout
//!
//! - [`config`]: [`SimConfig`] and its validation.
//! - [`latency`]: sampling delays that reproduce configured p50/p95/p99.
//! - [`directives`]: the `[[sim:…]]` per-request directives.
//! - [`fail_first`]: bounded bookkeeping for `fail_first`.
//! - [`output`]: deterministic completions, token counts and embeddings; [`bow`]: the
//!   bag-of-words embedding model (`sim-embed-bow…`) whose similarities mean something.
//! - [`counters`]: request counters and the guard that tells completed from aborted.
//! - [`state`]: shared state and the decision of each request's delay and fate.
//! - [`openai`]: wire types; [`error`]: the OpenAI-shaped API error.
//! - [`handlers`]: one module per endpoint group; [`server`]: router, [`start`], [`SimHandle`].

pub mod bow;
pub mod config;
pub mod counters;
pub mod directives;
pub mod error;
pub mod fail_first;
pub mod handlers;
pub mod latency;
pub mod openai;
pub mod output;
pub mod server;
pub mod state;
pub mod tools;

pub use config::{ConfigError, Latency, SimConfig};
pub use counters::{Counters, EndpointCounts};
pub use server::{SimHandle, router, start, start_with_state};
pub use state::SimState;

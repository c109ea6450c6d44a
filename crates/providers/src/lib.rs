//! Upstream providers: OpenAI-compatible HTTP APIs (OpenAI, Azure OpenAI, vLLM, Ollama,
//! llama.cpp, another gateway, the Sluice simulator, …) and the resilience around them.
//!
//! # Layout
//! - [`openai`]: one pooled HTTP client per deployment (OpenAI or Azure URL/header style),
//!   plain or streaming.
//! - [`stream`]: a streamed chat completion read chunk by chunk.
//! - [`error`]: the single classification of upstream failures into retryable and permanent,
//!   which the worker uses to decide ack / NAK-with-delay / fail.
//! - [`pool`]: model pools per alias and one attempt's call through the chain: balancing,
//!   retries on other deployments, hedging, fallback model, stale or degraded answer; and
//!   streaming calls, retried on other deployments until the first byte.
//! - [`deployment`]: a deployment's live state (outstanding calls, latency EWMA and p95,
//!   breaker, quotas, 429 cool-down); [`balance`]: power-of-two-choices picking.
//! - [`breaker`], [`budget`], [`quota`], [`window`]: the time-based pieces, unit-tested with
//!   paused tokio time.
//! - [`fallback`]: the stale-answer cache and the degradation message.
//! - [`routing`]: `model: "auto"` → cheap or strong tier.

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod deployment;
pub mod error;
pub mod fallback;
pub mod genai;
pub mod openai;
pub mod pool;
pub mod quota;
pub mod routing;
pub mod stream;
pub mod window;

pub use error::{ErrorClass, ProviderError};
pub use openai::OpenAiProvider;
pub use pool::{Answer, CallError, CallKind, CallRequest, Pools, Served, StreamAnswer};
pub use routing::{RouteDecision, Router, Tier};
pub use stream::ChunkStream;

//! Upstream providers: OpenAI-compatible HTTP APIs (OpenAI, vLLM, Ollama, llama.cpp, the
//! Sluice simulator, …).
//!
//! # Layout
//! - [`openai`]: one pooled HTTP client per deployment, the request and the response check.
//! - [`stream`]: a streamed chat completion read chunk by chunk.
//! - [`error`]: the single classification of upstream failures into retryable and permanent,
//!   which the worker uses to decide ack / NAK-with-delay / fail.

pub mod error;
pub mod openai;
pub mod stream;

pub use error::{ErrorClass, ProviderError};
pub use openai::OpenAiProvider;
pub use stream::ChunkStream;

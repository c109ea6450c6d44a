//! The vocabulary every Sluice process shares: the job envelope that travels on the broker,
//! the subject and stream names, priorities and the job state machine.
//!
//! # Layout
//! - [`envelope`]: the versioned MessagePack job envelope (`proto/` documents it and keeps
//!   golden samples that the tests decode).
//! - [`subjects`]: stream, consumer and subject names, optionally under a namespace so that
//!   tests (and several stacks) can share one NATS server.
//! - [`status`]: job states with OpenAI's vocabulary and the monotonic transition rule.
//! - [`priority`]: `high` | `normal` | `low`.
//! - [`outcome`]: how a job ends — stored error codes (and their HTTP status), the worker's
//!   terminal outcomes, dead-letter reasons.
//! - [`replay`]: what a dead-letter replay asks of the job record ([`ReplayLedger`]).
//!
//! This crate depends on nothing async, so any tool can decode a message off the wire.

pub mod envelope;
pub mod outcome;
pub mod priority;
pub mod replay;
pub mod status;
pub mod subjects;

pub use envelope::{
    CacheWrite, DecodeError, EncodeError, JobEnvelope, JobKind, Reservation, SCHEMA_VERSION,
    SemanticWrite,
};
pub use outcome::{DeadLetterReason, ErrorCode, Outcome};
pub use priority::Priority;
pub use replay::{Replay, ReplayLedger};
pub use status::JobStatus;
pub use subjects::Subjects;

//! Admission control, in the order a request meets it.
//!
//! The request-level layers wrap every route in [`crate::router`]'s stack: [`observe`]
//! (the server span and HTTP metrics), `shed_load`
//! (bounded concurrency), then `auth::require_key` (tenant keys, the admin scope). The
//! job-level checks need the validated body (priority, model, token estimate), so the
//! submit handler runs them right after validation, in this order:
//!
//! 1. [`shedding`]: queue depth and oldest age per priority class;
//! 2. [`admission`]: `Idempotency-Key`, then one Redis round trip for the kill switch, loop
//!    detection, every rate-limit dimension and the budgets (see `sluice_governance`); an
//!    admitted job is an [`admission::Admitted`] guard until its publish is acknowledged.
//!
//! Long-lived work also takes a place in [`slots`]: a synchronous wait a per-tenant one,
//! an SSE stream a per-tenant and a total one.

pub mod admission;
pub mod observe;
pub mod shedding;
pub mod slots;

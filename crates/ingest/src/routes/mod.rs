//! HTTP handlers, one module per route group.

pub mod jobs;
pub mod ops;

//! HTTP handlers, one module per route group.

pub mod admin;
pub mod admin_dlq;
pub mod jobs;
pub mod ops;

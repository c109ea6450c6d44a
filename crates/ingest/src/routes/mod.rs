//! HTTP handlers, one module per route group.

pub mod admin;
pub mod admin_dlq;
pub mod cancel;
pub mod events;
pub mod jobs;
pub mod openai;
pub mod ops;
pub mod webhooks;

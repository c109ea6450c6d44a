//! The sluice operators' command line.
//!
//! # Layout
//! - `main.rs`: the `sluice` binary — global options and one enum variant per command group.
//! - [`admin`]: the HTTP client of ingest's admin API (`/v1/admin/...`, admin key).
//! - [`keys`]: `sluice keys create|list|revoke|rotate|hash`.
//! - [`tenants`]: `sluice tenants list|disable|enable` (the kill switch).

pub mod admin;
pub mod keys;
pub mod tenants;

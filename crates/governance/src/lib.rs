//! Traffic governance: everything that decides whether a tenant's request may become a job,
//! kept in Redis so that it holds exactly across any number of ingest and worker replicas.
//!
//! # Layout
//! - [`admission`]: one Lua script per request checks the kill switch, loop detection, every
//!   rate-limit dimension (GCRA for requests and tokens) and the budgets, and only if all
//!   pass commits them together and records the job's token/cost reservation.
//! - [`settle`]: when a job ends, its reservation is settled against the actual `usage`
//!   (plain or streamed response) exactly once per job id.
//! - [`estimate`]: prompt-token estimate and cost of a request.
//! - [`period`]: budget periods (UTC day or month) and their reset times.
//! - [`apikeys`]: tenants and API keys stored in Redis (create, list, revoke, rotate) with a
//!   short-TTL bounded cache, so a revocation reaches every replica within seconds.
//! - [`idempotency`]: `Idempotency-Key` → first job id, per tenant, with the body hash.
//! - [`inflight`]: the per-tenant cap on jobs running across all workers.
//! - [`usage`]: what each configured budget has used this period (dashboard, used-ratio
//!   gauge).
//!
//! The scripts are `lua/*.lua` files (each opens with its KEYS/ARGV contract), run through
//! the store's one loader ([`sluice_store::scripts`]); every key is built by the store's key
//! schema ([`sluice_store::Keys`]).

pub mod admission;
pub mod apikeys;
pub mod estimate;
pub mod idempotency;
pub mod inflight;
pub mod period;
pub mod settle;
pub mod usage;

use std::sync::Arc;

use sluice_config::GovernanceConfig;
use sluice_store::{Keys, Lua, Store, StoreError};

pub use admission::{Admission, Decision, Dimension, RateLimits, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum GovernanceError {
    #[error("governance store: {0}")]
    Store(#[from] StoreError),
    #[error("governance script returned something unexpected: {0}")]
    Protocol(String),
}

impl From<redis::RedisError> for GovernanceError {
    fn from(e: redis::RedisError) -> Self {
        GovernanceError::Store(StoreError::from(e))
    }
}

/// Handle to the governance state; cheap to clone.
#[derive(Clone)]
pub struct Governor {
    store: Store,
    cfg: Arc<GovernanceConfig>,
}

impl Governor {
    /// Shares the job store's connection pool and key prefix.
    pub fn new(store: Store, cfg: GovernanceConfig) -> Governor {
        Governor {
            store,
            cfg: Arc::new(cfg),
        }
    }

    pub fn config(&self) -> &GovernanceConfig {
        &self.cfg
    }

    /// The key schema (the store's: governance keys live under the same prefix).
    pub fn keys(&self) -> &Keys {
        self.store.keys()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }
}

/// The governance scripts (for the contract and compile checks).
pub const SCRIPTS: &[&Lua] = &[
    &admission::ADMIT,
    &settle::SETTLE,
    &inflight::ACQUIRE,
    &idempotency::RELEASE,
];

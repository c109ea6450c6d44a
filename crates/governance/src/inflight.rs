//! The per-tenant cap on jobs running at once, across every worker replica.
//!
//! Each running job holds a lease in the tenant's sorted set of leases (job id scored by its
//! expiry). Acquiring drops expired leases (a worker that died), then admits the job if the
//! tenant holds fewer than its cap; the same job acquiring again (a redelivery) just renews
//! its lease. Both are O(log n) in the leases held, so a tenant running thousands of jobs
//! costs Redis no more per acquire than one running ten. The job's end frees the slot in
//! its settlement's call ([`Governor::settle_and_release`]), or with
//! [`Governor::release_in_flight`] when there is nothing to settle. A worker
//! that cannot acquire defers the job (see `sluice_worker::governance`), which lets the other
//! tenants' messages through. Deferrals are counted per job (`{p}deferred:{tenant}`), so the
//! worker can tell them from failed attempts and back off the deferral delay.

use sluice_store::Lua;
use uuid::Uuid;

use crate::{GovernanceError, Governor};

pub(crate) static ACQUIRE: Lua = Lua::new(
    "inflight_acquire",
    include_str!("../lua/inflight_acquire.lua"),
);

/// The answer to [`Governor::acquire_in_flight`]; `deferrals` counts how often the job was
/// deferred so far (these deliveries are not attempts), `waiting` how many of the tenant's
/// jobs are currently deferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Acquired {
        deferrals: u64,
    },
    Full {
        deferrals: u64,
        waiting: u64,
        cap: u64,
    },
}

impl Governor {
    /// The tenant's in-flight cap (0: none).
    pub fn in_flight_cap(&self, tenant: &str) -> u64 {
        let cfg = self.config();
        match cfg.tenant_policy(tenant) {
            Some(p) => p.in_flight_cap(cfg.max_in_flight_per_tenant),
            None => cfg.max_in_flight_per_tenant,
        }
    }

    /// Takes a slot for `job`, or counts a deferral when the tenant is at its cap.
    pub async fn acquire_in_flight(
        &self,
        tenant: &str,
        job: Uuid,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Slot, GovernanceError> {
        let cap = self.in_flight_cap(tenant);
        if cap == 0 {
            return Ok(Slot::Acquired { deferrals: 0 });
        }
        let mut inv = ACQUIRE.key(self.keys().leases(tenant));
        inv.key(self.keys().deferred(tenant))
            .arg(job.to_string())
            .arg(cap)
            .arg(format!("({now_ms}"))
            .arg(now_ms.saturating_add(lease_ms))
            .arg(lease_ms.saturating_mul(2));
        let (ok, deferrals, waiting): (i64, u64, u64) = self.store().invoke(&inv).await?;
        Ok(if ok == 1 {
            Slot::Acquired { deferrals }
        } else {
            Slot::Full {
                deferrals,
                waiting,
                cap,
            }
        })
    }

    /// Frees `job`'s slot; answers how many of the tenant's jobs are deferred, waiting for
    /// one (0 without a cap).
    pub async fn release_in_flight(&self, tenant: &str, job: Uuid) -> Result<u64, GovernanceError> {
        if self.in_flight_cap(tenant) == 0 {
            return Ok(0);
        }
        let store = self.store();
        let mut conn = store.conn().await?;
        let deferred = self.keys().deferred(tenant);
        let mut pipe = redis::pipe();
        pipe.zrem(self.keys().leases(tenant), job.to_string())
            .ignore()
            .hdel(&deferred, job.to_string())
            .ignore()
            .hlen(&deferred);
        let (waiting,): (u64,) = store.timed(pipe.query_async(&mut conn)).await?;
        Ok(waiting)
    }
}

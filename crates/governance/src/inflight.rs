//! The per-tenant cap on jobs running at once, across every worker replica.
//!
//! Each running job holds a lease in `{p}inflight:{tenant}` (job id → expiry). Acquiring
//! drops expired leases (a worker that died), then admits the job if the tenant holds fewer
//! than its cap; the same job acquiring again (a redelivery) just renews its lease. A worker
//! that cannot acquire defers the job (see `sluice_worker::fairness`), which lets the other
//! tenants' messages through.

use uuid::Uuid;

use crate::{GovernanceError, Governor};

pub(crate) const ACQUIRE: &str = r#"
local now = tonumber(ARGV[3])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[4]))
  return 1
end
local all = redis.call('HGETALL', KEYS[1])
local live = 0
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) < now then redis.call('HDEL', KEYS[1], all[i]) else live = live + 1 end
end
if live >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) * 2)
return 1
"#;

impl Governor {
    /// The tenant's in-flight cap (0: none).
    pub fn in_flight_cap(&self, tenant: &str) -> u64 {
        let cfg = self.config();
        match cfg.tenant_policy(tenant) {
            Some(p) if p.max_in_flight > 0 => p.max_in_flight,
            _ => cfg.max_in_flight_per_tenant,
        }
    }

    /// Takes a slot for `job`; `Ok(false)` when the tenant is at its cap.
    pub async fn acquire_in_flight(&self, tenant: &str, job: Uuid, lease_ms: u64, now_ms: u64) -> Result<bool, GovernanceError> {
        let cap = self.in_flight_cap(tenant);
        if cap == 0 {
            return Ok(true);
        }
        let mut inv = self.scripts.inflight_acquire.key(self.keys.inflight(tenant));
        inv.arg(job.to_string()).arg(cap).arg(now_ms).arg(lease_ms);
        let store = self.store();
        let mut conn = store.conn().await?;
        let ok: i64 = store.timed(inv.invoke_async(&mut conn)).await?;
        Ok(ok == 1)
    }

    pub async fn release_in_flight(&self, tenant: &str, job: Uuid) -> Result<(), GovernanceError> {
        if self.in_flight_cap(tenant) == 0 {
            return Ok(());
        }
        let store = self.store();
        let mut conn = store.conn().await?;
        let cmd = redis::cmd("HDEL").arg(self.keys.inflight(tenant)).arg(job.to_string()).to_owned();
        let _: i64 = store.timed(cmd.query_async(&mut conn)).await?;
        Ok(())
    }
}

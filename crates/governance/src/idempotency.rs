//! `Idempotency-Key`: the same key from the same tenant within the window returns the first
//! job; the same key with a different body is a conflict.
//!
//! The claim is one `SET NX GET`: the first request stores `body hash + job id` and goes on
//! to publish that job (whose id is also its JetStream `Nats-Msg-Id`, so a retried publish
//! is deduplicated by the broker as well); every later one reads what the first stored. A
//! first request that is refused or cannot be published releases its claim, so the client
//! may retry with the same key.
//!
//! A claim is *pending* until its job is acknowledged by the broker, then *accepted*
//! ([`Governor::accept_idempotency`] stores the job id beside it): a retry that finds a
//! pending claim does not know yet whether the job will exist, so it waits and claims again
//! (it becomes the first request if the claim was released). A pending claim lives for a
//! short lease only, so one whose ingest died before publishing frees the key soon; the
//! accepted one lives for the whole window.

use sluice_store::Lua;
use uuid::Uuid;

use crate::{GovernanceError, Governor};

pub(crate) static RELEASE: Lua = Lua::new(
    "idempotency_release",
    include_str!("../lua/idempotency_release.lua"),
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First use of the key: go ahead with `job`.
    New,
    /// Seen before with the same body: this is its job; `accepted` once the broker took it
    /// (until then the first request may still fail and release the key).
    Replay { job: Uuid, accepted: bool },
    /// Seen before with a different body.
    Conflict,
}

impl Governor {
    /// Claims the key for `job`, pending for `lease_s` seconds (see
    /// [`Governor::accept_idempotency`]), or reads the claim that holds it.
    pub async fn claim_idempotency(
        &self,
        tenant: &str,
        key_hash: &str,
        body_hash: &str,
        job: Uuid,
        lease_s: u64,
    ) -> Result<Claim, GovernanceError> {
        let value = format!("{body_hash} {job}");
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys().idempotency(tenant, key_hash))
            .arg(&value)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(lease_s.clamp(1, self.config().idempotency_ttl.as_secs().max(1)))
            .cmd("GET")
            .arg(self.keys().idempotency_accepted(tenant, key_hash));
        let store = self.store();
        let mut conn = store.conn().await?;
        let (previous, accepted): (Option<String>, Option<String>) =
            store.timed(pipe.query_async(&mut conn)).await?;
        let Some(previous) = previous else {
            return Ok(Claim::New);
        };
        let (hash, id) = previous
            .split_once(' ')
            .ok_or_else(|| GovernanceError::Protocol("malformed idempotency record".into()))?;
        if hash != body_hash {
            return Ok(Claim::Conflict);
        }
        let accepted = accepted.as_deref() == Some(id);
        let id = Uuid::parse_str(id).map_err(|e| GovernanceError::Protocol(e.to_string()))?;
        Ok(Claim::Replay { job: id, accepted })
    }

    /// The broker acknowledged `job`, the key's first job: retries may answer with it, and
    /// the claim lasts for the whole window. Only a claim that is `job`'s counts as accepted
    /// (the accepted id is compared, so a stale one never vouches for a later claim).
    pub async fn accept_idempotency(
        &self,
        tenant: &str,
        key_hash: &str,
        job: Uuid,
    ) -> Result<(), GovernanceError> {
        let ttl = self.config().idempotency_ttl.as_secs();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys().idempotency_accepted(tenant, key_hash))
            .arg(job.to_string())
            .arg("EX")
            .arg(ttl)
            .ignore()
            .cmd("EXPIRE")
            .arg(self.keys().idempotency(tenant, key_hash))
            .arg(ttl)
            .ignore();
        let store = self.store();
        let mut conn = store.conn().await?;
        store.timed(pipe.query_async::<()>(&mut conn)).await?;
        Ok(())
    }

    /// Gives up a claim made for `job` (only if it is still that job's).
    pub async fn release_idempotency(
        &self,
        tenant: &str,
        key_hash: &str,
        body_hash: &str,
        job: Uuid,
    ) -> Result<(), GovernanceError> {
        let mut inv = RELEASE.key(self.keys().idempotency(tenant, key_hash));
        inv.arg(format!("{body_hash} {job}"));
        let _: i64 = self.store().invoke(&inv).await?;
        Ok(())
    }
}

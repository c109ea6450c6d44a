//! `Idempotency-Key`: the same key from the same tenant within the window returns the first
//! job; the same key with a different body is a conflict.
//!
//! The claim is one `SET NX GET`: the first request stores `body hash + job id` and goes on
//! to publish that job (whose id is also its JetStream `Nats-Msg-Id`, so a retried publish
//! is deduplicated by the broker as well); every later one reads what the first stored. A
//! first request that is refused or cannot be published releases its claim, so the client
//! may retry with the same key.

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
    /// Seen before with the same body: this is its job.
    Replay(Uuid),
    /// Seen before with a different body.
    Conflict,
}

impl Governor {
    pub async fn claim_idempotency(
        &self,
        tenant: &str,
        key_hash: &str,
        body_hash: &str,
        job: Uuid,
    ) -> Result<Claim, GovernanceError> {
        let k = self.keys().idempotency(tenant, key_hash);
        let value = format!("{body_hash} {job}");
        let store = self.store();
        let mut conn = store.conn().await?;
        let cmd = redis::cmd("SET")
            .arg(&k)
            .arg(&value)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(self.config().idempotency_ttl_s)
            .to_owned();
        let previous: Option<String> = store.timed(cmd.query_async(&mut conn)).await?;
        let Some(previous) = previous else {
            return Ok(Claim::New);
        };
        let (hash, id) = previous
            .split_once(' ')
            .ok_or_else(|| GovernanceError::Protocol("malformed idempotency record".into()))?;
        if hash != body_hash {
            return Ok(Claim::Conflict);
        }
        let id = Uuid::parse_str(id).map_err(|e| GovernanceError::Protocol(e.to_string()))?;
        Ok(Claim::Replay(id))
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

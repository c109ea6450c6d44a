//! Carrying stored state over to the hash-tagged key names (see [`crate::keys`]).
//!
//! Most renamed keys are short-lived (job records, rate-limit states, reservations, leases)
//! and start afresh. Two kinds outlive a deploy and must not be lost: a tenant's kill switch
//! (a disabled tenant would come back enabled) and the budgets of the current periods (a
//! tenant's spend would restart at zero). [`Store::upgrade_keys`] moves those from the old
//! untagged names once, on a single Redis; a Redis Cluster is a new deployment and has none.

use crate::{Store, StoreError};

/// What [`Store::upgrade_keys`] found and moved.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Upgraded {
    pub tenants: usize,
    pub budgets: usize,
}

/// The version of the key names; stored once the old names were carried over.
const SCHEMA: u64 = 2;

impl Store {
    /// Moves the kill switches and budgets stored under the untagged names of earlier versions
    /// to the tagged ones, merging with what the new names already hold (fields the new hash
    /// lacks; budget counters added). Runs once: it then records the schema version, so later
    /// starts cost one `GET`. Idempotent and safe to run from several replicas at once.
    /// Replicas of an older version still running keep writing the old names; stop them
    /// before the first new one starts.
    pub async fn upgrade_keys(&self) -> Result<Upgraded, StoreError> {
        let mut conn = self.conn().await?;
        let marker = self.keys.schema_version();
        let done: Option<u64> = self
            .timed(redis::cmd("GET").arg(&marker).query_async(&mut conn))
            .await?;
        if self.is_cluster() || done.is_some_and(|v| v >= SCHEMA) {
            return Ok(Upgraded::default());
        }
        let mut out = Upgraded::default();
        let prefix = self.keys.prefix().to_string();
        let mut cursor: u64 = 0;
        loop {
            let (next, found): (u64, Vec<String>) = self
                .timed(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{prefix}*"))
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            for old in found {
                let Some(rest) = old.strip_prefix(&prefix) else {
                    continue;
                };
                if rest.contains('{') {
                    continue;
                }
                if let Some(new) = self.tagged_name(rest) {
                    let budget = !rest.starts_with("tenant:");
                    self.merge(&old, &new, budget).await?;
                    if budget {
                        out.budgets += 1;
                    } else {
                        out.tenants += 1;
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let () = self
            .timed(
                redis::cmd("SET")
                    .arg(&marker)
                    .arg(SCHEMA)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(out)
    }

    /// The tagged name of an old untagged kill switch or budget key (`rest`: the name after
    /// the prefix); `None` for any other key.
    fn tagged_name(&self, rest: &str) -> Option<String> {
        let mut parts = rest.split(':');
        match parts.next()? {
            "tenant" => {
                let id = parts.next()?;
                parts.next().is_none().then(|| self.keys.tenant(id))
            }
            "budget" => {
                let (tenant, period) = (parts.next()?, parts.next()?);
                parts
                    .next()
                    .is_none()
                    .then(|| self.keys.budget(tenant, period))
            }
            "kbudget" => {
                let tenant = parts.next()?;
                let rest: Vec<&str> = parts.collect();
                let (period, key) = rest.split_last()?;
                (!key.is_empty()).then(|| self.keys.key_budget(tenant, &key.join(":"), period))
            }
            _ => None,
        }
    }

    /// Moves hash `old` into `new`: budget counters are added, other fields kept where `new`
    /// has none; `new` gets `old`'s expiry; `old` is deleted.
    async fn merge(&self, old: &str, new: &str, budget: bool) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let fields: Vec<(String, String)> = self
            .timed(redis::cmd("HGETALL").arg(old).query_async(&mut conn))
            .await?;
        let ttl_ms: i64 = self
            .timed(redis::cmd("PTTL").arg(old).query_async(&mut conn))
            .await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (f, v) in &fields {
            match v.parse::<i64>() {
                Ok(n) if budget => pipe.cmd("HINCRBY").arg(new).arg(f).arg(n).ignore(),
                _ => pipe.cmd("HSETNX").arg(new).arg(f).arg(v).ignore(),
            };
        }
        if ttl_ms > 0 {
            pipe.cmd("PEXPIRE").arg(new).arg(ttl_ms).ignore();
        }
        pipe.cmd("DEL").arg(old).ignore();
        let () = self.timed(pipe.query_async(&mut conn)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Against a real single Redis (`SLUICE_TEST_REDIS_URL`), under a prefix of its own.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use sluice_config::RedisConfig;

    #[tokio::test]
    async fn kill_switches_and_budgets_keep_their_state_under_the_tagged_names() {
        let url = std::env::var("SLUICE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let cfg = RedisConfig {
            url,
            prefix: format!("u{}:", uuid::Uuid::now_v7().simple()),
            ..RedisConfig::default()
        };
        let store = Store::new(&cfg).unwrap();
        if store.is_cluster() {
            return; // A cluster never held the old names.
        }
        let p = cfg.prefix.as_str();
        let mut conn = store.conn().await.unwrap();
        // What an earlier version left: a disabled tenant, a budget, a key budget.
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(format!("{p}tenant:acme"))
            .arg("disabled")
            .arg("1")
            .ignore();
        pipe.cmd("HSET")
            .arg(format!("{p}budget:acme:d20261201"))
            .arg("tokens")
            .arg(700)
            .arg("cost")
            .arg(9)
            .ignore();
        pipe.cmd("EXPIRE")
            .arg(format!("{p}budget:acme:d20261201"))
            .arg(3600)
            .ignore();
        pipe.cmd("HSET")
            .arg(format!("{p}kbudget:acme:k:1:m202612"))
            .arg("tokens")
            .arg(5)
            .ignore();
        // The new version already reserved 100 tokens before the upgrade ran.
        pipe.cmd("HSET")
            .arg(store.keys().budget("acme", "d20261201"))
            .arg("tokens")
            .arg(100)
            .ignore();
        let () = pipe.query_async(&mut conn).await.unwrap();

        let up = store.upgrade_keys().await.unwrap();
        assert_eq!(
            up,
            Upgraded {
                tenants: 1,
                budgets: 2
            }
        );
        let k = store.keys();
        let disabled: Option<String> = redis::cmd("HGET")
            .arg(k.tenant("acme"))
            .arg("disabled")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(disabled.as_deref(), Some("1"));
        let (tokens, cost): (i64, i64) = redis::cmd("HMGET")
            .arg(k.budget("acme", "d20261201"))
            .arg("tokens")
            .arg("cost")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!((tokens, cost), (800, 9));
        let ttl: i64 = redis::cmd("TTL")
            .arg(k.budget("acme", "d20261201"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((3500..=3600).contains(&ttl), "{ttl}");
        let kt: i64 = redis::cmd("HGET")
            .arg(k.key_budget("acme", "k:1", "m202612"))
            .arg("tokens")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(kt, 5);
        let old: i64 = redis::cmd("EXISTS")
            .arg(format!("{p}tenant:acme"))
            .arg(format!("{p}budget:acme:d20261201"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(old, 0);
        // Once done, it does not run again.
        let () = redis::cmd("HSET")
            .arg(format!("{p}tenant:late"))
            .arg("disabled")
            .arg("1")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(store.upgrade_keys().await.unwrap(), Upgraded::default());
    }
}

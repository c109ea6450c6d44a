//! Tenants and API keys in Redis, managed through the admin API and the `sluice` CLI.
//!
//! A key is 32 random bytes, shown once at creation; only its SHA-256 is stored. Revoking
//! deletes the digest's record; rotating creates a new key and lets the old one live for an
//! overlap window. Ingest looks a presented key up through [`KeyCache`], a bounded map whose
//! entries (found or not) live `key_cache_ttl_ms`, so a revocation reaches every replica
//! within that time without a Redis round trip per request.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::{GovernanceError, Governor};

/// A key as the admin API lists it (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub tenant: String,
    pub key_id: String,
    pub created_at_ms: u64,
    /// Set on a rotated key: it stops working at this instant.
    pub expires_at_ms: Option<u64>,
}

/// A newly created key: the only time `secret` is visible.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedKey {
    pub tenant: String,
    pub key_id: String,
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantInfo {
    pub id: String,
    pub disabled: bool,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Governor {
    /// Creates a key for `tenant` (registering the tenant if new).
    pub async fn create_key(
        &self,
        tenant: &str,
        now_ms: u64,
    ) -> Result<CreatedKey, GovernanceError> {
        let secret = format!("sk-sluice-{}", random_hex(32));
        let key_id = format!("key_{}", random_hex(6));
        let digest = hex::encode(Sha256::digest(secret.as_bytes()));
        // The key itself last: on a cluster these run one by one, and a key must not work
        // before its tenant and index know it.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .sadd(self.keys().tenants(), tenant)
            .hset_nx(self.keys().tenant(tenant), "created_at", now_ms)
            .hset(self.keys().tenant_keys(tenant), &key_id, &digest)
            .hset_multiple(
                self.keys().api_key(&digest),
                &[
                    ("tenant", tenant),
                    ("key_id", key_id.as_str()),
                    ("created_at", now_ms.to_string().as_str()),
                ],
            );
        self.run(pipe).await?;
        Ok(CreatedKey {
            tenant: tenant.to_string(),
            key_id,
            secret,
        })
    }

    pub async fn list_keys(&self, tenant: &str) -> Result<Vec<KeyInfo>, GovernanceError> {
        let ids: Vec<(String, String)> = self
            .query(
                redis::cmd("HGETALL")
                    .arg(self.keys().tenant_keys(tenant))
                    .to_owned(),
            )
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for (_, digest) in ids {
            if let Some(info) = self.key_record(&digest).await? {
                out.push(info);
            }
        }
        out.sort_by(|a, b| {
            a.created_at_ms
                .cmp(&b.created_at_ms)
                .then(a.key_id.cmp(&b.key_id))
        });
        Ok(out)
    }

    /// `false` if the tenant has no such key.
    pub async fn revoke_key(&self, tenant: &str, key_id: &str) -> Result<bool, GovernanceError> {
        let digest = self.key_digest(tenant, key_id).await?;
        let Some(digest) = digest else {
            return Ok(false);
        };
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.keys().api_key(&digest))
            .hdel(self.keys().tenant_keys(tenant), key_id);
        self.run(pipe).await?;
        Ok(true)
    }

    /// A new key for the tenant; the old one keeps working for `overlap_s` seconds.
    pub async fn rotate_key(
        &self,
        tenant: &str,
        key_id: &str,
        overlap_s: u64,
        now_ms: u64,
    ) -> Result<Option<CreatedKey>, GovernanceError> {
        let digest = self.key_digest(tenant, key_id).await?;
        let Some(digest) = digest else {
            return Ok(None);
        };
        let created = self.create_key(tenant, now_ms).await?;
        let expires = now_ms + overlap_s * 1000;
        let mut pipe = redis::pipe();
        pipe.hset(self.keys().api_key(&digest), "expires_at", expires)
            .pexpire(
                self.keys().api_key(&digest),
                (overlap_s * 1000).max(1) as i64,
            );
        self.run(pipe).await?;
        Ok(Some(created))
    }

    /// The digest of the tenant's key `key_id`, if it has one.
    async fn key_digest(
        &self,
        tenant: &str,
        key_id: &str,
    ) -> Result<Option<String>, GovernanceError> {
        let cmd = redis::cmd("HGET")
            .arg(self.keys().tenant_keys(tenant))
            .arg(key_id)
            .to_owned();
        self.query(cmd).await
    }

    /// The live key with this digest (not revoked, not past its rotation overlap).
    pub async fn lookup_key(
        &self,
        digest_hex: &str,
        now_ms: u64,
    ) -> Result<Option<KeyInfo>, GovernanceError> {
        Ok(self
            .key_record(digest_hex)
            .await?
            .filter(|k| k.expires_at_ms.is_none_or(|e| e > now_ms)))
    }

    async fn key_record(&self, digest: &str) -> Result<Option<KeyInfo>, GovernanceError> {
        let f: HashMap<String, String> = self
            .query(
                redis::cmd("HGETALL")
                    .arg(self.keys().api_key(digest))
                    .to_owned(),
            )
            .await?;
        let (Some(tenant), Some(key_id)) = (f.get("tenant"), f.get("key_id")) else {
            return Ok(None);
        };
        Ok(Some(KeyInfo {
            tenant: tenant.clone(),
            key_id: key_id.clone(),
            created_at_ms: f
                .get("created_at")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            expires_at_ms: f.get("expires_at").and_then(|v| v.parse().ok()),
        }))
    }

    /// Registers a tenant (config seeding and the admin API); sets its kill switch.
    pub async fn put_tenant(
        &self,
        id: &str,
        disabled: bool,
        now_ms: u64,
    ) -> Result<(), GovernanceError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .sadd(self.keys().tenants(), id)
            .hset_nx(self.keys().tenant(id), "created_at", now_ms)
            .hset(
                self.keys().tenant(id),
                "disabled",
                if disabled { "1" } else { "0" },
            );
        self.run(pipe).await
    }

    /// Registers a tenant without touching its kill switch.
    pub async fn seed_tenant(&self, id: &str, now_ms: u64) -> Result<(), GovernanceError> {
        let mut pipe = redis::pipe();
        pipe.atomic().sadd(self.keys().tenants(), id).hset_nx(
            self.keys().tenant(id),
            "created_at",
            now_ms,
        );
        self.run(pipe).await
    }

    pub async fn list_tenants(&self) -> Result<Vec<TenantInfo>, GovernanceError> {
        let mut ids: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.keys().tenants()).to_owned())
            .await?;
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let d: Option<String> = self
                .query(
                    redis::cmd("HGET")
                        .arg(self.keys().tenant(&id))
                        .arg("disabled")
                        .to_owned(),
                )
                .await?;
            let disabled = d.as_deref() == Some("1")
                || self.config().tenant_policy(&id).is_some_and(|p| p.disabled);
            out.push(TenantInfo { id, disabled });
        }
        Ok(out)
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T, GovernanceError> {
        let store = self.store();
        let mut conn = store.conn().await?;
        Ok(store.timed(cmd.query_async(&mut conn)).await?)
    }

    /// Runs the commands of `pipe` (a transaction) in their order: see
    /// [`sluice_store::Store::apply_in_order`].
    async fn run(&self, pipe: redis::Pipeline) -> Result<(), GovernanceError> {
        Ok(self.store().apply_in_order(pipe).await?)
    }
}

type CacheMap = HashMap<[u8; 32], (Instant, Option<KeyInfo>)>;

/// Digest → key (or its absence), each entry trusted for a short time. Found keys and
/// unknown ones are kept apart, each map bounded by `capacity`: when one is full, its stale
/// entries are dropped, and if none are stale, all of its entries are. So a flood of
/// made-up keys only ever clears the unknown ones, never a valid key.
#[derive(Clone)]
pub struct KeyCache {
    inner: Arc<Mutex<Maps>>,
    ttl: Duration,
    capacity: usize,
}

#[derive(Default)]
struct Maps {
    found: CacheMap,
    unknown: CacheMap,
}

impl KeyCache {
    pub fn new(ttl: Duration, capacity: usize) -> KeyCache {
        KeyCache {
            inner: Arc::new(Mutex::new(Maps::default())),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// `Some(entry)` when a fresh entry exists (`Some(None)`: known not to be a key).
    pub fn get(&self, digest: &[u8; 32]) -> Option<Option<KeyInfo>> {
        let maps = self.inner.lock().ok()?;
        let (at, v) = maps
            .found
            .get(digest)
            .or_else(|| maps.unknown.get(digest))?;
        (at.elapsed() < self.ttl).then(|| v.clone())
    }

    pub fn put(&self, digest: [u8; 32], v: Option<KeyInfo>) {
        let Ok(mut maps) = self.inner.lock() else {
            return;
        };
        let Maps { found, unknown } = &mut *maps;
        let (map, other) = match v {
            Some(_) => (found, unknown),
            None => (unknown, found),
        };
        other.remove(&digest);
        if map.len() >= self.capacity && !map.contains_key(&digest) {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(digest, (Instant::now(), v));
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .map(|m| m.found.len() + m.unknown.len())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn cache_entries_expire_and_the_map_stays_bounded() {
        let cache = KeyCache::new(Duration::from_secs(2), 3);
        let info = KeyInfo {
            tenant: "t".into(),
            key_id: "k".into(),
            created_at_ms: 0,
            expires_at_ms: None,
        };
        cache.put([1; 32], Some(info.clone()));
        assert_eq!(cache.get(&[1; 32]), Some(Some(info)));
        tokio::time::advance(Duration::from_millis(2100)).await;
        assert_eq!(cache.get(&[1; 32]), None, "stale entries are not trusted");
        for i in 0..10u8 {
            cache.put([i; 32], None);
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.get(&[9; 32]), Some(None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_unknown_keys_does_not_evict_a_valid_one() {
        let cache = KeyCache::new(Duration::from_secs(60), 4);
        let info = KeyInfo {
            tenant: "t".into(),
            key_id: "k".into(),
            created_at_ms: 0,
            expires_at_ms: None,
        };
        cache.put([200; 32], Some(info.clone()));
        for i in 0..100u8 {
            cache.put([i; 32], None);
        }
        assert_eq!(cache.get(&[200; 32]), Some(Some(info)));
        assert!(cache.len() <= 8, "each map stays bounded");
    }
}

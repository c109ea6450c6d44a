//! One replica's semantic index: per scope, an HNSW graph (`instant-distance`) over the
//! entries it was built from, plus a short list of entries inserted since, scanned exactly.
//!
//! `instant-distance` builds a graph from a whole set of points and cannot insert into or
//! delete from it afterwards, so the index works in generations:
//! - an insertion goes to its scope's *delta* list (up to [`IndexConfig::delta_max`]
//!   entries or an eighth of the graph, scanned linearly: a small scope never gets a
//!   graph at all);
//! - an eviction or an expiry removes the entry from the table of live entries; a graph
//!   node whose entry is gone is a *tombstone*, skipped by searches;
//! - [`SemanticIndex::maintain`] (a background task) rebuilds the graph of a scope whose
//!   delta is full or whose graph is more than a quarter tombstones, from its live entries,
//!   outside the lock; lookups meanwhile use the old graph and the delta.
//!
//! Bounded: at most [`IndexConfig::capacity`] live entries; past it the oldest insertion is
//! evicted (insertion order approximates expiry order, since an entry's TTL is fixed per
//! model). Expired entries are never returned and are dropped as they reach the front.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, RwLock},
};

use instant_distance::{Builder, Heuristic, HnswMap, Point, Search};

use super::ScopeId;
use crate::key::CacheKey;

/// A unit vector; distance is `1 - cosine similarity`.
#[derive(Clone, Debug)]
struct Vector(Arc<[f32]>);

impl Point for Vector {
    fn distance(&self, other: &Self) -> f32 {
        1.0 - dot(&self.0, &other.0)
    }
}

/// Lanes of [`dot`]'s accumulator.
const LANES: usize = 16;

/// The dot product, written so the compiler vectorizes it: sixteen independent partial sums
/// over chunks of sixteen (an iterator's `f32` sum is one dependent chain of additions, which
/// the compiler must not reorder, so it stays scalar). The graph build spends nearly all
/// its time here (`select_heuristic` compares each candidate with every neighbour kept).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// How a node's neighbours are chosen: the HNSW paper's heuristic (a candidate closer to a
/// neighbour already kept than to the node is passed over), without `keep_pruned`, as
/// hnswlib does. `instant-distance`'s default keeps the passed-over candidates too, filling
/// every list to its 64 slots, and each insertion then re-selects the full lists of all its
/// neighbours: measured on `semantic_bench -- 10000` (release build, same sitting), the
/// build took 69.6 s of CPU with them and 40.8 s without, with the same hit rates.
const NEIGHBOURS: Heuristic = Heuristic {
    extend_candidates: false,
    keep_pruned: false,
};

#[derive(Debug, Clone, Copy)]
pub struct IndexConfig {
    /// Live entries at most (all scopes together).
    pub capacity: usize,
    /// Entries a scope holds outside its graph before the graph is rebuilt.
    pub delta_max: usize,
    /// Graph candidates a search looks at (`ef`).
    pub ef_search: usize,
    /// Candidates each insertion looks at while the graph is built (`ef_construction`):
    /// the build's cost grows with it, and so does the graph's recall.
    pub ef_construction: usize,
}

impl IndexConfig {
    pub fn new(capacity: usize) -> IndexConfig {
        IndexConfig {
            capacity,
            delta_max: 256,
            ef_search: 64,
            ef_construction: 100,
        }
    }
}

/// A cached prompt near the one looked up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub key: CacheKey,
    pub similarity: f32,
}

struct Slot {
    scope: ScopeId,
    key: CacheKey,
    vector: Vector,
    expires_at_ms: u64,
    in_graph: bool,
}

#[derive(Default)]
struct ScopeIndex {
    graph: Option<Arc<HnswMap<Vector, u64>>>,
    graph_nodes: usize,
    /// Graph nodes whose entry is gone.
    tombstones: usize,
    /// Live entries not in the graph.
    delta: Vec<u64>,
    /// A rebuild of this scope is running.
    rebuilding: bool,
}

impl ScopeIndex {
    /// The delta may grow to an eighth of the graph before a rebuild, so rebuilding a
    /// growing scope costs a constant factor per entry, not a graph per `delta_max`.
    fn needs_rebuild(&self, delta_max: usize) -> bool {
        !self.rebuilding
            && (self.delta.len() >= delta_max.max(self.graph_nodes / 8)
                || (self.graph_nodes > 0 && self.tombstones * 4 > self.graph_nodes))
    }
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    slots: HashMap<u64, Slot>,
    /// The live entry of each (scope, exact key): an answer re-stored replaces its entry.
    by_key: HashMap<(ScopeId, CacheKey), u64>,
    /// Insertion order, for eviction.
    order: VecDeque<u64>,
    scopes: HashMap<ScopeId, ScopeIndex>,
}

impl Inner {
    fn remove(&mut self, id: u64) {
        let Some(slot) = self.slots.remove(&id) else {
            return;
        };
        self.by_key.remove(&(slot.scope, slot.key));
        if let Some(s) = self.scopes.get_mut(&slot.scope) {
            if slot.in_graph {
                s.tombstones += 1;
            } else {
                s.delta.retain(|d| *d != id);
            }
            if s.delta.is_empty() && s.tombstones >= s.graph_nodes && !s.rebuilding {
                self.scopes.remove(&slot.scope);
            }
        }
    }

    /// Drops evicted or expired entries from the front of the insertion order.
    fn trim(&mut self, capacity: usize, now_ms: u64) {
        while let Some(&id) = self.order.front() {
            let expired = self
                .slots
                .get(&id)
                .is_none_or(|s| s.expires_at_ms <= now_ms);
            if self.slots.len() <= capacity && !expired {
                break;
            }
            self.order.pop_front();
            if self.slots.contains_key(&id) {
                if !expired {
                    metrics::counter!("sluice_cache_semantic_evictions_total").increment(1);
                }
                self.remove(id);
            }
        }
    }
}

/// The index (see the module docs). Shared by the request path (searches) and the
/// insertion consumer; cheap to clone.
#[derive(Clone)]
pub struct SemanticIndex {
    cfg: IndexConfig,
    inner: Arc<RwLock<Inner>>,
}

impl SemanticIndex {
    pub fn new(cfg: IndexConfig) -> SemanticIndex {
        SemanticIndex {
            cfg,
            inner: Arc::default(),
        }
    }

    /// Adds the prompt `vector` (unit length) of the answer under `key`, in `scope`, until
    /// `expires_at_ms`.
    pub fn insert(
        &self,
        scope: ScopeId,
        key: CacheKey,
        vector: Vec<f32>,
        expires_at_ms: u64,
        now_ms: u64,
    ) {
        if expires_at_ms <= now_ms {
            return;
        }
        let mut inner = self.write();
        if let Some(old) = inner.by_key.get(&(scope, key)).copied() {
            inner.remove(old);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.slots.insert(
            id,
            Slot {
                scope,
                key,
                vector: Vector(vector.into()),
                expires_at_ms,
                in_graph: false,
            },
        );
        inner.by_key.insert((scope, key), id);
        inner.order.push_back(id);
        inner.scopes.entry(scope).or_default().delta.push(id);
        inner.trim(self.cfg.capacity, now_ms);
    }

    /// The live entries of `scope` at least `threshold` similar to `vector` (unit length),
    /// most similar first, at most `limit`.
    pub fn search(
        &self,
        scope: &ScopeId,
        vector: &[f32],
        threshold: f32,
        limit: usize,
        now_ms: u64,
    ) -> Vec<Candidate> {
        let inner = self.read();
        let Some(s) = inner.scopes.get(scope) else {
            return Vec::new();
        };
        let mut out: Vec<Candidate> = Vec::new();
        let mut consider = |id: u64, similarity: f32| {
            if similarity < threshold {
                return;
            }
            if let Some(slot) = inner.slots.get(&id)
                && slot.expires_at_ms > now_ms
                && slot.scope == *scope
            {
                out.push(Candidate {
                    key: slot.key,
                    similarity,
                });
            }
        };
        if let Some(graph) = &s.graph {
            let q = Vector(vector.into());
            let mut search = Search::default();
            for item in graph.search(&q, &mut search).take(self.cfg.ef_search) {
                let similarity = 1.0 - item.distance;
                if similarity < threshold {
                    break;
                }
                consider(*item.value, similarity);
            }
        }
        for id in &s.delta {
            if let Some(slot) = inner.slots.get(id) {
                let similarity = dot(&slot.vector.0, vector);
                consider(*id, similarity);
            }
        }
        out.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        out.truncate(limit);
        out
    }

    /// Rebuilds the graphs that need it (see the module docs) and drops expired entries.
    /// Blocking and CPU-bound: run it on a blocking thread. Returns the scopes rebuilt.
    pub fn maintain(&self, now_ms: u64) -> usize {
        self.write().trim(self.cfg.capacity, now_ms);
        let due: Vec<ScopeId> = {
            let mut inner = self.write();
            let due: Vec<ScopeId> = inner
                .scopes
                .iter()
                .filter(|(_, s)| s.needs_rebuild(self.cfg.delta_max))
                .map(|(k, _)| *k)
                .collect();
            for k in &due {
                if let Some(s) = inner.scopes.get_mut(k) {
                    s.rebuilding = true;
                }
            }
            due
        };
        for scope in &due {
            self.rebuild(scope);
        }
        due.len()
    }

    fn rebuild(&self, scope: &ScopeId) {
        // The scope's live entries, gathered under the read lock; the graph is built
        // without a lock.
        let (ids, points): (Vec<u64>, Vec<Vector>) = {
            let inner = self.read();
            inner
                .slots
                .iter()
                .filter(|(_, s)| s.scope == *scope)
                .map(|(id, s)| (*id, s.vector.clone()))
                .unzip()
        };
        let graph = (!ids.is_empty()).then(|| {
            Arc::new(
                Builder::default()
                    .ef_construction(self.cfg.ef_construction)
                    .select_heuristic(Some(NEIGHBOURS))
                    .ef_search(self.cfg.ef_search)
                    .seed(0x5eed)
                    .build(points, ids.clone()),
            )
        });
        let built: HashSet<u64> = ids.iter().copied().collect();
        let mut inner = self.write();
        let mut tombstones = 0;
        for id in &ids {
            match inner.slots.get_mut(id) {
                Some(slot) => slot.in_graph = true,
                None => tombstones += 1,
            }
        }
        let Some(s) = inner.scopes.get_mut(scope) else {
            return;
        };
        s.graph = graph;
        s.graph_nodes = ids.len();
        s.tombstones = tombstones;
        s.delta.retain(|id| !built.contains(id));
        s.rebuilding = false;
        metrics::counter!("sluice_cache_semantic_rebuilds_total").increment(1);
    }

    /// Live entries held.
    pub fn len(&self) -> usize {
        self.read().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Scopes with at least one entry.
    pub fn scopes(&self) -> usize {
        self.read().scopes.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent-enough state (every mutation
        // is a few map operations); serve on rather than fail every lookup.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dims: usize) -> Vec<f32> {
        // A deterministic pseudo-random unit vector (xorshift).
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..dims)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        crate::semantic::normalized(v).unwrap_or_else(|| vec![1.0; dims])
    }

    fn near(v: &[f32], by: f32, seed: u64) -> Vec<f32> {
        let noise = unit(seed, v.len());
        crate::semantic::normalized(v.iter().zip(&noise).map(|(a, n)| a + by * n).collect())
            .unwrap_or_default()
    }

    const S: ScopeId = ScopeId([1; 32]);
    const NOW: u64 = 1_000;
    const LATER: u64 = 1_000_000;

    #[test]
    fn finds_the_nearest_above_the_threshold_in_its_scope_only() {
        let idx = SemanticIndex::new(IndexConfig {
            delta_max: 64,
            ..IndexConfig::new(10_000)
        });
        for i in 0..400u64 {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&i.to_le_bytes());
            idx.insert(S, CacheKey(k), unit(i, 32), LATER, NOW);
        }
        idx.maintain(NOW);
        {
            let inner = idx.read();
            assert!(inner.scopes[&S].graph.is_some(), "searched through a graph");
        }
        let target = unit(300, 32);
        let hits = idx.search(&S, &near(&target, 0.05, 7), 0.95, 3, NOW);
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&300u64.to_le_bytes());
        assert_eq!(hits.first().map(|c| c.key), Some(CacheKey(k)), "{hits:?}");
        assert!(hits[0].similarity > 0.95);
        // Far from everything: no candidate passes.
        assert!(idx.search(&S, &unit(99_999, 32), 0.95, 3, NOW).is_empty());
        // Another scope sees nothing.
        assert!(
            idx.search(&ScopeId([2; 32]), &target, 0.5, 3, NOW)
                .is_empty()
        );
    }

    #[test]
    fn the_graph_is_rebuilt_from_the_delta_and_skips_tombstones() {
        let idx = SemanticIndex::new(IndexConfig {
            capacity: 600,
            delta_max: 100,
            ..IndexConfig::new(600)
        });
        for i in 0..500u64 {
            idx.insert(S, CacheKey([i as u8; 32]), unit(i, 16), LATER, NOW);
            if i % 100 == 99 {
                assert_eq!(idx.maintain(NOW), 1);
            }
        }
        // Same (scope, key) replaces, so 256 distinct keys are left.
        assert_eq!(idx.len(), 256);
        {
            let inner = idx.read();
            let s = &inner.scopes[&S];
            assert!(s.graph.is_some() && s.delta.is_empty());
        }
        // Over capacity: the oldest go.
        for i in 0..1_000u64 {
            let mut k = [9u8; 32];
            k[..8].copy_from_slice(&i.to_le_bytes());
            idx.insert(ScopeId([3; 32]), CacheKey(k), unit(i, 16), LATER, NOW);
        }
        assert_eq!(idx.len(), 600);
        assert!(idx.search(&S, &unit(300, 16), 0.99, 1, NOW).is_empty());
    }

    #[test]
    fn dot_matches_the_plain_sum_at_every_length() {
        for len in [0, 1, 7, 8, 9, 31, 256, 1_536] {
            let a = unit(len as u64 + 1, len.max(1));
            let b = unit(len as u64 + 2, len.max(1));
            let (a, b) = (&a[..len], &b[..len]);
            let plain: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            assert!((dot(a, b) - plain).abs() < 1e-5, "len {len}");
        }
        // Unequal lengths: the shorter one decides, as `zip` did.
        assert!((dot(&[1.0, 2.0, 3.0], &[1.0, 1.0]) - 3.0).abs() < 1e-6);
    }

    #[test]
    fn expired_entries_are_never_returned() {
        let idx = SemanticIndex::new(IndexConfig::new(100));
        idx.insert(S, CacheKey([1; 32]), unit(1, 8), 2_000, NOW);
        assert_eq!(idx.search(&S, &unit(1, 8), 0.99, 1, NOW).len(), 1);
        assert!(idx.search(&S, &unit(1, 8), 0.99, 1, 2_000).is_empty());
        idx.maintain(2_000);
        assert!(idx.is_empty());
        // Already expired on arrival (a replayed insertion): not added.
        idx.insert(S, CacheKey([2; 32]), unit(2, 8), 500, NOW);
        assert!(idx.is_empty());
    }
}

//! The semantic index's benchmark: lookup latency against 10k and 100k cached prompts,
//! memory per entry, and hit rate on a generated workload with paraphrases.
//!
//! ```text
//! EF_CONSTRUCTION=N cargo run --profile fast -p sluice-cache --example semantic_bench [-- ENTRIES...]
//! ```
//!
//! Prompts are generated questions of five content words drawn from a 5,000-word
//! vocabulary, embedded with the simulator's bag-of-words model (`sim-embed-bow`, 256
//! dimensions), all in ONE scope (the worst case: one tenant, one system prompt). The
//! lookups are: paraphrases of cached questions (same content words, other order, other
//! filler words, plurals: should hit their own entry), near misses (one content word
//! replaced: similarity about 0.8, should miss), and new questions (should miss). Only the
//! index search is timed (the embedding call and the Redis read of the hit are not).

use std::time::Instant;

use sluice_cache::{
    CacheKey,
    semantic::{IndexConfig, ScopeId, SemanticIndex},
};
use sluice_sim::bow;

const THRESHOLD: f32 = 0.95;
const LOOKUPS: usize = 3_000;
const VOCABULARY: usize = 5_000;

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Word `i` of the vocabulary: letters only, so stemming leaves it alone.
fn word(i: usize) -> String {
    let letters = b"bcdfghjklmnpqrstvwxz";
    let mut w = String::from("q");
    let mut n = i + 1;
    while n > 0 {
        w.push(letters[n % letters.len()] as char);
        w.push(['a', 'o', 'u'][n % 3]);
        n /= letters.len();
    }
    w
}

fn question(words: &[usize]) -> String {
    let w: Vec<String> = words.iter().map(|&i| word(i)).collect();
    format!(
        "How do I {} the {} of {} with {} and {}?",
        w[0], w[1], w[2], w[3], w[4]
    )
}

fn paraphrase(words: &[usize], rng: &mut Rng) -> String {
    let mut w: Vec<String> = words.iter().map(|&i| word(i)).collect();
    for _ in 0..5 {
        let (a, b) = (rng.below(5), rng.below(5));
        w.swap(a, b);
    }
    let plural = rng.below(5);
    w[plural].push('s');
    let opener = [
        "Please tell me",
        "Could you explain",
        "I want to know",
        "Hey, what is",
    ][rng.below(4)];
    format!(
        "{opener}: {} {} for {} in {} and {}",
        w[0], w[1], w[2], w[3], w[4]
    )
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

fn key(i: usize) -> CacheKey {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(i as u64).to_le_bytes());
    CacheKey(k)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn run(entries: usize) {
    let mut rng = Rng(0x5151_cafe ^ entries as u64);
    let questions: Vec<Vec<usize>> = (0..entries)
        .map(|_| (0..5).map(|_| rng.below(VOCABULARY)).collect())
        .collect();
    let vectors: Vec<Vec<f32>> = questions
        .iter()
        .map(|q| bow::embedding(&question(q)))
        .collect();
    let scope = ScopeId([7; 32]);
    let now = 1_000;
    let expires = u64::MAX;

    let before = rss_bytes();
    let mut cfg = IndexConfig::new(entries);
    if let Some(ef) = std::env::var("EF_CONSTRUCTION")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.ef_construction = ef;
    }
    let idx = SemanticIndex::new(cfg);
    let started = Instant::now();
    for (i, v) in vectors.iter().enumerate() {
        idx.insert(scope, key(i), v.clone(), expires, now);
    }
    let insert_s = started.elapsed().as_secs_f64();
    // One graph over everything (a replica that replayed the stream in one go).
    let (started, cpu) = (Instant::now(), cpu_seconds());
    while idx.maintain(now) > 0 {}
    let build_s = started.elapsed().as_secs_f64();
    let build_cpu_s = cpu_seconds() - cpu;
    let after = rss_bytes();
    drop(vectors);

    // The queries first, so the timed loop runs searches only.
    let mut queries = Vec::with_capacity(LOOKUPS);
    for n in 0..LOOKUPS {
        let target = rng.below(entries);
        let text = match n % 3 {
            0 => paraphrase(&questions[target], &mut rng),
            1 => {
                let mut q = questions[target].clone();
                q[rng.below(5)] = VOCABULARY + rng.below(VOCABULARY);
                question(&q)
            }
            _ => question(
                &(0..5)
                    .map(|_| VOCABULARY + rng.below(VOCABULARY))
                    .collect::<Vec<_>>(),
            ),
        };
        queries.push((target, bow::embedding(&text)));
    }
    let mut latencies = Vec::with_capacity(LOOKUPS);
    let (mut para_hits, mut para_wrong, mut near_hits, mut new_hits) = (0, 0, 0, 0);
    let per_kind = LOOKUPS / 3;
    // CPU per lookup as well as wall-clock latency: on a busy machine a search waits for a
    // core, and only the CPU figure is the index's own cost.
    let lookup_cpu = cpu_seconds();
    for (n, (target, v)) in queries.iter().enumerate() {
        let target = *target;
        let t = Instant::now();
        let found = idx.search(&scope, v, THRESHOLD, 3, now);
        latencies.push(t.elapsed().as_nanos() as u64);
        match (n % 3, found.first()) {
            (0, Some(c)) if c.key == key(target) => para_hits += 1,
            (0, Some(_)) => para_wrong += 1,
            (1, Some(_)) => near_hits += 1,
            (2, Some(_)) => new_hits += 1,
            _ => {}
        }
    }
    let lookup_cpu_us = (cpu_seconds() - lookup_cpu) * 1e6 / LOOKUPS as f64;
    latencies.sort_unstable();
    let pct = |n: usize| 100.0 * n as f64 / per_kind as f64;
    println!(
        "entries={entries} dims={} ef_construction={} insert={insert_s:.2}s \
         graph build={build_s:.1}s wall, {build_cpu_s:.1}s CPU memory/entry={:.0}B \
         lookup p50={:.1}us p99={:.1}us max={:.1}us cpu/lookup={lookup_cpu_us:.0}us \
         paraphrase hit={:.1}% (wrong entry {:.1}%) near-miss hit={:.1}% new-question hit={:.1}%",
        bow::BOW_DIMS,
        cfg.ef_construction,
        after.saturating_sub(before) as f64 / entries as f64,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        pct(para_hits),
        pct(para_wrong),
        pct(near_hits),
        pct(new_hits),
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000]
    } else {
        sizes
    };
    for n in sizes {
        run(n);
    }
}

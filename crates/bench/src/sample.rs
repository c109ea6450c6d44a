//! A bounded uniform sample of the accepted jobs.
//!
//! The end-to-end phase polls a sample of the accepted jobs. Which jobs are accepted is only
//! known as responses arrive, so the sample is a reservoir (Vitter's algorithm R): at most
//! `capacity` items whatever the run length, each offered item equally likely to be kept.

/// A small, seedable PRNG (SplitMix64); good enough to pick sample slots, no dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound > 0`), by multiply-shift (bias below 2^-32 here).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// At most `capacity` items chosen uniformly from everything offered.
#[derive(Debug)]
pub struct Reservoir<T> {
    capacity: usize,
    seen: u64,
    items: Vec<T>,
    rng: SplitMix64,
}

impl<T> Reservoir<T> {
    pub fn new(capacity: usize, seed: u64) -> Self {
        Self {
            capacity,
            seen: 0,
            // Grow as items arrive; a short run should not pay for a large capacity.
            items: Vec::with_capacity(capacity.min(1024)),
            rng: SplitMix64::new(seed),
        }
    }

    /// Offers one item; it is kept with probability `capacity / seen`.
    pub fn offer(&mut self, item: T) {
        self.seen += 1;
        if self.items.len() < self.capacity {
            self.items.push(item);
            return;
        }
        let slot = self.rng.below(self.seen);
        if let Some(kept) = usize::try_from(slot)
            .ok()
            .and_then(|i| self.items.get_mut(i))
        {
            *kept = item;
        }
    }

    /// How many items were offered.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn into_items(self) -> Vec<T> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_below_capacity() {
        let mut r = Reservoir::new(10, 1);
        for i in 0..7 {
            r.offer(i);
        }
        assert_eq!(r.seen(), 7);
        assert_eq!(r.into_items(), vec![0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn never_exceeds_capacity() {
        let mut r = Reservoir::new(100, 2);
        for i in 0..100_000u32 {
            r.offer(i);
        }
        assert_eq!(r.seen(), 100_000);
        assert_eq!(r.len(), 100);
        let mut items = r.into_items();
        items.sort_unstable();
        items.dedup();
        assert_eq!(items.len(), 100, "a slot holds one distinct item");
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut r = Reservoir::new(0, 3);
        for i in 0..10 {
            r.offer(i);
        }
        assert!(r.is_empty());
    }

    #[test]
    fn sample_spans_the_whole_stream() {
        // Deterministic seed: the late half of the stream must be represented, which a
        // "keep the first N" sampler would fail.
        let mut r = Reservoir::new(1000, 4);
        for i in 0..100_000u32 {
            r.offer(i);
        }
        let late = r.into_items().iter().filter(|&&i| i >= 50_000).count();
        assert!((350..=650).contains(&late), "late half got {late} of 1000");
    }

    #[test]
    fn below_stays_in_bounds() {
        let mut rng = SplitMix64::new(5);
        for bound in [1, 2, 3, 10, 1 << 40] {
            for _ in 0..1000 {
                assert!(rng.below(bound) < bound);
            }
        }
    }
}

//! Bookkeeping for `[[sim:fail_first=N:KEY]]`: how many requests each key has already failed.
//!
//! Bounded: beyond [`MAX_KEYS`] the oldest key is forgotten (a forgotten key that comes back
//! starts failing again from zero, which is the only way the bound can show).

use std::collections::{HashMap, VecDeque};

/// How many keys are remembered at most.
pub const MAX_KEYS: usize = 10_000;

/// Per-key failure counts with first-in-first-out eviction.
#[derive(Debug)]
pub struct FailFirstTracker {
    failed: HashMap<String, u32>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Default for FailFirstTracker {
    fn default() -> Self {
        Self::with_capacity(MAX_KEYS)
    }
}

impl FailFirstTracker {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            failed: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records one request carrying `key`; true when it is among the first `n` and must fail.
    pub fn should_fail(&mut self, key: &str, n: u32) -> bool {
        if let Some(count) = self.failed.get_mut(key) {
            if *count < n {
                *count += 1;
                return true;
            }
            return false;
        }
        if n == 0 {
            return false;
        }
        while self.failed.len() >= self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.failed.remove(&oldest);
                }
                None => break,
            }
        }
        self.failed.insert(key.to_owned(), 1);
        self.order.push_back(key.to_owned());
        true
    }

    pub fn len(&self) -> usize {
        self.failed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.failed.is_empty()
    }

    pub fn clear(&mut self) {
        self.failed.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_n_fail_then_succeed() {
        let mut t = FailFirstTracker::default();
        let got: Vec<bool> = (0..5).map(|_| t.should_fail("k", 2)).collect();
        assert_eq!(got, [true, true, false, false, false]);
        assert!(t.should_fail("other", 1));
        assert!(!t.should_fail("zero", 0));
    }

    #[test]
    fn the_map_is_bounded() {
        let mut t = FailFirstTracker::with_capacity(3);
        for key in ["a", "b", "c", "d", "e"] {
            assert!(t.should_fail(key, 1));
        }
        assert_eq!(t.len(), 3);
        // "a" was evicted, so it fails again; "e" is remembered.
        assert!(t.should_fail("a", 1));
        assert!(!t.should_fail("e", 1));
        t.clear();
        assert!(t.is_empty());
    }
}

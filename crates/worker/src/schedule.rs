//! Which priority class a fetch round asks first.
//!
//! Normally `high`, then `normal`, then `low`, so a saturated worker drains the urgent work
//! first. Every `every`-th round starts with `low`, and every round half-way between those
//! with `normal`, so the lower classes keep a small guaranteed share and never starve.

use sluice_protocol::Priority;

pub fn fetch_order(round: u64, every: u32) -> [Priority; 3] {
    let every = u64::from(every.max(2));
    let half = every / 2;
    if round.is_multiple_of(every) {
        [Priority::Low, Priority::High, Priority::Normal]
    } else if round % every == half {
        [Priority::Normal, Priority::High, Priority::Low]
    } else {
        Priority::ALL
    }
}

/// Splits `free` slots over the three classes for an idle long-poll, most urgent first.
pub fn idle_split(free: usize) -> [usize; 3] {
    let base = free / 3;
    let extra = free % 3;
    [
        base + usize::from(extra > 0),
        base + usize::from(extra > 1),
        base,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_first_most_of_the_time_and_every_class_gets_a_turn() {
        let every = 10;
        let rounds: Vec<_> = (1..=1000).map(|r| fetch_order(r, every)[0]).collect();
        let count = |p| rounds.iter().filter(|&&x| x == p).count();
        assert_eq!(count(Priority::Low), 100);
        assert_eq!(count(Priority::Normal), 100);
        assert_eq!(count(Priority::High), 800);
        // Every order asks all three classes once.
        for r in 0..20 {
            let mut o = fetch_order(r, every).to_vec();
            o.sort();
            assert_eq!(o, Priority::ALL.to_vec());
        }
    }

    #[test]
    fn idle_split_uses_every_free_slot() {
        for free in 0..50 {
            let s = idle_split(free);
            assert_eq!(s.iter().sum::<usize>(), free);
            assert!(s[0] >= s[1] && s[1] >= s[2]);
        }
        assert_eq!(idle_split(1), [1, 0, 0]);
    }
}

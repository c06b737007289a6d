//! Optional hot-key tracking: the top-N keys by hits, estimated with the Space-Saving algorithm
//! (Metwally et al., 2005) over a sample of lookups, in bounded memory.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

/// Bounded top-N tracker. Memory: `8 * n` keys at most.
#[derive(Debug)]
pub(crate) struct HotKeys {
    top: usize,
    capacity: usize,
    /// Only one lookup in `sample_every` is counted, to keep the hot path cheap.
    sample_every: u64,
    ticks: AtomicU64,
    counts: Mutex<HashMap<String, u64>>,
}

impl HotKeys {
    pub(crate) fn new(top: usize) -> Self {
        let top = top.max(1);
        HotKeys {
            top,
            capacity: top * 8,
            sample_every: 8,
            ticks: AtomicU64::new(0),
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one lookup of `key` (sampled).
    pub(crate) fn record(&self, key: &str) {
        if !self
            .ticks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.sample_every)
        {
            return;
        }
        let mut counts = crate::util::lock(&self.counts);
        if let Some(count) = counts.get_mut(key) {
            *count += 1;
            return;
        }
        if counts.len() < self.capacity {
            counts.insert(key.to_owned(), 1);
            return;
        }
        // Space-Saving: the new key replaces the least counted one and inherits its count + 1,
        // so a key's estimate never undercounts it.
        let evicted = counts
            .iter()
            .min_by_key(|(_, count)| **count)
            .map(|(k, c)| (k.clone(), *c));
        if let Some((evicted, min)) = evicted {
            counts.remove(&evicted);
            counts.insert(key.to_owned(), min + 1);
        }
    }

    /// The top keys with their estimated lookup counts, highest first.
    pub(crate) fn top(&self) -> Vec<(String, u64)> {
        let counts = crate::util::lock(&self.counts);
        let mut all: Vec<(String, u64)> = counts
            .iter()
            .map(|(k, c)| (k.clone(), c * self.sample_every))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(self.top);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_heavy_hitters_in_bounded_memory() {
        let hot = HotKeys::new(3);
        for i in 0..100_000u64 {
            let key = match i % 10 {
                0..=3 => "a".to_string(),
                4..=5 => "b".to_string(),
                6 => "c".to_string(),
                _ => format!("cold-{i}"),
            };
            hot.record(&key);
        }
        let top: Vec<String> = hot.top().into_iter().map(|(k, _)| k).collect();
        assert_eq!(top, vec!["a", "b", "c"]);
        assert!(hot.counts.lock().unwrap().len() <= 24);
        let a = hot.top()[0].1;
        assert!(
            (30_000..=50_000).contains(&a),
            "estimate {a} for 40000 lookups"
        );
    }
}

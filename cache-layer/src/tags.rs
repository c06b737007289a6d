//! Tag invalidation bookkeeping: per-tag invalidation timestamps.
//!
//! `invalidate_tag(t)` records "everything tagged `t` that was loaded before now is invalid".
//! An entry carries its tags and `created_ms` (when its load started); a read compares the two, so
//! a load that started before an invalidation and finished after it cannot resurrect old data.
//!
//! This process's own invalidations are known immediately; timestamps are also written to Redis
//! (`<namespace>:__tag:<tag>`) for other instances.

use std::{collections::HashMap, sync::RwLock};

/// The latest invalidation time this process knows for each tag.
#[derive(Debug, Default)]
pub(crate) struct TagClock {
    invalidated_at: RwLock<HashMap<String, u64>>,
}

impl TagClock {
    /// Records that `tag` was invalidated at `at_ms` (keeps the latest).
    pub(crate) fn record(&self, tag: &str, at_ms: u64) {
        let mut map = self
            .invalidated_at
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let slot = map.entry(tag.to_owned()).or_insert(0);
        *slot = (*slot).max(at_ms);
    }

    /// Whether an entry created at `created_ms` with `tags` was invalidated since.
    pub(crate) fn is_stale<'a>(
        &self,
        tags: impl IntoIterator<Item = &'a str>,
        created_ms: u64,
    ) -> bool {
        let mut tags = tags.into_iter().peekable();
        if tags.peek().is_none() {
            return false;
        }
        let map = self
            .invalidated_at
            .read()
            .unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return false;
        }
        tags.any(|tag| map.get(tag).is_some_and(|&at| at >= created_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_created_before_or_at_an_invalidation_are_stale() {
        let clock = TagClock::default();
        clock.record("product:1", 1_000);
        assert!(clock.is_stale(["product:1"], 999));
        assert!(clock.is_stale(["other", "product:1"], 1_000));
        assert!(!clock.is_stale(["product:1"], 1_001));
        assert!(!clock.is_stale(["product:2"], 1));
        assert!(!clock.is_stale([], 1));
        clock.record("product:1", 500);
        assert!(
            clock.is_stale(["product:1"], 999),
            "older records never move the clock back"
        );
    }
}

//! The optional in-process L1 tier (moka), in front of the store.
//!
//! Entries hold the decoded value (`Arc<dyn Any>`), so an L1 hit costs one moka lookup, a downcast
//! and a clone of the value: no Redis call, no decoding. Entries are keyed by the user key (the tier
//! belongs to one cache, so the namespace is implied) and expire at their hard expiry, or after the
//! bus fallback TTL when they were inserted while the invalidation bus was down.
//!
//! The tier is bounded by entries and by bytes: an entry weighs its value's serialized size
//! (uncompressed) plus its key and tags, and at least `max_bytes / max_entries`, so neither bound
//! can be exceeded (a 1 MiB HTTP body and a 40-byte price count for what they hold). A value
//! larger than the whole budget is not kept in L1.
//!
//! An entry remembers the namespace version it was read under and its tags with the versions its
//! load saw, so a namespace bump or a tag invalidation makes it unservable at once (checked on
//! every L1 hit against the tag versions the process knows), without scanning the tier.

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use moka::{sync::Cache as MokaCache, Expiry};

use crate::{envelope::Timing, tags::TagTimes};

/// One decoded value in L1.
#[derive(Clone)]
pub(crate) struct L1Entry {
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    pub(crate) timing: Timing,
    /// Its tags with the versions its load saw.
    pub(crate) tags: Arc<[(String, TagTimes)]>,
    /// When this copy stops being trusted (hard expiry, or sooner while the bus is down).
    pub(crate) expires_at: Instant,
    /// When it was inserted (while the bus is down, copies live only the fallback TTL).
    pub(crate) inserted: Instant,
    /// The namespace version it belongs to.
    pub(crate) version: u64,
    /// Bytes it holds: its value's serialized size plus its tags (the key is added when weighed).
    pub(crate) bytes: u64,
}

/// Entries of the L1 tier a cache on the embedded in-memory store keeps when
/// [`CacheBuilder::local`](crate::CacheBuilder::local) is not given (see
/// [`CacheBuilder::memory_max_bytes`](crate::CacheBuilder::memory_max_bytes)).
pub const IMPLICIT_L1_ENTRIES: u64 = 100_000;

/// Default byte budget of the L1 tier ([`CacheBuilder::local_max_bytes`](crate::CacheBuilder::local_max_bytes)).
pub const DEFAULT_L1_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes of bookkeeping counted per entry besides its key and value.
const ENTRY_OVERHEAD: u64 = 128;

struct UntilExpiry;

impl Expiry<Arc<str>, L1Entry> for UntilExpiry {
    fn expire_after_create(&self, _: &Arc<str>, e: &L1Entry, now: Instant) -> Option<Duration> {
        Some(e.expires_at.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &Arc<str>,
        e: &L1Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.expires_at.saturating_duration_since(now))
    }
}

/// Bounded L1 tier.
#[derive(Clone)]
pub(crate) struct L1Tier {
    entries: MokaCache<Arc<str>, L1Entry>,
}

impl L1Tier {
    /// A tier of at most `max_entries` holding at most `max_bytes`; `on_evict` is called for each
    /// entry pushed out by the size bound (not for expiries or explicit removals).
    pub(crate) fn new(
        max_entries: u64,
        max_bytes: u64,
        on_evict: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        // Every entry weighs at least `floor`, so at most `max_entries` fit in `max_bytes`.
        let capacity = if max_entries == 0 { 0 } else { max_bytes };
        let floor = max_bytes / max_entries.max(1);
        L1Tier {
            entries: MokaCache::builder()
                .max_capacity(capacity)
                .weigher(move |key: &Arc<str>, entry: &L1Entry| {
                    let bytes = entry
                        .bytes
                        .saturating_add(key.len() as u64)
                        .saturating_add(ENTRY_OVERHEAD)
                        .max(floor);
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .expire_after(UntilExpiry)
                .eviction_listener(move |_key, _value, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        on_evict();
                    }
                })
                .build(),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<L1Entry> {
        self.entries.get(key)
    }

    pub(crate) fn insert(&self, key: &str, entry: L1Entry) {
        self.entries.insert(Arc::from(key), entry);
    }

    pub(crate) fn remove(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// Removes the entry of `key` only if it is the one inserted at `inserted` (a newer copy stays).
    pub(crate) fn remove_if_inserted_at(&self, key: &str, inserted: Instant) {
        self.entries
            .entry(Arc::from(key))
            .and_compute_with(|current| match current {
                Some(entry) if entry.value().inserted == inserted => moka::ops::compute::Op::Remove,
                _ => moka::ops::compute::Op::Nop,
            });
    }

    pub(crate) fn clear(&self) {
        self.entries.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bytes: u64) -> L1Entry {
        let now = Instant::now();
        L1Entry {
            value: Arc::new(()),
            timing: Timing {
                created_ms: 0,
                fresh_until_ms: u64::MAX / 2,
                stale_until_ms: u64::MAX / 2,
                delta_ms: 0,
            },
            tags: Arc::from(Vec::new()),
            expires_at: now + Duration::from_secs(60),
            inserted: now,
            version: 0,
            bytes,
        }
    }

    #[test]
    fn bounded_by_bytes_and_by_entries() {
        let evicted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = evicted.clone();
        // 1000 entries, 1 MiB: ten 256 KiB values cannot all stay.
        let tier = L1Tier::new(1000, 1024 * 1024, move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        for i in 0..10 {
            tier.insert(&format!("big{i}"), entry(256 * 1024));
        }
        tier.entries.run_pending_tasks();
        assert!(tier.entries.weighted_size() <= 1024 * 1024);
        assert!(
            tier.entries.entry_count() <= 4,
            "{}",
            tier.entries.entry_count()
        );
        assert!(evicted.load(std::sync::atomic::Ordering::Relaxed) >= 6);
        // Small values: the entry bound applies (each weighs at least 1 MiB / 1000).
        let tier = L1Tier::new(10, 1024 * 1024, || {});
        for i in 0..50 {
            tier.insert(&format!("small{i}"), entry(8));
        }
        tier.entries.run_pending_tasks();
        assert!(
            tier.entries.entry_count() <= 10,
            "{}",
            tier.entries.entry_count()
        );
        // A value larger than the whole budget is not kept.
        let tier = L1Tier::new(10, 1024, || {});
        tier.insert("huge", entry(4096));
        tier.entries.run_pending_tasks();
        assert!(tier.get("huge").is_none());
    }
}

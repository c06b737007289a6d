//! The optional in-process L1 tier (moka), in front of the store.
//!
//! Entries hold the decoded value (`Arc<dyn Any>`), so an L1 hit costs one moka lookup, a downcast
//! and a clone of the value: no Redis call, no decoding. Entries are keyed by the user key (the tier
//! belongs to one cache, so the namespace is implied) and expire at their hard expiry, or after the
//! bus fallback TTL when they were inserted while the invalidation bus was down.
//!
//! An entry remembers the namespace version it was read under and its tags and load start, so a
//! namespace bump or a tag invalidation makes it unservable at once (checked on every L1 hit
//! against the tag times the process knows), without scanning the tier.

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use moka::{sync::Cache as MokaCache, Expiry};

use crate::envelope::Timing;

/// One decoded value in L1.
#[derive(Clone)]
pub(crate) struct L1Entry {
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    pub(crate) timing: Timing,
    pub(crate) tags: Arc<[String]>,
    /// When this copy stops being trusted (hard expiry, or sooner while the bus is down).
    pub(crate) expires_at: Instant,
    /// When it was inserted (while the bus is down, copies live only the fallback TTL).
    pub(crate) inserted: Instant,
    /// The namespace version it belongs to.
    pub(crate) version: u64,
}

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
    /// A tier of at most `max_entries`; `on_evict` is called for each entry pushed out by the
    /// size bound (not for expiries or explicit removals).
    pub(crate) fn new(max_entries: u64, on_evict: impl Fn() + Send + Sync + 'static) -> Self {
        L1Tier {
            entries: MokaCache::builder()
                .max_capacity(max_entries)
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

    pub(crate) fn clear(&self) {
        self.entries.invalidate_all();
    }
}

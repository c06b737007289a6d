//! What the cache learns about the Redis it runs on: server settings that weaken its guarantees.
//!
//! After each (re)subscription of the invalidation bus, and on every [`Cache::ping`], the cache
//! reads `maxmemory` and `maxmemory_policy` from `INFO memory` (allowed where `CONFIG` is not,
//! e.g. on managed Redis; an ACL user without `+info` just leaves the policy unknown) and keeps
//! the result in [`Stats::memory_policy`](crate::Stats::memory_policy). When the settings weaken a
//! guarantee, it logs a `WARN` once per policy:
//!
//! - `noeviction` with a `maxmemory`: once Redis is full, every fill, lock and invalidation
//!   write fails with `OOM`. Callers still get the loader's value, but nothing new is cached and
//!   invalidations are retried until memory frees up.
//! - `allkeys-*`: Redis may evict keys without a TTL, among them the namespace version and the
//!   write-behind counters' hashes: an evicted version brings back entries an
//!   `invalidate_namespace` dropped, an evicted hash loses un-flushed increments.
//! - `volatile-lru`, `volatile-lfu`, `volatile-random`: Redis may evict a tag's invalidation
//!   times (they have a TTL and are rarely read: instances keep them in memory) while entries
//!   it invalidated are still stored, and those entries are served again.
//!
//! `volatile-ttl` (evicts the keys closest to expiry: entries first; a tag's times outlive every
//! entry they invalidated, since the times' TTL restarts at each invalidation and entries never
//! live longer than it) and `noeviction` without `maxmemory` keep every guarantee.
//!
//! [`Cache::ping`]: crate::Cache::ping

use std::sync::Mutex;

use crate::store::EvictionSettings;

/// Redis' eviction settings (`INFO memory`) and what they mean for the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryPolicy {
    /// `maxmemory-policy`, e.g. `volatile-ttl`.
    pub policy: String,
    /// `maxmemory` in bytes (0: no limit).
    pub maxmemory: u64,
    /// What the settings weaken, or `None` when they keep every guarantee.
    pub warning: Option<&'static str>,
}

const NOEVICTION_FULL: &str = "maxmemory-policy noeviction with a maxmemory: once Redis is full \
    every fill fails (OOM) and nothing new is cached; use volatile-ttl";
const ALLKEYS: &str = "an allkeys-* maxmemory-policy can evict keys without a TTL: the namespace \
    version (entries dropped by invalidate_namespace come back) and write-behind counter hashes \
    (un-flushed increments are lost); use volatile-ttl";
const VOLATILE_RECENCY: &str = "a volatile-lru/lfu/random maxmemory-policy can evict a tag's \
    invalidation times before the entries they invalidated (those entries are served again); \
    use volatile-ttl";

impl MemoryPolicy {
    /// What `settings` mean for the cache.
    pub(crate) fn from_settings(settings: EvictionSettings) -> MemoryPolicy {
        let EvictionSettings { policy, maxmemory } = settings;
        let warning = match policy.as_str() {
            "noeviction" if maxmemory > 0 => Some(NOEVICTION_FULL),
            p if p.starts_with("allkeys-") => Some(ALLKEYS),
            "volatile-lru" | "volatile-lfu" | "volatile-random" => Some(VOLATILE_RECENCY),
            _ => None,
        };
        MemoryPolicy {
            policy,
            maxmemory,
            warning,
        }
    }
}

/// The last eviction settings a cache read, warned about once per policy.
#[derive(Debug, Default)]
pub(crate) struct PolicyWatch {
    known: Mutex<Option<MemoryPolicy>>,
}

impl PolicyWatch {
    /// Records freshly read settings; logs the warning when the policy is new and weakening.
    pub(crate) fn record(&self, cache: &str, settings: EvictionSettings) {
        let policy = MemoryPolicy::from_settings(settings);
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.as_ref().map(|k| &k.policy) != Some(&policy.policy) {
            if let Some(warning) = policy.warning {
                tracing::warn!(cache = %cache, maxmemory_policy = %policy.policy,
                    maxmemory = policy.maxmemory, "{warning}");
            }
        }
        *known = Some(policy);
    }

    /// The settings last read, if any.
    pub(crate) fn get(&self) -> Option<MemoryPolicy> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warning(policy: &str, maxmemory: u64) -> Option<&'static str> {
        MemoryPolicy::from_settings(EvictionSettings {
            policy: policy.to_owned(),
            maxmemory,
        })
        .warning
    }

    #[test]
    fn warns_about_the_policies_that_weaken_guarantees() {
        assert_eq!(warning("noeviction", 0), None, "no limit: nothing fails");
        assert_eq!(warning("noeviction", 100 << 20), Some(NOEVICTION_FULL));
        for policy in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            assert_eq!(warning(policy, 100 << 20), Some(ALLKEYS), "{policy}");
        }
        for policy in ["volatile-lru", "volatile-lfu", "volatile-random"] {
            assert_eq!(
                warning(policy, 100 << 20),
                Some(VOLATILE_RECENCY),
                "{policy}"
            );
        }
        assert_eq!(warning("volatile-ttl", 100 << 20), None);
    }

    #[test]
    fn the_watch_keeps_the_last_settings() {
        let watch = PolicyWatch::default();
        assert_eq!(watch.get(), None);
        let settings = |policy: &str| EvictionSettings {
            policy: policy.to_owned(),
            maxmemory: 1,
        };
        watch.record("c", settings("allkeys-lru"));
        assert_eq!(
            watch.get().map(|p| p.policy),
            Some("allkeys-lru".to_owned())
        );
        watch.record("c", settings("volatile-ttl"));
        assert_eq!(watch.get().and_then(|p| p.warning), None);
    }
}

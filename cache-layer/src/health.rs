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
    /// Reads `maxmemory` and `maxmemory_policy` out of an `INFO memory` reply.
    pub(crate) fn from_info(info: &str) -> Option<MemoryPolicy> {
        let field = |name: &str| {
            info.lines().find_map(|line| {
                let (key, value) = line.trim().split_once(':')?;
                (key == name).then(|| value.trim().to_owned())
            })
        };
        let policy = field("maxmemory_policy")?;
        let maxmemory = field("maxmemory")?.parse().ok()?;
        Some(MemoryPolicy::new(policy, maxmemory))
    }

    fn new(policy: String, maxmemory: u64) -> MemoryPolicy {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn info(policy: &str, maxmemory: u64) -> String {
        format!(
            "# Memory\r\nused_memory:1000\r\nmaxmemory:{maxmemory}\r\nmaxmemory_human:0B\r\n\
             maxmemory_policy:{policy}\r\nmem_fragmentation_ratio:1.0\r\n"
        )
    }

    #[test]
    fn reads_the_policy_from_info_memory() {
        let policy = MemoryPolicy::from_info(&info("volatile-ttl", 1 << 20)).expect("parsed");
        assert_eq!(policy.policy, "volatile-ttl");
        assert_eq!(policy.maxmemory, 1 << 20);
        assert_eq!(policy.warning, None);
        assert_eq!(
            MemoryPolicy::from_info("# Memory\r\nused_memory:1\r\n"),
            None
        );
    }

    #[test]
    fn warns_about_the_policies_that_weaken_guarantees() {
        let warning = |policy: &str, maxmemory| {
            MemoryPolicy::from_info(&info(policy, maxmemory))
                .expect("parsed")
                .warning
        };
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
}

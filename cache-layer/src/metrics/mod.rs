//! Observability: the [`Stats`] snapshot, `metrics` facade counters and histograms, per-function
//! stats of `#[cached]` fns and optional hot-key tracking.
//!
//! Every metric carries the label `cache` (the cache's name); read-through metrics also carry
//! `door` (`fn` for `#[cached]`, `http` for `CacheLayer`, `direct` for calls on [`Cache`]).
//! Keys are never labels. The full list is in the README ("Metrics").
//!
//! Install the metrics recorder (e.g. `metrics-exporter-prometheus`) before building caches:
//! handles are registered once at build time, so the hot path never allocates labels.
//!
//! [`Cache`]: crate::Cache

mod counters;
mod functions;
mod hot_keys;

pub(crate) use self::counters::{CacheMetrics, Door, Striped};
pub use self::functions::{function_stats, FunctionStats, FunctionStatsSnapshot};
pub(crate) use self::hot_keys::HotKeys;

use crate::BreakerState;

/// A snapshot of one cache's counters since it was built.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use cache_layer::{BreakerState, Cache, Policy};
///
/// let cache = Cache::in_memory();
/// let policy = Policy::ttl(Duration::from_secs(60));
/// for _ in 0..4 {
///     let _: u32 = cache.get_or_fetch("answer", &policy, || async { 42 }).await;
/// }
/// let stats = cache.stats();
/// assert_eq!((stats.hits, stats.misses, stats.loads), (3, 1, 1));
/// assert_eq!(stats.hit_ratio(), 0.75);
/// assert_eq!(stats.breaker, BreakerState::Closed);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Lookups answered with a fresh value (L1 or L2).
    pub hits: u64,
    /// Of `hits`, how many the in-process L1 tier answered without touching Redis.
    pub local_hits: u64,
    /// Lookups that found no usable value.
    pub misses: u64,
    /// Lookups answered with a stale value (grace period).
    pub stale_hits: u64,
    /// Source loads run (the loader / function body / origin service was called).
    pub loads: u64,
    /// Source loads that returned an error (never cached).
    pub load_errors: u64,
    /// Callers that shared another caller's load instead of running their own.
    pub coalesced: u64,
    /// Redis operations that failed or timed out (the caller fell back to the source).
    pub errors: u64,
    /// Stored entries that could not be decoded (treated as misses).
    pub corrupt: u64,
    /// Background or early refreshes started (stale-while-revalidate, XFetch).
    pub refreshes: u64,
    /// Loads that waited for another process's distributed lock (`Stampede::Lock`).
    pub lock_waits: u64,
    /// Lock waits that gave up after `lock_wait` and loaded without storing.
    pub lock_timeouts: u64,
    /// Entries removed by `delete`, and tag / namespace invalidations.
    pub invalidations: u64,
    /// L1 entries pushed out by the tier's size bound ([`local(n)`](crate::CacheBuilder::local)).
    pub l1_evictions: u64,
    /// Current circuit-breaker state.
    pub breaker: BreakerState,
    /// Breaker state changes since the cache was built.
    pub breaker_transitions: u64,
    /// The most-read keys (estimated hits, highest first) when hot-key tracking is on
    /// ([`CacheBuilder::track_hot_keys`](crate::CacheBuilder::track_hot_keys)); else empty.
    pub hot_keys: Vec<(String, u64)>,
    /// Redis' eviction settings and what they weaken, once read (after the invalidation bus
    /// connected, or by [`Cache::ping`](crate::Cache::ping)); `None` before, for the embedded
    /// store, and when the ACL user may not run `INFO`. See [`MemoryPolicy`](crate::MemoryPolicy).
    pub memory_policy: Option<crate::MemoryPolicy>,
    /// Invalidations, deletes and writes Redis has not taken yet (breaker open, timeouts): honoured
    /// by this process and replayed in the background (gauge `cache_pending_invalidations`;
    /// [`Cache::shutdown`](crate::Cache::shutdown) drains them).
    pub pending_invalidations: u64,
}

impl Stats {
    /// `(hits + stale hits) / lookups`, or 0 when nothing was looked up.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.stale_hits + self.misses;
        if total == 0 {
            0.0
        } else {
            (self.hits + self.stale_hits) as f64 / total as f64
        }
    }
}

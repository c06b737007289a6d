//! Counters behind [`Cache::stats`](crate::Cache::stats), mirrored to the `metrics` facade.
//!
//! Metric names (labels: `cache` = the cache's name; never the key):
//! `cache_hits_total{tier="l1"|"l2"}`, `cache_misses_total`, `cache_stale_hits_total`,
//! `cache_loads_total`, `cache_load_errors_total`, `cache_redis_errors_total`,
//! `cache_corrupt_entries_total`, `cache_coalesced_total`, `cache_refreshes_total`,
//! `cache_lock_waits_total`, `cache_lock_timeouts_total`, `cache_breaker_transitions_total{to}`,
//! histogram `cache_load_seconds`, gauge `cache_breaker_state` (0 closed, 1 open, 2 half-open).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    /// Current circuit-breaker state.
    pub breaker: BreakerState,
    /// Breaker state changes since the cache was built.
    pub breaker_transitions: u64,
}

impl Stats {
    /// `hits / (hits + misses)`, or 0 when nothing was looked up.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.stale_hits + self.misses;
        if total == 0 {
            0.0
        } else {
            (self.hits + self.stale_hits) as f64 / total as f64
        }
    }
}

/// `metrics` handles registered once when the cache is built (no per-hit label allocation).
///
/// Install the metrics recorder (e.g. the Prometheus exporter) before building the cache: handles
/// registered earlier go to the no-op recorder.
struct Handles {
    l1_hits: metrics::Counter,
    l2_hits: metrics::Counter,
    misses: metrics::Counter,
    stale_hits: metrics::Counter,
    loads: metrics::Counter,
    load_errors: metrics::Counter,
    load_seconds: metrics::Histogram,
    coalesced: metrics::Counter,
    redis_errors: metrics::Counter,
    corrupt: metrics::Counter,
    refreshes: metrics::Counter,
    lock_waits: metrics::Counter,
    lock_timeouts: metrics::Counter,
    breaker_state: metrics::Gauge,
}

impl Handles {
    fn register(name: &str) -> Self {
        let cache = name.to_owned();
        Handles {
            l1_hits: metrics::counter!("cache_hits_total", "cache" => cache.clone(), "tier" => "l1"),
            l2_hits: metrics::counter!("cache_hits_total", "cache" => cache.clone(), "tier" => "l2"),
            misses: metrics::counter!("cache_misses_total", "cache" => cache.clone()),
            stale_hits: metrics::counter!("cache_stale_hits_total", "cache" => cache.clone()),
            loads: metrics::counter!("cache_loads_total", "cache" => cache.clone()),
            load_errors: metrics::counter!("cache_load_errors_total", "cache" => cache.clone()),
            load_seconds: metrics::histogram!("cache_load_seconds", "cache" => cache.clone()),
            coalesced: metrics::counter!("cache_coalesced_total", "cache" => cache.clone()),
            redis_errors: metrics::counter!("cache_redis_errors_total", "cache" => cache.clone()),
            corrupt: metrics::counter!("cache_corrupt_entries_total", "cache" => cache.clone()),
            refreshes: metrics::counter!("cache_refreshes_total", "cache" => cache.clone()),
            lock_waits: metrics::counter!("cache_lock_waits_total", "cache" => cache.clone()),
            lock_timeouts: metrics::counter!("cache_lock_timeouts_total", "cache" => cache.clone()),
            breaker_state: metrics::gauge!("cache_breaker_state", "cache" => cache),
        }
    }
}

/// The live counters of one cache.
pub(crate) struct Counters {
    name: String,
    handles: Handles,
    hits: AtomicU64,
    local_hits: AtomicU64,
    misses: AtomicU64,
    stale_hits: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    coalesced: AtomicU64,
    errors: AtomicU64,
    corrupt: AtomicU64,
    refreshes: AtomicU64,
    lock_waits: AtomicU64,
    lock_timeouts: AtomicU64,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn bump(counter: &AtomicU64, handle: &metrics::Counter) {
    counter.fetch_add(1, Ordering::Relaxed);
    handle.increment(1);
}

impl Counters {
    pub(crate) fn new(name: &str) -> Self {
        let zero = || AtomicU64::new(0);
        let handles = Handles::register(name);
        handles.breaker_state.set(0.0);
        Counters {
            name: name.to_owned(),
            handles,
            hits: zero(),
            local_hits: zero(),
            misses: zero(),
            stale_hits: zero(),
            loads: zero(),
            load_errors: zero(),
            coalesced: zero(),
            errors: zero(),
            corrupt: zero(),
            refreshes: zero(),
            lock_waits: zero(),
            lock_timeouts: zero(),
        }
    }

    pub(crate) fn local_hit(&self) {
        self.local_hits.fetch_add(1, Ordering::Relaxed);
        bump(&self.hits, &self.handles.l1_hits);
    }

    pub(crate) fn hit(&self) {
        bump(&self.hits, &self.handles.l2_hits);
    }

    pub(crate) fn miss(&self) {
        bump(&self.misses, &self.handles.misses);
    }

    pub(crate) fn stale_hit(&self) {
        bump(&self.stale_hits, &self.handles.stale_hits);
    }

    pub(crate) fn load(&self, took: Duration, ok: bool) {
        bump(&self.loads, &self.handles.loads);
        self.handles.load_seconds.record(took.as_secs_f64());
        if !ok {
            bump(&self.load_errors, &self.handles.load_errors);
        }
    }

    pub(crate) fn coalesced(&self) {
        bump(&self.coalesced, &self.handles.coalesced);
    }

    pub(crate) fn redis_error(&self) {
        bump(&self.errors, &self.handles.redis_errors);
    }

    pub(crate) fn corrupt(&self) {
        bump(&self.corrupt, &self.handles.corrupt);
    }

    pub(crate) fn refresh(&self) {
        bump(&self.refreshes, &self.handles.refreshes);
    }

    pub(crate) fn lock_wait(&self) {
        bump(&self.lock_waits, &self.handles.lock_waits);
    }

    pub(crate) fn lock_timeout(&self) {
        bump(&self.lock_timeouts, &self.handles.lock_timeouts);
    }

    pub(crate) fn breaker_transition(&self, to: BreakerState) {
        self.handles.breaker_state.set(match to {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        });
        metrics::counter!("cache_breaker_transitions_total", "cache" => self.name.clone(), "to" => to.as_str())
            .increment(1);
    }

    pub(crate) fn snapshot(&self, breaker: BreakerState, breaker_transitions: u64) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            hits: get(&self.hits),
            local_hits: get(&self.local_hits),
            misses: get(&self.misses),
            stale_hits: get(&self.stale_hits),
            loads: get(&self.loads),
            load_errors: get(&self.load_errors),
            coalesced: get(&self.coalesced),
            errors: get(&self.errors),
            corrupt: get(&self.corrupt),
            refreshes: get(&self.refreshes),
            lock_waits: get(&self.lock_waits),
            lock_timeouts: get(&self.lock_timeouts),
            breaker,
            breaker_transitions,
        }
    }
}

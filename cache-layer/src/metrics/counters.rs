//! The live counters of one cache, mirrored to pre-registered `metrics` handles.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::Stats;
use crate::{
    breaker::{Breaker, Permit},
    BreakerState, Error,
};

/// Which front door a read-through call came through (the `door` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Door {
    /// Calls on `Cache` (`get_or_fetch`, ...).
    #[default]
    Direct,
    /// `#[cached]` functions.
    Fn,
    /// The HTTP layer.
    Http,
}

impl Door {
    const ALL: [Door; 3] = [Door::Direct, Door::Fn, Door::Http];

    fn label(self) -> &'static str {
        match self {
            Door::Direct => "direct",
            Door::Fn => "fn",
            Door::Http => "http",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a Redis operation ended (the `outcome` label of `cache_redis_ops_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedisOutcome {
    Ok,
    Timeout,
    Connection,
    Server,
    BreakerOpen,
}

impl RedisOutcome {
    /// The outcome of a store operation that returned `result`.
    pub(crate) fn of<R>(result: &Result<R, Error>) -> RedisOutcome {
        match result {
            Ok(_) => RedisOutcome::Ok,
            Err(Error::Timeout(_)) => RedisOutcome::Timeout,
            Err(Error::BreakerOpen) => RedisOutcome::BreakerOpen,
            // The primary ran the operation; only the replica acknowledgement is missing (counted
            // by the write-behind metrics).
            Err(Error::NotReplicated { .. }) => RedisOutcome::Ok,
            Err(Error::Redis(e))
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() =>
            {
                RedisOutcome::Connection
            }
            Err(_) => RedisOutcome::Server,
        }
    }

    const ALL: [RedisOutcome; 5] = [
        RedisOutcome::Ok,
        RedisOutcome::Timeout,
        RedisOutcome::Connection,
        RedisOutcome::Server,
        RedisOutcome::BreakerOpen,
    ];

    fn label(self) -> &'static str {
        match self {
            RedisOutcome::Ok => "ok",
            RedisOutcome::Timeout => "timeout",
            RedisOutcome::Connection => "connection",
            RedisOutcome::Server => "server",
            RedisOutcome::BreakerOpen => "breaker_open",
        }
    }
}

// `redis_op` indexes the handles, registered in `RedisOutcome::ALL`'s order, by the outcome.
const _: () = {
    let mut i = 0;
    while i < RedisOutcome::ALL.len() {
        assert!(RedisOutcome::ALL[i] as usize == i);
        i += 1;
    }
};

/// One Redis operation the breaker let through ([`CacheMetrics::redis_admit`]), timed from its
/// admission. Settle it with the operation's result; dropped unsettled (its future was dropped
/// midway) it counts nothing and releases a probe admission (see [`Permit`]).
#[must_use = "settle the operation with its result"]
pub(crate) struct RedisOp<'a> {
    metrics: &'a CacheMetrics,
    permit: Permit<'a>,
    started: Instant,
}

impl RedisOp<'_> {
    /// Counts how the operation ended (latency, outcome; failures as errors) and tells the
    /// breaker ([`Permit::settle`]).
    #[inline]
    pub(crate) fn settle<R>(self, result: &Result<R, Error>) {
        self.metrics
            .redis_op(self.started.elapsed(), RedisOutcome::of(result));
        self.permit.settle(result);
    }
}

/// Read-through metrics of one front door.
struct DoorHandles {
    l1_hits: metrics::Counter,
    l2_hits: metrics::Counter,
    misses: metrics::Counter,
    stale_hits: metrics::Counter,
    loads: metrics::Counter,
    load_errors: metrics::Counter,
    load_seconds: metrics::Histogram,
    coalesced: metrics::Counter,
}

impl DoorHandles {
    fn register(cache: &str, door: Door) -> Self {
        let (c, d) = (cache.to_owned(), door.label());
        DoorHandles {
            l1_hits: metrics::counter!("cache_hits_total", "cache" => c.clone(), "door" => d, "tier" => "l1"),
            l2_hits: metrics::counter!("cache_hits_total", "cache" => c.clone(), "door" => d, "tier" => "l2"),
            misses: metrics::counter!("cache_misses_total", "cache" => c.clone(), "door" => d),
            stale_hits: metrics::counter!("cache_stale_hits_total", "cache" => c.clone(), "door" => d),
            loads: metrics::counter!("cache_loads_total", "cache" => c.clone(), "door" => d, "outcome" => "ok"),
            load_errors: metrics::counter!("cache_loads_total", "cache" => c.clone(), "door" => d, "outcome" => "error"),
            load_seconds: metrics::histogram!("cache_load_seconds", "cache" => c.clone(), "door" => d),
            coalesced: metrics::counter!("cache_coalesced_total", "cache" => c, "door" => d),
        }
    }
}

/// Cache-wide metrics.
struct Handles {
    doors: [DoorHandles; 3],
    redis_ops: [metrics::Counter; 5],
    redis_seconds: metrics::Histogram,
    corrupt: metrics::Counter,
    refreshes: metrics::Counter,
    lock_waits: metrics::Counter,
    lock_timeouts: metrics::Counter,
    value_bytes: metrics::Histogram,
    invalidations: metrics::Counter,
    l1_evictions: metrics::Counter,
    breaker_state: metrics::Gauge,
    pending: metrics::Gauge,
}

impl Handles {
    fn register(name: &str) -> Self {
        let cache = name.to_owned();
        Handles {
            doors: Door::ALL.map(|door| DoorHandles::register(name, door)),
            redis_ops: RedisOutcome::ALL.map(|outcome| {
                metrics::counter!("cache_redis_ops_total", "cache" => cache.clone(), "outcome" => outcome.label())
            }),
            redis_seconds: metrics::histogram!("cache_redis_op_seconds", "cache" => cache.clone()),
            corrupt: metrics::counter!("cache_corrupt_entries_total", "cache" => cache.clone()),
            refreshes: metrics::counter!("cache_refreshes_total", "cache" => cache.clone()),
            lock_waits: metrics::counter!("cache_lock_waits_total", "cache" => cache.clone()),
            lock_timeouts: metrics::counter!("cache_lock_timeouts_total", "cache" => cache.clone()),
            value_bytes: metrics::histogram!("cache_value_bytes", "cache" => cache.clone()),
            invalidations: metrics::counter!("cache_invalidations_total", "cache" => cache.clone()),
            l1_evictions: metrics::counter!("cache_l1_evictions_total", "cache" => cache.clone()),
            breaker_state: metrics::gauge!("cache_breaker_state", "cache" => cache.clone()),
            pending: metrics::gauge!("cache_pending_invalidations", "cache" => cache),
        }
    }
}

/// A counter bumped by every lookup from every thread, striped over cache-line-sized cells so
/// threads do not fight over one line (reads sum the cells; they are rare).
pub(crate) struct Striped {
    cells: [PaddedCell; STRIPES],
}

impl std::fmt::Debug for Striped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Striped").field(&self.get()).finish()
    }
}

const STRIPES: usize = 8;

#[repr(align(128))]
#[derive(Default)]
struct PaddedCell(AtomicU64);

impl Striped {
    pub(crate) const fn new() -> Self {
        Striped {
            cells: [const { PaddedCell(AtomicU64::new(0)) }; STRIPES],
        }
    }

    pub(crate) fn increment(&self) {
        thread_local! {
            static STRIPE: usize = {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                (NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES as u64) as usize
            };
        }
        let stripe = STRIPE.with(|stripe| *stripe);
        self.cells[stripe].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.cells
            .iter()
            .map(|cell| cell.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// The live counters of one cache.
pub(crate) struct CacheMetrics {
    name: String,
    handles: Handles,
    hits: Striped,
    local_hits: Striped,
    misses: Striped,
    stale_hits: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    coalesced: AtomicU64,
    errors: AtomicU64,
    corrupt: AtomicU64,
    refreshes: AtomicU64,
    lock_waits: AtomicU64,
    lock_timeouts: AtomicU64,
    invalidations: AtomicU64,
    l1_evictions: AtomicU64,
}

impl std::fmt::Debug for CacheMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheMetrics")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn bump(counter: &AtomicU64, handle: &metrics::Counter) {
    counter.fetch_add(1, Ordering::Relaxed);
    handle.increment(1);
}

impl CacheMetrics {
    pub(crate) fn new(name: &str) -> Self {
        let zero = || AtomicU64::new(0);
        let handles = Handles::register(name);
        handles.breaker_state.set(0.0);
        CacheMetrics {
            name: name.to_owned(),
            handles,
            hits: Striped::new(),
            local_hits: Striped::new(),
            misses: Striped::new(),
            stale_hits: zero(),
            loads: zero(),
            load_errors: zero(),
            coalesced: zero(),
            errors: zero(),
            corrupt: zero(),
            refreshes: zero(),
            lock_waits: zero(),
            lock_timeouts: zero(),
            invalidations: zero(),
            l1_evictions: zero(),
        }
    }

    fn door(&self, door: Door) -> &DoorHandles {
        &self.handles.doors[door.index()]
    }

    pub(crate) fn l1_hit(&self, door: Door) {
        self.local_hits.increment();
        self.hits.increment();
        self.door(door).l1_hits.increment(1);
    }

    pub(crate) fn hit(&self, door: Door) {
        self.hits.increment();
        self.door(door).l2_hits.increment(1);
    }

    pub(crate) fn miss(&self, door: Door) {
        self.misses.increment();
        self.door(door).misses.increment(1);
    }

    pub(crate) fn stale_hit(&self, door: Door) {
        bump(&self.stale_hits, &self.door(door).stale_hits);
    }

    pub(crate) fn load(&self, door: Door, took: Duration, ok: bool) {
        let handles = self.door(door);
        handles.load_seconds.record(took.as_secs_f64());
        self.loads.fetch_add(1, Ordering::Relaxed);
        if ok {
            handles.loads.increment(1);
        } else {
            bump(&self.load_errors, &handles.load_errors);
        }
    }

    pub(crate) fn coalesced(&self, door: Door) {
        bump(&self.coalesced, &self.door(door).coalesced);
    }

    /// One Redis operation: latency and outcome; failures count as errors.
    pub(crate) fn redis_op(&self, took: Duration, outcome: RedisOutcome) {
        self.handles.redis_seconds.record(took.as_secs_f64());
        // `ALL` lists the outcomes in declaration order.
        self.handles.redis_ops[outcome as usize].increment(1);
        if !matches!(outcome, RedisOutcome::Ok | RedisOutcome::BreakerOpen) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks `breaker` to let one Redis operation through and starts timing it; when the breaker
    /// rejects it, counts that and returns `Err(Error::BreakerOpen)` (the operation must not run).
    #[inline]
    pub(crate) fn redis_admit<'a>(&'a self, breaker: &'a Breaker) -> Result<RedisOp<'a>, Error> {
        match breaker.permit() {
            Ok(permit) => Ok(RedisOp {
                metrics: self,
                permit,
                started: Instant::now(),
            }),
            Err(open) => {
                self.redis_op(Duration::ZERO, RedisOutcome::BreakerOpen);
                Err(open)
            }
        }
    }

    /// `op`, a Redis operation, in its span (TRACE; no key in it: no user data). The span is
    /// made only while a `tracing` subscriber takes TRACE spans (otherwise `op` runs in a
    /// disabled one): making it costs a store hit a few hundred instructions. A plain function,
    /// not an `async fn`: an `async fn` would hold `op` twice (as its argument and as what it
    /// awaits), doubling the future of every lookup.
    pub(crate) fn traced<F: std::future::Future>(
        &self,
        op: F,
    ) -> tracing::instrument::Instrumented<F> {
        let span = if tracing::level_filters::LevelFilter::current() < tracing::Level::TRACE {
            tracing::Span::none()
        } else {
            // The target it had when the span was made in `cache/mod.rs`, for filters that name it.
            tracing::trace_span!(target: "cache_layer::cache", "cache.redis", cache = %self.name)
        };
        tracing::Instrument::instrument(op, span)
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

    pub(crate) fn value_size(&self, bytes: usize) {
        self.handles.value_bytes.record(bytes as f64);
    }

    pub(crate) fn invalidation(&self) {
        bump(&self.invalidations, &self.handles.invalidations);
    }

    /// The number of invalidations and writes waiting to be replayed into Redis.
    pub(crate) fn pending(&self, pending: usize) {
        self.handles.pending.set(pending as f64);
    }

    /// An L1 entry pushed out by the tier's size bound.
    pub(crate) fn l1_eviction(&self) {
        bump(&self.l1_evictions, &self.handles.l1_evictions);
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
            hits: self.hits.get(),
            local_hits: self.local_hits.get(),
            misses: self.misses.get(),
            stale_hits: get(&self.stale_hits),
            loads: get(&self.loads),
            load_errors: get(&self.load_errors),
            coalesced: get(&self.coalesced),
            errors: get(&self.errors),
            corrupt: get(&self.corrupt),
            refreshes: get(&self.refreshes),
            lock_waits: get(&self.lock_waits),
            lock_timeouts: get(&self.lock_timeouts),
            invalidations: get(&self.invalidations),
            l1_evictions: get(&self.l1_evictions),
            breaker,
            breaker_transitions,
            hot_keys: Vec::new(),
            memory_policy: None,
            pending_invalidations: 0,
        }
    }
}

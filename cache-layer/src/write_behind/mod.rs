//! Write-behind counters: hot increments (page views, likes, quotas) buffered in Redis and flushed
//! to a database in batches, without losing or double-counting an increment.
//!
//! ```
//! use std::{collections::HashMap, sync::{Arc, Mutex}, time::Duration};
//! use cache_layer::Cache;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_layer::Error> {
//! let cache = Cache::in_memory(); // or Cache::builder().redis("redis://...").build()?
//! let db: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
//!
//! let views = cache.counters("views");
//! let sink_db = db.clone();
//! let flusher = views.flush_every(Duration::from_secs(10), move |batch: Vec<(String, i64)>| {
//!     let db = sink_db.clone();
//!     async move {
//!         let mut db = db.lock().map_err(|_| "db poisoned")?;
//!         for (id, delta) in batch {
//!             *db.entry(id).or_default() += delta;
//!         }
//!         Ok::<_, &str>(())
//!     }
//! });
//!
//! views.incr("product:42", 1).await?;
//! views.incr("product:42", 1).await?;
//!
//! flusher.shutdown().await?; // flushes what is pending
//! assert_eq!(db.lock().unwrap()["product:42"], 2);
//! # Ok(()) }
//! ```
//!
//! The guarantees and the protocol are described on [`Counters`].

mod buffer;
mod flush;
mod storage;

use std::{
    collections::HashMap,
    future::Future,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

pub use self::flush::{Batch, FlushReport, Flusher};
use self::{
    buffer::{Added, CounterSet},
    flush::{Buffered, SinkError},
};
use crate::util::lock;
use crate::{Cache, Error};

/// Settings of one counter set (see [`Cache::counters_with`]).
///
/// ```
/// use std::time::Duration;
/// use cache_layer::CountersConfig;
///
/// let config = CountersConfig::default()
///     .linger(Duration::from_millis(5))
///     .max_buffered(1_000_000)
///     .lease(Duration::from_secs(60));
/// assert_eq!(config.max_push, 2_000);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CountersConfig {
    /// How long increments coalesce in memory before a push (default 1 ms). Longer: fewer, bigger
    /// pushes and slower `incr` acknowledgements.
    pub linger: Duration,
    /// Distinct ids the in-memory buffer holds while Redis is slow or down (default 100 000).
    /// Increments of a new id beyond it fail with [`Error::CounterOverflow`].
    pub max_buffered: usize,
    /// Most ids sent in one push script (default 2 000; keeps each script call short).
    pub max_push: usize,
    /// How long a flusher holds a batch before another flusher may take it over (default 30 s).
    /// It is renewed while the sink runs, so it bounds how long a batch of a *crashed* process
    /// waits; a flusher restarted in the same process takes its own batches back at once.
    pub lease: Duration,
    /// How long Redis remembers a writer's last push sequence number after its last push (default
    /// 7 days). A retry is deduplicated only within this time.
    pub writer_ttl: Duration,
    /// First retry delay of the pusher while Redis is unavailable (default 20 ms).
    pub retry_min: Duration,
    /// Longest retry delay of the pusher (default 1 s).
    pub retry_max: Duration,
}

impl Default for CountersConfig {
    fn default() -> Self {
        CountersConfig {
            linger: buffer::DEFAULT_LINGER,
            max_buffered: 100_000,
            max_push: 2_000,
            lease: Duration::from_secs(30),
            writer_ttl: Duration::from_secs(7 * 24 * 3600),
            retry_min: Duration::from_millis(20),
            retry_max: Duration::from_secs(1),
        }
    }
}

impl CountersConfig {
    /// Sets [`linger`](CountersConfig::linger).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sets [`max_buffered`](CountersConfig::max_buffered).
    pub fn max_buffered(mut self, ids: usize) -> Self {
        self.max_buffered = ids;
        self
    }

    /// Sets [`max_push`](CountersConfig::max_push).
    pub fn max_push(mut self, ids: usize) -> Self {
        self.max_push = ids;
        self
    }

    /// Sets [`lease`](CountersConfig::lease).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets [`writer_ttl`](CountersConfig::writer_ttl).
    pub fn writer_ttl(mut self, ttl: Duration) -> Self {
        self.writer_ttl = ttl;
        self
    }

    /// Sets the pusher's retry delays ([`retry_min`](CountersConfig::retry_min) doubling up to
    /// [`retry_max`](CountersConfig::retry_max)).
    pub fn retry(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max;
        self
    }
}

/// A snapshot of one counter set's activity in this process (see [`Counters::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CounterStats {
    /// `(id, delta)` entries held in memory, not yet acknowledged by Redis (an id may be counted
    /// twice: once in the push being retried, once among newer increments).
    pub buffered: usize,
    /// Increments rejected because the buffer was full (`cache_counter_overflow_total`).
    pub overflows: u64,
    /// Push scripts Redis acknowledged.
    pub pushes: u64,
    /// Push attempts that failed (Redis unavailable); retried.
    pub push_failures: u64,
    /// Retried pushes Redis had already applied (the reply to the first attempt was lost):
    /// acknowledged without being counted again.
    pub replayed: u64,
    /// Batches the sink accepted.
    pub batches: u64,
    /// `(id, delta)` pairs in those batches.
    pub entries: u64,
    /// Sink calls that returned an error (the batch is retried).
    pub sink_failures: u64,
    /// Batches the sink accepted but that could not be deleted afterwards: they will be delivered
    /// again with the same id.
    pub unconfirmed: u64,
    /// Counter increments Redis refused because the stored value would overflow `i64`: not
    /// applied, not retried ([`Error::CounterRejected`], `cache_counter_rejected_total`).
    pub rejected: u64,
    /// Writes (pushes, sealed or claimed batches) that no replica acknowledged in time, where the
    /// server has replicas: kept and retried ([`Error::NotReplicated`],
    /// `cache_counter_unreplicated_total`).
    pub unreplicated: u64,
    /// Pushes Redis refused because they arrived before the push sent ahead of them (two are in
    /// flight at a time, on different connections; or the one ahead was lost): sent again in
    /// order, applied once.
    pub out_of_order: u64,
}

/// A named set of write-behind counters of one [`Cache`]; cheap to clone.
///
/// Every handle for the same name on the same cache shares one buffer and one pusher.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_layer::Error> {
/// let cache = cache_layer::Cache::in_memory();
/// let likes = cache.counters("likes");
/// likes.incr("post:7", 1).await?;
/// likes.incr("post:7", 4).await?;
/// likes.incr("post:8", -1).await?;
/// let report = likes
///     .flush_now(|batch: Vec<(String, i64)>| async move {
///         assert_eq!(batch, vec![("post:7".to_string(), 5), ("post:8".to_string(), -1)]);
///         Ok::<_, String>(())
///     })
///     .await?;
/// assert_eq!((report.batches, report.entries), (1, 2));
/// # Ok(()) }
/// ```
///
/// # How it works
///
/// * **Increments** coalesce in memory for [`linger`](CountersConfig::linger) (1 ms by default,
///   after a quiet spell; under load, while the previous push is in flight) and go to Redis as one
///   `EVALSHA` per batch of ids (HINCRBY into the live hash), so thousands of tasks incrementing
///   cost a few round trips. Two pushes are in flight at a time: while Redis applies one, the
///   increments its predecessor's callers made since go out behind it. [`Counters::incr`] returns when its increment is
///   in Redis, and on a replica where Redis has replicas (group commit).
/// * **Exactly once into Redis.** Every push carries this process's writer id and a sequence
///   number; the script applies a sequence number at most once and records it in the same atomic
///   step. When a connection drops after sending (Redis killed, network cut), the client cannot
///   know whether the push landed: it resends the identical push with the same number until Redis
///   answers, and a push that had landed is acknowledged without being applied again. A push sent
///   while another is in flight names that one; Redis refuses it until that one landed (it
///   overtook it on another connection, or that one was lost), and it is resent after it
///   ([`CounterStats::out_of_order`]), so pushes apply in order. With
///   `appendonly yes` + `appendfsync always`, a Redis restart therefore loses and duplicates
///   nothing. (With `appendfsync everysec` Redis itself may lose the last second of acknowledged
///   writes; without persistence a restart loses everything not yet flushed.)
/// * **Redis unavailable** (errors, timeouts, circuit breaker open): increments stay in a bounded
///   in-memory buffer ([`max_buffered`](CountersConfig::max_buffered) distinct ids; increments of
///   an id already in it always fit, so the bound is at most twice that many entries) and are
///   pushed when Redis is back. `incr` then returns
///   `Ok` once buffered. When the buffer is full, incrementing a new id fails with
///   [`Error::CounterOverflow`] and counts `cache_counter_overflow_total`: never silently dropped.
///   Buffered increments are lost if this process dies before Redis returns.
/// * **Flushing.** A flush atomically renames the live hash to a batch key with a fresh batch id
///   (Lua: `RENAME` + index + lease), reads it, calls the sink, and deletes the batch only after
///   the sink returned `Ok`. Batches left behind by a crash or a failed sink are flushed first
///   (oldest first) by the next flush. Each batch is leased to one flusher (lease renewed while the
///   sink runs), so several flusher processes never deliver the same batch concurrently.
/// * **At-least-once to the sink, with an idempotency token.** If the sink succeeds and the
///   process dies (or Redis is unreachable) before the batch is deleted, the same batch is
///   delivered again, with the same [`Batch::id`] and the same entries. Sinks that must not
///   double-count record applied batch ids together with the counts (use
///   [`flush_every_with_id`](Counters::flush_every_with_id)) and skip ids they have seen.
/// * **Replicas.** Where the server has connected replicas (`INFO replication`, read at most every
///   10 s, per master on a Cluster), each push, seal and claim is followed by `WAIT 1` with a
///   third of the op timeout, on a connection of its own (so no other caller queues behind it).
///   A push no replica acknowledged is kept and resent (never applied twice) until one does, so
///   a failover to a replica cannot lose an increment `incr` acknowledged; its awaited `incr`
///   returns [`Error::NotReplicated`]. A batch is handed to the sink only once a replica has its
///   sealing, so a failover cannot bring the live hash back and count it twice; otherwise the
///   flush returns [`Error::NotReplicated`] and the next one retries. Both are counted in
///   [`CounterStats::unreplicated`]. Without replicas nothing is added (no `WAIT`, no round trip).
/// * **Overflow.** An increment Redis refuses because the stored value would overflow `i64`
///   (`HINCRBY`) is not applied and not retried; the other ids of the same push are applied. Its
///   awaited `incr` returns [`Error::CounterRejected`] with the refused delta, and it is counted
///   in [`CounterStats::rejected`] and `cache_counter_rejected_total` and logged at `error`.
/// * **Cluster-safe.** Every key of a counter set shares one hash tag (the set's name):
///   `<namespace>:__counters:{views}`, `<namespace>:__counters:{views}:batch:<id>`, ...
///
/// Redis must not evict these keys: use `noeviction` or a `volatile-*` policy (the live hash and
/// batches have no TTL; the per-writer sequence keys expire after
/// [`writer_ttl`](CountersConfig::writer_ttl) of inactivity).
///
/// Without Redis ([`Cache::in_memory`]) the same API and protocol run in process memory.
#[derive(Clone)]
pub struct Counters {
    set: Arc<CounterSet>,
    cache: Cache,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("name", &self.set.name)
            .field("live_key", &self.set.keys.live())
            .finish_non_exhaustive()
    }
}

impl Counters {
    /// The counter set's name.
    pub fn name(&self) -> &str {
        &self.set.name
    }

    /// The Redis key of the live hash (for operators: `HGETALL` shows what is not yet flushed).
    ///
    /// ```
    /// let cache = cache_layer::Cache::builder().namespace("shop").build()?;
    /// assert_eq!(cache.counters("views").redis_key(), "shop:__counters:{views}");
    /// # Ok::<(), cache_layer::Error>(())
    /// ```
    pub fn redis_key(&self) -> &str {
        self.set.keys.live()
    }

    /// Adds `by` (may be negative) to counter `id`.
    ///
    /// Returns when the increment is in Redis (and, where Redis has replicas, a replica
    /// acknowledged it) — concurrent calls share one push — or, while Redis is unavailable, once
    /// it is held in the in-memory buffer (pushed when Redis returns). Cancelling the returned
    /// future does not take the increment back.
    ///
    /// # Errors
    ///
    /// - [`Error::CounterOverflow`] when the buffer is full and `id` is not in it (nothing was
    ///   added); [`Error::Encode`] when the buffered delta of `id` would overflow `i64` (nothing
    ///   was added).
    /// - [`Error::CounterRejected`] when Redis refused the increment because the stored value of
    ///   `id` would overflow `i64`: it was not applied and is not retried (increments of other
    ///   ids pushed with it were applied). The error carries the refused delta.
    /// - [`Error::NotReplicated`] when the server has replicas and none acknowledged the push in
    ///   time: the increment is counted (on the primary, and buffered here) and is pushed again
    ///   until a replica acknowledges it, never twice. Do not repeat it. While no replica
    ///   acknowledges, awaited increments return this error at once after buffering.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_layer::Error> {
    /// use cache_layer::Error;
    ///
    /// let views = cache_layer::Cache::in_memory().counters("views");
    /// views.incr("home", i64::MAX).await?;
    /// match views.incr("home", 1).await {
    ///     Err(Error::CounterRejected { rejected, .. }) => assert_eq!(rejected, [("home".to_string(), 1)]),
    ///     other => panic!("{other:?}"),
    /// }
    /// assert_eq!(views.stats().rejected, 1);
    /// # Ok(()) }
    /// ```
    pub async fn incr(&self, id: &str, by: i64) -> Result<(), Error> {
        match self.set.add(id, by)? {
            Added::Done => Ok(()),
            Added::Wait(generation) => self.set.wait(id, &generation).await,
            Added::Unreplicated(timeout) => Err(Error::NotReplicated { timeout }),
        }
    }

    /// Adds `by` to counter `id` without waiting for Redis: the increment is buffered and pushed
    /// within [`linger`](CountersConfig::linger). Errors as [`incr`](Counters::incr). Needs a
    /// Tokio runtime to push in the background (otherwise it is pushed by the next
    /// [`sync`](Counters::sync) or flush).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_layer::Error> {
    /// let views = cache_layer::Cache::in_memory().counters("views");
    /// for _ in 0..3 {
    ///     views.incr_nowait("home", 1)?;
    /// }
    /// views.sync().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Nobody waits for the push, so a refusal by Redis ([`Error::CounterRejected`]) or a missing
    /// replica acknowledgement shows only in [`stats`](Counters::stats), the metrics and the log.
    pub fn incr_nowait(&self, id: &str, by: i64) -> Result<(), Error> {
        self.set.add(id, by).map(|_| ())
    }

    /// Pushes every increment buffered in this process to Redis now.
    ///
    /// # Errors
    ///
    /// The Redis error when Redis is unavailable, [`Error::NotReplicated`] when no replica
    /// acknowledged a push (the increments stay buffered and keep being retried in the
    /// background). Increments Redis refused ([`Error::CounterRejected`]) do not fail `sync`:
    /// they are reported to their awaited [`incr`](Counters::incr), in
    /// [`stats`](Counters::stats) and the log.
    pub async fn sync(&self) -> Result<(), Error> {
        self.set.sync(&self.cache).await
    }

    /// A snapshot of this counter set's activity in this process.
    pub fn stats(&self) -> CounterStats {
        let s = &self.set.stats;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        CounterStats {
            buffered: self.set.buffered(),
            overflows: get(&s.overflows),
            pushes: get(&s.pushes),
            push_failures: get(&s.push_failures),
            replayed: get(&s.replayed),
            batches: get(&s.batches),
            entries: get(&s.entries),
            sink_failures: get(&s.sink_failures),
            unconfirmed: get(&s.unconfirmed),
            rejected: get(&s.rejected),
            unreplicated: get(&s.unreplicated),
            out_of_order: get(&s.out_of_order),
        }
    }

    /// Flushes now: pushes this process's buffered increments (best effort), delivers batches left
    /// over by crashed or failed flushes, then seals the live hash into a batch and delivers it.
    /// `sink` receives each batch's `(id, delta)` pairs; see
    /// [`flush_now_with_id`](Counters::flush_now_with_id) for the batch id.
    ///
    /// # Errors
    ///
    /// [`Error::Sink`] when the sink failed (the batch is kept and retried by the next flush),
    /// [`Error::NotReplicated`] when the server has replicas and none acknowledged the sealing or
    /// claiming of a batch in time (the batch is kept, not delivered, and retried by the next
    /// flush), or the Redis error that stopped the flush. Batches delivered before the error stay
    /// delivered.
    pub async fn flush_now<F, Fut, E>(&self, mut sink: F) -> Result<FlushReport, Error>
    where
        F: FnMut(Vec<(String, i64)>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Into<SinkError>,
    {
        self.flush_cycle(
            &mut |batch: Batch| sink(batch.into_entries()),
            Buffered::PushFirst,
        )
        .await
    }

    /// [`flush_now`](Counters::flush_now) with a sink that receives the whole [`Batch`], including
    /// its idempotency token [`Batch::id`].
    pub async fn flush_now_with_id<F, Fut, E>(&self, mut sink: F) -> Result<FlushReport, Error>
    where
        F: FnMut(Batch) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Into<SinkError>,
    {
        self.flush_cycle(&mut sink, Buffered::PushFirst).await
    }

    /// Starts a background task that flushes every `interval` (the first flush runs at once, so
    /// leftovers of a previous run go first). A failed flush is logged and retried at the next
    /// interval. Stop it with [`Flusher::shutdown`], which pushes and flushes what is pending.
    ///
    /// Needs a Tokio runtime. The sink receives each batch's `(id, delta)` pairs; use
    /// [`flush_every_with_id`](Counters::flush_every_with_id) to receive the batch id too.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_layer::Error> {
    /// let views = cache_layer::Cache::in_memory().counters("views");
    /// let flusher = views.flush_every(Duration::from_secs(10), |batch: Vec<(String, i64)>| async move {
    ///     println!("{} counters to write", batch.len());
    ///     Ok::<_, std::io::Error>(())
    /// });
    /// views.incr("product:42", 1).await?;
    /// let report = flusher.shutdown().await?;
    /// assert_eq!(report.entries, 1);
    /// # Ok(()) }
    /// ```
    pub fn flush_every<F, Fut, E>(&self, interval: Duration, mut sink: F) -> Flusher
    where
        F: FnMut(Vec<(String, i64)>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<SinkError>,
    {
        self.spawn_flusher(interval, move |batch: Batch| sink(batch.into_entries()))
    }

    /// [`flush_every`](Counters::flush_every) with a sink that receives the whole [`Batch`]. A
    /// batch may be delivered more than once (see [`Batch`]); dedupe on [`Batch::id`].
    ///
    /// ```
    /// use std::{collections::HashSet, sync::{Arc, Mutex}, time::Duration};
    /// use cache_layer::Batch;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_layer::Error> {
    /// let views = cache_layer::Cache::in_memory().counters("views");
    /// let applied: Arc<Mutex<HashSet<String>>> = Arc::default();
    /// let seen = applied.clone();
    /// let flusher = views.flush_every_with_id(Duration::from_secs(10), move |batch: Batch| {
    ///     let seen = seen.clone();
    ///     async move {
    ///         // In a real sink: one transaction that inserts the id and applies the counts.
    ///         let fresh = seen.lock().map_err(|_| "poisoned")?.insert(batch.id().to_owned());
    ///         if fresh { /* apply batch.entries() */ }
    ///         Ok::<_, &str>(())
    ///     }
    /// });
    /// views.incr("product:42", 1).await?;
    /// flusher.shutdown().await?;
    /// assert_eq!(applied.lock().unwrap().len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn flush_every_with_id<F, Fut, E>(&self, interval: Duration, sink: F) -> Flusher
    where
        F: FnMut(Batch) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<SinkError>,
    {
        self.spawn_flusher(interval, sink)
    }
}

/// The counter sets of one cache, by name.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sets: Mutex<HashMap<String, Arc<CounterSet>>>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        for set in lock(&self.sets).values() {
            set.close();
        }
    }
}

/// The counter set `name` of `cache` (created with `config` on first use), as a handle.
pub(crate) fn counters(cache: &Cache, name: &str, config: CountersConfig) -> Counters {
    let registry = cache
        .extension()
        .get_or_init(|| Box::new(Registry::default()))
        .downcast_ref::<Registry>();
    let Some(registry) = registry else {
        unreachable!("the write-behind slot holds a Registry")
    };
    let set = lock(&registry.sets)
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(CounterSet::new(cache, name, config)))
        .clone();
    Counters {
        set,
        cache: cache.clone(),
    }
}

//! The [`Cache`] handle: construction, the global default, direct operations and stats.
//! The read-through engine (`get_or_fetch` and friends) lives in [`engine`].

mod builder;
mod engine;
mod invalidate;

pub(crate) use self::engine::REFRESH_RETRY_AFTER;
#[cfg(feature = "http")]
pub(crate) use self::engine::{Loaded, Origin};

use std::{
    future::Future,
    sync::{atomic::AtomicBool, Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tracing::Instrument;

pub use self::builder::CacheBuilder;
use crate::{
    breaker::{Admission, Breaker},
    bus::Bus,
    envelope::{self, DecodeError, Timing},
    keys::KeySpace,
    local::LocalTier,
    metrics::{Counters, HotKeys, RedisOutcome},
    stampede::{flight::Flights, lock::LandedSignals},
    store::Backend,
    tags::{NamespaceBook, RedisClock, TagBook},
    Codec, Error, Policy, Stats,
};

/// A read-through cache: Redis (or the embedded in-memory store), an optional L1 tier, single-flight
/// loading, a circuit breaker and metrics, behind one cheap-to-clone handle.
///
/// Clones share everything (pool, L1, breaker, counters); pass clones freely between tasks.
///
/// ```
/// use std::time::Duration;
/// use cache_layer::{Cache, Policy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_layer::Error> {
/// let cache = Cache::in_memory();
/// let policy = Policy::ttl(Duration::from_secs(60));
/// cache.set("greeting", &"hello", &policy).await?;
/// assert_eq!(cache.get::<String>("greeting").await?.as_deref(), Some("hello"));
/// assert!(cache.delete("greeting").await?);
/// assert_eq!(cache.get::<String>("greeting").await?, None);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) name: String,
    pub(crate) keys: KeySpace,
    pub(crate) store: Backend,
    pub(crate) local: Option<LocalTier>,
    pub(crate) breaker: Breaker,
    pub(crate) flights: Arc<Flights>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) codec: Codec,
    pub(crate) corrupt_logged: AtomicBool,
    /// Tag times this process knows (bounded; refreshed by the bus).
    pub(crate) tag_book: TagBook,
    /// The namespace version this process knows.
    pub(crate) namespace: NamespaceBook,
    /// The Redis clock as seen from here (entry stamps).
    pub(crate) clock: RedisClock,
    /// The invalidation bus between instances.
    pub(crate) bus: Bus,
    /// How long tag keys live in Redis (and the longest a tagged entry lives there).
    pub(crate) tag_ttl: Duration,
    /// Invalidations Redis did not take, replayed when it is back.
    pub(crate) pending: std::sync::Mutex<invalidate::Pending>,
    /// "Value landed" signals for `Stampede::Lock` waiters.
    pub(crate) landed: LandedSignals,
    /// Keys whose last load failed recently: background refreshes of them are held off.
    pub(crate) refresh_failures: moka::sync::Cache<String, ()>,
    /// Top-N keys by hits, when enabled.
    pub(crate) hot_keys: Option<HotKeys>,
    /// Write-behind counter sets by name.
    pub(crate) write_behind: crate::write_behind::Registry,
    /// Redis' eviction settings, once read (see `health`).
    pub(crate) memory_policy: std::sync::Mutex<Option<crate::MemoryPolicy>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.inner.name)
            .field("namespace", &self.inner.keys.namespace())
            .field("store", &self.inner.store)
            .field("local", &self.inner.local.is_some())
            .field("breaker", &self.inner.breaker.state())
            .finish()
    }
}

static GLOBAL: RwLock<Option<Cache>> = RwLock::new(None);

/// Installs `cache` as the process-wide default, used by `#[cached]` functions that name no
/// `cache = ...`. Replaces any previously installed cache.
///
/// ```
/// let cache = cache_layer::Cache::in_memory();
/// cache_layer::install(cache.clone());
/// assert!(cache_layer::Cache::global().is_some());
/// ```
pub fn install(cache: Cache) {
    let mut global = GLOBAL
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *global = Some(cache);
}

/// Milliseconds since the Unix epoch (entry timestamps are wall-clock so processes agree).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether a failed Redis operation says something about Redis' health (and so counts against the
/// breaker), as opposed to a rejection of one command by a Redis that is otherwise serving: a wrong
/// key type, `OOM` (maxmemory with `noeviction`: writes fail, reads still hit), `READONLY`, an ACL
/// `NOPERM`. Opening the breaker for those would throw away the hits Redis can still serve.
fn is_health_failure(err: &Error) -> bool {
    match err {
        Error::Redis(e) => !matches!(e.code(), Some("WRONGTYPE" | "OOM" | "READONLY" | "NOPERM")),
        Error::Timeout(_) => true,
        Error::BreakerOpen | Error::Encode(_) | Error::Config(_) => false,
        Error::CounterOverflow { .. } | Error::Sink(_) => false,
    }
}

/// A loggable stand-in for a key: its first segment (up to 24 bytes, cut at `:`) and a hash of the
/// whole, so logs and spans can tell keys apart without carrying user data or secrets.
pub(crate) fn key_hint(key: &str) -> String {
    let head = key.split(':').next().unwrap_or("");
    let mut end = head.len().min(24);
    while !head.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}#{:016x}",
        &head[..end],
        xxhash_rust::xxh3::xxh3_64(key.as_bytes())
    )
}

/// The metrics outcome of a store operation.
fn redis_outcome<R>(result: &Result<R, Error>) -> RedisOutcome {
    match result {
        Ok(_) => RedisOutcome::Ok,
        Err(Error::Timeout(_)) => RedisOutcome::Timeout,
        Err(Error::BreakerOpen) => RedisOutcome::BreakerOpen,
        Err(Error::Redis(e))
            if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() =>
        {
            RedisOutcome::Connection
        }
        Err(_) => RedisOutcome::Server,
    }
}

/// Settles a breaker admission even when the operation's future is dropped midway, so a cancelled
/// probe cannot leave the breaker half-open forever.
struct AdmissionGuard<'a> {
    breaker: &'a Breaker,
    admission: Admission,
    settled: bool,
}

impl AdmissionGuard<'_> {
    /// `failure`: the error if it says Redis is unhealthy.
    fn settle(mut self, failure: Option<&Error>) {
        self.settled = true;
        match failure {
            None => self.breaker.record_success(self.admission),
            Some(err) => self.breaker.record_failure(self.admission, err),
        }
    }
}

impl Drop for AdmissionGuard<'_> {
    fn drop(&mut self) {
        if !self.settled && self.admission == Admission::Probe {
            self.breaker.abandon_probe();
        }
    }
}

impl Cache {
    /// A builder; with no `.redis(..)` the cache uses the embedded in-memory store.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// A cache on the embedded in-memory store (no Redis at all), namespace `"cache"`.
    pub fn in_memory() -> Cache {
        CacheBuilder::default()
            .build()
            .unwrap_or_else(|_| unreachable!("the default configuration is valid"))
    }

    /// The cache installed with [`install`], if any.
    pub fn global() -> Option<Cache> {
        GLOBAL
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The cache's name (metrics label).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The namespace every Redis key of this cache starts with.
    pub fn namespace(&self) -> &str {
        self.inner.keys.namespace()
    }

    /// The Redis key under which `key` is stored (for operators and tests), with the namespace
    /// version this cache knows (`<namespace>:{<key>}` before the first
    /// [`invalidate_namespace`](Cache::invalidate_namespace), then `<namespace>:{<key>}:v<N>`).
    ///
    /// ```
    /// let cache = cache_layer::Cache::builder().namespace("shop").build()?;
    /// assert_eq!(cache.redis_key("product:42"), "shop:{product:42}");
    /// # Ok::<(), cache_layer::Error>(())
    /// ```
    pub fn redis_key(&self, key: &str) -> String {
        let inner = &self.inner;
        inner.keys.entry(key, inner.namespace.get().version)
    }

    /// A snapshot of the counters since the cache was built.
    pub fn stats(&self) -> Stats {
        let inner = &self.inner;
        let mut stats = inner
            .counters
            .snapshot(inner.breaker.state(), inner.breaker.transitions());
        if let Some(hot_keys) = &inner.hot_keys {
            stats.hot_keys = hot_keys.top();
        }
        stats.memory_policy = inner
            .memory_policy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        stats
    }

    /// Checks that Redis answers: one `PING` (bounded by the op timeout), whatever the circuit
    /// breaker's state; returns its round-trip time. Always `Ok` on the embedded store. Also
    /// re-reads Redis' eviction settings ([`Stats::memory_policy`]).
    ///
    /// For a health or readiness endpoint. Note that the cache itself keeps answering while Redis
    /// is down (callers get the source's values), so taking an instance out of rotation because
    /// `ping` fails removes a working service: report it, and gate on it only when the service
    /// cannot run without its cache.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_layer::Error> {
    /// let cache = cache_layer::Cache::in_memory();
    /// let round_trip = cache.ping().await?;
    /// assert!(round_trip < std::time::Duration::from_secs(1));
    ///
    /// // Nothing listens on port 1: a clear error within the op timeout, no panic, no hang.
    /// let down = cache_layer::Cache::builder().redis("redis://127.0.0.1:1").build()?;
    /// assert!(down.ping().await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn ping(&self) -> Result<Duration, Error> {
        let started = std::time::Instant::now();
        if !self.inner.store.is_remote() {
            return Ok(started.elapsed());
        }
        self.inner
            .store
            .query::<String>(&redis::cmd("PING"))
            .await?;
        let round_trip = started.elapsed();
        self.check_memory_policy().await;
        Ok(round_trip)
    }

    /// Reads Redis' eviction settings into [`Stats::memory_policy`] and warns once per policy when
    /// they weaken a guarantee (see the `health` module). Never fails: an ACL user without
    /// `+info` (or a Redis that is down) leaves the last known settings in place.
    pub(crate) async fn check_memory_policy(&self) {
        let inner = &self.inner;
        let info = match inner
            .store
            .query::<String>(redis::cmd("INFO").arg("memory"))
            .await
        {
            Ok(info) => info,
            Err(err) => {
                tracing::debug!(cache = %inner.name, error = %err,
                    "cannot read maxmemory-policy (INFO memory); not checked");
                return;
            }
        };
        let Some(policy) = crate::MemoryPolicy::from_info(&info) else {
            return;
        };
        let mut known = inner
            .memory_policy
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let changed = known.as_ref().map(|k| &k.policy) != Some(&policy.policy);
        if changed {
            if let Some(warning) = policy.warning {
                tracing::warn!(cache = %inner.name, maxmemory_policy = %policy.policy,
                    maxmemory = policy.maxmemory, "{warning}");
            }
        }
        *known = Some(policy);
    }

    /// Runs one store operation through the breaker, counting failures. `op` is not polled when
    /// the breaker rejects the call (futures are lazy), so nothing reaches Redis.
    pub(crate) async fn store_op<R>(
        &self,
        op: impl Future<Output = Result<R, Error>>,
    ) -> Result<R, Error> {
        let inner = &self.inner;
        let admission = inner.breaker.admit();
        if admission == Admission::Rejected {
            inner
                .counters
                .redis_op(Duration::ZERO, RedisOutcome::BreakerOpen);
            return Err(Error::BreakerOpen);
        }
        let started = std::time::Instant::now();
        let guard = AdmissionGuard {
            breaker: &inner.breaker,
            admission,
            settled: false,
        };
        // TRACE-level: free unless a subscriber asks for it. No key in the span (no user data).
        let result = op
            .instrument(tracing::trace_span!("cache.redis", cache = %inner.name))
            .await;
        inner
            .counters
            .redis_op(started.elapsed(), redis_outcome(&result));
        match &result {
            Ok(_) => guard.settle(None),
            Err(err) => {
                tracing::debug!(cache = %inner.name, error = %err, "redis operation failed");
                guard.settle(Some(err).filter(|err| is_health_failure(err)));
            }
        }
        result
    }

    /// Notes an undecodable entry: counted, logged once per cache at `warn`, then at `debug`.
    pub(crate) fn note_corrupt(&self, key: &str, why: DecodeError) {
        let inner = &self.inner;
        inner.counters.corrupt();
        if !inner
            .corrupt_logged
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(cache = %inner.name, key_len = key.len(), reason = %why,
                "cache entry could not be decoded; treating it as a miss (logged once)");
        } else {
            tracing::debug!(cache = %inner.name, reason = %why, "undecodable cache entry");
        }
    }

    /// Encodes `value` as an entry with the policy's TTL (plus jitter) and grace period.
    pub(crate) fn encode_entry<T: Serialize>(
        &self,
        value: &T,
        policy: &Policy,
        created_ms: u64,
        load_time: Duration,
    ) -> Result<(Vec<u8>, Timing), Error> {
        let now = now_ms();
        let fresh_until_ms = now.saturating_add(millis(policy.jittered_ttl()));
        let timing = Timing {
            created_ms,
            fresh_until_ms,
            stale_until_ms: fresh_until_ms.saturating_add(millis(policy.stale)),
            delta_ms: u32::try_from(load_time.as_millis()).unwrap_or(u32::MAX),
        };
        let codec = policy.codec.unwrap_or(self.inner.codec);
        let bytes = envelope::encode(value, codec, timing, &policy.tags)?;
        self.inner.counters.value_size(bytes.len());
        Ok((bytes, timing))
    }
}

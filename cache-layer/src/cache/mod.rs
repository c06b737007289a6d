//! The [`Cache`] handle and its per-cache state, `store_op` (a store call through the breaker
//! and the metrics, for the write path, coherence and write-behind), entry encoding and the
//! handles features built on the cache use. The public methods are in `api.rs`; the read path
//! (`get_or_fetch` and friends, `get`) is [`read`](mod@read), writes and invalidations
//! [`write`](mod@write).

mod builder;
pub(crate) mod coherence;
pub(crate) mod read;
pub(crate) mod write;

pub(crate) use self::read::Loaded;
#[cfg(feature = "http")]
pub(crate) use self::read::Origin;
pub(crate) use self::read::REFRESH_RETRY_AFTER;

use std::{
    future::Future,
    sync::{atomic::AtomicBool, Arc, RwLock},
    time::Duration,
};

use serde::Serialize;

pub use self::builder::CacheBuilder;
use crate::{
    breaker::Breaker,
    bus::Bus,
    clock::RedisClock,
    envelope::{self, DecodeError, Timing},
    keys::KeySpace,
    l1::Knowledge,
    metrics::{CacheMetrics, HotKeys},
    stampede::{flight::Flights, lock::LandedSignals},
    store::Backend,
    util::{self, millis, now_ms},
    Codec, Error, Policy,
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
    /// The L1 tier and what this process knows of the store (tag and namespace books, trust,
    /// tickets, invalidations the store missed): whether a copy may be served.
    pub(crate) known: Knowledge,
    pub(crate) breaker: Breaker,
    pub(crate) flights: Arc<Flights>,
    /// Hit/miss/load/store counters and histograms (the `metrics` facade plus [`Stats`](crate::Stats)).
    pub(crate) metrics: Arc<CacheMetrics>,
    pub(crate) codec: Codec,
    pub(crate) corrupt_logged: AtomicBool,
    /// The Redis clock as seen from here (entry stamps).
    pub(crate) clock: RedisClock,
    /// The invalidation bus between instances.
    pub(crate) bus: Bus,
    /// How long tag keys live in Redis (and the longest a tagged entry lives there).
    pub(crate) tag_ttl: Duration,
    /// "Value landed" signals for `Stampede::Lock` waiters.
    pub(crate) landed: LandedSignals,
    /// Keys whose last load failed recently: background refreshes of them are held off.
    pub(crate) refresh_failures: moka::sync::Cache<String, ()>,
    /// Top-N keys by hits, when enabled.
    pub(crate) hot_keys: Option<HotKeys>,
    /// The write-behind counter sets, owned by [`write_behind`](crate::write_behind) (which is
    /// built on the cache, so the cache holds its state without naming its type); dropped, and
    /// their pushers stopped, with the cache.
    pub(crate) extensions: std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>,
    /// Redis' eviction settings, once read (see [`health`](crate::health)).
    pub(crate) memory_policy: crate::health::PolicyWatch,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.inner.name)
            .field("namespace", &self.inner.keys.namespace())
            .field("store", &self.inner.store)
            .field("l1", &self.inner.known.tier.is_some())
            .field("breaker", &self.inner.breaker.state())
            .finish()
    }
}

pub(crate) static GLOBAL: RwLock<Option<Cache>> = RwLock::new(None);

/// Installs `cache` as the process-wide default, used by `#[cached]` functions that name no
/// `cache = ...`. Replaces any previously installed cache.
///
/// ```
/// let cache = cache_layer::Cache::in_memory();
/// cache_layer::install(cache.clone());
/// assert!(cache_layer::Cache::global().is_some());
/// ```
pub fn install(cache: Cache) {
    let mut global = util::write(&GLOBAL);
    *global = Some(cache);
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

/// A handle that does not keep the cache alive (for background tasks built on the cache, which
/// end when it is dropped).
#[derive(Clone)]
pub(crate) struct WeakCache(std::sync::Weak<Inner>);

impl std::fmt::Debug for WeakCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakCache")
            .field("alive", &(self.0.strong_count() > 0))
            .finish()
    }
}

impl WeakCache {
    /// The cache, if it is still alive.
    pub(crate) fn upgrade(&self) -> Option<Cache> {
        self.0.upgrade().map(|inner| Cache { inner })
    }
}

/// What the features built on the cache (write-behind counters) use of it: its store, run through
/// the breaker with [`store_op`](Cache::store_op), its key space and a slot for their own state.
impl Cache {
    pub(crate) fn downgrade(&self) -> WeakCache {
        WeakCache(Arc::downgrade(&self.inner))
    }

    pub(crate) fn store(&self) -> &Backend {
        &self.inner.store
    }

    pub(crate) fn keys(&self) -> &KeySpace {
        &self.inner.keys
    }

    /// State a feature built on the cache keeps per cache (dropped with it).
    pub(crate) fn extension(&self) -> &std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>> {
        &self.inner.extensions
    }
}

impl Cache {
    /// Runs one store operation through the breaker, counting it (latency, outcome) and failures.
    /// `op` is not polled when the breaker rejects the call (futures are lazy), so nothing
    /// reaches Redis. (A lookup's `GET` composes the same leaves inline: `cache/read.rs`.)
    pub(crate) async fn store_op<R>(
        &self,
        op: impl Future<Output = Result<R, Error>>,
    ) -> Result<R, Error> {
        let inner = &self.inner;
        let admitted = inner.metrics.redis_admit(&inner.breaker)?;
        let result = inner.metrics.traced(op).await;
        admitted.settle(&result);
        result
    }

    /// Notes an undecodable entry: counted, logged once per cache at `warn`, then at `debug`.
    pub(crate) fn note_corrupt(&self, key: &str, why: DecodeError) {
        let inner = &self.inner;
        inner.metrics.corrupt();
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

    /// The timing of an entry whose load started at `created_ms` and took `load_time`, with the
    /// policy's TTL (plus jitter) and grace period.
    pub(crate) fn entry_timing(
        &self,
        policy: &Policy,
        created_ms: u64,
        load_time: Duration,
    ) -> Timing {
        let now = now_ms();
        let fresh_until_ms = now.saturating_add(millis(policy.jittered_ttl()));
        Timing {
            created_ms,
            fresh_until_ms,
            stale_until_ms: fresh_until_ms.saturating_add(millis(policy.stale)),
            delta_ms: u32::try_from(load_time.as_millis()).unwrap_or(u32::MAX),
        }
    }

    /// Encodes `value` as an entry with `timing` and its tags' versions at load start.
    pub(crate) fn encode_entry<T: Serialize>(
        &self,
        value: &T,
        policy: &Policy,
        timing: Timing,
        tags: &[(String, crate::l1::TagTimes)],
    ) -> Result<Vec<u8>, Error> {
        let codec = policy.codec.unwrap_or(self.inner.codec);
        let bytes = envelope::encode(value, codec, timing, tags)?;
        self.inner.metrics.value_size(bytes.len());
        Ok(bytes)
    }

    /// Invalidations and writes waiting to be replayed into Redis.
    pub(crate) fn pending_count(&self) -> usize {
        self.inner.known.missed.len()
    }
}

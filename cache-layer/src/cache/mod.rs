//! The [`Cache`] handle: construction, the global default, direct operations and stats.
//! The read-through engine (`get_or_fetch` and friends) lives in [`engine`].

mod builder;
mod engine;

pub(crate) use self::engine::REFRESH_RETRY_AFTER;
#[cfg(feature = "http")]
pub(crate) use self::engine::{Loaded, Origin};

use std::{
    future::Future,
    sync::{atomic::AtomicBool, Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{de::DeserializeOwned, Serialize};

pub use self::builder::CacheBuilder;
use crate::{
    breaker::{Admission, Breaker},
    envelope::{self, DecodeError, Envelope, Timing},
    keys::KeySpace,
    local::{LocalEntry, LocalTier},
    metrics::{Counters, HotKeys, RedisOutcome},
    stampede::{flight::Flights, lock::LandedSignals},
    store::Backend,
    tags::TagClock,
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
    pub(crate) tag_clock: TagClock,
    /// "Value landed" signals for `Stampede::Lock` waiters.
    pub(crate) landed: LandedSignals,
    /// Keys whose last load failed recently: background refreshes of them are held off.
    pub(crate) refresh_failures: moka::sync::Cache<String, ()>,
    /// Top-N keys by hits, when enabled.
    pub(crate) hot_keys: Option<HotKeys>,
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

    /// The Redis key under which `key` is stored (for operators and tests).
    ///
    /// ```
    /// let cache = cache_layer::Cache::builder().namespace("shop").build()?;
    /// assert_eq!(cache.redis_key("product:42"), "shop:{product:42}");
    /// # Ok::<(), cache_layer::Error>(())
    /// ```
    pub fn redis_key(&self, key: &str) -> String {
        self.inner.keys.entry(key)
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
        stats
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
        let result = op.await;
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

    /// Writes an encoded entry to the store (TTL = its hard expiry) and mirrors it into L1.
    pub(crate) async fn write_entry<T: Clone + Send + Sync + 'static>(
        &self,
        key: &str,
        value: &T,
        bytes: Vec<u8>,
        timing: Timing,
        tags: &[String],
    ) -> Result<(), Error> {
        let ttl = Duration::from_millis(timing.stale_until_ms.saturating_sub(now_ms()).max(1));
        self.local_insert(key, value, timing, tags, ttl);
        let full_key = self.inner.keys.entry(key);
        self.store_op(self.inner.store.set(&full_key, bytes, ttl))
            .await
    }

    pub(crate) fn local_insert<T: Clone + Send + Sync + 'static>(
        &self,
        key: &str,
        value: &T,
        timing: Timing,
        tags: impl IntoIterator<Item = impl AsRef<str>>,
        ttl: Duration,
    ) {
        if let Some(local) = &self.inner.local {
            let entry = LocalEntry {
                value: Arc::new(value.clone()),
                timing,
                tags: tags.into_iter().map(|t| t.as_ref().to_owned()).collect(),
                expires_at: std::time::Instant::now() + ttl,
            };
            local.insert(key, entry);
        }
    }

    /// Reads a fresh value without loading. A missing, expired, corrupt or differently-typed entry
    /// is `Ok(None)`; so is any lookup while the circuit breaker is open.
    ///
    /// Errors are Redis failures (connection, timeout, server error).
    pub async fn get<T>(&self, key: &str) -> Result<Option<T>, Error>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        if let Some(value) = self.local_get::<T>(key, now_ms()) {
            return Ok(Some(value));
        }
        let full_key = self.inner.keys.entry(key);
        let bytes = match self.store_op(self.inner.store.get(&full_key)).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) | Err(Error::BreakerOpen) => return Ok(None),
            Err(err) => return Err(err),
        };
        let now = now_ms();
        let clock = &self.inner.tag_clock;
        let decoded = Envelope::parse(&bytes).and_then(|env| {
            let valid = !clock.is_stale(env.tags(), env.timing.created_ms);
            Ok((env.decode::<T>()?, env.timing, valid))
        });
        match decoded {
            Ok((value, timing, fresh)) if fresh && timing.fresh_until_ms > now => Ok(Some(value)),
            Ok(_) => Ok(None),
            Err(why) => {
                self.note_corrupt(key, why);
                Ok(None)
            }
        }
    }

    /// A fresh L1 value of type `T`, if the tier is enabled and holds one.
    pub(crate) fn local_get<T: Clone + 'static>(&self, key: &str, now: u64) -> Option<T> {
        self.local_lookup(key, now)
            .filter(|(_, timing)| timing.fresh_until_ms > now)
            .map(|(value, _)| value)
    }

    /// An L1 value of type `T` that no invalidation covers (fresh or within its grace period).
    pub(crate) fn local_lookup<T: Clone + 'static>(
        &self,
        key: &str,
        now: u64,
    ) -> Option<(T, Timing)> {
        let entry = self.inner.local.as_ref()?.get(key)?;
        let tags = entry.tags.iter().map(String::as_str);
        if entry.timing.stale_until_ms <= now
            || self.inner.tag_clock.is_stale(tags, entry.timing.created_ms)
        {
            return None;
        }
        let value = entry.value.downcast_ref::<T>()?.clone();
        Some((value, entry.timing))
    }

    /// Stores `value` under `key` with `policy` (write-through after a database write).
    ///
    /// When the write fails the key is deleted (best effort), so readers fall back to the source
    /// instead of a value that may be out of date. While the breaker is open this is a no-op.
    pub async fn set<T>(&self, key: &str, value: &T, policy: &Policy) -> Result<(), Error>
    where
        T: Serialize + Clone + Send + Sync + 'static,
    {
        self.inner.flights.detach_key(key);
        let (bytes, timing) = self.encode_entry(value, policy, now_ms(), Duration::ZERO)?;
        match self
            .write_entry(key, value, bytes, timing, &policy.tags)
            .await
        {
            Ok(()) | Err(Error::BreakerOpen) => Ok(()),
            Err(err) => {
                if let Some(local) = &self.inner.local {
                    local.remove(key);
                }
                let full_key = self.inner.keys.entry(key);
                let _ = self.store_op(self.inner.store.delete(&full_key)).await;
                Err(err)
            }
        }
    }

    /// Removes `key`; `Ok(true)` when an entry was removed. Loads of `key` already in flight are
    /// detached: their results are not stored and later callers start a new load.
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        self.inner.counters.invalidation();
        self.inner.flights.detach_key(key);
        if let Some(local) = &self.inner.local {
            local.remove(key);
        }
        let full_key = self.inner.keys.entry(key);
        match self.store_op(self.inner.store.delete(&full_key)).await {
            Err(Error::BreakerOpen) => Ok(false),
            other => other,
        }
    }

    /// Invalidates every entry tagged `tag`, for every reader of this cache in this process at once
    /// (including loads already in flight: their results are not stored). The invalidation time is
    /// also written to the store for other instances.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_layer::{Cache, Policy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_layer::Error> {
    /// let cache = Cache::in_memory();
    /// let policy = Policy::ttl(Duration::from_secs(60)).tags(["product:42"]);
    /// cache.set("product:42:name", &"old", &policy).await?;
    /// cache.invalidate_tag("product:42").await?;
    /// assert_eq!(cache.get::<String>("product:42:name").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), Error> {
        self.invalidate_tags([tag]).await
    }

    /// Invalidates several tags (see [`invalidate_tag`](Cache::invalidate_tag)).
    pub async fn invalidate_tags<I, S>(&self, tags: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let at = now_ms();
        let mut first_error = None;
        for tag in tags {
            let tag = tag.as_ref();
            self.inner.counters.invalidation();
            self.inner.tag_clock.record(tag, at);
            self.inner.flights.detach_tag(tag);
            let key = self.inner.keys.meta(&format!("tag:{tag}"));
            let write = self
                .inner
                .store
                .set(&key, at.to_string().into_bytes(), TAG_CLOCK_TTL);
            match self.store_op(write).await {
                Ok(()) | Err(Error::BreakerOpen) => {}
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// How long a tag's invalidation time is remembered in the store (longer than any sane TTL).
const TAG_CLOCK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

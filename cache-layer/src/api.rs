//! The front door: every public method of [`Cache`], each documented and delegating to the
//! module that owns the concern.
//!
//! | methods | owner |
//! | --- | --- |
//! | `get_or_fetch`, `try_get_or_fetch`, `*_scoped`, `get` | [`read`](crate::cache::read): L1, store, single-flight, refresh, fill |
//! | `set`, `delete`, `invalidate_*`, `expire_tag` | [`write`](crate::cache::write): writes, invalidations, their replay |
//! | `redis_key`, `bus_connected` | [`coherence`](crate::cache::coherence): namespace version, bus state |
//! | `counters`, `counters_with` | [`write_behind`](crate::write_behind) |
//! | `builder`, `in_memory`, `global`, `name`, `namespace`, `stats` | this file |
//! | `ping` | the [`store`](crate::store); the eviction settings it reads: [`health`](crate::health) |

use std::{convert::Infallible, future::Future};

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    cache::{Cache, CacheBuilder, Loaded, GLOBAL},
    store::{Store, TagField},
    util,
    write_behind::{Counters, CountersConfig},
    Error, Policy, Stats,
};

/// The value of a load that cannot fail.
fn never_fails<T>(result: Result<T, Infallible>) -> T {
    match result {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

impl Cache {
    // ----- construction -------------------------------------------------------------------------

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

    /// The cache installed with [`install`](crate::install), if any.
    pub fn global() -> Option<Cache> {
        util::read(&GLOBAL).clone()
    }

    // ----- read-through -------------------------------------------------------------------------

    /// Returns the cached value of `key`, or runs `loader` on a miss, stores its value with
    /// `policy` and returns it.
    ///
    /// Concurrent misses of one key in this process share one load ([`Stampede`](crate::Stampede) selects more
    /// protection). When Redis fails (error, timeout, breaker open) the loader's value is returned
    /// anyway: this never fails because of the cache. A caller that is cancelled does not cancel
    /// the load (what is left of it finishes in a task of its own), and refreshes run in the
    /// background.
    ///
    /// ```
    /// use std::{sync::{Arc, atomic::{AtomicUsize, Ordering}}, time::Duration};
    /// use cache_layer::{Cache, Policy};
    ///
    /// # #[tokio::main]
    /// # async fn main() {
    /// let cache = Cache::in_memory();
    /// let policy = Policy::ttl(Duration::from_secs(60));
    /// let loads = Arc::new(AtomicUsize::new(0));
    /// for _ in 0..3 {
    ///     let loads = loads.clone();
    ///     let price: u32 = cache
    ///         .get_or_fetch("price:42", &policy, move || async move {
    ///             loads.fetch_add(1, Ordering::SeqCst);
    ///             1999
    ///         })
    ///         .await;
    ///     assert_eq!(price, 1999);
    /// }
    /// assert_eq!(loads.load(Ordering::SeqCst), 1);
    /// # }
    /// ```
    pub async fn get_or_fetch<T, F, Fut>(&self, key: &str, policy: &Policy, loader: F) -> T
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let loader = move || async move { Ok(Loaded::cacheable(loader().await)) };
        never_fails(self.read_through(key, policy, loader).await)
    }

    /// Like [`get_or_fetch`](Cache::get_or_fetch) for fallible loaders: only `Ok` values are
    /// cached; an `Err` is returned to its caller and never stored. With a
    /// [`stale`](Policy::stale) grace period, a failing refresh keeps serving the stale value
    /// (stale-if-error) instead of the error.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_layer::{Cache, Policy};
    ///
    /// # #[tokio::main]
    /// # async fn main() {
    /// let cache = Cache::in_memory();
    /// let policy = Policy::ttl(Duration::from_secs(60));
    /// let failed: Result<u32, String> =
    ///     cache.try_get_or_fetch("k", &policy, || async { Err("db down".to_string()) }).await;
    /// assert!(failed.is_err());
    /// // The error was not cached: the next call loads again.
    /// let ok: Result<u32, String> = cache.try_get_or_fetch("k", &policy, || async { Ok(7) }).await;
    /// assert_eq!(ok, Ok(7));
    /// # }
    /// ```
    pub async fn try_get_or_fetch<T, E, F, Fut>(
        &self,
        key: &str,
        policy: &Policy,
        loader: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let loader = move || async move { loader().await.map(Loaded::cacheable) };
        self.read_through(key, policy, loader).await
    }

    /// Read-through with a loader that may borrow (not `'static`), e.g. from `&self`.
    ///
    /// Same single-flight as [`get_or_fetch`](Cache::get_or_fetch), but the load runs in the calling
    /// task; if that caller is cancelled, one of the waiting callers takes over with its own loader.
    /// A refresh (stale-while-revalidate, early refresh) runs in the caller that triggered it while
    /// every other caller gets the stale value.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_layer::{Cache, Policy};
    ///
    /// struct Repo { prefix: String }
    /// impl Repo {
    ///     async fn name(&self, cache: &Cache, id: u32) -> String {
    ///         let policy = Policy::ttl(Duration::from_secs(60));
    ///         cache
    ///             .get_or_fetch_scoped(&format!("name:{id}"), &policy, || async {
    ///                 format!("{}-{id}", self.prefix)
    ///             })
    ///             .await
    ///     }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let repo = Repo { prefix: "item".into() };
    /// assert_eq!(repo.name(&Cache::in_memory(), 7).await, "item-7");
    /// # }
    /// ```
    pub async fn get_or_fetch_scoped<T, F, Fut>(&self, key: &str, policy: &Policy, loader: F) -> T
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let loader = move || async move { Ok(Loaded::cacheable(loader().await)) };
        never_fails(self.read_through_scoped(key, policy, loader).await)
    }

    /// Fallible form of [`get_or_fetch_scoped`](Cache::get_or_fetch_scoped): only `Ok` is cached.
    pub async fn try_get_or_fetch_scoped<T, E, F, Fut>(
        &self,
        key: &str,
        policy: &Policy,
        loader: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let loader = move || async move { loader().await.map(Loaded::cacheable) };
        self.read_through_scoped(key, policy, loader).await
    }

    // ----- direct reads and writes --------------------------------------------------------------

    /// Reads a fresh value without loading. A missing, expired, invalidated, corrupt or
    /// differently-typed entry is `Ok(None)`; so is any lookup while the circuit breaker is open.
    ///
    /// Errors are Redis failures (connection, timeout, server error).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_layer::{Cache, Policy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_layer::Error> {
    /// let cache = Cache::in_memory();
    /// assert_eq!(cache.get::<u32>("answer").await?, None);
    /// cache.set("answer", &42u32, &Policy::ttl(Duration::from_secs(60))).await?;
    /// assert_eq!(cache.get::<u32>("answer").await?, Some(42));
    /// // Another type than the one stored reads as a miss, never as an error.
    /// assert_eq!(cache.get::<Vec<String>>("answer").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn get<T>(&self, key: &str) -> Result<Option<T>, Error>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        self.read_fresh(key).await
    }

    /// Stores `value` under `key` with `policy` (write-through after a database write), and tells
    /// the other instances to drop their L1 copies. Loads of `key` in flight are detached, and a
    /// load that started before this call cannot overwrite the value afterwards.
    ///
    /// A write Redis did not take is never silently dropped: the key is removed from L1, this
    /// process stops trusting what Redis holds for it, and its deletion is recorded and replayed
    /// in the background until Redis takes it (readers fall back to the source instead of the
    /// value from before the write; [`Stats::pending_invalidations`](crate::Stats) counts it).
    /// While the breaker is open that is all (`Ok`); any other failure is also returned.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_layer::{Cache, Policy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_layer::Error> {
    /// let cache = Cache::in_memory();
    /// let policy = Policy::ttl(Duration::from_secs(60)).tags(["product:42"]);
    /// // After `UPDATE products SET price = 1799 WHERE id = 42`:
    /// cache.set("product:42:price", &1799u32, &policy).await?;
    /// assert_eq!(cache.get::<u32>("product:42:price").await?, Some(1799));
    /// # Ok(()) }
    /// ```
    pub async fn set<T>(&self, key: &str, value: &T, policy: &Policy) -> Result<(), Error>
    where
        T: Serialize + Clone + Send + Sync + 'static,
    {
        self.write_through(key, value, policy).await
    }

    /// Removes `key`; `Ok(true)` when an entry was removed. Loads of `key` already in flight are
    /// detached (their results are not stored and later callers start a new load), here and, via
    /// the bus, in the other instances, which also drop their L1 copies. A load anywhere that
    /// started before this call cannot put the old value back: the key holds a tombstone for
    /// 60 s and fills are conditional on what their load saw (loads that run longer than that are
    /// not stored).
    ///
    /// A delete Redis did not take is recorded and replayed in the background (and honoured by
    /// this process meanwhile); errors other than an open breaker are also returned.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_layer::{Cache, Policy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_layer::Error> {
    /// let cache = Cache::in_memory();
    /// cache.set("k", &1u8, &Policy::ttl(Duration::from_secs(60))).await?;
    /// assert!(cache.delete("k").await?);
    /// assert!(!cache.delete("k").await?, "nothing left to remove");
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        self.remove(key).await
    }

    // ----- invalidation -------------------------------------------------------------------------

    /// Invalidates every entry tagged `tag`. When this returns, no caller in this process gets a
    /// value tagged `tag` whose load started before the call — not from L1, not from Redis, not
    /// from a load that was in flight (its result is not stored) — and the other instances stop
    /// serving such values within the bus delay (or the bus fallback TTL if their bus is down).
    ///
    /// Cost: one Lua script on the tag's own key (cluster-safe) and one `PUBLISH`; nothing scans
    /// or enumerates the tagged entries, they are recognised on read.
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

    /// Invalidates several tags at once (see [`invalidate_tag`](Cache::invalidate_tag)): the
    /// scripts run concurrently and one bus message carries them all.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_layer::{Cache, Policy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_layer::Error> {
    /// let cache = Cache::in_memory();
    /// let ttl = Policy::ttl(Duration::from_secs(60));
    /// cache.set("a", &1u8, &ttl.clone().tags(["product:1"])).await?;
    /// cache.set("b", &2u8, &ttl.clone().tags(["product:2"])).await?;
    /// cache.set("c", &3u8, &ttl.clone().tags(["product:3"])).await?;
    /// cache.invalidate_tags(["product:1", "product:2"]).await?;
    /// assert_eq!(cache.get::<u8>("a").await?, None);
    /// assert_eq!(cache.get::<u8>("b").await?, None);
    /// assert_eq!(cache.get::<u8>("c").await?, Some(3));
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tags<I, S>(&self, tags: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.bump_tags(tags, TagField::Hard).await
    }

    /// Soft invalidation: entries tagged `tag` whose load started before the call become stale
    /// instead of invalid. With a [`stale`](Policy::stale) grace period they are still served
    /// (within it) while one caller refreshes them; without one this is the same as
    /// [`invalidate_tag`](Cache::invalidate_tag) for readers, but loads in flight are kept.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_layer::{Cache, Policy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_layer::Error> {
    /// let cache = Cache::in_memory();
    /// let policy = Policy::ttl(Duration::from_secs(60)).stale(Duration::from_secs(30)).tags(["menu"]);
    /// cache.set("menu:today", &"soup", &policy).await?;
    /// cache.expire_tag("menu").await?;
    /// // No longer fresh: `get` (fresh values only) misses...
    /// assert_eq!(cache.get::<String>("menu:today").await?, None);
    /// // ...while read-through serves the stale value and refreshes it in the background.
    /// let served: String = cache.get_or_fetch("menu:today", &policy, || async { "salad".to_string() }).await;
    /// assert_eq!(served, "soup");
    /// # Ok(()) }
    /// ```
    pub async fn expire_tag(&self, tag: &str) -> Result<(), Error> {
        self.bump_tags([tag], TagField::Soft).await
    }

    /// Drops every entry of this cache's namespace in O(1): the namespace version (folded into
    /// every entry key) is incremented, so old entries are never read again and expire on their
    /// own. Loads in flight are detached and L1 is emptied here and, via the bus, in the other
    /// instances; an instance without a bus follows within the bus fallback TTL.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_layer::{Cache, Policy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_layer::Error> {
    /// let cache = Cache::in_memory();
    /// cache.set("a", &1u8, &Policy::ttl(Duration::from_secs(60))).await?;
    /// cache.invalidate_namespace().await?;
    /// assert_eq!(cache.get::<u8>("a").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_namespace(&self) -> Result<(), Error> {
        self.bump_namespace().await
    }

    // ----- write-behind counters ----------------------------------------------------------------

    /// The write-behind counter set `name` (see [`Counters`]), with default settings.
    ///
    /// Every call with the same name returns a handle to the same set (one buffer, one pusher per
    /// process). Building it does no I/O.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_layer::Error> {
    /// let cache = cache_layer::Cache::in_memory();
    /// let views = cache.counters("views");
    /// views.incr("product:42", 1).await?;
    /// # Ok(()) }
    /// ```
    pub fn counters(&self, name: &str) -> Counters {
        self.counters_with(name, CountersConfig::default())
    }

    /// The write-behind counter set `name` with `config`. If the set already exists in this cache,
    /// the configuration it was created with stays in effect.
    pub fn counters_with(&self, name: &str, config: CountersConfig) -> Counters {
        crate::write_behind::counters(self, name, config)
    }
    // ----- introspection ------------------------------------------------------------------------

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
        inner.keys.entry(key, inner.known.namespace.get().version)
    }

    /// A snapshot of the counters since the cache was built.
    pub fn stats(&self) -> Stats {
        let inner = &self.inner;
        let mut stats = inner
            .metrics
            .snapshot(inner.breaker.state(), inner.breaker.transitions());
        if let Some(hot_keys) = &inner.hot_keys {
            stats.hot_keys = hot_keys.top();
        }
        stats.memory_policy = inner.memory_policy.get();
        stats.pending_invalidations = self.pending_count() as u64;
        stats
    }

    /// Checks that Redis answers: one `PING` (bounded by the op timeout), whatever the circuit
    /// breaker's state; returns its round-trip time. Always `Ok` on the embedded store. Also
    /// re-reads Redis' eviction settings ([`Stats::memory_policy`]).
    ///
    /// For a health or readiness endpoint. The cache itself keeps answering while Redis is down
    /// (callers get the source's values), so taking an instance out of rotation because `ping`
    /// fails removes a working service: report it, and gate on it only when the service cannot
    /// run without its cache.
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
    pub async fn ping(&self) -> Result<std::time::Duration, Error> {
        let inner = &self.inner;
        let started = std::time::Instant::now();
        inner.store.ping().await?;
        let round_trip = started.elapsed();
        match inner.store.eviction_settings().await {
            Ok(Some(settings)) => inner.memory_policy.record(&inner.name, settings),
            Ok(None) => {}
            Err(err) => tracing::debug!(cache = %inner.name, error = %err,
                "cannot read maxmemory-policy (INFO memory); not checked"),
        }
        Ok(round_trip)
    }

    /// Drains pending work before the process exits: replays every invalidation, delete and
    /// write Redis has not taken yet (see [`Stats::pending_invalidations`]), retrying for up to
    /// `within`. `Ok` when nothing is left; otherwise [`Error::Timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_layer::Error> {
    /// let cache = cache_layer::Cache::in_memory();
    /// cache.invalidate_tag("catalog").await?;
    /// cache.shutdown(Duration::from_secs(5)).await?;
    /// assert_eq!(cache.stats().pending_invalidations, 0);
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self, within: std::time::Duration) -> Result<(), Error> {
        self.drain(within).await
    }

    /// Whether the invalidation bus is subscribed right now (always `false` with the in-memory
    /// store, which needs no bus). While it is down, L1 copies, tag times and the namespace version
    /// are trusted only for the bus fallback TTL. The bus starts with the first operation.
    ///
    /// ```
    /// assert!(!cache_layer::Cache::in_memory().bus_connected());
    /// ```
    pub fn bus_connected(&self) -> bool {
        self.inner.known.trust.is_up()
    }
}

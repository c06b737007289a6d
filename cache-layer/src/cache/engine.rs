//! The read-through engine shared by both front doors.
//!
//! ```text
//! lookup: L1 (decoded value) ──► store GET (one round trip) ──► decode
//!    │ fresh ───────────────► return   (Early: maybe start one refresh first)
//!    │ stale (grace) ───────► return stale, one refresh   (load_timeout: wait up to it first)
//!    │ miss / corrupt / Redis failing
//!    ▼
//! single-flight: leader [Lock: takes the Redis lock or waits for the value to land]
//!                runs the loader ──► SET PX (hard expiry) + L1 ──► followers get the value
//! ```
//!
//! Two entry points share everything but how the leader runs the loader:
//! - `'static` loaders ([`Cache::get_or_fetch`]) run in a spawned task, so a cancelled caller does
//!   not cancel the load, and refreshes (stale-while-revalidate, early refresh) run in the
//!   background while every caller is answered at once.
//! - borrowing loaders ([`Cache::get_or_fetch_scoped`], used by the macro for `&self` methods and
//!   reference arguments) run in the calling task: if that caller is cancelled, a follower takes
//!   over; a refresh runs in the caller that triggered it while the others get the stale value.

use std::{
    convert::Infallible,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Serialize};
use tracing::Instrument;

use super::invalidate::{LoadStart, UNKNOWN_EPOCH};
use super::{now_ms, Cache};
use crate::{
    envelope::{DecodeError, Envelope, Seen, Timing},
    stampede::{
        early,
        flight::{Join, LeaderGuard, Outcome},
        lock::{self, HeldLock},
    },
    Policy, Stampede,
};

/// What the engine can cache: serializable, cloneable, shareable between tasks.
pub(crate) trait Value:
    Serialize + DeserializeOwned + Clone + Send + Sync + 'static
{
}
impl<T> Value for T where T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

/// A loader's result plus per-value storage decisions (used by the HTTP layer, whose origin
/// decides TTL, tags and cacheability per response).
pub(crate) struct Loaded<T> {
    pub(crate) value: T,
    /// Overrides the policy's TTL for this value.
    pub(crate) ttl: Option<Duration>,
    /// Tags added to the policy's tags for this value.
    pub(crate) tags: Vec<String>,
    /// `false`: return the value to this caller only; never store it nor share it with waiters.
    pub(crate) cacheable: bool,
}

impl<T> Loaded<T> {
    pub(crate) fn cacheable(value: T) -> Self {
        Loaded {
            value,
            ttl: None,
            tags: Vec::new(),
            cacheable: true,
        }
    }
}

/// Where a returned value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Fresh, from the in-process L1 tier.
    LocalHit,
    /// Fresh, from the store.
    Hit,
    /// Past its TTL but within the grace period.
    Stale,
    /// Shared from another caller's load (in this process or, with `Lock`, another one).
    Coalesced,
    /// Loaded by this caller and stored.
    Loaded,
    /// Loaded by this caller and not stored (uncacheable, lock wait timed out, or an
    /// invalidation raced the load).
    LoadedUnstored,
}

/// A value and where it came from.
pub(crate) struct Fetched<T> {
    pub(crate) value: T,
    pub(crate) origin: Origin,
    /// The entry's timing, when the value is (or would have been) an entry.
    pub(crate) timing: Option<Timing>,
}

/// What a flight shares with its followers.
struct Shared<T> {
    value: T,
    timing: Option<Timing>,
}

/// What one lookup found.
enum Lookup<T> {
    Fresh {
        value: T,
        timing: Timing,
        local: bool,
        /// `Stampede::Early` decided (once, it is random) that this caller refreshes early.
        refresh_early: bool,
        /// What the key held in Redis (`None`: answered from L1, not read).
        seen: Option<Seen>,
    },
    Stale {
        value: T,
        timing: Timing,
        seen: Option<Seen>,
    },
    /// Nothing usable; the timing of an expired entry, if one was seen (load-time hint).
    Miss {
        hint: Option<Timing>,
        seen: Option<Seen>,
    },
}

/// What a load knows from the lookup before it: the last entry's timing (its load time sizes
/// the lock) and what the key held (the conditional fill replaces only that).
#[derive(Debug, Clone, Default)]
pub(crate) struct Prior {
    hint: Option<Timing>,
    seen: Option<Seen>,
}

impl<T> Lookup<T> {
    /// The value of a fresh hit that needs nothing more (no early refresh due), or the lookup
    /// for the rest of the engine.
    fn settled(self) -> Result<T, Self> {
        match self {
            Lookup::Fresh {
                value,
                refresh_early: false,
                ..
            } => Ok(value),
            other => Err(other),
        }
    }
}

/// How a caller that lost its flight continues.
enum Next<T> {
    Done(Fetched<T>),
    /// The leader's loader failed or its value was not shareable: run our own, uncoalesced.
    LoadAlone,
    /// The leader vanished (cancelled or panicked): try to lead or follow again.
    Rejoin,
    /// The leader took longer than the policy's lock wait: run our own load, without storing
    /// (the leader's result will be stored).
    LoadUnstored,
}

/// How long a failed refresh of a key keeps further refreshes of it from being attempted.
pub(crate) const REFRESH_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Cache {
    /// Returns the cached value of `key`, or runs `loader` on a miss, stores its value with
    /// `policy` and returns it.
    ///
    /// Concurrent misses of one key in this process share one load ([`Stampede`] selects more
    /// protection). When Redis fails (error, timeout, breaker open) the loader's value is returned
    /// anyway: this never fails because of the cache. The loader runs in its own task, so a caller
    /// that is cancelled does not cancel it, and refreshes run in the background.
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
        let found = match self.lookup::<T>(key, policy).await.settled() {
            Ok(value) => return value,
            Err(found) => found,
        };
        let infallible =
            move || async move { Ok::<_, Infallible>(Loaded::cacheable(loader().await)) };
        match Box::pin(self.resolve(found, key, policy, infallible)).await {
            Ok(fetched) => fetched.value,
            Err(never) => match never {},
        }
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
        let found = match self.lookup::<T>(key, policy).await.settled() {
            Ok(value) => return Ok(value),
            Err(found) => found,
        };
        let loader = move || async move { loader().await.map(Loaded::cacheable) };
        Box::pin(self.resolve(found, key, policy, loader))
            .await
            .map(|fetched| fetched.value)
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
        let found = match self.lookup::<T>(key, policy).await.settled() {
            Ok(value) => return value,
            Err(found) => found,
        };
        let infallible =
            move || async move { Ok::<_, Infallible>(Loaded::cacheable(loader().await)) };
        match Box::pin(self.resolve_scoped(found, key, policy, infallible)).await {
            Ok(fetched) => fetched.value,
            Err(never) => match never {},
        }
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
        let found = match self.lookup::<T>(key, policy).await.settled() {
            Ok(value) => return Ok(value),
            Err(found) => found,
        };
        let loader = move || async move { loader().await.map(Loaded::cacheable) };
        Box::pin(self.resolve_scoped(found, key, policy, loader))
            .await
            .map(|fetched| fetched.value)
    }

    /// The engine behind every `'static` front door: lookup, refresh, single-flight, lock, fill.
    pub(crate) async fn fetch<T, E, F, Fut>(
        &self,
        key: &str,
        policy: &Policy,
        loader: F,
    ) -> Result<Fetched<T>, E>
    where
        T: Value,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<T>, E>> + Send + 'static,
    {
        let found = self.lookup::<T>(key, policy).await;
        self.resolve(found, key, policy, loader).await
    }

    /// What [`fetch`](Self::fetch) does after the lookup. The front doors await the lookup
    /// inline and box only this part (miss, refresh, lock: several KiB of future), so a hit never
    /// allocates it.
    async fn resolve<T, E, F, Fut>(
        &self,
        found: Lookup<T>,
        key: &str,
        policy: &Policy,
        loader: F,
    ) -> Result<Fetched<T>, E>
    where
        T: Value,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<T>, E>> + Send + 'static,
    {
        let prior = match found {
            Lookup::Fresh {
                value,
                timing,
                local,
                refresh_early,
                seen,
            } => {
                if refresh_early {
                    self.refresh_in_background(key, policy, timing, seen, loader);
                }
                let origin = if local { Origin::LocalHit } else { Origin::Hit };
                return Ok(Fetched {
                    value,
                    origin,
                    timing: Some(timing),
                });
            }
            Lookup::Stale {
                value,
                timing,
                seen,
            } => {
                let stale = Fetched {
                    value,
                    origin: Origin::Stale,
                    timing: Some(timing),
                };
                let Some(soft) = policy.load_timeout else {
                    self.refresh_in_background(key, policy, timing, seen, loader);
                    return Ok(stale);
                };
                // Give the refresh up to `soft`; it keeps running after we answer stale.
                let refresh = self.refresh_and_wait(key, policy, timing, seen, loader);
                let refreshed = tokio::time::timeout(soft, refresh);
                return Ok(match refreshed.await {
                    Ok(Some(fresh)) => fresh,
                    _ => stale,
                });
            }
            Lookup::Miss { hint, seen } => Prior { hint, seen },
        };
        loop {
            let guard = match self.join(key, policy) {
                None => return self.load(None, key, policy, loader, prior).await,
                Some(Join::Leader(guard)) => guard,
                Some(Join::Follower(follower)) => {
                    match self.follow_within::<T>(key, policy, follower).await {
                        Next::Done(fetched) => return Ok(fetched),
                        Next::LoadAlone => {
                            return self.load(None, key, policy, loader, prior).await
                        }
                        Next::LoadUnstored => {
                            return self.load_and_fill(None, key, policy, loader, None).await
                        }
                        Next::Rejoin => continue,
                    }
                }
            };
            let (cache, key, policy) = (self.clone(), key.to_owned(), policy.clone());
            let task =
                tokio::spawn(
                    async move { cache.load(Some(guard), &key, &policy, loader, prior).await },
                );
            return join_task(task).await;
        }
    }

    /// The engine behind the borrowing front doors (loader runs in the calling task), after the
    /// lookup (see [`resolve`](Self::resolve)).
    async fn resolve_scoped<T, E, F, Fut>(
        &self,
        found: Lookup<T>,
        key: &str,
        policy: &Policy,
        loader: F,
    ) -> Result<Fetched<T>, E>
    where
        T: Value,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<T>, E>>,
    {
        let prior = match found {
            Lookup::Fresh {
                value,
                timing,
                local,
                refresh_early,
                seen,
            } => {
                let origin = if local { Origin::LocalHit } else { Origin::Hit };
                let fresh = Fetched {
                    value,
                    origin,
                    timing: Some(timing),
                };
                if !refresh_early {
                    return Ok(fresh);
                }
                // One caller refreshes early, inline; everyone else keeps the fresh value.
                return Ok(match self.inner.flights.join(key, &policy.tags) {
                    Join::Leader(guard) => {
                        self.inner.counters.refresh();
                        let prior = Prior {
                            hint: Some(timing),
                            seen,
                        };
                        self.load(Some(guard), key, policy, loader, prior)
                            .await
                            .unwrap_or(fresh)
                    }
                    Join::Follower(_) => fresh,
                });
            }
            Lookup::Stale {
                value,
                timing,
                seen,
            } => {
                let stale = Fetched {
                    value,
                    origin: Origin::Stale,
                    timing: Some(timing),
                };
                if self.refresh_throttled(key) {
                    return Ok(stale);
                }
                return Ok(match self.inner.flights.join(key, &policy.tags) {
                    Join::Leader(guard) => {
                        self.inner.counters.refresh();
                        let prior = Prior {
                            hint: Some(timing),
                            seen,
                        };
                        let refresh = self.load(Some(guard), key, policy, loader, prior);
                        match policy.load_timeout {
                            // A borrowing load cannot outlive its caller: past the soft timeout
                            // it is dropped and the stale value answered.
                            Some(soft) => match tokio::time::timeout(soft, refresh).await {
                                Ok(Ok(fresh)) => fresh,
                                _ => stale,
                            },
                            None => refresh.await.unwrap_or(stale),
                        }
                    }
                    Join::Follower(_) => stale,
                });
            }
            Lookup::Miss { hint, seen } => Prior { hint, seen },
        };
        loop {
            match self.join(key, policy) {
                None => return self.load(None, key, policy, loader, prior).await,
                Some(Join::Leader(guard)) => {
                    return self.load(Some(guard), key, policy, loader, prior).await
                }
                Some(Join::Follower(follower)) => {
                    match self.follow_within::<T>(key, policy, follower).await {
                        Next::Done(fetched) => return Ok(fetched),
                        Next::LoadAlone => {
                            return self.load(None, key, policy, loader, prior).await
                        }
                        Next::LoadUnstored => {
                            return self.load_and_fill(None, key, policy, loader, None).await
                        }
                        Next::Rejoin => continue,
                    }
                }
            }
        }
    }

    /// Looks `key` up in L1, then the store. Redis failures and undecodable entries are misses,
    /// except that a stale L1 copy may answer while Redis is failing (stale-if-error).
    async fn lookup<T: Value>(&self, key: &str, policy: &Policy) -> Lookup<T> {
        let inner = &self.inner;
        let now = now_ms();
        let mut local_stale = None;
        if let Some((value, timing)) = self.local_lookup::<T>(key, now) {
            if timing.fresh_until_ms > now {
                inner.counters.local_hit(policy.door);
                self.observe_hit(policy, key);
                return Lookup::Fresh {
                    refresh_early: self.early_refresh_due(policy, &timing),
                    value,
                    timing,
                    local: true,
                    seen: None,
                };
            }
            local_stale = Some((value, timing));
        }
        let full_key = self.entry_key(key).await;
        let mut hint = None;
        // The policy's tags whose versions this process does not know ride along with the GET
        // (one pipelined round trip): a hit needs them to be checked, a miss to start its load.
        let untrusted = self.untrusted_tags(&policy.tags);
        let read = if full_key.version == UNKNOWN_EPOCH {
            // The namespace epoch could not be read: nothing under any epoch is trusted.
            Err(crate::Error::BreakerOpen)
        } else if untrusted.is_empty() {
            self.store_op(inner.store.get(&full_key)).await
        } else {
            // Boxed: a hit in steady state never takes this path, and the lookup future (nested
            // in every cached call, recursion included) stays small.
            Box::pin(self.read_with_tags(&full_key, &untrusted)).await
        };
        let seen = match &read {
            Ok(bytes) => Some(Seen::of(bytes.as_deref())),
            Err(err) => Seen::of_failed_read(err),
        };
        match read {
            Ok(Some(_)) if self.pending_covers(key) => {}
            Ok(Some(bytes)) => match Envelope::parse(&bytes) {
                Ok(envelope) => {
                    // `None`: an invalidation covers the entry (tags; the namespace is in the key).
                    if let Some(timing) = self.current_timing(&envelope, now).await {
                        hint = Some(timing);
                        if timing.stale_until_ms > now {
                            match envelope.decode::<T>() {
                                Ok(value) => {
                                    let ttl = Duration::from_millis(timing.stale_until_ms - now);
                                    self.local_insert(
                                        &full_key,
                                        &value,
                                        timing,
                                        envelope.tag_versions(),
                                        ttl,
                                    );
                                    if timing.fresh_until_ms > now {
                                        inner.counters.hit(policy.door);
                                        self.observe_hit(policy, key);
                                        return Lookup::Fresh {
                                            refresh_early: self.early_refresh_due(policy, &timing),
                                            value,
                                            timing,
                                            local: false,
                                            seen,
                                        };
                                    }
                                    inner.counters.stale_hit(policy.door);
                                    self.observe_hit(policy, key);
                                    return Lookup::Stale {
                                        value,
                                        timing,
                                        seen,
                                    };
                                }
                                Err(why) => self.note_corrupt(key, why),
                            }
                        }
                    }
                }
                Err(DecodeError::Deleted) => {}
                Err(why) => self.note_corrupt(key, why),
            },
            Ok(None) => {}
            // Redis is failing: a stale L1 copy beats loading (stale-if-error).
            Err(_) => {
                if let Some((value, timing)) = local_stale {
                    inner.counters.stale_hit(policy.door);
                    self.observe_hit(policy, key);
                    return Lookup::Stale {
                        value,
                        timing,
                        seen: None,
                    };
                }
            }
        }
        inner.counters.miss(policy.door);
        if let Some(observer) = policy.observer {
            observer.miss();
        }
        Lookup::Miss { hint, seen }
    }

    /// Reads the entry at `full_key` and the records of `tags` in one round trip, and takes the
    /// records in (missing ones repaired).
    async fn read_with_tags(
        &self,
        full_key: &str,
        tags: &[&str],
    ) -> Result<Option<Vec<u8>>, crate::Error> {
        let inner = &self.inner;
        let trust = inner.bus.trust_now();
        let tag_keys: Vec<String> = tags.iter().map(|t| inner.keys.tag(t)).collect();
        let (bytes, records) = self
            .store_op(inner.store.read_with_tags(full_key, &tag_keys))
            .await?;
        if let Err(err) = self.learn_tag_records(tags, records, trust).await {
            tracing::debug!(cache = %inner.name, error = %err, "could not repair tag records");
        }
        Ok(bytes)
    }

    /// Counts a hit for the policy's observer and the hot-key tracker.
    fn observe_hit(&self, policy: &Policy, key: &str) {
        if let Some(observer) = policy.observer {
            observer.hit();
        }
        if let Some(hot_keys) = &self.inner.hot_keys {
            hot_keys.record(key);
        }
    }

    fn early_refresh_due(&self, policy: &Policy, timing: &Timing) -> bool {
        policy.stampede == Stampede::Early && early::should_refresh(timing, now_ms(), policy.beta)
    }

    fn refresh_throttled(&self, key: &str) -> bool {
        self.inner.refresh_failures.contains_key(key)
    }

    /// Starts one background refresh of `key` unless one is running or recently failed.
    fn refresh_in_background<T, E, F, Fut>(
        &self,
        key: &str,
        policy: &Policy,
        timing: Timing,
        seen: Option<Seen>,
        loader: F,
    ) where
        T: Value,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<T>, E>> + Send + 'static,
    {
        if self.refresh_throttled(key) {
            return;
        }
        if let Join::Leader(guard) = self.inner.flights.join(key, &policy.tags) {
            self.inner.counters.refresh();
            let (cache, key, policy) = (self.clone(), key.to_owned(), policy.clone());
            let prior = Prior {
                hint: Some(timing),
                seen,
            };
            tokio::spawn(async move {
                let _ = cache.load(Some(guard), &key, &policy, loader, prior).await;
            });
        }
    }

    /// Refreshes `key` (or joins the running refresh) and waits for the fresh value; `None` when
    /// the refresh failed or is throttled. Dropping this future leaves the refresh running.
    async fn refresh_and_wait<T, E, F, Fut>(
        &self,
        key: &str,
        policy: &Policy,
        timing: Timing,
        seen: Option<Seen>,
        loader: F,
    ) -> Option<Fetched<T>>
    where
        T: Value,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<T>, E>> + Send + 'static,
    {
        if self.refresh_throttled(key) {
            return None;
        }
        match self.inner.flights.join(key, &policy.tags) {
            Join::Leader(guard) => {
                self.inner.counters.refresh();
                let (cache, key, policy) = (self.clone(), key.to_owned(), policy.clone());
                let prior = Prior {
                    hint: Some(timing),
                    seen,
                };
                let task = tokio::spawn(async move {
                    cache.load(Some(guard), &key, &policy, loader, prior).await
                });
                match task.await {
                    Ok(Ok(fetched)) => Some(fetched),
                    _ => None,
                }
            }
            Join::Follower(follower) => {
                match self.follow_within::<T>(key, policy, follower).await {
                    Next::Done(fetched) => Some(fetched),
                    Next::LoadAlone | Next::LoadUnstored | Next::Rejoin => None,
                }
            }
        }
    }

    /// Starts or joins the flight for `key`; `None` when the policy asks for no coalescing.
    fn join(&self, key: &str, policy: &Policy) -> Option<Join> {
        match policy.stampede {
            Stampede::None => None,
            _ => Some(self.inner.flights.join(key, &policy.tags)),
        }
    }

    /// Waits for the flight's leader at most the policy's lock wait (a hung loader holds its
    /// followers no longer than a lock holder in another process would), then turns the outcome
    /// into the follower's next step.
    async fn follow_within<T: Value>(
        &self,
        key: &str,
        policy: &Policy,
        follower: crate::stampede::flight::Follower,
    ) -> Next<T> {
        match tokio::time::timeout(policy.lock_wait, follower.wait()).await {
            Ok(outcome) => self.follow::<T>(key, policy, outcome).await,
            Err(_) => {
                self.inner.counters.lock_timeout();
                tracing::debug!(cache = %self.inner.name, "the load this caller waited for is taking longer than the lock wait; loading without storing");
                Next::LoadUnstored
            }
        }
    }

    /// Turns a finished flight into the follower's next step.
    async fn follow<T: Value>(&self, key: &str, policy: &Policy, outcome: Outcome) -> Next<T> {
        match outcome {
            Outcome::Value(shared) => match shared.downcast_ref::<Shared<T>>() {
                Some(shared) => {
                    self.inner.counters.coalesced(policy.door);
                    Next::Done(Fetched {
                        value: shared.value.clone(),
                        origin: Origin::Coalesced,
                        timing: shared.timing,
                    })
                }
                // Same key read as a different type: this caller loads its own.
                None => Next::LoadAlone,
            },
            Outcome::Failed => Next::LoadAlone,
            Outcome::Abandoned | Outcome::Pending => match self.lookup::<T>(key, policy).await {
                Lookup::Fresh { value, timing, .. } => Next::Done(Fetched {
                    value,
                    origin: Origin::Hit,
                    timing: Some(timing),
                }),
                _ => Next::Rejoin,
            },
        }
    }

    /// Loads `key` as the flight's leader (or alone), honouring `Stampede::Lock`, stores a
    /// cacheable value, then releases the followers. Dropping this future before it finishes
    /// marks the flight abandoned (via the guard) so a follower takes over.
    async fn load<T, E, F, Fut>(
        &self,
        guard: Option<LeaderGuard>,
        key: &str,
        policy: &Policy,
        loader: F,
        prior: Prior,
    ) -> Result<Fetched<T>, E>
    where
        T: Value,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<T>, E>>,
    {
        if policy.stampede != Stampede::Lock || !self.inner.store.is_remote() {
            return self
                .load_and_fill(guard, key, policy, loader, Some(prior.seen))
                .await;
        }
        match self
            .acquire_or_wait::<T>(key, policy, prior.hint.as_ref())
            .await
        {
            LockWait::Acquired(held) => {
                // Boxed: the lock-holding path is rare, and its state stays off the stack of
                // recursive cached calls.
                Box::pin(self.load_holding(guard, key, policy, loader, prior, held)).await
            }
            LockWait::Landed(value, timing) => {
                if let Some(guard) = guard {
                    let shared = Shared {
                        value: value.clone(),
                        timing: Some(timing),
                    };
                    guard.finish(Outcome::Value(Arc::new(shared)));
                }
                Ok(Fetched {
                    value,
                    origin: Origin::Coalesced,
                    timing: Some(timing),
                })
            }
            LockWait::TimedOut => {
                self.inner.counters.lock_timeout();
                tracing::debug!(cache = %self.inner.name, "lock wait timed out; loading without storing");
                self.load_and_fill(guard, key, policy, loader, None).await
            }
            LockWait::Unavailable => {
                self.load_and_fill(guard, key, policy, loader, Some(prior.seen))
                    .await
            }
        }
    }

    /// Runs the load while holding `held`, renewing it so nobody takes it from a slow load, then
    /// releases it.
    async fn load_holding<T, E, F, Fut>(
        &self,
        guard: Option<LeaderGuard>,
        key: &str,
        policy: &Policy,
        loader: F,
        prior: Prior,
        held: HeldLock,
    ) -> Result<Fetched<T>, E>
    where
        T: Value,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<T>, E>>,
    {
        let load = self.load_and_fill(guard, key, policy, loader, Some(prior.seen));
        let mut load = std::pin::pin!(load);
        let result = tokio::select! {
            biased;
            result = &mut load => result,
            () = self.keep_lock(&held) => load.await,
        };
        self.release_lock(&held).await;
        result
    }

    /// Renews `held` every third of its TTL for as long as its holder still holds it (checked
    /// by token); returns when a renewal fails (lost, or Redis failing), never otherwise.
    async fn keep_lock(&self, held: &HeldLock) {
        loop {
            tokio::time::sleep(held.ttl / 3).await;
            let renew = self
                .inner
                .store
                .expire_if_equals(&held.lock_key, &held.token, held.ttl);
            match self.store_op(renew).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(cache = %self.inner.name, "lock lost while loading (expired and taken)");
                    return;
                }
                Err(err) => {
                    tracing::debug!(cache = %self.inner.name, error = %err, "lock renewal failed");
                    return;
                }
            }
        }
    }

    /// Runs the loader, stores a cacheable value (when `fill` is `Some`: what the lookup saw
    /// under the key, if it read it), and finishes the flight.
    async fn load_and_fill<T, E, F, Fut>(
        &self,
        guard: Option<LeaderGuard>,
        key: &str,
        policy: &Policy,
        loader: F,
        fill: Option<Option<Seen>>,
    ) -> Result<Fetched<T>, E>
    where
        T: Value,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded<T>, E>>,
    {
        // What the fill will be conditional on, taken before the loader runs. Without it (Redis
        // failing) the value is served but not stored.
        let start: Option<LoadStart> = match fill {
            Some(seen) => match Box::pin(self.load_start(key, &policy.tags, seen)).await {
                Ok(start) => Some(start),
                Err(err) => {
                    tracing::debug!(cache = %self.inner.name, error = %err,
                        "could not read what the load starts from; its value will not be stored");
                    None
                }
            },
            None => None,
        };
        let (started_ms, started) = (
            start
                .as_ref()
                .map_or_else(|| self.load_stamp_ms(), |s| s.stamp_ms),
            Instant::now(),
        );
        let span = tracing::debug_span!("cache.load", cache = %self.inner.name, key = %super::key_hint(key));
        let result = loader().instrument(span).await;
        let took = started.elapsed();
        self.inner.counters.load(policy.door, took, result.is_ok());
        if let Some(observer) = policy.observer {
            observer.load(result.is_ok());
        }
        let loaded = match result {
            Ok(loaded) => loaded,
            Err(err) => {
                self.inner.refresh_failures.insert(key.to_owned(), ());
                if let Some(guard) = guard {
                    guard.finish(Outcome::Failed);
                }
                return Err(err);
            }
        };
        if !loaded.cacheable {
            if let Some(guard) = guard {
                guard.finish(Outcome::Failed);
            }
            return Ok(Fetched {
                value: loaded.value,
                origin: Origin::LoadedUnstored,
                timing: None,
            });
        }
        let detached = guard.as_ref().is_some_and(LeaderGuard::is_detached);
        let late_tags = loaded.tags.clone();
        let policy = effective_policy(policy, &loaded);
        let mut origin = Origin::LoadedUnstored;
        let timing = self.entry_timing(&policy, started_ms, took);
        if let (Some(start), false) = (&start, detached) {
            let fill = self.fill_entry(start, &loaded.value, &policy, timing, &late_tags);
            match Box::pin(fill).await {
                Ok(true) => origin = Origin::Loaded,
                Ok(false) => {}
                Err(err) => tracing::debug!(cache = %self.inner.name, error = %err,
                    "could not store loaded value"),
            }
            if policy.stampede == Stampede::Lock {
                self.announce_landed(&start.key).await;
            }
        }
        if let Some(guard) = guard {
            let shared = Shared {
                value: loaded.value.clone(),
                timing: Some(timing),
            };
            guard.finish(Outcome::Value(Arc::new(shared)));
        }
        Ok(Fetched {
            value: loaded.value,
            origin,
            timing: Some(timing),
        })
    }

    /// Takes the distributed lock of `key`, or waits for another process's value to land.
    async fn acquire_or_wait<T: Value>(
        &self,
        key: &str,
        policy: &Policy,
        hint: Option<&Timing>,
    ) -> LockWait<T> {
        let inner = &self.inner;
        let full_key = self.entry_key(key).await;
        let lock_ttl = lock::lock_ttl(policy, hint);
        let held = HeldLock {
            lock_key: inner.keys.lock(&full_key),
            token: lock::new_token(),
            ttl: lock_ttl,
        };
        let deadline = Instant::now() + policy.lock_wait;
        let mut signals = None;
        loop {
            let take = inner
                .store
                .set_if_absent(&held.lock_key, held.token.clone(), lock_ttl);
            match self.store_op(take).await {
                Ok(true) => return LockWait::Acquired(held),
                Ok(false) => {}
                Err(_) => return LockWait::Unavailable,
            }
            if signals.is_none() {
                inner.counters.lock_wait();
            }
            let rx = signals.get_or_insert_with(|| inner.landed.subscribe());
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return LockWait::TimedOut;
            }
            lock::wait_for_landing(rx, &full_key, remaining.min(lock::POLL_INTERVAL)).await;
            if let Lookup::Fresh { value, timing, .. } = self.lookup::<T>(key, policy).await {
                return LockWait::Landed(value, timing);
            }
        }
    }

    async fn release_lock(&self, held: &HeldLock) {
        let release = self
            .inner
            .store
            .delete_if_equals(&held.lock_key, &held.token);
        if let Err(err) = self.store_op(release).await {
            tracing::debug!(cache = %self.inner.name, error = %err, "lock release failed; it will expire");
        }
    }

    async fn announce_landed(&self, full_key: &str) {
        let publish = self
            .inner
            .store
            .publish(self.inner.landed.channel(), full_key);
        if let Err(err) = self.store_op(publish).await {
            tracing::debug!(cache = %self.inner.name, error = %err, "could not announce landed value");
        }
    }
}

/// Result of trying to take an entry's distributed lock.
enum LockWait<T> {
    Acquired(HeldLock),
    /// Another process stored the value while we waited.
    Landed(T, Timing),
    /// `lock_wait` passed: load without storing.
    TimedOut,
    /// Redis failed: load (and try to store) as if unlocked.
    Unavailable,
}

/// The policy with a loaded value's own TTL and extra tags applied.
fn effective_policy<'p, T>(policy: &'p Policy, loaded: &Loaded<T>) -> std::borrow::Cow<'p, Policy> {
    if loaded.ttl.is_none() && loaded.tags.is_empty() {
        return std::borrow::Cow::Borrowed(policy);
    }
    let mut policy = policy.clone();
    if let Some(ttl) = loaded.ttl {
        policy.ttl = ttl;
    }
    policy.tags.extend(loaded.tags.iter().cloned());
    std::borrow::Cow::Owned(policy)
}

/// Awaits a spawned leader task, re-raising a loader panic in this caller only.
async fn join_task<R>(task: tokio::task::JoinHandle<R>) -> R {
    match task.await {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        // Only happens while the runtime shuts down, when this caller is going away too.
        Err(err) => panic!("cache load task did not complete: {err}"),
    }
}

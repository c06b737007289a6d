//! The read-through engine shared by both front doors.
//!
//! ```text
//! lookup: L1 (decoded value) ──► store GET (one round trip) ──► decode ──► fresh? return
//!    │ miss / stale / corrupt / Redis failing
//!    ▼
//! single-flight: leader runs the loader ──► SET PX (hard expiry) + L1 ──► followers get the value
//! ```
//!
//! Two entry points share everything but how the leader runs the loader:
//! - `'static` loaders ([`Cache::get_or_fetch`]) run in a spawned task, so a cancelled caller does
//!   not cancel the load: it completes, is stored and reaches the followers.
//! - borrowing loaders ([`Cache::get_or_fetch_scoped`], used by the macro for `&self` methods and
//!   reference arguments) run in the calling task; if that caller is cancelled, a follower takes over.

use std::{convert::Infallible, future::Future, sync::Arc, time::Instant};

use serde::{de::DeserializeOwned, Serialize};

use super::{now_ms, Cache};
use crate::{
    envelope::Envelope,
    stampede::flight::{Join, LeaderGuard, Outcome},
    Policy, Stampede,
};

/// What one lookup found.
enum Lookup<T> {
    Fresh(T),
    Miss,
}

/// How a caller that lost its flight continues.
enum Next<T> {
    Done(T),
    /// The leader's loader failed: run our own loader, uncoalesced.
    LoadAlone,
    /// The leader vanished (cancelled or panicked): try to lead or follow again.
    Rejoin,
}

impl Cache {
    /// Returns the cached value of `key`, or runs `loader` on a miss, stores its value with
    /// `policy` and returns it.
    ///
    /// Concurrent misses of one key in this process share one load. When Redis fails (error,
    /// timeout, breaker open) the loader's value is returned anyway: this never fails because of the
    /// cache. The loader runs in its own task, so a caller that is cancelled does not cancel it.
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
        let infallible = move || async move { Ok::<T, Infallible>(loader().await) };
        match self.try_get_or_fetch(key, policy, infallible).await {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }

    /// Like [`get_or_fetch`](Cache::get_or_fetch) for fallible loaders: only `Ok` values are
    /// cached; an `Err` is returned to its caller and never stored.
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
        if let Lookup::Fresh(value) = self.lookup::<T>(key, true).await {
            return Ok(value);
        }
        loop {
            let guard = match self.join(key, policy) {
                None => return self.load_alone(key, policy, loader).await,
                Some(Join::Leader(guard)) => guard,
                Some(Join::Follower(follower)) => {
                    match self.follow::<T>(key, follower.wait().await).await {
                        Next::Done(value) => return Ok(value),
                        Next::LoadAlone => return self.load_alone(key, policy, loader).await,
                        Next::Rejoin => continue,
                    }
                }
            };
            let (cache, key, policy) = (self.clone(), key.to_owned(), policy.clone());
            let task = tokio::spawn(async move { cache.lead(guard, &key, &policy, loader).await });
            return match task.await {
                Ok(result) => result,
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                // Only happens while the runtime shuts down, when this caller is going away too.
                Err(err) => panic!("cache load task did not complete: {err}"),
            };
        }
    }

    /// Read-through with a loader that may borrow (not `'static`), e.g. from `&self`.
    ///
    /// Same single-flight as [`get_or_fetch`](Cache::get_or_fetch), but the load runs in the calling
    /// task; if that caller is cancelled, one of the waiting callers takes over with its own loader.
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
        let infallible = move || async move { Ok::<T, Infallible>(loader().await) };
        match self.try_get_or_fetch_scoped(key, policy, infallible).await {
            Ok(value) => value,
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
        if let Lookup::Fresh(value) = self.lookup::<T>(key, true).await {
            return Ok(value);
        }
        loop {
            match self.join(key, policy) {
                None => return self.load_alone(key, policy, loader).await,
                Some(Join::Leader(guard)) => return self.lead(guard, key, policy, loader).await,
                Some(Join::Follower(follower)) => {
                    match self.follow::<T>(key, follower.wait().await).await {
                        Next::Done(value) => return Ok(value),
                        Next::LoadAlone => return self.load_alone(key, policy, loader).await,
                        Next::Rejoin => continue,
                    }
                }
            }
        }
    }

    /// Looks `key` up in L1, then the store. Redis failures and undecodable entries are misses.
    async fn lookup<T>(&self, key: &str, count: bool) -> Lookup<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let inner = &self.inner;
        let now = now_ms();
        if let Some(value) = self.local_get::<T>(key, now) {
            inner.counters.local_hit();
            return Lookup::Fresh(value);
        }
        let full_key = inner.keys.entry(key);
        if let Ok(Some(bytes)) = self.store_op(inner.store.get(&full_key)).await {
            match Envelope::parse(&bytes) {
                Ok(envelope)
                    if envelope.timing.fresh_until_ms > now
                        && !inner
                            .tag_clock
                            .is_stale(envelope.tags(), envelope.timing.created_ms) =>
                {
                    match envelope.decode::<T>() {
                        Ok(value) => {
                            let ttl = envelope.timing.stale_until_ms.saturating_sub(now).max(1);
                            self.local_insert(
                                key,
                                &value,
                                envelope.timing,
                                envelope.tags(),
                                std::time::Duration::from_millis(ttl),
                            );
                            if count {
                                inner.counters.hit();
                            }
                            return Lookup::Fresh(value);
                        }
                        Err(why) => self.note_corrupt(key, why),
                    }
                }
                Ok(_stale_or_invalidated) => {}
                Err(why) => self.note_corrupt(key, why),
            }
        }
        if count {
            inner.counters.miss();
        }
        Lookup::Miss
    }

    /// Starts or joins the flight for `key`; `None` when the policy asks for no coalescing.
    fn join(&self, key: &str, policy: &Policy) -> Option<Join> {
        match policy.stampede {
            Stampede::None => None,
            _ => Some(self.inner.flights.join(key, &policy.tags)),
        }
    }

    /// Turns a finished flight into the follower's next step.
    async fn follow<T>(&self, key: &str, outcome: Outcome) -> Next<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        match outcome {
            Outcome::Value(value) => match value.downcast_ref::<T>() {
                Some(value) => {
                    self.inner.counters.coalesced();
                    Next::Done(value.clone())
                }
                // Same key read as a different type: this caller loads its own.
                None => Next::LoadAlone,
            },
            Outcome::Failed => Next::LoadAlone,
            Outcome::Abandoned | Outcome::Pending => match self.lookup::<T>(key, false).await {
                Lookup::Fresh(value) => Next::Done(value),
                Lookup::Miss => Next::Rejoin,
            },
        }
    }

    /// Runs the loader as the flight's leader, stores an `Ok` value, then releases the followers.
    /// Dropping this future before it finishes marks the flight abandoned (via the guard).
    async fn lead<T, E, F, Fut>(
        &self,
        guard: LeaderGuard,
        key: &str,
        policy: &Policy,
        loader: F,
    ) -> Result<T, E>
    where
        T: Serialize + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let (started_ms, started) = (now_ms(), Instant::now());
        let result = loader().await;
        let took = started.elapsed();
        self.inner.counters.load(took, result.is_ok());
        match &result {
            Ok(value) => {
                if !guard.is_detached() {
                    self.fill(key, policy, value, started_ms, took).await;
                }
                guard.finish(Outcome::Value(Arc::new(value.clone())));
            }
            Err(_) => guard.finish(Outcome::Failed),
        }
        result
    }

    /// Loads without coalescing (no flight) and stores an `Ok` value.
    async fn load_alone<T, E, F, Fut>(&self, key: &str, policy: &Policy, loader: F) -> Result<T, E>
    where
        T: Serialize + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let (started_ms, started) = (now_ms(), Instant::now());
        let result = loader().await;
        let took = started.elapsed();
        self.inner.counters.load(took, result.is_ok());
        if let Ok(value) = &result {
            self.fill(key, policy, value, started_ms, took).await;
        }
        result
    }

    /// Stores a freshly loaded value. Failures are logged and swallowed: the caller has its value.
    async fn fill<T>(
        &self,
        key: &str,
        policy: &Policy,
        value: &T,
        started_ms: u64,
        took: std::time::Duration,
    ) where
        T: Serialize + Clone + Send + Sync + 'static,
    {
        let result = match self.encode_entry(value, policy, started_ms, took) {
            Ok((bytes, timing)) => {
                self.write_entry(key, value, bytes, timing, &policy.tags)
                    .await
            }
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            tracing::debug!(cache = %self.inner.name, error = %err, "could not store loaded value");
        }
    }
}

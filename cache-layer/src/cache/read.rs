//! The read path: `get_or_fetch` and friends, `get`, and the HTTP layer's `fetch`.
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
//! Both kinds of front door share everything but where the leader runs the loader: `'static`
//! loaders ([`Cache::read_through`]) in a task of their own, borrowing ones
//! ([`Cache::read_through_scoped`]) in the calling task. The read path owns L1 reads and fills through
//! [`coherence`](super::coherence) (which says whether what is known locally may be served), the
//! store read, envelope decoding, single-flight, refresh and the distributed lock; storing a
//! loaded value goes through [`write`](super::write)'s `write_entry`.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::{coherence::UNKNOWN_EPOCH, write::LoadStart, Cache};
use crate::{
    envelope::{DecodeError, Envelope, Seen, Timing},
    l1::{EntryKey, FillAfter, L1Copy},
    stampede::{
        early,
        flight::{Follower, Join, LeaderGuard, Outcome},
        lock,
    },
    store::{LockToken, Store},
    util::{now_ms, FinishOnDrop},
    value::Value,
    Error, Policy, Stampede,
};

/// Which entries read from the store a caller can serve (see `Cache::take_entry`).
#[derive(Debug, Clone, Copy)]
enum Serve {
    /// Fresh ones only (`get`).
    FreshOnly,
    /// Stale ones within their grace period too (`get_or_fetch`, which refreshes them).
    FreshOrStale,
}

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

/// A loader of the read path: called once, it gives a future of the value (with its storage
/// decisions) or the caller's error. Implemented for every `FnOnce() -> impl Future<Output =
/// Result<Loaded<T>, E>>`; it may borrow, so it runs in the calling task
/// ([`Cache::read_through_scoped`]).
pub(crate) trait Loader<T> {
    /// What the loader fails with (returned to its caller, never stored).
    type Error;
    /// The load.
    type Fut: Future<Output = Result<Loaded<T>, Self::Error>>;
    /// Starts the load.
    fn load(self) -> Self::Fut;
}

impl<T, E, F, Fut> Loader<T> for F
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Loaded<T>, E>>,
{
    type Error = E;
    type Fut = Fut;

    fn load(self) -> Fut {
        self()
    }
}

/// A [`Loader`] that may run in a task of its own (`'static` and `Send`, and so are its future
/// and its error): what the spawning read path takes ([`Cache::read_through`], refreshes in the
/// background).
pub(crate) trait TaskLoader<T>:
    Loader<T, Fut: Send + 'static, Error: Send + 'static> + Send + 'static
{
}

impl<T, L> TaskLoader<T> for L where
    L: Loader<T, Fut: Send + 'static, Error: Send + 'static> + Send + 'static
{
}

/// Where a returned value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Fresh, from the in-process L1 tier.
    L1Hit,
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
    // Read by the HTTP front door (`Cache-Status`, `Age`) only.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) origin: Origin,
}

/// What a flight shares with its followers.
struct Shared<T> {
    value: T,
}

/// What one lookup found.
enum Lookup<T> {
    Fresh {
        value: T,
        timing: Timing,
        /// `L1Hit` or `Hit`.
        origin: Origin,
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
/// the lock) and what the key held (the conditional fill replaces only that; `None`: not read).
#[derive(Debug, Clone, Default)]
struct Prior {
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

/// What a lookup's result asks for next.
enum Step<T> {
    /// A fresh hit: answer it.
    Answer(Fetched<T>),
    /// A fresh hit due for an early refresh (`Stampede::Early`).
    RefreshEarly(Fetched<T>, Prior),
    /// A stale hit (within its grace period): refresh it.
    Refresh(Fetched<T>, Prior),
    /// A miss: load (the timing of an expired entry, if one was seen, hints the load time).
    Load(Prior),
}

impl<T> Lookup<T> {
    fn next_step(self) -> Step<T> {
        match self {
            Lookup::Fresh {
                value,
                timing,
                origin,
                refresh_early,
                seen,
            } => {
                let fresh = Fetched { value, origin };
                if refresh_early {
                    let prior = Prior {
                        hint: Some(timing),
                        seen,
                    };
                    Step::RefreshEarly(fresh, prior)
                } else {
                    Step::Answer(fresh)
                }
            }
            Lookup::Stale {
                value,
                timing,
                seen,
            } => {
                let stale = Fetched {
                    value,
                    origin: Origin::Stale,
                };
                let prior = Prior {
                    hint: Some(timing),
                    seen,
                };
                Step::Refresh(stale, prior)
            }
            Lookup::Miss { hint, seen } => Step::Load(Prior { hint, seen }),
        }
    }
}

/// How a miss takes part in its key's flight.
enum Part<T> {
    /// Lead it: load and share the value.
    Lead(LeaderGuard),
    /// The leader's value.
    Shared(Fetched<T>),
    /// Load without a flight.
    Alone,
    /// The leader took longer than the policy's lock wait: load without storing (the leader's
    /// result will be stored).
    AloneUnstored,
}

/// How a caller that lost its flight continues.
enum Next<T> {
    Done(Fetched<T>),
    /// The leader's loader failed or its value was not shareable: run our own, uncoalesced.
    LoadAlone,
    /// The leader vanished (cancelled or panicked): try to lead or follow again.
    Rejoin,
    /// The leader took longer than the policy's lock wait.
    LoadUnstored,
}

/// How long a failed refresh of a key keeps further refreshes of it from being attempted.
pub(crate) const REFRESH_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The body of both `read_through`s (they differ only in the loader's bounds and in which
/// `resolve` runs after a lookup that did not settle).
macro_rules! lookup_then {
    ($cache:ident, $key:ident, $policy:ident, $resolve:ident, $loader:ident) => {
        match $cache.lookup::<T>($key, $policy).await.settled() {
            Ok(value) => Ok(value),
            Err(found) => Box::pin($cache.$resolve(found, $key, $policy, $loader))
                .await
                .map(|fetched| fetched.value),
        }
    };
}

impl Cache {
    /// The engine behind the `'static` front doors: a lookup awaited inline (a hit returns from
    /// here without allocating), then, boxed, everything a miss, a stale hit or an early refresh
    /// needs (several KiB of future). A cancelled caller does not cancel the load (see `resolve`).
    pub(crate) async fn read_through<T: Value, L: TaskLoader<T>>(
        &self,
        key: &str,
        policy: &Policy,
        loader: L,
    ) -> Result<T, L::Error> {
        lookup_then!(self, key, policy, resolve, loader)
    }

    /// [`read_through`](Self::read_through) for borrowing loaders, which run in the calling task.
    pub(crate) async fn read_through_scoped<T: Value, L: Loader<T>>(
        &self,
        key: &str,
        policy: &Policy,
        loader: L,
    ) -> Result<T, L::Error> {
        lookup_then!(self, key, policy, resolve_scoped, loader)
    }

    /// The engine behind every `'static` front door: lookup, refresh, single-flight, lock, fill.
    // Called by the HTTP front door only (the others go through `get_or_fetch`'s own path).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) async fn fetch<T: Value, L: TaskLoader<T>>(
        &self,
        key: &str,
        policy: &Policy,
        loader: L,
    ) -> Result<Fetched<T>, L::Error> {
        let found = self.lookup::<T>(key, policy).await;
        self.resolve(found, key, policy, loader).await
    }

    /// What the `'static` front doors do after the lookup: the leader's load runs in the caller
    /// and moves to a task of its own if the caller is cancelled (`owned_load`), so a cancelled
    /// caller does not cancel the load; refreshes run in the background while every caller is
    /// answered at once.
    async fn resolve<T: Value, L: TaskLoader<T>>(
        &self,
        found: Lookup<T>,
        key: &str,
        policy: &Policy,
        loader: L,
    ) -> Result<Fetched<T>, L::Error> {
        match found.next_step() {
            Step::Answer(fresh) => Ok(fresh),
            Step::RefreshEarly(fresh, prior) => {
                self.refresh_in_background(key, policy, prior, loader);
                Ok(fresh)
            }
            Step::Refresh(stale, prior) => {
                let Some(soft) = policy.load_timeout else {
                    self.refresh_in_background(key, policy, prior, loader);
                    return Ok(stale);
                };
                // Give the refresh up to `soft`; it keeps running after we answer stale.
                let refreshed =
                    tokio::time::timeout(soft, self.refresh_and_wait(key, policy, prior, loader));
                Ok(match refreshed.await {
                    Ok(Some(fresh)) => fresh,
                    _ => stale,
                })
            }
            Step::Load(prior) => {
                self.load_missing(key, policy, loader, prior, |guard, loader, prior| {
                    FinishOnDrop::new(self.owned_load(guard, key, policy, loader, prior))
                })
                .await
            }
        }
    }

    /// What the borrowing front doors do after the lookup: the loader runs in the calling task; if
    /// that caller is cancelled, a follower takes over; a refresh runs in the caller that
    /// triggered it while the others get the stale value.
    async fn resolve_scoped<T: Value, L: Loader<T>>(
        &self,
        found: Lookup<T>,
        key: &str,
        policy: &Policy,
        loader: L,
    ) -> Result<Fetched<T>, L::Error> {
        match found.next_step() {
            Step::Answer(fresh) => Ok(fresh),
            // One caller refreshes early, inline; everyone else keeps the fresh value.
            Step::RefreshEarly(fresh, prior) => Ok(match self.lead_refresh(key, policy) {
                Ok(guard) => self
                    .load(Some(guard), key, policy, loader, prior)
                    .await
                    .unwrap_or(fresh),
                Err(_) => fresh,
            }),
            Step::Refresh(stale, prior) => {
                if self.refresh_throttled(key) {
                    return Ok(stale);
                }
                Ok(match self.lead_refresh(key, policy) {
                    Ok(guard) => {
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
                    Err(_) => stale,
                })
            }
            Step::Load(prior) => {
                self.load_missing(key, policy, loader, prior, |guard, loader, prior| {
                    self.load(Some(guard), key, policy, loader, prior)
                })
                .await
            }
        }
    }

    /// A miss, for both `resolve`s: takes part in the key's flight, then gets the leader's value,
    /// loads alone, or leads it with `lead` (the leader's load: finished in the background if its
    /// caller goes away, or tied to the caller).
    async fn load_missing<T, L, Lead>(
        &self,
        key: &str,
        policy: &Policy,
        loader: L,
        prior: Prior,
        lead: impl FnOnce(LeaderGuard, L, Prior) -> Lead,
    ) -> Result<Fetched<T>, L::Error>
    where
        T: Value,
        L: Loader<T>,
        Lead: Future<Output = Result<Fetched<T>, L::Error>>,
    {
        match self.take_part::<T>(key, policy).await {
            Part::Shared(fetched) => Ok(fetched),
            Part::Alone => self.load(None, key, policy, loader, prior).await,
            Part::AloneUnstored => {
                self.load_and_fill(None, key, policy, loader, Fill::Skip)
                    .await
            }
            Part::Lead(guard) => lead(guard, loader, prior).await,
        }
    }

    /// The leader's load of `key` as a future that owns what it needs: the miss path runs it in
    /// the caller inside [`FinishOnDrop`] (if the caller is cancelled, the rest moves to a task of
    /// its own and still stores the value and answers the followers; a loader panic unwinds into
    /// this caller only, as from a task); refreshes spawn it (dropping the handle leaves it
    /// running).
    fn owned_load<T: Value, L: TaskLoader<T>>(
        &self,
        guard: LeaderGuard,
        key: &str,
        policy: &Policy,
        loader: L,
        prior: Prior,
    ) -> impl Future<Output = Result<Fetched<T>, L::Error>> + Send + 'static {
        let (cache, key, policy) = (self.clone(), key.to_owned(), policy.clone());
        async move { cache.load(Some(guard), &key, &policy, loader, prior).await }
    }

    /// Leads the refresh of `key` (counted), or, when one is running, `Err` with a follower of it.
    fn lead_refresh(&self, key: &str, policy: &Policy) -> Result<LeaderGuard, Follower> {
        match self.inner.flights.join(key, &policy.tags) {
            Join::Leader(guard) => {
                self.inner.metrics.refresh();
                Ok(guard)
            }
            Join::Follower(follower) => Err(follower),
        }
    }

    /// A miss takes part in the key's flight: it leads it, gets the leader's value, or loads
    /// alone (no coalescing asked, or the leader's value is not shareable).
    async fn take_part<T: Value>(&self, key: &str, policy: &Policy) -> Part<T> {
        loop {
            match self.join(key, policy) {
                None => return Part::Alone,
                Some(Join::Leader(guard)) => return Part::Lead(guard),
                Some(Join::Follower(follower)) => {
                    match self.follow_within::<T>(key, policy, follower).await {
                        Next::Done(fetched) => return Part::Shared(fetched),
                        Next::LoadAlone => return Part::Alone,
                        Next::LoadUnstored => return Part::AloneUnstored,
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
        let mut l1_stale = None;
        if let Some((value, timing)) = self.inner.known.l1_lookup::<T>(key, now) {
            if timing.fresh_until_ms > now {
                return self.hit(policy, key, Origin::L1Hit, (value, timing), None);
            }
            l1_stale = Some((value, timing));
        }
        // Taken before the epoch and the entry are read: a replay clears a pending invalidation
        // only after Redis took it, so if none is pending now, what is read next is from after it.
        let covered = self.inner.known.pending_covers(key);
        // Steady state: resolved from what this process knows (no await).
        let full_key = match inner.known.entry_key(key, &inner.keys) {
            Some(full_key) => full_key,
            None => self.entry_key(key).await,
        };
        let mut hint = None;
        // The policy's tags whose versions this process does not know ride along with the GET
        // (one pipelined round trip): a hit needs them to be checked, a miss to start its load.
        let untrusted = self.inner.known.untrusted_tags(&policy.tags);
        let read = if full_key.version == UNKNOWN_EPOCH {
            // The namespace epoch could not be read: nothing under any epoch is trusted.
            Err(Error::BreakerOpen)
        } else if untrusted.is_empty() {
            self.read_entry(&full_key).await
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
            Ok(Some(_)) if covered => {}
            Ok(Some(bytes)) => match self
                .take_entry::<T>(key, &full_key, &bytes, now, Serve::FreshOrStale)
                .await
            {
                Ok(taken) => {
                    let fresh = taken.1.fresh_until_ms > now;
                    let origin = if fresh { Origin::Hit } else { Origin::Stale };
                    return self.hit(policy, key, origin, taken, seen);
                }
                Err(expired) => hint = expired,
            },
            Ok(None) => {}
            // Redis is failing: a stale L1 copy beats loading (stale-if-error).
            Err(_) => {
                if let Some(stale) = l1_stale {
                    return self.hit(policy, key, Origin::Stale, stale, None);
                }
            }
        }
        inner.metrics.miss(policy.door);
        if let Some(observer) = policy.observer {
            observer.miss();
        }
        Lookup::Miss { hint, seen }
    }

    /// The entry at `full_key` (one `GET`) through the breaker, counted: the leaves
    /// [`Cache::store_op`] is made of (`metrics`, `breaker`), composed here so that a store hit
    /// goes from this file to the store and back without a stop in `cache/mod.rs`.
    async fn read_entry(&self, full_key: &str) -> Result<Option<Vec<u8>>, Error> {
        let inner = &self.inner;
        let admitted = inner.metrics.redis_admit(&inner.breaker)?;
        let get = inner.store.get(full_key);
        let read = inner.metrics.traced(get).await;
        admitted.settle(&read);
        read
    }

    /// What an entry read from the store is worth at `now`, in one flow (each step a call that
    /// returns): `envelope.rs` parses it (timing and tags, no value yet); its validity comes from
    /// what this process knows (`l1.rs`, else the tag records are read: `coherence.rs`); unless it
    /// is past what the caller serves (`serve`: its freshness, or its grace period too)
    /// `envelope.rs` decodes the value and `l1.rs` mirrors it into L1.
    ///
    /// `Err` when nothing can be served, with the entry's timing when it has a valid one (a hint
    /// of its load time); a corrupt entry is noted, a tombstone is nothing.
    async fn take_entry<T>(
        &self,
        key: &str,
        full_key: &EntryKey,
        bytes: &[u8],
        now: u64,
        serve: Serve,
    ) -> Result<(T, Timing), Option<Timing>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let envelope = match Envelope::parse(bytes) {
            Ok(envelope) => envelope,
            Err(DecodeError::Deleted) => return Err(None),
            Err(why) => {
                self.note_corrupt(key, why);
                return Err(None);
            }
        };
        // `None`: an invalidation covers the entry (tags; the namespace is in the key).
        let timing = self.served_timing(&envelope, now).await.ok_or(None)?;
        let until = match serve {
            Serve::FreshOnly => timing.fresh_until_ms,
            Serve::FreshOrStale => timing.stale_until_ms,
        };
        if until <= now {
            return Err(Some(timing));
        }
        match envelope.decode::<T>() {
            Ok(value) => {
                let ttl = Duration::from_millis(timing.stale_until_ms.saturating_sub(now).max(1));
                let (tags, size) = (envelope.tag_versions(), envelope.payload_len());
                let known = &self.inner.known;
                let copy = L1Copy {
                    value: &value,
                    timing,
                    tags,
                    ttl,
                    serialized_len: size,
                };
                known.l1_fill(FillAfter::Read, full_key, copy);
                Ok((value, timing))
            }
            Err(why) => {
                self.note_corrupt(key, why);
                Err(Some(timing))
            }
        }
    }

    /// Reads the entry at `full_key` and the records of `tags` in one round trip, and takes the
    /// records in (missing ones repaired).
    async fn read_with_tags(
        &self,
        full_key: &str,
        tags: &[&str],
    ) -> Result<Option<Vec<u8>>, Error> {
        let inner = &self.inner;
        let trust = inner.known.trust.trust_now();
        let mut keys = Vec::with_capacity(tags.len() + 1);
        keys.push(full_key.to_owned());
        keys.extend(tags.iter().map(|t| inner.keys.tag(t)));
        let mut values = self.store_op(inner.store.get_many(&keys)).await?;
        if values.len() != keys.len() {
            return Err(Error::Config(
                "a multi-key read answered the wrong number of values".into(),
            ));
        }
        let records = values.split_off(1);
        if let Err(err) = self.learn_tag_records(tags, records, trust).await {
            tracing::debug!(cache = %inner.name, error = %err, "could not repair tag records");
        }
        Ok(values.pop().flatten())
    }

    /// `get`: a fresh value from L1 or the store, without loading.
    pub(crate) async fn read_fresh<T>(&self, key: &str) -> Result<Option<T>, Error>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let inner = &self.inner;
        if let Some(value) = inner.known.l1_get::<T>(key, now_ms()) {
            return Ok(Some(value));
        }
        // Before the epoch and the entry are read (see `lookup`).
        let covered = inner.known.pending_covers(key);
        let full_key = match inner.known.entry_key(key, &inner.keys) {
            Some(full_key) => full_key,
            None => match self.entry_key_checked(key).await {
                Ok(full_key) => full_key,
                Err((_, Error::BreakerOpen)) => return Ok(None),
                Err((_, err)) => return Err(err),
            },
        };
        let bytes = match self.read_entry(&full_key).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) | Err(Error::BreakerOpen) => return Ok(None),
            Err(err) => return Err(err),
        };
        if covered {
            return Ok(None);
        }
        let taken = self.take_entry(key, &full_key, &bytes, now_ms(), Serve::FreshOnly);
        Ok(taken.await.ok().map(|(value, _)| value))
    }

    /// The timing to serve an entry read from the store with, or `None` when an invalidation
    /// covers it: decided from what this process knows ([`crate::l1::Knowledge::known_timing`]),
    /// else after reading the tag records it does not know (boxed: a hit in steady state never
    /// takes that path).
    async fn served_timing(&self, envelope: &Envelope<'_>, now: u64) -> Option<Timing> {
        let known = self.inner.known.known_timing(
            envelope.timing,
            envelope.tags(),
            envelope.tag_versions(),
            now,
        );
        match known {
            Ok(timing) => timing,
            Err(pending) => Box::pin(self.unknown_timing(envelope, pending, now)).await,
        }
    }

    /// A hit the lookup answers with: `origin` says which (fresh from L1 or the store, or stale),
    /// counted as such.
    fn hit<T>(
        &self,
        policy: &Policy,
        key: &str,
        origin: Origin,
        (value, timing): (T, Timing),
        seen: Option<Seen>,
    ) -> Lookup<T> {
        let metrics = &self.inner.metrics;
        match origin {
            Origin::L1Hit => metrics.l1_hit(policy.door),
            Origin::Hit => metrics.hit(policy.door),
            _ => metrics.stale_hit(policy.door),
        }
        self.observe_hit(policy, key);
        if origin == Origin::Stale {
            return Lookup::Stale {
                value,
                timing,
                seen,
            };
        }
        Lookup::Fresh {
            refresh_early: self.early_refresh_due(policy, &timing),
            value,
            timing,
            origin,
            seen,
        }
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
    fn refresh_in_background<T: Value, L: TaskLoader<T>>(
        &self,
        key: &str,
        policy: &Policy,
        prior: Prior,
        loader: L,
    ) {
        if self.refresh_throttled(key) {
            return;
        }
        if let Ok(guard) = self.lead_refresh(key, policy) {
            drop(tokio::spawn(
                self.owned_load(guard, key, policy, loader, prior),
            ));
        }
    }

    /// Refreshes `key` (or joins the running refresh) and waits for the fresh value; `None` when
    /// the refresh failed or is throttled. Dropping this future leaves the refresh running.
    async fn refresh_and_wait<T: Value, L: TaskLoader<T>>(
        &self,
        key: &str,
        policy: &Policy,
        prior: Prior,
        loader: L,
    ) -> Option<Fetched<T>> {
        if self.refresh_throttled(key) {
            return None;
        }
        match self.lead_refresh(key, policy) {
            Ok(guard) => {
                match tokio::spawn(self.owned_load(guard, key, policy, loader, prior)).await {
                    Ok(Ok(fetched)) => Some(fetched),
                    _ => None,
                }
            }
            Err(follower) => match self.follow_within::<T>(key, policy, follower).await {
                Next::Done(fetched) => Some(fetched),
                Next::LoadAlone | Next::LoadUnstored | Next::Rejoin => None,
            },
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
        follower: Follower,
    ) -> Next<T> {
        match tokio::time::timeout(policy.lock_wait, follower.wait()).await {
            Ok(outcome) => self.follow::<T>(key, policy, outcome).await,
            Err(_) => {
                self.inner.metrics.lock_timeout();
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
                    self.inner.metrics.coalesced(policy.door);
                    Next::Done(Fetched {
                        value: shared.value.clone(),
                        origin: Origin::Coalesced,
                    })
                }
                // Same key read as a different type: this caller loads its own.
                None => Next::LoadAlone,
            },
            Outcome::Failed => Next::LoadAlone,
            // Boxed: a leader that vanished is rare, and an inline lookup would be part of every
            // miss's future.
            Outcome::Abandoned | Outcome::Running => {
                match Box::pin(self.lookup::<T>(key, policy)).await {
                    Lookup::Fresh { value, .. } => Next::Done(Fetched {
                        value,
                        origin: Origin::Hit,
                    }),
                    _ => Next::Rejoin,
                }
            }
        }
    }

    /// Loads `key` as the flight's leader (or alone), honouring `Stampede::Lock`, stores a
    /// cacheable value, then releases the followers. Dropping this future before it finishes
    /// marks the flight abandoned (via the guard) so a follower takes over.
    async fn load<T: Value, L: Loader<T>>(
        &self,
        guard: Option<LeaderGuard>,
        key: &str,
        policy: &Policy,
        loader: L,
        prior: Prior,
    ) -> Result<Fetched<T>, L::Error> {
        if policy.stampede != Stampede::Lock || !self.inner.store.is_shared() {
            return self
                .load_and_fill(guard, key, policy, loader, Fill::Store(prior.seen))
                .await;
        }
        match self
            .acquire_or_wait::<T>(key, policy, prior.hint.as_ref())
            .await
        {
            LockWait::Acquired(held, ttl) => {
                // Boxed: the lock-holding path is rare, and its state stays off the stack of
                // recursive cached calls.
                let fill = Fill::Store(prior.seen);
                Box::pin(self.load_holding(guard, key, policy, loader, fill, (held, ttl))).await
            }
            LockWait::Landed(value) => {
                if let Some(guard) = guard {
                    guard.finish(|| {
                        Outcome::Value(Arc::new(Shared {
                            value: value.clone(),
                        }))
                    });
                }
                Ok(Fetched {
                    value,
                    origin: Origin::Coalesced,
                })
            }
            LockWait::TimedOut => {
                self.inner.metrics.lock_timeout();
                tracing::debug!(cache = %self.inner.name, "lock wait timed out; loading without storing");
                self.load_and_fill(guard, key, policy, loader, Fill::Skip)
                    .await
            }
            LockWait::Unavailable => {
                self.load_and_fill(guard, key, policy, loader, Fill::Store(prior.seen))
                    .await
            }
        }
    }

    /// Runs the load while holding the lock `held` (taken for its TTL), renewing it (checked by
    /// token) every third of the TTL so nobody takes it from a slow load, then releases it.
    async fn load_holding<T: Value, L: Loader<T>>(
        &self,
        guard: Option<LeaderGuard>,
        key: &str,
        policy: &Policy,
        loader: L,
        fill: Fill,
        (held, ttl): (LockToken, Duration),
    ) -> Result<Fetched<T>, L::Error> {
        let load = self.load_and_fill(guard, key, policy, loader, fill);
        let mut load = std::pin::pin!(load);
        let result = tokio::select! {
            biased;
            result = &mut load => result,
            () = self.keep_lock(&held, ttl) => load.await,
        };
        self.release_lock(&held).await;
        result
    }

    /// Renews `held` every third of `ttl` for as long as its holder still holds it; returns when
    /// a renewal fails (lost, or Redis failing), never otherwise.
    async fn keep_lock(&self, held: &LockToken, ttl: Duration) {
        loop {
            tokio::time::sleep(ttl / 3).await;
            match self.store_op(self.inner.store.lock_renew(held, ttl)).await {
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

    /// Runs the loader, stores a cacheable value (unless `fill` says to skip it), and finishes the
    /// flight.
    async fn load_and_fill<T: Value, L: Loader<T>>(
        &self,
        guard: Option<LeaderGuard>,
        key: &str,
        policy: &Policy,
        loader: L,
        fill: Fill,
    ) -> Result<Fetched<T>, L::Error> {
        // What the fill will be conditional on, taken before the loader runs. Without it (Redis
        // failing) the value is served but not stored.
        let start: Option<LoadStart> = match fill {
            Fill::Store(seen) => match Box::pin(self.load_start(key, &policy.tags, seen)).await {
                Ok(start) => Some(start),
                Err(err) => {
                    tracing::debug!(cache = %self.inner.name, error = %err,
                        "could not read what the load starts from; its value will not be stored");
                    None
                }
            },
            Fill::Skip => None,
        };
        let (started_ms, started) = (
            start
                .as_ref()
                .map_or_else(|| self.load_stamp_ms(), |s| s.stamp_ms),
            Instant::now(),
        );
        // Made only while a subscriber takes DEBUG spans (as the Redis span): building it formats
        // the key's hash, a few hundred instructions per load for a span nobody records.
        let span = if tracing::level_filters::LevelFilter::current() < tracing::Level::DEBUG {
            tracing::Span::none()
        } else {
            tracing::debug_span!("cache.load", cache = %self.inner.name, key = %super::key_hint(key))
        };
        let result = loader.load().instrument(span).await;
        let took = started.elapsed();
        self.inner.metrics.load(policy.door, took, result.is_ok());
        if let Some(observer) = policy.observer {
            observer.load(result.is_ok());
        }
        let loaded = match result {
            Ok(loaded) => loaded,
            Err(err) => {
                self.inner.refresh_failures.insert(key.to_owned(), ());
                if let Some(guard) = guard {
                    guard.finish(|| Outcome::Failed);
                }
                return Err(err);
            }
        };
        if !loaded.cacheable {
            if let Some(guard) = guard {
                guard.finish(|| Outcome::Failed);
            }
            return Ok(Fetched {
                value: loaded.value,
                origin: Origin::LoadedUnstored,
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
                // Boxed: only `Stampede::Lock` announces, and the publish would otherwise be part
                // of every load's future.
                Box::pin(self.announce_landed(&start.key)).await;
            }
        }
        if let Some(guard) = guard {
            let value = &loaded.value;
            guard.finish(|| {
                Outcome::Value(Arc::new(Shared {
                    value: value.clone(),
                }))
            });
        }
        Ok(Fetched {
            value: loaded.value,
            origin,
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
        let held = LockToken {
            key: inner.keys.lock(&full_key),
            token: lock::new_token(),
        };
        let lock_ttl = lock::lock_ttl(policy, hint);
        let deadline = Instant::now() + policy.lock_wait;
        let mut signals = None;
        loop {
            let take = inner.store.lock_acquire(&held, lock_ttl);
            match self.store_op(take).await {
                Ok(true) => return LockWait::Acquired(held, lock_ttl),
                Ok(false) => {}
                Err(_) => return LockWait::Unavailable,
            }
            if signals.is_none() {
                inner.metrics.lock_wait();
            }
            let rx = signals.get_or_insert_with(|| inner.landed.subscribe());
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return LockWait::TimedOut;
            }
            lock::wait_for_landing(rx, &full_key, remaining.min(lock::POLL_INTERVAL)).await;
            if let Lookup::Fresh { value, .. } = self.lookup::<T>(key, policy).await {
                return LockWait::Landed(value);
            }
        }
    }

    async fn release_lock(&self, held: &LockToken) {
        let release = self.inner.store.lock_release(held);
        if let Err(err) = self.store_op(release).await {
            tracing::debug!(cache = %self.inner.name, error = %err, "lock release failed; it will expire");
        }
    }

    async fn announce_landed(&self, full_key: &str) {
        let publish = self
            .inner
            .store
            .publish(self.inner.landed.channel(), full_key.as_bytes());
        if let Err(err) = self.store_op(publish).await {
            tracing::debug!(cache = %self.inner.name, error = %err, "could not announce landed value");
        }
    }
}

/// Whether a loaded value is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fill {
    /// Store it (and mirror it into L1), if the key still holds what the lookup saw (`None`: not
    /// read; the load reads it before it starts).
    Store(Option<Seen>),
    /// Return it without storing: the lock wait timed out, another holder may be storing.
    Skip,
}

/// Result of trying to take an entry's distributed lock.
enum LockWait<T> {
    /// Taken, for this TTL.
    Acquired(LockToken, Duration),
    /// Another process stored the value while we waited.
    Landed(T),
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

//! Direct writes and invalidation: `get`, `set`, `delete`, `invalidate_tag(s)`, `expire_tag`,
//! `invalidate_namespace`, plus what the engine needs to honour them on every read: the versioned
//! entry key, the validity of an entry's tags, and the L1 tier's checks.
//!
//! See the [`tags`](crate::tags) module for the model (tag times vs. load starts, clock skew) and
//! [`bus`](crate::bus) for how other instances learn about changes.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Serialize};

use super::Cache;
use crate::{
    bus::Message,
    envelope::{Envelope, Timing},
    local::LocalEntry,
    store::{NamespaceBump, Store, TagField},
    tags::{TagTimes, Trust, Validity},
    util::{self, now_ms},
    Error, Policy,
};

/// Invalidations Redis did not take (breaker open, timeout, lost `PUBLISH`): this process honours
/// them at once; they are replayed when the breaker closes or the bus resubscribes, so the other
/// instances (and this one, once its local record is gone) follow. Bounded: past
/// [`MAX_PENDING`] entries the replay becomes one namespace bump, which covers everything.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    hard: std::collections::BTreeSet<String>,
    soft: std::collections::BTreeSet<String>,
    keys: std::collections::BTreeSet<String>,
    namespace: bool,
}

const MAX_PENDING: usize = 10_000;

impl Pending {
    fn is_empty(&self) -> bool {
        !self.namespace && self.hard.is_empty() && self.soft.is_empty() && self.keys.is_empty()
    }

    fn len(&self) -> usize {
        self.hard.len() + self.soft.len() + self.keys.len()
    }

    fn overflowed(&mut self) {
        if self.len() > MAX_PENDING {
            *self = Pending {
                namespace: true,
                ..Pending::default()
            };
        }
    }
}

/// The Redis key of an entry, resolved with the current namespace version, plus what an L1 fill
/// after reading it needs (derefs to the Redis key).
#[derive(Debug, Clone)]
pub(crate) struct EntryKey {
    redis: String,
    version: u64,
    /// What an L1 fill needs, only when there is an L1 tier (no allocation otherwise): the
    /// caller's key and the eviction ticket taken before the read (see [`crate::bus::Tickets`]).
    local: Option<(String, u64)>,
}

impl std::ops::Deref for EntryKey {
    type Target = str;

    fn deref(&self) -> &str {
        &self.redis
    }
}

impl std::fmt::Display for EntryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redis)
    }
}

impl Cache {
    // ----- what the engine calls on every read and fill -------------------------------------

    /// The Redis key of `key` under the current namespace version. In steady state this is a
    /// local lookup; the first call (and calls after the bus was down for longer than its fallback
    /// TTL) read the version with one `GET`. The first call also starts the bus.
    pub(crate) async fn entry_key(&self, key: &str) -> EntryKey {
        let local = self.inner.local.as_ref().map(|_| {
            let ticket = self.inner.bus.tickets.ticket(key);
            (key.to_owned(), ticket)
        });
        // Steady state: no await at all. The refresh is boxed so this future (nested in every
        // lookup) stays small — deep recursion through cached fns runs on the caller's stack.
        let version = match self.trusted_version() {
            Some(version) => version,
            None => Box::pin(self.namespace_version()).await,
        };
        EntryKey {
            redis: self.inner.keys.entry(key, version),
            version,
            local,
        }
    }

    /// The `created_ms` stamp for a load starting now: a lower bound of the Redis clock, so a
    /// load that starts before an invalidation always compares as older than it.
    pub(crate) fn load_stamp_ms(&self) -> u64 {
        self.inner.clock.lower_ms()
    }

    /// The timing to serve an entry with, or `None` when an invalidation covers it. A soft-expired
    /// entry (`expire_tag`) comes back with its freshness ended, so it is served only under its
    /// `stale` grace period while it is refreshed.
    ///
    /// `now` is the caller's notion of the current time (its freshness checks use the same value).
    pub(crate) async fn current_timing(&self, envelope: &Envelope<'_>, now: u64) -> Option<Timing> {
        let created_ms = envelope.timing.created_ms;
        let validity = match self.local_validity(envelope.tags(), created_ms) {
            Some(validity) => validity,
            None => Box::pin(self.entry_validity(envelope.tags(), created_ms)).await,
        };
        served_timing(envelope.timing, validity, now)
    }

    /// Whether the tags of an entry created at `created_ms` were invalidated or expired since.
    /// Tag times not known locally (or no longer trusted) are fetched in one round trip; if that
    /// fails the entry is treated as invalid.
    pub(crate) async fn entry_validity<'a>(
        &self,
        tags: impl IntoIterator<Item = &'a str>,
        created_ms: u64,
    ) -> Validity {
        let mut verdict = Validity::Valid;
        let mut missing: Vec<&str> = Vec::new();
        for tag in tags {
            match self.inner.tag_book.get(tag) {
                Some(record) if self.inner.bus.is_trusted(record.trust) => {
                    verdict = verdict.and(Validity::of(record.times, created_ms));
                }
                _ => missing.push(tag),
            }
        }
        if missing.is_empty() || verdict == Validity::Invalid {
            return verdict;
        }
        match self.fetch_tags(&missing).await {
            Ok(times) => times
                .into_iter()
                .fold(verdict, |v, t| v.and(Validity::of(t, created_ms))),
            Err(err) => {
                tracing::debug!(cache = %self.inner.name, error = %err,
                    "could not read tag times; treating the entry as invalidated");
                Validity::Invalid
            }
        }
    }

    /// The validity of an entry from local knowledge only; `None` if a tag's times are unknown or
    /// no longer trusted.
    fn local_validity<'a>(
        &self,
        tags: impl IntoIterator<Item = &'a str>,
        created_ms: u64,
    ) -> Option<Validity> {
        let mut verdict = Validity::Valid;
        for tag in tags {
            let record = self.inner.tag_book.get(tag)?;
            if !self.inner.bus.is_trusted(record.trust) {
                return None;
            }
            verdict = verdict.and(Validity::of(record.times, created_ms));
        }
        Some(verdict)
    }

    /// Reads the times of `tags` (one pipelined round trip on Redis) and remembers them.
    async fn fetch_tags(&self, tags: &[&str]) -> Result<Vec<TagTimes>, Error> {
        let inner = &self.inner;
        let trust = inner.bus.trust_now();
        let keys: Vec<String> = tags.iter().map(|tag| inner.keys.tag(tag)).collect();
        let times = self.store_op(inner.store.tag_times(&keys)).await?;
        for (tag, times) in tags.iter().zip(&times) {
            inner.tag_book.merge(tag, *times, trust);
        }
        Ok(times)
    }

    /// The namespace version if it needs no refresh (and the bus is running).
    fn trusted_version(&self) -> Option<u64> {
        let inner = &self.inner;
        let record = inner.namespace.get();
        let trusted = !inner.bus.is_remote()
            || (inner.bus.is_started() && record.trust.is_some_and(|t| inner.bus.is_trusted(t)));
        trusted.then_some(record.version)
    }

    /// The namespace version, refreshed from the store when the cached one is not trusted.
    async fn namespace_version(&self) -> u64 {
        let inner = &self.inner;
        if !inner.bus.is_remote() {
            return inner.namespace.get().version;
        }
        let unreachable = inner.bus.ensure_started(self).await;
        let record = inner.namespace.get();
        if record.trust.is_some_and(|t| inner.bus.is_trusted(t)) {
            return record.version;
        }
        if unreachable {
            // The bus just failed to connect: do not spend a second attempt of this operation on
            // the version; keep the known one for the fallback TTL (trusted by time only).
            inner.namespace.merge(
                record.version,
                0,
                Trust {
                    generation: 0,
                    at: Instant::now(),
                },
            );
            return record.version;
        }
        // One refresh at a time; the others wait for it and use its result.
        let _refreshing = inner.namespace.refresh.lock().await;
        let record = inner.namespace.get();
        if record.trust.is_some_and(|t| inner.bus.is_trusted(t)) {
            return record.version;
        }
        let trust = inner.bus.trust_now();
        let version_key = inner.keys.version();
        match self
            .store_op(inner.store.namespace_version(&version_key))
            .await
        {
            Ok(version) => {
                self.learn_namespace(version, None, trust);
            }
            Err(err) => {
                // Keep the last known version for the fallback TTL instead of asking again on
                // every operation: while Redis fails, each operation costs one attempt, not two.
                tracing::debug!(cache = %inner.name, error = %err,
                    "could not read the namespace version; using the last known one");
                // Trusted by time only (generation 0), even if the bus is up: we never read it.
                let known = inner.namespace.get().version;
                let retry_later = Trust {
                    generation: 0,
                    at: Instant::now(),
                };
                inner.namespace.merge(known, 0, retry_later);
            }
        }
        inner.namespace.get().version
    }

    /// Takes in a namespace version (from the store, a bus message or our own bump). When it moves
    /// forward, loads in flight are detached and L1 is emptied.
    fn learn_namespace(&self, version: u64, bumped_ms: Option<u64>, trust: Trust) {
        let inner = &self.inner;
        let known = inner.namespace.get().version;
        // Learned without a bump time (read from the store): assume it happened just now, so no
        // load that started earlier is stored under the new version.
        let bumped_ms = match bumped_ms {
            Some(at) => at,
            None if version > known => inner.clock.upper_ms(),
            None => 0,
        };
        if inner.namespace.merge(version, bumped_ms, trust) {
            inner.flights.detach_all();
            inner.bus.tickets.bump_all();
            if let Some(local) = &inner.local {
                local.clear();
            }
        }
    }

    /// Measures the offset to the Redis clock (best of three `TIME` round trips).
    pub(crate) async fn measure_clock(&self) {
        let store = &self.inner.store;
        if !store.is_shared() {
            return;
        }
        for _ in 0..3 {
            let sent = Instant::now();
            match store.server_time().await {
                Ok(time) => {
                    let received = Instant::now();
                    let redis_us = u64::try_from(time.as_micros()).unwrap_or(u64::MAX);
                    self.inner.clock.record(sent, received, redis_us);
                }
                Err(_) => return,
            }
        }
        tracing::debug!(cache = %self.inner.name, error_ms = ?self.inner.clock.error_ms(),
            "measured the offset to the redis clock");
    }

    /// The bus (re)subscribed: anything learned before may have missed messages. Invalidations
    /// Redis missed meanwhile are replayed.
    pub(crate) fn on_bus_subscribed(&self) {
        self.forget_local();
        self.replay_pending();
    }

    /// The breaker closed again: Redis was skipped for a while, so L1 starts over, and the
    /// invalidations Redis missed meanwhile are replayed.
    pub(crate) fn breaker_closed(&self) {
        self.forget_local();
        self.replay_pending();
    }

    fn forget_local(&self) {
        self.inner.bus.tickets.bump_all();
        if let Some(local) = &self.inner.local {
            local.clear();
        }
    }

    /// Applies another instance's message.
    pub(crate) fn apply_bus_message(&self, message: Message) {
        let inner = &self.inner;
        let trust = inner.bus.trust_now();
        for key in &message.keys {
            inner.flights.detach_key(key);
            inner.bus.tickets.bump(key);
            if let Some(local) = &inner.local {
                local.remove(key);
            }
        }
        for (tag, hard_ms, soft_ms) in &message.tags {
            let before = inner.tag_book.get(tag).map(|r| r.times.hard_ms);
            let times = TagTimes {
                hard_ms: *hard_ms,
                soft_ms: *soft_ms,
            };
            inner.tag_book.merge(tag, times, trust);
            if before.is_none_or(|before| *hard_ms > before) && *hard_ms > 0 {
                inner.flights.detach_tag(tag);
            }
        }
        if let Some((version, bumped_ms)) = message.namespace {
            self.learn_namespace(version, Some(bumped_ms), trust);
        }
    }

    /// Tells the other instances (best effort is not enough: an instance whose bus is up trusts
    /// its cached tag times, so a lost message is an error for the caller).
    async fn publish(&self, message: Message) -> Result<(), Error> {
        let inner = &self.inner;
        if !inner.bus.is_remote() {
            return Ok(());
        }
        let message = Message {
            origin: inner.bus.origin,
            ..message
        };
        let payload = serde_json::to_string(&message).map_err(|e| Error::Encode(e.to_string()))?;
        self.store_op(inner.store.publish(inner.bus.channel(), payload.as_bytes()))
            .await
    }

    // ----- L1 -----------------------------------------------------------------------------------

    /// A fresh L1 value of type `T`, if the tier is enabled and holds one.
    pub(crate) fn local_get<T: Clone + 'static>(&self, key: &str, now: u64) -> Option<T> {
        self.local_lookup(key, now)
            .filter(|(_, timing)| timing.fresh_until_ms > now)
            .map(|(value, _)| value)
    }

    /// An L1 value of type `T` that no invalidation covers (fresh or within its grace period).
    /// An L1 hit makes no Redis call: the namespace version and tag times are checked against what
    /// this process knows; when it does not know them (or the bus is down past its fallback TTL)
    /// this is a miss and the caller reads Redis, which refreshes that knowledge.
    pub(crate) fn local_lookup<T: Clone + 'static>(
        &self,
        key: &str,
        now: u64,
    ) -> Option<(T, Timing)> {
        let inner = &self.inner;
        let local = inner.local.as_ref()?;
        let entry = local.get(key)?;
        if entry.timing.stale_until_ms <= now {
            return None;
        }
        if !inner.bus.l1_trusted(entry.inserted) {
            local.remove(key);
            return None;
        }
        let namespace = inner.namespace.get();
        let namespace_trusted =
            !inner.bus.is_remote() || namespace.trust.is_some_and(|t| inner.bus.is_trusted(t));
        if entry.version != namespace.version || !namespace_trusted {
            return None;
        }
        let validity = self.local_validity(
            entry.tags.iter().map(String::as_str),
            entry.timing.created_ms,
        )?;
        let timing = served_timing(entry.timing, validity, now)?;
        let value = entry.value.downcast_ref::<T>()?.clone();
        Some((value, timing))
    }

    /// Mirrors a value read from (or written to) `key` into L1, unless an eviction of that key
    /// happened since the key was resolved (the value may be the one the eviction was about).
    pub(crate) fn local_insert<T: Clone + Send + Sync + 'static>(
        &self,
        key: &EntryKey,
        value: &T,
        timing: Timing,
        tags: impl IntoIterator<Item = impl AsRef<str>>,
        ttl: Duration,
    ) {
        let inner = &self.inner;
        let (Some(local), Some((user_key, ticket))) = (&inner.local, &key.local) else {
            return;
        };
        if inner.bus.tickets.ticket(user_key) != *ticket {
            return;
        }
        let now = Instant::now();
        let entry = LocalEntry {
            value: Arc::new(value.clone()),
            timing,
            tags: tags.into_iter().map(|t| t.as_ref().to_owned()).collect(),
            expires_at: now + inner.bus.l1_ttl(ttl),
            inserted: now,
            version: key.version,
        };
        local.insert(user_key, entry);
    }

    // ----- writes -------------------------------------------------------------------------------

    /// Writes an encoded entry to the store (TTL = its hard expiry, capped by the tag TTL for
    /// tagged entries) and mirrors it into L1. A value whose load started before a namespace bump
    /// or an invalidation of one of its tags (as far as this process knows) is not stored.
    pub(crate) async fn write_entry<T: Clone + Send + Sync + 'static>(
        &self,
        key: &str,
        value: &T,
        bytes: Vec<u8>,
        timing: Timing,
        tags: &[String],
    ) -> Result<(), Error> {
        let inner = &self.inner;
        let full_key = self.entry_key(key).await;
        if timing.created_ms <= inner.namespace.get().bumped_ms
            || self.local_validity(tags.iter().map(String::as_str), timing.created_ms)
                == Some(Validity::Invalid)
        {
            tracing::debug!(cache = %inner.name, "an invalidation raced this load; not storing it");
            return Ok(());
        }
        let mut ttl = Duration::from_millis(timing.stale_until_ms.saturating_sub(now_ms()).max(1));
        if !tags.is_empty() {
            // A tag key must outlive every entry that carries the tag (see `tags`).
            ttl = ttl.min(inner.tag_ttl);
        }
        self.local_insert(&full_key, value, timing, tags, ttl);
        self.store_op(inner.store.set(&full_key, bytes, ttl)).await
    }

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
        if let Some(value) = self.local_get::<T>(key, now_ms()) {
            return Ok(Some(value));
        }
        let full_key = self.entry_key(key).await;
        let bytes = match self.store_op(self.inner.store.get(&full_key)).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) | Err(Error::BreakerOpen) => return Ok(None),
            Err(err) => return Err(err),
        };
        let envelope = match Envelope::parse(&bytes) {
            Ok(envelope) => envelope,
            Err(why) => {
                self.note_corrupt(key, why);
                return Ok(None);
            }
        };
        let now = now_ms();
        let Some(timing) = self.current_timing(&envelope, now).await else {
            return Ok(None);
        };
        if timing.fresh_until_ms <= now {
            return Ok(None);
        }
        match envelope.decode::<T>() {
            Ok(value) => {
                let ttl = Duration::from_millis(timing.stale_until_ms.saturating_sub(now).max(1));
                self.local_insert(&full_key, &value, timing, envelope.tags(), ttl);
                Ok(Some(value))
            }
            Err(why) => {
                self.note_corrupt(key, why);
                Ok(None)
            }
        }
    }

    /// Stores `value` under `key` with `policy` (write-through after a database write), and tells
    /// the other instances to drop their L1 copies. Loads of `key` in flight are detached.
    ///
    /// When the write fails the key is deleted (best effort) and the error returned, so readers
    /// fall back to the source instead of a value that may be out of date. While the breaker is
    /// open this is a no-op (only this process's L1 is updated).
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
        self.inner.flights.detach_key(key);
        let (bytes, timing) =
            self.encode_entry(value, policy, self.load_stamp_ms(), Duration::ZERO)?;
        let written = self
            .write_entry(key, value, bytes, timing, &policy.tags)
            .await;
        match written {
            Ok(()) => {
                self.publish(Message {
                    keys: vec![key.to_owned()],
                    ..Message::default()
                })
                .await
            }
            Err(Error::BreakerOpen) => Ok(()),
            Err(err) => {
                self.inner.bus.tickets.bump(key);
                if let Some(local) = &self.inner.local {
                    local.remove(key);
                }
                let full_key = self.entry_key(key).await;
                let _ = self.store_op(self.inner.store.delete(&full_key)).await;
                let _ = self
                    .publish(Message {
                        keys: vec![key.to_owned()],
                        ..Message::default()
                    })
                    .await;
                Err(err)
            }
        }
    }

    /// Removes `key`; `Ok(true)` when an entry was removed. Loads of `key` already in flight are
    /// detached (their results are not stored and later callers start a new load), here and, via
    /// the bus, in the other instances, which also drop their L1 copies.
    ///
    /// A load in *another* process that finishes before the bus message reaches it can still
    /// store its (older) value; tags close that window (see
    /// [`invalidate_tag`](Cache::invalidate_tag)).
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
        let inner = &self.inner;
        inner.counters.invalidation();
        inner.flights.detach_key(key);
        inner.bus.tickets.bump(key);
        if let Some(local) = &inner.local {
            local.remove(key);
        }
        let full_key = self.entry_key(key).await;
        let removed = self.store_op(inner.store.delete(&full_key)).await;
        let published = match &removed {
            Ok(_) => {
                self.publish(Message {
                    keys: vec![key.to_owned()],
                    ..Message::default()
                })
                .await
            }
            Err(_) => Ok(()),
        };
        if removed.is_err() || published.is_err() {
            self.remember_pending(|pending| {
                pending.keys.insert(key.to_owned());
            });
        }
        match (removed, published) {
            (Err(Error::BreakerOpen), _) => Ok(false),
            (Err(err), _) | (Ok(_), Err(err)) if !matches!(err, Error::BreakerOpen) => Err(err),
            (Ok(removed), _) => Ok(removed),
            (Err(_), _) => Ok(false),
        }
    }

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

    async fn bump_tags<I, S>(&self, tags: I, field: TagField) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let inner = &self.inner;
        inner.bus.ensure_started(self).await;
        let mut tags: Vec<String> = tags.into_iter().map(|t| t.as_ref().to_owned()).collect();
        tags.sort();
        tags.dedup();
        if tags.is_empty() {
            return Ok(());
        }
        let results =
            futures_util::future::join_all(tags.iter().map(|tag| self.bump_tag(tag, field))).await;
        let mut first_error = None;
        let mut published = Vec::with_capacity(tags.len());
        for (tag, result) in tags.iter().zip(results) {
            inner.counters.invalidation();
            let trust = inner.bus.trust_now();
            let times = match result {
                Ok(times) => {
                    published.push((tag.clone(), times.hard_ms, times.soft_ms));
                    times
                }
                Err(err) => {
                    // Redis did not take it: this process honours it now, with an upper bound of
                    // the Redis clock as its time, and replays it when Redis is back.
                    self.remember_pending(|pending| {
                        match field {
                            TagField::Hard => pending.hard.insert(tag.clone()),
                            TagField::Soft => pending.soft.insert(tag.clone()),
                        };
                    });
                    let at = inner.clock.upper_ms();
                    if !matches!(err, Error::BreakerOpen) {
                        first_error.get_or_insert(err);
                    }
                    match field {
                        TagField::Hard => TagTimes {
                            hard_ms: at,
                            soft_ms: 0,
                        },
                        TagField::Soft => TagTimes {
                            hard_ms: 0,
                            soft_ms: at,
                        },
                    }
                }
            };
            inner.tag_book.merge(tag, times, trust);
            if field == TagField::Hard {
                inner.flights.detach_tag(tag);
            }
        }
        if !published.is_empty() {
            let names: Vec<String> = published.iter().map(|(tag, ..)| tag.clone()).collect();
            let sent = self
                .publish(Message {
                    tags: published,
                    ..Message::default()
                })
                .await;
            if let Err(err) = sent {
                // Stored but not announced: instances whose bus is up would never look again.
                self.remember_pending(|pending| {
                    let set = match field {
                        TagField::Hard => &mut pending.hard,
                        TagField::Soft => &mut pending.soft,
                    };
                    set.extend(names);
                });
                if !matches!(err, Error::BreakerOpen) {
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Raises one tag time in the store and returns the tag's times.
    async fn bump_tag(&self, tag: &str, field: TagField) -> Result<TagTimes, Error> {
        let inner = &self.inner;
        let key = inner.keys.tag(tag);
        self.store_op(inner.store.bump_tag(&key, field, inner.tag_ttl))
            .await
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
        let inner = &self.inner;
        inner.bus.ensure_started(self).await;
        let trust = inner.bus.trust_now();
        inner.counters.invalidation();
        let version_key = inner.keys.version();
        let NamespaceBump { version, bumped_ms } = match self
            .store_op(inner.store.bump_namespace(&version_key))
            .await
        {
            Ok(bumped) => bumped,
            Err(err) => {
                // Not bumped anywhere: stop serving L1 copies here, and bump it as soon as
                // Redis is back.
                self.remember_pending(|pending| pending.namespace = true);
                inner.flights.detach_all();
                self.forget_local();
                return match err {
                    Error::BreakerOpen => Ok(()),
                    err => Err(err),
                };
            }
        };
        self.learn_namespace(version, Some(bumped_ms), trust);
        let published = self
            .publish(Message {
                namespace: Some((version, bumped_ms)),
                ..Message::default()
            })
            .await;
        if published.is_err() {
            self.remember_pending(|pending| pending.namespace = true);
        }
        match published {
            Err(Error::BreakerOpen) => Ok(()),
            other => other,
        }
    }

    fn remember_pending(&self, add: impl FnOnce(&mut Pending)) {
        if !self.inner.bus.is_remote() {
            return;
        }
        let mut pending = util::lock(&self.inner.pending);
        add(&mut pending);
        pending.overflowed();
    }

    /// Replays the invalidations Redis did not take, in the background (Redis just came back).
    fn replay_pending(&self) {
        let pending = {
            let mut pending = util::lock(&self.inner.pending);
            if pending.is_empty() {
                return;
            }
            std::mem::take(&mut *pending)
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            *util::lock(&self.inner.pending) = pending;
            return;
        };
        let cache = self.clone();
        runtime.spawn(async move {
            tracing::info!(cache = %cache.inner.name, tags = pending.hard.len() + pending.soft.len(),
                keys = pending.keys.len(), namespace = pending.namespace,
                "replaying invalidations redis missed");
            // Failures land in `pending` again (same code paths) for the next recovery.
            if pending.namespace {
                let _ = cache.invalidate_namespace().await;
                return;
            }
            if !pending.hard.is_empty() {
                let _ = cache.bump_tags(pending.hard, TagField::Hard).await;
            }
            if !pending.soft.is_empty() {
                let _ = cache.bump_tags(pending.soft, TagField::Soft).await;
            }
            for key in pending.keys {
                let _ = cache.delete(&key).await;
            }
        });
    }

    /// Whether the invalidation bus is subscribed right now (always `false` with the in-memory
    /// store, which needs no bus). While it is down, L1 copies, tag times and the namespace version
    /// are trusted only for the bus fallback TTL. The bus starts with the first operation.
    ///
    /// ```
    /// assert!(!cache_layer::Cache::in_memory().bus_connected());
    /// ```
    pub fn bus_connected(&self) -> bool {
        self.inner.bus.is_up()
    }
}

/// The timing an entry is served with at `now` under `validity`; `None` when it must not be
/// served.
///
/// A soft-expired entry is no longer fresh, and stays servable (stale) for at most its grace
/// period (`stale_until - fresh_until`) from now, never past its own hard expiry: without a grace
/// period it is a miss. The first stale read refreshes it.
fn served_timing(timing: Timing, validity: Validity, now: u64) -> Option<Timing> {
    match validity {
        Validity::Valid => Some(timing),
        Validity::Expired => {
            let grace = timing.stale_until_ms.saturating_sub(timing.fresh_until_ms);
            if grace == 0 {
                return None;
            }
            Some(Timing {
                fresh_until_ms: timing.fresh_until_ms.min(now),
                stale_until_ms: timing.stale_until_ms.min(now.saturating_add(grace)),
                ..timing
            })
        }
        Validity::Invalid => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_entries_keep_only_their_grace_period() {
        let now = now_ms();
        let timing = Timing {
            created_ms: now - 10_000,
            fresh_until_ms: now + 60_000,
            stale_until_ms: now + 90_000,
            delta_ms: 5,
        };
        assert_eq!(served_timing(timing, Validity::Valid, now), Some(timing));
        assert_eq!(served_timing(timing, Validity::Invalid, now), None);
        let expired = served_timing(timing, Validity::Expired, now).unwrap();
        assert_eq!(expired.fresh_until_ms, now);
        assert_eq!(expired.stale_until_ms, now + 30_000);
        let no_grace = Timing {
            stale_until_ms: timing.fresh_until_ms,
            ..timing
        };
        assert_eq!(
            served_timing(no_grace, Validity::Expired, now),
            None,
            "no grace: not servable"
        );
    }
}

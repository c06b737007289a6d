//! The write path: filling an entry after a load (`write_entry`), `set`, `delete`, tag and
//! namespace invalidation, and the replay of invalidations the store did not take.
//!
//! Every write updates this process first (loads in flight detached, L1 evicted, tag times and
//! namespace version learned through [`coherence`](super::coherence)), then the store, then tells
//! the other instances on the bus. See [`l1`](crate::l1) for the model (tag times vs. load
//! starts, clock skew) and [`bus`](crate::bus) for how other instances learn about changes.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{coherence::UNKNOWN_EPOCH, Cache, Inner};
use crate::{
    bus::{Listener, Message},
    envelope::{self, Seen, Timing},
    l1::{EntryKey, FillAfter, L1Copy, MissedInvalidations, TagTimes},
    store::{EvictionSettings, NamespaceBump, Store, TagField},
    util::now_ms,
    value::Value,
    Error, Policy,
};

/// How often a write is redone when the namespace epoch moved under it.
const EPOCH_ATTEMPTS: usize = 3;

/// How long a tombstone left by `delete` stays; a load that runs longer is not stored.
pub(crate) const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// What a load knew when it started (see [`Cache::load_start`]).
#[derive(Debug, Clone)]
pub(crate) struct LoadStart {
    /// The entry key under the namespace epoch at load start.
    pub(crate) key: EntryKey,
    /// What the key held.
    pub(crate) seen: Seen,
    /// The policy's tags with their versions.
    pub(crate) versions: Vec<(String, TagTimes)>,
    /// A lower bound of the Redis clock at load start (the entry's `created_ms`).
    pub(crate) stamp_ms: u64,
    /// Whether a hard tag invalidation of this process was in flight after `stamp_ms` was taken
    /// (see [`Cache::fill_entry`]'s late tags).
    pub(crate) bump_in_flight: bool,
    pub(crate) started: Instant,
}

/// Counts one in-flight batch of hard tag invalidations (until dropped: done or cancelled).
struct BumpsInFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> BumpsInFlight<'a> {
    fn start(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        BumpsInFlight(count)
    }
}

impl Drop for BumpsInFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The L1 copy of `value`, just stored with `versions` (its tags' versions), `ttl` and `size`
/// (its serialized payload).
fn stored_copy<'a, T>(
    value: &'a T,
    timing: Timing,
    versions: &'a [(String, TagTimes)],
    ttl: Duration,
    size: usize,
) -> L1Copy<'a, T, impl Iterator<Item = (&'a str, TagTimes)>> {
    L1Copy {
        value,
        timing,
        tags: versions.iter().map(|(t, v)| (t.as_str(), *v)),
        ttl,
        serialized_len: size,
    }
}

impl Cache {
    /// What a load knew when it started: the entry key (namespace epoch), what the key held, and
    /// the versions of the policy's tags. A fill is stored only under that key, only if the key
    /// still holds what it held, and with those versions (so an invalidation during the load makes
    /// the entry invalid, and a delete or set during the load refuses the fill).
    pub(crate) async fn load_start(
        &self,
        key: &str,
        tags: &[String],
        seen: Option<Seen>,
    ) -> Result<LoadStart, Error> {
        let full_key = self.entry_key(key).await;
        let seen = match seen {
            Some(seen) => seen,
            None => match self.store_op(self.inner.store.get(&full_key)).await {
                Ok(bytes) => Seen::of(bytes.as_deref()),
                Err(err) => Seen::of_failed_read(&err).ok_or(err)?,
            },
        };
        let versions = self.load_versions(tags).await?;
        let stamp_ms = self.load_stamp_ms();
        let bump_in_flight = self
            .inner
            .known
            .hard_bumps_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0;
        Ok(LoadStart {
            key: full_key,
            seen,
            versions,
            stamp_ms,
            bump_in_flight,
            started: Instant::now(),
        })
    }

    /// Fills an entry after a load (conditional, see [`load_start`](Self::load_start)) and
    /// mirrors it into L1. `late_tags` are tags only known after the load (an HTTP response's
    /// `Cache-Tag`): their versions are read now, and the fill is dropped if one of them was
    /// invalidated after the load started. Returns whether it was stored.
    pub(crate) async fn fill_entry<T: Value>(
        &self,
        start: &LoadStart,
        value: &T,
        policy: &Policy,
        timing: Timing,
        late_tags: &[String],
    ) -> Result<bool, Error> {
        let inner = &self.inner;
        if start.started.elapsed() >= TOMBSTONE_TTL {
            // A delete during this load may have left a tombstone that has expired by now.
            return Ok(false);
        }
        if !late_tags.is_empty() && start.bump_in_flight {
            // A hard invalidation of this process was in flight when the load started: Redis may
            // have taken it before this process recorded it, and the load may have read what it
            // invalidated meanwhile (trusted here) — under a tag only known now, so nothing
            // marked the load. A bump sent after the load started is caught below instead (its
            // time is after the load's stamp).
            tracing::debug!(cache = %inner.name, "an invalidation was in flight when this response's load started; not storing it");
            return Ok(false);
        }
        let mut versions = start.versions.clone();
        // Late tags known (and kept current by the bus) since before the load started: their
        // versions then are the ones known now. The others are read now, and a record raised
        // after the load started (Redis time against a lower bound of it) means an
        // invalidation may have raced the load: not stored.
        let mut unknown: Vec<&str> = Vec::new();
        for tag in late_tags {
            match inner.known.tags.get(tag) {
                Some(record)
                    if inner.known.trust.is_trusted(record.trust)
                        && record.trust.at <= start.started =>
                {
                    versions.push((tag.clone(), record.times));
                }
                _ => unknown.push(tag),
            }
        }
        if !unknown.is_empty() {
            let fetched = self.fetch_tags(&unknown).await?;
            for (tag, fetched) in unknown.iter().zip(fetched) {
                if !fetched.repaired && fetched.times.hard_ms >= start.stamp_ms {
                    tracing::debug!(cache = %inner.name, "a tag of this response was invalidated during its load; not storing it");
                    return Ok(false);
                }
                versions.push(((*tag).to_owned(), fetched.times));
            }
        }
        if self.superseded(&start.key, &versions) {
            tracing::debug!(cache = %inner.name, "an invalidation raced this load; not storing it");
            return Ok(false);
        }
        let bytes = self.encode_entry(value, policy, timing, &versions)?;
        let size = envelope::payload_len(&bytes);
        let ttl = self.entry_ttl(&timing, !versions.is_empty());
        let stored = self
            .store_op(
                inner
                    .store
                    .fill_if(&start.key, bytes, ttl, &start.seen.as_arg()),
            )
            .await?;
        if stored {
            let copy = stored_copy(value, timing, &versions, ttl, size);
            self.inner.known.l1_fill(FillAfter::Read, &start.key, copy);
        } else {
            tracing::debug!(cache = %inner.name, "a write or delete raced this load; not storing it");
        }
        Ok(stored)
    }

    /// Whether something this process knows already makes an entry with `versions` under `key`
    /// invalid (a newer namespace epoch, a newer tag version, an invalidation not yet in Redis).
    fn superseded(&self, key: &EntryKey, versions: &[(String, TagTimes)]) -> bool {
        let inner = &self.inner;
        if key.version == UNKNOWN_EPOCH || key.version != inner.known.namespace.get().version {
            return true;
        }
        if self
            .inner
            .known
            .has_pending_tags(versions.iter().map(|(tag, _)| tag.as_str()))
        {
            return true;
        }
        versions.iter().any(|(tag, recorded)| {
            inner
                .known
                .tags
                .get(tag)
                .is_some_and(|record| record.times.hard_ms > recorded.hard_ms)
        })
    }

    /// An entry's Redis TTL: its hard expiry, capped by the tag TTL for tagged entries.
    fn entry_ttl(&self, timing: &Timing, tagged: bool) -> Duration {
        let mut ttl = Duration::from_millis(timing.stale_until_ms.saturating_sub(now_ms()).max(1));
        if tagged {
            ttl = ttl.min(self.inner.tag_ttl);
        }
        ttl
    }

    /// `set`: stores `value` (see [`Cache::set`]).
    pub(crate) async fn write_through<T>(
        &self,
        key: &str,
        value: &T,
        policy: &Policy,
    ) -> Result<(), Error>
    where
        T: Serialize + Clone + Send + Sync + 'static,
    {
        let inner = &self.inner;
        inner.flights.detach_key(key);
        inner.known.tickets.bump(key);
        let written = async {
            for _ in 0..EPOCH_ATTEMPTS {
                let full_key = self.entry_key_checked(key).await.map_err(|(_, err)| err)?;
                let versions = self.load_versions(&policy.tags).await?;
                let timing = self.entry_timing(policy, self.load_stamp_ms(), Duration::ZERO);
                let bytes = self.encode_entry(value, policy, timing, &versions)?;
                let size = envelope::payload_len(&bytes);
                let ttl = self.entry_ttl(&timing, !versions.is_empty());
                self.store_op(inner.store.set(&full_key, bytes, ttl))
                    .await?;
                if self.epoch_still(full_key.version).await? {
                    let copy = stored_copy(value, timing, &versions, ttl, size);
                    self.inner.known.l1_fill(FillAfter::Write, &full_key, copy);
                    return Ok::<_, Error>(());
                }
            }
            Err(Error::BreakerOpen)
        };
        match written.await {
            Ok(()) => {
                self.forget_pending_key(key);
                let published = self
                    .publish(Message {
                        keys: vec![key.to_owned()],
                        ..Message::default()
                    })
                    .await;
                if published.is_err() {
                    // Stored but not announced: the replay deletes it and announces that.
                    self.remember_missed(|pending| {
                        pending.keys.insert(key.to_owned());
                    });
                }
                match published {
                    Err(Error::BreakerOpen) => Ok(()),
                    other => other,
                }
            }
            Err(Error::BreakerOpen) => {
                // Not written: whatever Redis holds for the key is from before this write.
                if let Some(l1) = &inner.known.tier {
                    l1.remove(key);
                }
                self.remember_missed(|pending| {
                    pending.keys.insert(key.to_owned());
                });
                Ok(())
            }
            Err(err) => {
                // Not written, and Redis answers: the old value goes now (or, if even that
                // fails, is recorded and replayed by `delete`).
                if let Some(l1) = &inner.known.tier {
                    l1.remove(key);
                }
                let _ = Box::pin(self.remove(key)).await;
                Err(err)
            }
        }
    }

    /// `delete` (see [`Cache::delete`]).
    pub(crate) async fn remove(&self, key: &str) -> Result<bool, Error> {
        let inner = &self.inner;
        inner.metrics.invalidation();
        inner.flights.detach_key(key);
        self.inner.known.evict(key);
        let removed = async {
            for _ in 0..EPOCH_ATTEMPTS {
                let full_key = self.entry_key_checked(key).await.map_err(|(_, err)| err)?;
                let tombstone = envelope::tombstone();
                let delete = inner
                    .store
                    .delete_to_tombstone(&full_key, tombstone, TOMBSTONE_TTL);
                let removed = match self.store_op(delete).await {
                    // Out of memory (`noeviction`): no tombstone can be written, but a plain
                    // DEL frees memory and is accepted (fills are rejected meanwhile anyway).
                    Err(Error::Redis(e)) if e.code() == Some("OOM") => {
                        self.store_op(inner.store.delete(&full_key)).await?
                    }
                    other => other?,
                };
                if self.epoch_still(full_key.version).await? {
                    return Ok(removed);
                }
            }
            Err(Error::BreakerOpen)
        }
        .await;
        // A reader that read the old value before the tombstone landed may be inserting it into
        // L1 right now: its ticket is stale after this, and the copy goes.
        self.inner.known.evict(key);
        let published = match &removed {
            Ok(_) => {
                self.forget_pending_key(key);
                self.publish(Message {
                    keys: vec![key.to_owned()],
                    ..Message::default()
                })
                .await
            }
            Err(_) => Ok(()),
        };
        if removed.is_err() || published.is_err() {
            self.remember_missed(|pending| {
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

    /// After a write under namespace epoch `epoch`: whether that is still the epoch in Redis.
    /// If it is not (bumped, or lost and repaired, while this process still used the old one),
    /// the write went where nobody reads: the epoch is read again and the caller writes again.
    async fn epoch_still(&self, epoch: u64) -> Result<bool, Error> {
        let inner = &self.inner;
        if !inner.store.is_shared() {
            return Ok(true);
        }
        let bytes = self
            .store_op(inner.store.get(&inner.keys.version()))
            .await?;
        let stored = bytes
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse::<u64>().ok());
        if stored == Some(epoch) {
            return Ok(true);
        }
        inner.known.namespace.distrust();
        self.namespace_version().await?;
        Ok(false)
    }

    /// `invalidate_tags` / `expire_tag`: raises the tags' versions, announces them.
    pub(crate) async fn bump_tags<I, S>(&self, tags: I, field: TagField) -> Result<(), Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let inner = &self.inner;
        inner.bus.ensure_started(&self.inner).await;
        let mut tags: Vec<String> = tags.into_iter().map(|t| t.as_ref().to_owned()).collect();
        tags.sort();
        tags.dedup();
        if tags.is_empty() {
            return Ok(());
        }
        // Counted until each bump is recorded in the tag book below (loads with late tags check it).
        let _in_flight = (field == TagField::Hard)
            .then(|| BumpsInFlight::start(&inner.known.hard_bumps_in_flight));
        let results =
            futures_util::future::join_all(tags.iter().map(|tag| self.bump_tag(tag, field))).await;
        let mut first_error = None;
        let mut published = Vec::with_capacity(tags.len());
        for (tag, result) in tags.iter().zip(results) {
            inner.metrics.invalidation();
            let trust = inner.known.trust.trust_now();
            let times = match result {
                Ok(times) => {
                    published.push((tag.clone(), times.hard_ms, times.soft_ms));
                    Some(times)
                }
                Err(err) => {
                    // Redis did not take it: this process honours it now (pending tags make
                    // entries invalid or expired here) and replays it until Redis takes it.
                    self.remember_missed(|pending| {
                        match field {
                            TagField::Hard => pending.hard.insert(tag.clone()),
                            TagField::Soft => pending.soft.insert(tag.clone()),
                        };
                    });
                    if !matches!(err, Error::BreakerOpen) {
                        first_error.get_or_insert(err);
                    }
                    None
                }
            };
            if let Some(times) = times {
                inner.known.tags.merge(tag, times, trust);
                self.forget_pending_tag(tag, field);
            }
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
                self.remember_missed(|pending| {
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

    /// `invalidate_namespace` (see [`Cache::invalidate_namespace`]).
    pub(crate) async fn bump_namespace(&self) -> Result<(), Error> {
        let inner = &self.inner;
        inner.bus.ensure_started(&self.inner).await;
        inner.metrics.invalidation();
        match self.bump_namespace_now().await {
            Ok(()) => Ok(()),
            Err(err) => {
                // Not bumped (or not announced): nothing Redis holds is served here until the
                // replay got it in.
                self.remember_missed(|pending| pending.namespace = true);
                inner.flights.detach_all();
                self.inner.known.forget_l1();
                match err {
                    Error::BreakerOpen => Ok(()),
                    err => Err(err),
                }
            }
        }
    }

    /// Bumps the namespace epoch in the store (repairing a lost or regressed one) and announces
    /// it.
    async fn bump_namespace_now(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let trust = inner.known.trust.trust_now();
        let known = inner.known.namespace.get().version;
        let (version, bumped_ms) = match &inner.store {
            store if store.is_shared() => {
                let key = inner.keys.version();
                let NamespaceBump { version, bumped_ms } =
                    self.store_op(store.bump_namespace(&key, known)).await?;
                (version, bumped_ms)
            }
            _ => (known + 1, now_ms()),
        };
        self.learn_namespace(version, trust);
        self.publish(Message {
            namespace: Some((version, bumped_ms)),
            ..Message::default()
        })
        .await
    }

    /// Tells the other instances (best effort is not enough: an instance whose bus is up trusts
    /// its cached tag times, so a lost message is an error for the caller).
    pub(super) async fn publish(&self, message: Message) -> Result<(), Error> {
        let inner = &self.inner;
        if !inner.known.trust.is_remote() {
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

    /// See [`Listener::start_over`]: L1 starts over and the invalidations the store missed
    /// are replayed.
    pub(super) fn start_over(&self) {
        self.inner.known.forget_l1();
        self.replay_missed();
    }

    fn remember_missed(&self, add: impl FnOnce(&mut MissedInvalidations)) {
        if !self.inner.known.trust.is_remote() {
            return;
        }
        self.inner.known.missed.with(|pending| {
            add(pending);
            pending.overflowed();
        });
        self.inner.metrics.pending(self.inner.known.missed.len());
        self.replay_missed();
    }

    fn forget_pending_key(&self, key: &str) {
        if self.inner.known.missed.len() > 0 {
            self.inner
                .known
                .missed
                .with(|pending| pending.keys.remove(key));
            self.inner.metrics.pending(self.inner.known.missed.len());
        }
    }

    fn forget_pending_tag(&self, tag: &str, field: TagField) {
        if self.inner.known.missed.len() > 0 {
            self.inner.known.missed.with(|pending| match field {
                TagField::Hard => pending.hard.remove(tag),
                TagField::Soft => pending.soft.remove(tag),
            });
            self.inner.metrics.pending(self.inner.known.missed.len());
        }
    }

    /// Replays, in the background and with backoff, the invalidations and writes Redis did not
    /// take, until none is left (one replayer per cache).
    fn replay_missed(&self) {
        use std::sync::atomic::Ordering;
        let inner = &self.inner;
        if inner.known.missed.len() == 0 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if inner
            .known
            .missed
            .replaying
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        // The task holds only a weak handle: a dropped cache stops replaying.
        let weak = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let cache = Cache { inner };
                let done = cache.replay_once().await;
                if done {
                    cache
                        .inner
                        .known
                        .missed
                        .replaying
                        .store(false, Ordering::Release);
                    // Something may have been added between the last check and the store.
                    if cache.inner.known.missed.len() > 0 {
                        cache.replay_missed();
                    }
                    return;
                }
                drop(cache);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
    }

    /// One replay attempt of everything pending; `true` when nothing is left.
    async fn replay_once(&self) -> bool {
        let inner = &self.inner;
        // Taken out while replayed; failures are recorded again by the same code paths (which do
        // not start a second replayer: this one is running).
        let pending = inner.known.missed.with(|pending| MissedInvalidations {
            hard: pending.hard.clone(),
            soft: pending.soft.clone(),
            keys: pending.keys.clone(),
            namespace: pending.namespace,
        });
        if pending.is_empty() {
            return true;
        }
        tracing::debug!(cache = %inner.name, tags = pending.hard.len() + pending.soft.len(),
            keys = pending.keys.len(), namespace = pending.namespace,
            "replaying invalidations redis missed");
        if pending.namespace {
            if self.bump_namespace_now().await.is_ok() {
                inner.known.missed.with(|p| {
                    p.namespace = false;
                    // A namespace bump covers every key and tag.
                    p.keys.clear();
                    p.hard.clear();
                    p.soft.clear();
                });
            }
        } else {
            if !pending.hard.is_empty() {
                let _ = self.bump_tags(pending.hard, TagField::Hard).await;
            }
            if !pending.soft.is_empty() {
                let _ = self.bump_tags(pending.soft, TagField::Soft).await;
            }
            for key in pending.keys {
                let _ = self.remove(&key).await;
            }
        }
        inner.metrics.pending(inner.known.missed.len());
        inner.known.missed.len() == 0
    }

    /// See [`Cache::shutdown`].
    pub(crate) async fn drain(&self, within: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        let mut backoff = Duration::from_millis(20);
        loop {
            if self.inner.known.missed.len() == 0 {
                return Ok(());
            }
            if self.replay_once().await {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(within));
            }
            tokio::time::sleep(backoff.min(left)).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}

/// The narrow surface the bus (and the breaker's recovery) call back into.
impl Listener for Inner {
    fn start_over(self: Arc<Self>) {
        Cache { inner: self }.start_over();
    }

    fn apply(self: Arc<Self>, message: Message) {
        Cache { inner: self }.apply_bus_message(message);
    }

    fn clock_sample(&self, sent: Instant, received: Instant, store_time: Duration) {
        let store_us = u64::try_from(store_time.as_micros()).unwrap_or(u64::MAX);
        self.clock.record(sent, received, store_us);
        tracing::debug!(cache = %self.name, error_ms = ?self.clock.error_ms(),
            "measured the offset to the redis clock");
    }

    fn eviction_settings(&self, settings: EvictionSettings) {
        self.memory_policy.record(&self.name, settings);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race `fill_entry` guards against with late tags: a hard invalidation of this process
    /// is in flight (Redis may have it, the tag book not yet) when a load starts whose tags are
    /// only known when it ends (an HTTP response's `Cache-Tag`). What the load read may be what
    /// the invalidation covers, trusted here meanwhile, so its fill must not be stored, or it
    /// would be served after the invalidation returned.
    #[tokio::test]
    async fn a_late_tagged_load_started_during_an_invalidation_is_not_stored() {
        let cache = Cache::in_memory();
        let policy = Policy::ttl(Duration::from_secs(60));
        let late = ["category:3".to_owned()];
        let value = "page listing product 100 v3".to_owned();

        let in_flight = BumpsInFlight::start(&cache.inner.known.hard_bumps_in_flight);
        let start = cache.load_start("page:60", &[], None).await.unwrap();
        drop(in_flight); // the invalidation returns while the load runs
        let timing = cache.entry_timing(&policy, start.stamp_ms, Duration::ZERO);
        let stored = cache
            .fill_entry(&start, &value, &policy, timing, &late)
            .await
            .unwrap();
        assert!(
            !stored,
            "a load that overlapped an invalidation is not stored"
        );

        let start = cache.load_start("page:60", &[], None).await.unwrap();
        let timing = cache.entry_timing(&policy, start.stamp_ms, Duration::ZERO);
        let stored = cache
            .fill_entry(&start, &value, &policy, timing, &late)
            .await
            .unwrap();
        assert!(stored, "one that started after it is");
    }
}

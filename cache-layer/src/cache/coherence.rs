//! Coherence: what this process knows about the store's state, and whether it may serve what it
//! holds. It owns
//!
//! - the entry key with the current namespace version ([`Cache::entry_key`]), refreshing the
//!   version from the store when it is not trusted;
//! - the validity of an entry's tags (known tag times, or one read of the missing ones);
//! - L1 reads and fills, checked against both (an L1 hit makes no store call);
//! - the clock offset to the store (entry stamps) and the bus's callbacks
//!   ([`BusListener`](crate::bus::BusListener): resubscribed, a message from another instance),
//!   which the breaker's recovery uses too.
//!
//! The invariants that keep L1 and the store coherent are in `docs/ARCHITECTURE.md`
//! ("Coherence invariants").

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    write::{FetchedTag, UNKNOWN_EPOCH},
    Cache,
};
use crate::{
    bus::Message,
    envelope::{Envelope, Timing},
    l1::{L1Entry, L1Tier},
    store::Store,
    tags::{TagTimes, Trust, Validity},
    Error,
};

/// The Redis key of an entry, resolved with the current namespace version, plus what an L1 fill
/// after reading it needs (derefs to the Redis key).
#[derive(Debug, Clone)]
pub(crate) struct EntryKey {
    redis: String,
    /// The namespace epoch it was resolved under ([`UNKNOWN_EPOCH`] when none could be read).
    pub(crate) version: u64,
    /// What an L1 fill needs, only when there is an L1 tier (no allocation otherwise): the
    /// caller's key and the eviction ticket taken before the read (see [`crate::bus::Tickets`]).
    l1: Option<(String, u64)>,
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
    /// The Redis key of `key` under the current namespace version. In steady state this is a
    /// local lookup; the first call (and calls after the bus was down for longer than its fallback
    /// TTL) read the version with one `GET`. The first call also starts the bus.
    pub(crate) async fn entry_key(&self, key: &str) -> EntryKey {
        match self.entry_key_checked(key).await {
            Ok(key) => key,
            Err((key, _)) => key,
        }
    }

    /// [`entry_key`](Self::entry_key), or (with a key under [`UNKNOWN_EPOCH`]) the error that
    /// kept the namespace epoch from being read for the first time: what a direct operation
    /// reports.
    pub(crate) async fn entry_key_checked(&self, key: &str) -> Result<EntryKey, (EntryKey, Error)> {
        let l1 = self.inner.l1.as_ref().map(|_| {
            let ticket = self.inner.bus.tickets.ticket(key);
            (key.to_owned(), ticket)
        });
        // Steady state: no await at all. The refresh is boxed so this future (nested in every
        // lookup) stays small — deep recursion through cached fns runs on the caller's stack.
        let (version, error) = match self.trusted_version() {
            Some(version) => (version, None),
            None => match Box::pin(self.namespace_version()).await {
                Ok(version) => (version, None),
                Err(err) => (UNKNOWN_EPOCH, Some(err)),
            },
        };
        let entry = EntryKey {
            redis: self.inner.keys.entry(key, version),
            version,
            l1,
        };
        match error {
            None => Ok(entry),
            Some(err) => Err((entry, err)),
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
        // Pending invalidations first: a replay raises the tag versions this process knows before
        // it clears them, so one that is gone by now is seen in the versions read next.
        let pending = self.pending_validity(envelope.tags());
        let validity = match self.known_validity(envelope.tag_versions()) {
            Some(validity) => validity,
            None => Box::pin(self.entry_validity(envelope.tag_versions())).await,
        };
        served_timing(envelope.timing, validity.and(pending), now)
    }

    /// Whether the tags of an entry, with the versions its load saw, were invalidated or expired
    /// since. Records not known locally (or no longer trusted, or older than the entry's) are read
    /// in one round trip (lost ones repaired); if that fails the entry is treated as invalid.
    pub(crate) async fn entry_validity<'a>(
        &self,
        tags: impl IntoIterator<Item = (&'a str, TagTimes)>,
    ) -> Validity {
        let mut verdict = Validity::Valid;
        let mut missing: Vec<(&str, TagTimes)> = Vec::new();
        for (tag, recorded) in tags {
            let known = self
                .inner
                .tag_book
                .get(tag)
                .filter(|record| self.inner.bus.is_trusted(record.trust))
                .and_then(|record| Validity::of(record.times, recorded));
            match known {
                Some(v) => verdict = verdict.and(v),
                None => missing.push((tag, recorded)),
            }
        }
        if missing.is_empty() || verdict == Validity::Invalid {
            return verdict;
        }
        let names: Vec<&str> = missing.iter().map(|(tag, _)| *tag).collect();
        match self.fetch_tags(&names).await {
            Ok(current) => current
                .into_iter()
                .zip(&missing)
                .fold(verdict, |v, (cur, (_, rec))| {
                    // Still older than what the entry saw: the record went back. Not valid.
                    v.and(Validity::of(cur.times, *rec).unwrap_or(Validity::Invalid))
                }),
            Err(err) => {
                tracing::debug!(cache = %self.inner.name, error = %err,
                    "could not read tag versions; treating the entry as invalidated");
                Validity::Invalid
            }
        }
    }

    /// The validity of an entry from local knowledge only; `None` if a tag's record is unknown,
    /// no longer trusted, or older than the entry's.
    pub(super) fn known_validity<'a>(
        &self,
        tags: impl IntoIterator<Item = (&'a str, TagTimes)>,
    ) -> Option<Validity> {
        let mut verdict = Validity::Valid;
        for (tag, recorded) in tags {
            let record = self.inner.tag_book.get(tag)?;
            if !self.inner.bus.is_trusted(record.trust) {
                return None;
            }
            verdict = verdict.and(Validity::of(record.times, recorded)?);
        }
        Some(verdict)
    }

    /// The current versions of `tags` for a load starting now: from what this process knows when
    /// it is trusted, else read (one round trip; lost records repaired).
    pub(crate) async fn load_versions(
        &self,
        tags: &[String],
    ) -> Result<Vec<(String, TagTimes)>, Error> {
        let mut out = Vec::with_capacity(tags.len());
        let mut missing = Vec::new();
        for tag in tags {
            match self.inner.tag_book.get(tag) {
                Some(record) if self.inner.bus.is_trusted(record.trust) => {
                    out.push((tag.clone(), record.times));
                }
                _ => {
                    missing.push(tag.as_str());
                    out.push((tag.clone(), TagTimes::default()));
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let fetched = self.fetch_tags(&missing).await?;
        let mut fetched = missing.iter().zip(fetched);
        for (tag, times) in out.iter_mut() {
            if times == &TagTimes::default() {
                if let Some((_, got)) = fetched.find(|(name, _)| **name == tag.as_str()) {
                    *times = got.times;
                }
            }
        }
        Ok(out)
    }

    /// The tags of `tags` whose records this process does not know (or no longer trusts): what a
    /// lookup reads along with the entry.
    pub(crate) fn untrusted_tags<'t>(&self, tags: &'t [String]) -> Vec<&'t str> {
        tags.iter()
            .filter(|tag| {
                !self
                    .inner
                    .tag_book
                    .get(tag)
                    .is_some_and(|record| self.inner.bus.is_trusted(record.trust))
            })
            .map(String::as_str)
            .collect()
    }

    /// Takes in the raw records of `tags` read along with an entry (stamped `trust`, taken before
    /// the read); missing, unreadable or regressed ones are repaired (a second round trip, only
    /// then).
    pub(crate) async fn learn_tag_records(
        &self,
        tags: &[&str],
        records: Vec<Option<Vec<u8>>>,
        trust: Trust,
    ) -> Result<(), Error> {
        let mut broken = Vec::new();
        for (tag, raw) in tags.iter().zip(records) {
            let known = self.inner.tag_book.get(tag).map(|r| r.times);
            match raw.as_deref().and_then(TagTimes::parse) {
                Some(times) if known.is_none_or(|k| times.hard_ms >= k.hard_ms) => {
                    self.inner.tag_book.merge(tag, times, trust);
                }
                _ => broken.push(*tag),
            }
        }
        if !broken.is_empty() {
            self.repair(&broken, trust).await?;
        }
        Ok(())
    }

    /// Repairs the records of `tags` (missing, unreadable or regressed) and remembers them.
    async fn repair(&self, tags: &[&str], trust: Trust) -> Result<Vec<FetchedTag>, Error> {
        let inner = &self.inner;
        let keys: Vec<String> = tags.iter().map(|tag| inner.keys.tag(tag)).collect();
        let known: Vec<u64> = tags
            .iter()
            .map(|tag| inner.tag_book.get(tag).map_or(0, |r| r.times.hard_ms))
            .collect();
        let repaired = self
            .store_op(inner.store.repair_tags(&keys, &known, inner.tag_ttl))
            .await?;
        for (tag, times) in tags.iter().zip(&repaired) {
            inner.tag_book.merge(tag, *times, trust);
        }
        Ok(repaired
            .into_iter()
            .map(|times| FetchedTag {
                times,
                repaired: true,
            })
            .collect())
    }

    /// Reads the records of `tags` (one pipelined round trip on Redis; lost ones repaired, a
    /// second round trip only then) and remembers them.
    pub(crate) async fn fetch_tags(&self, tags: &[&str]) -> Result<Vec<FetchedTag>, Error> {
        let inner = &self.inner;
        let trust = inner.bus.trust_now();
        let keys: Vec<String> = tags.iter().map(|tag| inner.keys.tag(tag)).collect();
        // One pipelined round trip on one node; concurrent reads on a cluster (no cross-slot
        // command).
        let values = self.store_op(inner.store.tag_times(&keys)).await?;
        let mut out: Vec<Option<FetchedTag>> = Vec::with_capacity(tags.len());
        let mut broken = Vec::new();
        for (tag, value) in tags.iter().zip(&values) {
            let known = inner.tag_book.get(tag).map(|r| r.times);
            match *value {
                Some(times) if known.is_none_or(|k| times.hard_ms >= k.hard_ms) => {
                    inner.tag_book.merge(tag, times, trust);
                    out.push(Some(FetchedTag {
                        times,
                        repaired: false,
                    }));
                }
                _ => {
                    broken.push(*tag);
                    out.push(None);
                }
            }
        }
        if !broken.is_empty() {
            let mut repaired = self.repair(&broken, trust).await?.into_iter();
            for slot in out.iter_mut().filter(|slot| slot.is_none()) {
                *slot = repaired.next();
            }
        }
        Ok(out
            .into_iter()
            .map(|slot| slot.unwrap_or_default())
            .collect())
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
    pub(super) async fn namespace_version(&self) -> Result<u64, Error> {
        let inner = &self.inner;
        if !inner.bus.is_remote() {
            return Ok(inner.namespace.get().version);
        }
        let unreachable = inner.bus.ensure_started(&self.inner).await;
        let record = inner.namespace.get();
        if record.trust.is_some_and(|t| inner.bus.is_trusted(t)) {
            return Ok(record.version);
        }
        if unreachable && record.trust.is_some() {
            // The bus just failed to connect: do not spend a second attempt of this operation on
            // the version; keep the known one for the fallback TTL (trusted by time only). A
            // version never read is not known at all: read it.
            inner.namespace.merge(
                record.version,
                Trust {
                    generation: 0,
                    at: Instant::now(),
                },
            );
            return Ok(record.version);
        }
        // One refresh at a time; the others wait for it and use its result.
        let _refreshing = inner.namespace.refresh.lock().await;
        let record = inner.namespace.get();
        if record.trust.is_some_and(|t| inner.bus.is_trusted(t)) {
            return Ok(record.version);
        }
        let trust = inner.bus.trust_now();
        let known = record.version;
        let key = inner.keys.version();
        let read = async {
            match inner.store.namespace_version(&key).await? {
                Some(epoch) if epoch >= known => Ok((epoch, false)),
                // Missing (lost: evicted, a restart without persistence, a failover) or behind
                // what this process knows: repaired to a fresh epoch, never read as 0.
                stored => {
                    tracing::info!(cache = %inner.name, known, ?stored,
                        "namespace epoch missing or regressed in redis; repairing it");
                    let repaired = inner.store.repair_namespace(&key, known).await?;
                    Ok((repaired, true))
                }
            }
        };
        match self.store_op(read).await {
            Ok((version, repaired)) => {
                if inner.clock.error_ms().is_none() && !inner.bus.is_up() {
                    // First use, Redis answers: entry stamps use its clock, with or without a
                    // bus (which re-measures it every minute while subscribed).
                    self.measure_clock().await;
                }
                self.learn_namespace(version, trust);
                if repaired {
                    // Tell the others (best effort: they also re-read within the fallback TTL).
                    let _ = self
                        .publish(Message {
                            namespace: Some((version, inner.clock.upper_ms())),
                            ..Message::default()
                        })
                        .await;
                }
            }
            Err(err) if inner.namespace.get().trust.is_none() => {
                // Never read: no epoch is known, and 0 is not a safe guess (entries from before
                // a bump may live under it). Nothing is read from or stored to Redis meanwhile.
                tracing::debug!(cache = %inner.name, error = %err,
                    "could not read the namespace epoch; Redis is skipped until it can be read");
                return Err(err);
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
                inner.namespace.merge(known, retry_later);
            }
        }
        Ok(inner.namespace.get().version)
    }

    /// Takes in a namespace version (from the store, a bus message or our own bump). When it moves
    /// forward, loads in flight are detached and L1 is emptied.
    pub(super) fn learn_namespace(&self, version: u64, trust: Trust) {
        let inner = &self.inner;
        if inner.namespace.merge(version, trust) {
            inner.flights.detach_all();
            inner.bus.tickets.bump_all();
            if let Some(l1) = &inner.l1 {
                l1.clear();
            }
        }
    }

    /// Measures the offset to the Redis clock (best of three `TIME` round trips).
    pub(crate) async fn measure_clock(&self) {
        let inner = &self.inner;
        if !inner.store.is_shared() {
            return;
        }
        for _ in 0..3 {
            let sent = Instant::now();
            match inner.store.server_time().await {
                Ok(time) => {
                    let us = u64::try_from(time.as_micros()).unwrap_or(u64::MAX);
                    inner.clock.record(sent, Instant::now(), us);
                }
                Err(_) => return,
            }
        }
        tracing::debug!(cache = %inner.name, error_ms = ?inner.clock.error_ms(),
            "measured the offset to the redis clock");
    }

    pub(super) fn forget_l1(&self) {
        self.inner.bus.tickets.bump_all();
        if let Some(l1) = &self.inner.l1 {
            l1.clear();
        }
    }

    /// Applies another instance's message.
    pub(crate) fn apply_bus_message(&self, message: Message) {
        let inner = &self.inner;
        let trust = inner.bus.trust_now();
        for key in &message.keys {
            inner.flights.detach_key(key);
            inner.bus.tickets.bump(key);
            if let Some(l1) = &inner.l1 {
                l1.remove(key);
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
        if let Some((version, _bumped_ms)) = message.namespace {
            self.learn_namespace(version, trust);
        }
    }

    /// A fresh L1 value of type `T`, if the tier is enabled and holds one.
    pub(crate) fn l1_get<T: Clone + 'static>(&self, key: &str, now: u64) -> Option<T> {
        self.l1_lookup(key, now)
            .filter(|(_, timing)| timing.fresh_until_ms > now)
            .map(|(value, _)| value)
    }

    /// An L1 value of type `T` that no invalidation covers (fresh or within its grace period).
    /// An L1 hit makes no Redis call: the namespace version and tag times are checked against what
    /// this process knows; when it does not know them (or the bus is down past its fallback TTL)
    /// this is a miss and the caller reads Redis, which refreshes that knowledge.
    pub(crate) fn l1_lookup<T: Clone + 'static>(&self, key: &str, now: u64) -> Option<(T, Timing)> {
        let inner = &self.inner;
        let l1 = inner.l1.as_ref()?;
        let entry = l1.get(key)?;
        if entry.timing.stale_until_ms <= now {
            return None;
        }
        if !inner.bus.l1_trusted(entry.inserted) {
            l1.remove(key);
            return None;
        }
        // Pending invalidations before the epoch and the tag versions: a replay moves those
        // before it clears the invalidation, so one that is gone by now is seen in them.
        if self.pending_covers(key) {
            return None;
        }
        let pending = self.pending_validity(entry.tags.iter().map(|(tag, _)| tag.as_str()));
        let namespace = inner.namespace.get();
        let namespace_trusted =
            !inner.bus.is_remote() || namespace.trust.is_some_and(|t| inner.bus.is_trusted(t));
        if entry.version != namespace.version || !namespace_trusted {
            return None;
        }
        let validity = self
            .known_validity(entry.tags.iter().map(|(tag, v)| (tag.as_str(), *v)))?
            .and(pending);
        let timing = served_timing(entry.timing, validity, now)?;
        let value = entry.value.downcast_ref::<T>()?.clone();
        Some((value, timing))
    }

    /// Mirrors a value read from `key` (or filled after a load) into L1, unless an eviction of
    /// that key happened since the key was resolved (the value may be the one the eviction was
    /// about).
    ///
    /// The ticket is checked again after the insert: an eviction that slipped in between the
    /// first check and the insert would otherwise be undone by it, so the copy is taken out again.
    pub(crate) fn l1_insert<'a, T: Clone + Send + Sync + 'static>(
        &self,
        key: &EntryKey,
        value: &T,
        timing: Timing,
        tags: impl IntoIterator<Item = (&'a str, TagTimes)>,
        ttl: Duration,
        serialized_len: usize,
    ) {
        let inner = &self.inner;
        let (Some(l1), Some((user_key, ticket))) = (&inner.l1, &key.l1) else {
            return;
        };
        if inner.bus.tickets.ticket(user_key) != *ticket {
            return;
        }
        let entry = self.l1_entry(key.version, value, timing, tags, ttl, serialized_len);
        self.l1_put(l1, user_key, *ticket, entry);
    }

    /// After `set` wrote `value` to `key` in the store: the L1 copy from before the write goes,
    /// whatever happens, and `value` takes its place unless the key was evicted since it was
    /// resolved.
    ///
    /// The key's ticket is moved on (only from the one taken before the write): a reader that read
    /// the store before the write landed holds an older ticket, so its L1 fill of the previous
    /// value is refused from here on, even if it comes after this one. If anything else moved the
    /// ticket meanwhile (an eviction of a key sharing the slot, a bus message, a clear), `value`
    /// is not inserted, but the previous copy is still removed: the next read goes to the store,
    /// which holds `value` or something newer.
    pub(crate) fn l1_replace<'a, T: Clone + Send + Sync + 'static>(
        &self,
        key: &EntryKey,
        value: &T,
        timing: Timing,
        tags: impl IntoIterator<Item = (&'a str, TagTimes)>,
        ttl: Duration,
        serialized_len: usize,
    ) {
        let inner = &self.inner;
        let (Some(l1), Some((user_key, ticket))) = (&inner.l1, &key.l1) else {
            return;
        };
        match inner.bus.tickets.advance(user_key, *ticket) {
            Some(next) => {
                let entry = self.l1_entry(key.version, value, timing, tags, ttl, serialized_len);
                self.l1_put(l1, user_key, next, entry);
            }
            None => {
                inner.bus.tickets.bump(user_key);
                l1.remove(user_key);
            }
        }
    }

    /// An L1 entry for `value`, read or written under namespace epoch `version`.
    fn l1_entry<'a, T: Clone + Send + Sync + 'static>(
        &self,
        version: u64,
        value: &T,
        timing: Timing,
        tags: impl IntoIterator<Item = (&'a str, TagTimes)>,
        ttl: Duration,
        serialized_len: usize,
    ) -> L1Entry {
        let now = Instant::now();
        let tags: Arc<[(String, TagTimes)]> =
            tags.into_iter().map(|(t, v)| (t.to_owned(), v)).collect();
        let tag_bytes: usize = tags.iter().map(|(t, _)| t.len() + 16).sum();
        L1Entry {
            value: Arc::new(value.clone()),
            timing,
            expires_at: now + self.inner.bus.l1_ttl(ttl),
            inserted: now,
            version,
            bytes: serialized_len.saturating_add(tag_bytes) as u64,
            tags,
        }
    }

    /// Inserts `entry` for `user_key`, then takes it out again if the key's ticket is no longer
    /// `ticket` (an eviction slipped in between the caller's check and the insert).
    fn l1_put(&self, l1: &L1Tier, user_key: &str, ticket: u64, entry: L1Entry) {
        let inserted = entry.inserted;
        l1.insert(user_key, entry);
        if self.inner.bus.tickets.ticket(user_key) != ticket {
            l1.remove_if_inserted_at(user_key, inserted);
        }
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
    use crate::util::now_ms;

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

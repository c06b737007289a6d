//! Coherence: bringing what this process knows of the store's state up to date when it is not
//! enough to decide (the decisions themselves, and the books they use, are in [`crate::l1`]).
//! It owns
//!
//! - the entry key with the current namespace version ([`Cache::entry_key`]), refreshing the
//!   version from the store when it is not trusted;
//! - the validity of an entry whose tags are not known here (one read of the missing records,
//!   lost ones repaired);
//! - the clock offset to the store (entry stamps) and applying the bus's messages
//!   ([`Listener`](crate::bus::Listener): a message from another instance).
//!
//! The invariants that keep L1 and the store coherent are in `docs/ARCHITECTURE.md`
//! ("Coherence invariants").

use std::time::Instant;

use super::Cache;
use crate::{
    bus::Message,
    envelope::{Envelope, Timing},
    l1::{served_timing, EntryKey, TagTimes, Trust, Validity},
    store::Store,
    Error,
};

/// The epoch an entry key carries while the namespace epoch could not be read yet: no entry
/// lives under it and nothing is stored under it.
pub(crate) const UNKNOWN_EPOCH: u64 = u64::MAX;

/// A tag record as read for a validity check or a load start.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FetchedTag {
    pub(crate) times: TagTimes,
    /// It was missing (or went back) and was recreated just now.
    pub(crate) repaired: bool,
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
        let l1 = self.inner.known.fill_ticket(key);
        // Steady state: no await at all. The refresh is boxed so this future (nested in every
        // lookup) stays small — deep recursion through cached fns runs on the caller's stack.
        let (version, error) = match self.inner.known.trusted_version() {
            Some(version) => (version, None),
            None => match Box::pin(self.namespace_version()).await {
                Ok(version) => (version, None),
                Err(err) => (UNKNOWN_EPOCH, Some(err)),
            },
        };
        let entry = EntryKey::new(self.inner.keys.entry(key, version), version, l1);
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

    /// The timing to serve an entry with when its tags' records are not all known here (see
    /// [`Knowledge::known_timing`](crate::l1::Knowledge::known_timing), which decides otherwise),
    /// or `None` when an invalidation covers it: the records are read (one round trip) and
    /// combined with `pending`, the validity pending invalidations impose. A soft-expired entry
    /// (`expire_tag`) comes back with its freshness ended, so it is served only under its `stale`
    /// grace period while it is refreshed.
    ///
    /// `now` is the caller's notion of the current time (its freshness checks use the same value).
    pub(crate) async fn unknown_timing(
        &self,
        envelope: &Envelope<'_>,
        pending: Validity,
        now: u64,
    ) -> Option<Timing> {
        let validity = self.entry_validity(envelope.tag_versions()).await;
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
                .known
                .tags
                .get(tag)
                .filter(|record| self.inner.known.trust.is_trusted(record.trust))
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

    /// The current versions of `tags` for a load starting now: from what this process knows when
    /// it is trusted, else read (one round trip; lost records repaired).
    pub(crate) async fn load_versions(
        &self,
        tags: &[String],
    ) -> Result<Vec<(String, TagTimes)>, Error> {
        let mut out = Vec::with_capacity(tags.len());
        let mut missing = Vec::new();
        for tag in tags {
            match self.inner.known.tags.get(tag) {
                Some(record) if self.inner.known.trust.is_trusted(record.trust) => {
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
            let known = self.inner.known.tags.get(tag).map(|r| r.times);
            match raw.as_deref().and_then(TagTimes::parse) {
                Some(times) if known.is_none_or(|k| times.hard_ms >= k.hard_ms) => {
                    self.inner.known.tags.merge(tag, times, trust);
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
            .map(|tag| inner.known.tags.get(tag).map_or(0, |r| r.times.hard_ms))
            .collect();
        let repaired = self
            .store_op(inner.store.repair_tags(&keys, &known, inner.tag_ttl))
            .await?;
        for (tag, times) in tags.iter().zip(&repaired) {
            inner.known.tags.merge(tag, *times, trust);
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
        let trust = inner.known.trust.trust_now();
        let keys: Vec<String> = tags.iter().map(|tag| inner.keys.tag(tag)).collect();
        // One pipelined round trip on one node; concurrent reads on a cluster (no cross-slot
        // command).
        let values = self.store_op(inner.store.tag_times(&keys)).await?;
        let mut out: Vec<Option<FetchedTag>> = Vec::with_capacity(tags.len());
        let mut broken = Vec::new();
        for (tag, value) in tags.iter().zip(&values) {
            let known = inner.known.tags.get(tag).map(|r| r.times);
            match *value {
                Some(times) if known.is_none_or(|k| times.hard_ms >= k.hard_ms) => {
                    inner.known.tags.merge(tag, times, trust);
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

    /// The namespace version, refreshed from the store when the cached one is not trusted.
    pub(super) async fn namespace_version(&self) -> Result<u64, Error> {
        let inner = &self.inner;
        if !inner.known.trust.is_remote() {
            return Ok(inner.known.namespace.get().version);
        }
        let unreachable = inner.bus.ensure_started(&self.inner).await;
        let record = inner.known.namespace.get();
        if record
            .trust
            .is_some_and(|t| inner.known.trust.is_trusted(t))
        {
            return Ok(record.version);
        }
        if unreachable && record.trust.is_some() {
            // The bus just failed to connect: do not spend a second attempt of this operation on
            // the version; keep the known one for the fallback TTL (trusted by time only). A
            // version never read is not known at all: read it.
            inner.known.namespace.merge(
                record.version,
                Trust {
                    generation: 0,
                    at: Instant::now(),
                },
            );
            return Ok(record.version);
        }
        // One refresh at a time; the others wait for it and use its result.
        let _refreshing = inner.known.namespace.refresh.lock().await;
        let record = inner.known.namespace.get();
        if record
            .trust
            .is_some_and(|t| inner.known.trust.is_trusted(t))
        {
            return Ok(record.version);
        }
        let trust = inner.known.trust.trust_now();
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
                if inner.clock.error_ms().is_none() && !inner.known.trust.is_up() {
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
            Err(err) if inner.known.namespace.get().trust.is_none() => {
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
                let known = inner.known.namespace.get().version;
                let retry_later = Trust {
                    generation: 0,
                    at: Instant::now(),
                };
                inner.known.namespace.merge(known, retry_later);
            }
        }
        Ok(inner.known.namespace.get().version)
    }

    /// Takes in a namespace version (from the store, a bus message or our own bump). When it moves
    /// forward, loads in flight are detached and L1 is emptied.
    pub(super) fn learn_namespace(&self, version: u64, trust: Trust) {
        let inner = &self.inner;
        if inner.known.namespace.merge(version, trust) {
            inner.flights.detach_all();
            inner.known.forget_l1();
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

    /// Applies another instance's message.
    pub(crate) fn apply_bus_message(&self, message: Message) {
        let inner = &self.inner;
        let trust = inner.known.trust.trust_now();
        for key in &message.keys {
            inner.flights.detach_key(key);
            inner.known.evict(key);
        }
        for (tag, hard_ms, soft_ms) in &message.tags {
            let before = inner.known.tags.get(tag).map(|r| r.times.hard_ms);
            let times = TagTimes {
                hard_ms: *hard_ms,
                soft_ms: *soft_ms,
            };
            inner.known.tags.merge(tag, times, trust);
            if before.is_none_or(|before| *hard_ms > before) && *hard_ms > 0 {
                inner.flights.detach_tag(tag);
            }
        }
        if let Some((version, _bumped_ms)) = message.namespace {
            self.learn_namespace(version, trust);
        }
    }
}

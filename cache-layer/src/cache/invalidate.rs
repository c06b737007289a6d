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

use super::{millis, now_ms, Cache};
use crate::{
    bus::Message,
    cache::engine::Value,
    envelope::{self, DecodeError, Envelope, Seen, Timing},
    local::LocalEntry,
    store::Backend,
    tags::{TagTimes, Trust, Validity},
    Error, Policy,
};

/// One-key script: raises a tag's hard (`ARGV[1] == "hard"`) or soft time to
/// `max(previous + 1, Redis TIME)`, stores `"<hard>:<soft>"` with `PX ARGV[2]`, returns both.
const BUMP_TAG: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hard, soft = 0, 0
local cur = redis.call('GET', KEYS[1])
if cur then
  local h, s = string.match(cur, '^(%d+):(%d+)$')
  if h then hard = tonumber(h); soft = tonumber(s) end
end
if ARGV[1] == 'soft' then soft = math.max(soft + 1, now) else hard = math.max(hard + 1, now) end
redis.call('SET', KEYS[1], string.format('%.0f:%.0f', hard, soft), 'PX', ARGV[2])
return {hard, soft}
"#;

fn script(
    cell: &'static std::sync::OnceLock<redis::Script>,
    source: &str,
) -> &'static redis::Script {
    cell.get_or_init(|| redis::Script::new(source))
}

/// Which of a tag's two times an operation raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TagField {
    Hard,
    Soft,
}

/// Invalidations and writes Redis did not take (breaker open, timeout, lost `PUBLISH`): this
/// process honours them at once (entries they cover are not served from L1 or Redis here, and
/// loads covered by them are not stored), and a background task replays them with backoff until
/// Redis takes them, whether or not the breaker opened, so the other instances follow. Bounded:
/// past [`MAX_PENDING`] entries the replay becomes one namespace bump, which covers everything.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    hard: std::collections::BTreeSet<String>,
    soft: std::collections::BTreeSet<String>,
    keys: std::collections::BTreeSet<String>,
    namespace: bool,
}

const MAX_PENDING: usize = 10_000;

/// The epoch an entry key carries while the namespace epoch could not be read yet: no entry
/// lives under it and nothing is stored under it.
pub(crate) const UNKNOWN_EPOCH: u64 = u64::MAX;

/// How often a write is redone when the namespace epoch moved under it.
const EPOCH_ATTEMPTS: usize = 3;

/// How long a tombstone left by `delete` stays; a load that runs longer is not stored.
pub(crate) const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

impl Pending {
    fn is_empty(&self) -> bool {
        !self.namespace && self.hard.is_empty() && self.soft.is_empty() && self.keys.is_empty()
    }

    fn len(&self) -> usize {
        self.hard.len() + self.soft.len() + self.keys.len() + usize::from(self.namespace)
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

/// The pending set with a lock-free "anything pending?" for the read path.
#[derive(Debug, Default)]
pub(crate) struct PendingBook {
    set: std::sync::Mutex<Pending>,
    len: std::sync::atomic::AtomicUsize,
    replaying: std::sync::atomic::AtomicBool,
}

impl PendingBook {
    /// How many invalidations and writes wait for Redis.
    pub(crate) fn len(&self) -> usize {
        self.len.load(std::sync::atomic::Ordering::Acquire)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Pending) -> R) -> R {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut set);
        self.len
            .store(set.len(), std::sync::atomic::Ordering::Release);
        out
    }
}

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
    pub(crate) started: Instant,
}

/// A tag record as read for a validity check or a load start.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FetchedTag {
    pub(crate) times: TagTimes,
    /// It was missing (or went back) and was recreated just now.
    pub(crate) repaired: bool,
}

/// The Redis key of an entry, resolved with the current namespace version, plus what an L1 fill
/// after reading it needs (derefs to the Redis key).
#[derive(Debug, Clone)]
pub(crate) struct EntryKey {
    redis: String,
    /// The namespace epoch it was resolved under ([`UNKNOWN_EPOCH`] when none could be read).
    pub(crate) version: u64,
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
        match self.entry_key_checked(key).await {
            Ok(key) => key,
            Err((key, _)) => key,
        }
    }

    /// [`entry_key`](Self::entry_key), or (with a key under [`UNKNOWN_EPOCH`]) the error that
    /// kept the namespace epoch from being read for the first time: what a direct operation
    /// reports.
    pub(crate) async fn entry_key_checked(&self, key: &str) -> Result<EntryKey, (EntryKey, Error)> {
        let local = self.inner.local.as_ref().map(|_| {
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
            local,
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
        let validity = match self.local_validity(envelope.tag_versions()) {
            Some(validity) => validity,
            None => Box::pin(self.entry_validity(envelope.tag_versions())).await,
        };
        let validity = validity.and(self.pending_validity(envelope.tags()));
        served_timing(envelope.timing, validity, now)
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
    fn local_validity<'a>(
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
        let values: Vec<Option<Vec<u8>>> = match &inner.store {
            // One node: one pipelined round trip.
            Backend::Redis(_) if keys.len() > 1 => {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("GET").arg(key);
                }
                self.store_op(inner.store.query_pipeline(&pipe, true))
                    .await?
            }
            // Tag keys live in different slots: one GET each, concurrently (no cross-slot command).
            store => {
                let reads = keys.iter().map(|key| self.store_op(store.get(key)));
                futures_util::future::join_all(reads)
                    .await
                    .into_iter()
                    .collect::<Result<_, _>>()?
            }
        };
        let mut out: Vec<Option<FetchedTag>> = Vec::with_capacity(tags.len());
        let mut broken = Vec::new();
        for (tag, value) in tags.iter().zip(&values) {
            let known = inner.tag_book.get(tag).map(|r| r.times);
            match value.as_deref().and_then(TagTimes::parse) {
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
    async fn namespace_version(&self) -> Result<u64, Error> {
        let inner = &self.inner;
        if !inner.bus.is_remote() {
            return Ok(inner.namespace.get().version);
        }
        let unreachable = inner.bus.ensure_started(self).await;
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
                0,
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
            let bytes = inner.store.get(&key).await?;
            let stored = bytes
                .as_deref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<u64>().ok());
            match stored {
                Some(epoch) if epoch >= known => Ok((epoch, false)),
                // Missing (lost: evicted, a restart without persistence, a failover) or behind
                // what this process knows: repaired to a fresh epoch, never read as 0.
                _ => {
                    tracing::info!(cache = %inner.name, known, ?stored,
                        "namespace epoch missing or regressed in redis; repairing it");
                    inner
                        .store
                        .namespace_epoch(&key, known, false)
                        .await
                        .map(|(epoch, _)| (epoch, true))
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
                self.learn_namespace(version, None, trust);
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
                inner.namespace.merge(known, 0, retry_later);
            }
        }
        Ok(inner.namespace.get().version)
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
        if !store.is_remote() {
            return;
        }
        for _ in 0..3 {
            let sent = Instant::now();
            match store.query::<(u64, u64)>(&redis::cmd("TIME")).await {
                Ok((secs, micros)) => {
                    let received = Instant::now();
                    let redis_us = secs.saturating_mul(1_000_000).saturating_add(micros);
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
        self.store_op(inner.store.publish(inner.bus.channel(), &payload))
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
        if self.pending_covers(key) {
            return None;
        }
        let validity = self
            .local_validity(entry.tags.iter().map(|(tag, v)| (tag.as_str(), *v)))?
            .and(self.pending_validity(entry.tags.iter().map(|(tag, _)| tag.as_str())));
        let timing = served_timing(entry.timing, validity, now)?;
        let value = entry.value.downcast_ref::<T>()?.clone();
        Some((value, timing))
    }

    /// Mirrors a value read from (or written to) `key` into L1, unless an eviction of that key
    /// happened since the key was resolved (the value may be the one the eviction was about).
    ///
    /// The ticket is checked again after the insert: an eviction that slipped in between the
    /// first check and the insert would otherwise be undone by it, so the copy is taken out again.
    pub(crate) fn local_insert<'a, T: Clone + Send + Sync + 'static>(
        &self,
        key: &EntryKey,
        value: &T,
        timing: Timing,
        tags: impl IntoIterator<Item = (&'a str, TagTimes)>,
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
            tags: tags.into_iter().map(|(t, v)| (t.to_owned(), v)).collect(),
            expires_at: now + inner.bus.l1_ttl(ttl),
            inserted: now,
            version: key.version,
        };
        local.insert(user_key, entry);
        if inner.bus.tickets.ticket(user_key) != *ticket {
            local.remove_if_inserted_at(user_key, now);
        }
    }

    // ----- writes -------------------------------------------------------------------------------

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
        Ok(LoadStart {
            key: full_key,
            seen,
            versions,
            stamp_ms: self.load_stamp_ms(),
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
        let mut versions = start.versions.clone();
        // Late tags known (and kept current by the bus) since before the load started: their
        // versions then are the ones known now. The others are read now, and a record raised
        // after the load started (Redis time against a lower bound of it) means an
        // invalidation may have raced the load: not stored.
        let mut unknown: Vec<&str> = Vec::new();
        for tag in late_tags {
            match inner.tag_book.get(tag) {
                Some(record)
                    if inner.bus.is_trusted(record.trust) && record.trust.at <= start.started =>
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
        let ttl = self.entry_ttl(&timing, !versions.is_empty());
        let stored = self
            .store_op(inner.store.fill_if(&start.key, bytes, ttl, &start.seen))
            .await?;
        if stored {
            let tags = versions.iter().map(|(t, v)| (t.as_str(), *v));
            self.local_insert(&start.key, value, timing, tags, ttl);
        } else {
            tracing::debug!(cache = %inner.name, "a write or delete raced this load; not storing it");
        }
        Ok(stored)
    }

    /// Whether something this process knows already makes an entry with `versions` under `key`
    /// invalid (a newer namespace epoch, a newer tag version, an invalidation not yet in Redis).
    fn superseded(&self, key: &EntryKey, versions: &[(String, TagTimes)]) -> bool {
        let inner = &self.inner;
        if key.version == UNKNOWN_EPOCH || key.version != inner.namespace.get().version {
            return true;
        }
        if self.has_pending_tags(versions.iter().map(|(tag, _)| tag.as_str())) {
            return true;
        }
        versions.iter().any(|(tag, recorded)| {
            inner
                .tag_book
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
        let full_key = match self.entry_key_checked(key).await {
            Ok(full_key) => full_key,
            Err((_, Error::BreakerOpen)) => return Ok(None),
            Err((_, err)) => return Err(err),
        };
        let bytes = match self.store_op(self.inner.store.get(&full_key)).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) | Err(Error::BreakerOpen) => return Ok(None),
            Err(err) => return Err(err),
        };
        if self.pending_covers(key) {
            return Ok(None);
        }
        let envelope = match Envelope::parse(&bytes) {
            Ok(envelope) => envelope,
            Err(DecodeError::Deleted) => return Ok(None),
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
                self.local_insert(&full_key, &value, timing, envelope.tag_versions(), ttl);
                Ok(Some(value))
            }
            Err(why) => {
                self.note_corrupt(key, why);
                Ok(None)
            }
        }
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
        let inner = &self.inner;
        inner.flights.detach_key(key);
        inner.bus.tickets.bump(key);
        let written = async {
            for _ in 0..EPOCH_ATTEMPTS {
                let full_key = self.entry_key_checked(key).await.map_err(|(_, err)| err)?;
                let versions = self.load_versions(&policy.tags).await?;
                let timing = self.entry_timing(policy, self.load_stamp_ms(), Duration::ZERO);
                let bytes = self.encode_entry(value, policy, timing, &versions)?;
                let ttl = self.entry_ttl(&timing, !versions.is_empty());
                self.store_op(inner.store.set(&full_key, bytes, ttl))
                    .await?;
                if self.epoch_still(full_key.version).await? {
                    let tags = versions.iter().map(|(t, v)| (t.as_str(), *v));
                    self.local_insert(&full_key, value, timing, tags, ttl);
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
                    self.remember_pending(|pending| {
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
                if let Some(local) = &inner.local {
                    local.remove(key);
                }
                self.remember_pending(|pending| {
                    pending.keys.insert(key.to_owned());
                });
                Ok(())
            }
            Err(err) => {
                // Not written, and Redis answers: the old value goes now (or, if even that
                // fails, is recorded and replayed by `delete`).
                if let Some(local) = &inner.local {
                    local.remove(key);
                }
                let _ = Box::pin(self.delete(key)).await;
                Err(err)
            }
        }
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
        let inner = &self.inner;
        inner.counters.invalidation();
        inner.flights.detach_key(key);
        self.evict_local(key);
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
        self.evict_local(key);
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

    /// After a write under namespace epoch `epoch`: whether that is still the epoch in Redis.
    /// If it is not (bumped, or lost and repaired, while this process still used the old one),
    /// the write went where nobody reads: the epoch is read again and the caller writes again.
    async fn epoch_still(&self, epoch: u64) -> Result<bool, Error> {
        let inner = &self.inner;
        if !inner.store.is_remote() {
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
        inner.namespace.distrust();
        self.namespace_version().await?;
        Ok(false)
    }

    fn evict_local(&self, key: &str) {
        self.inner.bus.tickets.bump(key);
        if let Some(local) = &self.inner.local {
            local.remove(key);
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
                    Some(times)
                }
                Err(err) => {
                    // Redis did not take it: this process honours it now (pending tags make
                    // entries invalid or expired here) and replays it until Redis takes it.
                    self.remember_pending(|pending| {
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
                inner.tag_book.merge(tag, times, trust);
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
        match &inner.store {
            store if store.is_remote() => {
                static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
                let mut invocation = script(&SCRIPT, BUMP_TAG).prepare_invoke();
                invocation
                    .key(&key)
                    .arg(match field {
                        TagField::Hard => "hard",
                        TagField::Soft => "soft",
                    })
                    .arg(millis(inner.tag_ttl).max(1));
                // Re-running it after a dropped connection only moves the time forward: safe.
                let run = store.invoke(&invocation, true);
                let (hard_ms, soft_ms): (u64, u64) = self.store_op(run).await?;
                Ok(TagTimes { hard_ms, soft_ms })
            }
            store => {
                // One process: the local clock is the reference.
                let current = self.store_op(store.get(&key)).await?;
                let mut times = current
                    .as_deref()
                    .and_then(TagTimes::parse)
                    .unwrap_or_default();
                let now = now_ms();
                match field {
                    TagField::Hard => times.hard_ms = (times.hard_ms + 1).max(now),
                    TagField::Soft => times.soft_ms = (times.soft_ms + 1).max(now),
                }
                let write = store.set(&key, times.render().into_bytes(), inner.tag_ttl);
                self.store_op(write).await?;
                Ok(times)
            }
        }
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
        inner.counters.invalidation();
        match self.bump_namespace_now().await {
            Ok(()) => Ok(()),
            Err(err) => {
                // Not bumped (or not announced): nothing Redis holds is served here until the
                // replay got it in.
                self.remember_pending(|pending| pending.namespace = true);
                inner.flights.detach_all();
                self.forget_local();
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
        let trust = inner.bus.trust_now();
        let known = inner.namespace.get().version;
        let (version, bumped_ms) = match &inner.store {
            store if store.is_remote() => {
                let key = inner.keys.version();
                self.store_op(store.namespace_epoch(&key, known, true))
                    .await?
            }
            _ => (known + 1, now_ms()),
        };
        self.learn_namespace(version, Some(bumped_ms), trust);
        self.publish(Message {
            namespace: Some((version, bumped_ms)),
            ..Message::default()
        })
        .await
    }

    fn remember_pending(&self, add: impl FnOnce(&mut Pending)) {
        if !self.inner.bus.is_remote() {
            return;
        }
        self.inner.pending.with(|pending| {
            add(pending);
            pending.overflowed();
        });
        self.inner.counters.pending(self.inner.pending.len());
        self.replay_pending();
    }

    fn forget_pending_key(&self, key: &str) {
        if self.inner.pending.len() > 0 {
            self.inner.pending.with(|pending| pending.keys.remove(key));
            self.inner.counters.pending(self.inner.pending.len());
        }
    }

    fn forget_pending_tag(&self, tag: &str, field: TagField) {
        if self.inner.pending.len() > 0 {
            self.inner.pending.with(|pending| match field {
                TagField::Hard => pending.hard.remove(tag),
                TagField::Soft => pending.soft.remove(tag),
            });
            self.inner.counters.pending(self.inner.pending.len());
        }
    }

    /// Whether an invalidation this process has not got into Redis yet covers `key` itself or
    /// the whole namespace: then nothing Redis holds for it is served here.
    pub(crate) fn pending_covers(&self, key: &str) -> bool {
        self.inner.pending.len() > 0
            && self
                .inner
                .pending
                .with(|pending| pending.namespace || pending.keys.contains(key))
    }

    /// Whether a hard invalidation of one of `tags` waits for Redis.
    fn has_pending_tags<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> bool {
        if self.inner.pending.len() == 0 {
            return false;
        }
        let tags: Vec<&str> = tags.into_iter().collect();
        self.inner
            .pending
            .with(|pending| pending.namespace || tags.iter().any(|tag| pending.hard.contains(*tag)))
    }

    /// The validity pending invalidations impose on an entry with `tags` (`Valid` when none).
    fn pending_validity<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> Validity {
        if self.inner.pending.len() == 0 {
            return Validity::Valid;
        }
        let tags: Vec<&str> = tags.into_iter().collect();
        self.inner.pending.with(|pending| {
            if pending.namespace || tags.iter().any(|tag| pending.hard.contains(*tag)) {
                Validity::Invalid
            } else if tags.iter().any(|tag| pending.soft.contains(*tag)) {
                Validity::Expired
            } else {
                Validity::Valid
            }
        })
    }

    /// Replays, in the background and with backoff, the invalidations and writes Redis did not
    /// take, until none is left (one replayer per cache).
    fn replay_pending(&self) {
        use std::sync::atomic::Ordering;
        let inner = &self.inner;
        if inner.pending.len() == 0 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if inner
            .pending
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
                        .pending
                        .replaying
                        .store(false, Ordering::Release);
                    // Something may have been added between the last check and the store.
                    if cache.inner.pending.len() > 0 {
                        cache.replay_pending();
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
        let pending = inner.pending.with(|pending| Pending {
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
                inner.pending.with(|p| {
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
                let _ = self.delete(&key).await;
            }
        }
        inner.counters.pending(inner.pending.len());
        inner.pending.len() == 0
    }

    /// Drains pending work before the process exits: replays every invalidation and write Redis
    /// has not taken yet, retrying for up to `within`. `Ok` when nothing is left; otherwise
    /// [`Error::Timeout`] (the count is in [`Stats::pending_invalidations`](crate::Stats)).
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
    pub async fn shutdown(&self, within: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        let mut backoff = Duration::from_millis(20);
        loop {
            if self.inner.pending.len() == 0 {
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

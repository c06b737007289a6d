//! The L1 tier and everything this process knows of the store's state: the one owner of
//! whether a copy may be served.
//!
//! [`Knowledge`] holds the L1 tier (moka), the tag and namespace books, the trust stamps the bus
//! keeps current ([`TrustState`], written only by `bus.rs`), the eviction tickets and the
//! invalidations the store has not taken yet ([`MissedBook`]). The read path asks it once per
//! lookup: an L1 hit ([`Knowledge::l1_lookup`]) or the validity of an entry read from the store
//! ([`Knowledge::known_timing`]) is decided here from atomics and moka lookups, with no store call
//! and nothing called above this module. The write path (`cache/write.rs`), coherence
//! (`cache/coherence.rs`: reading what is not known yet) and the bus write into it.
//!
//! # The L1 tier
//!
//! Entries hold the decoded value (`Arc<dyn Any>`), so an L1 hit costs one moka lookup, a downcast
//! and a clone of the value: no Redis call, no decoding. Entries are keyed by the user key (the tier
//! belongs to one cache, so the namespace is implied) and expire at their hard expiry, or after the
//! bus fallback TTL when they were inserted while the invalidation bus was down.
//!
//! The tier is bounded by entries and by bytes: an entry weighs its value's serialized size
//! (uncompressed) plus its key and tags, and at least `max_bytes / max_entries`, so neither bound
//! can be exceeded (a 1 MiB HTTP body and a 40-byte price count for what they hold). A value
//! larger than the whole budget is not kept in L1.
//!
//! An entry remembers the namespace version it was read under and its tags with the versions its
//! load saw, so a namespace bump or a tag invalidation makes it unservable at once (checked on
//! every L1 hit against the tag versions the process knows), without scanning the tier.
//!
//! # Trust
//!
//! Pub/sub delivers at most once, so every fact cached here carries a [`Trust`] stamp: a fact
//! fetched while the bus was subscribed stays current for as long as that subscription lives;
//! any other fact, and every L1 entry while the bus is down, only for the bus fallback TTL.
//!
//! # How an invalidation reaches readers: versions
//!
//! Each tag has a record `<namespace>:__tag:<t>` holding two versions, `"<hard>:<soft>"`.
//! `invalidate_tag(t)` raises the hard one (`expire_tag` the soft one) to
//! `max(previous + 1, Redis TIME in ms)` in a one-key Lua script. A load records the versions of
//! its tags **when it starts** (read with the lookup's `GET`, in the same round trip, or taken
//! from what this process knows), and the entry carries them. A reader treats the entry as
//!
//! - invalid when a tag's hard version is now higher than the entry's (never served), else
//! - expired when a soft version is higher (stale: servable only under the policy's `stale`
//!   grace),
//! - valid when both equal the entry's;
//! - unknown when the record it knows is *older* than the entry's (this process is behind): the
//!   record is read again, and if it is still older it went back (a failover), so invalid.
//!
//! So a load that started before an invalidation cannot resurrect old data, whenever it is
//! written; and no clock is compared: the first reload after an invalidation is stored, and host
//! clock skew does not matter. (Versions are Redis times only so that a recreated record is
//! above every version an older entry can carry.)
//!
//! # Lost bookkeeping is unknown, never "never invalidated"
//!
//! A missing tag record (evicted, expired, a restart without persistence, a failover to a replica
//! that missed the write) is repaired by whoever reads it: recreated as if invalidated just now
//! (both versions = Redis TIME), so every entry written before the loss is invalid. The namespace
//! epoch (`<namespace>:__ver`, folded into every entry key) is monotonic: a bump raises it by one;
//! a missing or regressed epoch is repaired to `max(known + 1, Redis TIME in ms)` by any instance
//! that notices, announced on the bus, and merged with `max` by everyone, so all instances
//! converge on one epoch above every epoch used before.
//!
//! # Bounded bookkeeping
//!
//! Tag records expire after the tag TTL (default 7 days); tagged entries never live longer in
//! Redis than that. A record that expired before an entry carrying it makes that entry invalid
//! (repaired, see above): a reload, never a stale read. The tag versions a process knows are
//! cached in a bounded moka map and kept current by the bus.

use std::{
    any::Any,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use moka::{ops::compute::Op, sync::Cache as MokaCache, Expiry};

pub(crate) use crate::store::TagTimes;
use crate::{envelope::Timing, keys::KeySpace, util};

/// Whether a cached fact (tag times, namespace version, L1 entry) is still current.
///
/// A fact fetched while the bus was subscribed stays current for as long as the same subscription
/// lives: every later change arrives as a message. Otherwise it is trusted for a short TTL.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trust {
    /// The bus generation that was live when the fact was fetched; 0 when the bus was down.
    pub(crate) generation: u64,
    pub(crate) at: Instant,
}

impl TagTimes {
    /// The later of each version.
    fn max(self, other: TagTimes) -> TagTimes {
        TagTimes {
            hard_ms: self.hard_ms.max(other.hard_ms),
            soft_ms: self.soft_ms.max(other.soft_ms),
        }
    }
}

/// What a reader may do with an entry, given its tags and `created_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Validity {
    /// No tag was invalidated or expired since the entry's load started.
    Valid,
    /// A tag was soft-expired (`expire_tag`) since: serve only under the `stale` grace, refresh.
    Expired,
    /// A tag was invalidated since (or its state could not be read): never serve it.
    Invalid,
}

impl Validity {
    /// Combines the verdicts of several tags (the worst wins).
    pub(crate) fn and(self, other: Validity) -> Validity {
        use Validity::*;
        match (self, other) {
            (Invalid, _) | (_, Invalid) => Invalid,
            (Expired, _) | (_, Expired) => Expired,
            _ => Valid,
        }
    }

    /// The verdict for an entry whose load started when the tag's record was `recorded`, now that
    /// the record is `current`. `None` when `current` is older than what the entry saw: this
    /// process's knowledge is behind (read the record again); if the record read from the store is
    /// still older, it went back (lost and repaired, a failover): the entry is invalid.
    pub(crate) fn of(current: TagTimes, recorded: TagTimes) -> Option<Validity> {
        use std::cmp::Ordering::*;
        match (
            current.hard_ms.cmp(&recorded.hard_ms),
            current.soft_ms.cmp(&recorded.soft_ms),
        ) {
            (Greater, _) => Some(Validity::Invalid),
            (Less, _) => None,
            (Equal, Greater) => Some(Validity::Expired),
            (Equal, Less) => None,
            (Equal, Equal) => Some(Validity::Valid),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct TagRecord {
    pub(crate) times: TagTimes,
    pub(crate) trust: Trust,
}

/// The tag times this process knows: a bounded map, refreshed by fetches and bus messages.
pub(crate) struct TagBook {
    map: MokaCache<Arc<str>, TagRecord>,
}

impl TagBook {
    pub(crate) fn new(max_tags: u64) -> Self {
        TagBook {
            map: MokaCache::builder().max_capacity(max_tags.max(1)).build(),
        }
    }

    pub(crate) fn get(&self, tag: &str) -> Option<TagRecord> {
        self.map.get(tag)
    }

    /// Merges newer knowledge: times only move forward; the trust stamp is the newer one.
    pub(crate) fn merge(&self, tag: &str, times: TagTimes, trust: Trust) {
        self.map.entry(Arc::from(tag)).and_compute_with(|current| {
            let times = match current {
                Some(entry) => entry.value().times.max(times),
                None => times,
            };
            Op::Put(TagRecord { times, trust })
        });
    }
}

/// The namespace version this process knows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NamespaceRecord {
    pub(crate) version: u64,
    /// `None` until the version was read from the store once.
    pub(crate) trust: Option<Trust>,
}

/// Holds the namespace version; refreshes are serialised so a cold start is one GET.
///
/// Read on every cache operation, so reads are lock-free and write nothing shared (`arc-swap`);
/// writers serialise on a mutex and publish a new record.
pub(crate) struct NamespaceBook {
    current: arc_swap::ArcSwap<NamespaceRecord>,
    writer: Mutex<()>,
    pub(crate) refresh: tokio::sync::Mutex<()>,
}

impl NamespaceBook {
    pub(crate) fn new() -> Self {
        NamespaceBook {
            current: arc_swap::ArcSwap::from_pointee(NamespaceRecord {
                version: 0,
                trust: None,
            }),
            writer: Mutex::new(()),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn get(&self) -> NamespaceRecord {
        **self.current.load()
    }

    /// Stops trusting the known version (it is read again by the next operation).
    pub(crate) fn distrust(&self) {
        let _writing = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut record = self.get();
        if let Some(trust) = record.trust.as_mut() {
            trust.generation = 0;
            trust.at = Instant::now()
                .checked_sub(Duration::from_secs(24 * 3600))
                .unwrap_or(trust.at);
        }
        self.current.store(Arc::new(record));
    }

    /// Merges a version learned from the store, a message or our own bump. Returns whether the
    /// version moved forward.
    pub(crate) fn merge(&self, version: u64, trust: Trust) -> bool {
        let _writing = crate::util::lock(&self.writer);
        let mut record = self.get();
        let advanced = version > record.version;
        if advanced {
            record.version = version;
        }
        record.trust = Some(trust);
        self.current.store(Arc::new(record));
        advanced
    }
}

/// Counters that make L1 fills racing an eviction harmless: a reader takes a ticket for its key
/// before it reads Redis, and its L1 insert is dropped if an eviction of a key in the same slot
/// (or a clear) happened in between.
pub(crate) struct Tickets {
    slots: Box<[AtomicU64]>,
}

impl Tickets {
    pub(crate) fn new(slots: usize) -> Self {
        Tickets {
            slots: (0..slots.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(&self, key: &str) -> &AtomicU64 {
        let hash = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        let index = usize::try_from(hash % self.slots.len() as u64).unwrap_or(0);
        &self.slots[index]
    }

    pub(crate) fn ticket(&self, key: &str) -> u64 {
        self.slot(key).load(Ordering::Acquire)
    }

    pub(crate) fn bump(&self, key: &str) {
        self.slot(key).fetch_add(1, Ordering::AcqRel);
    }

    /// Moves the ticket of `key`'s slot from `from` to the next one, if nothing bumped it since
    /// `from` was taken; returns the new ticket. Fills holding `from` (or an older one) are
    /// refused from then on.
    pub(crate) fn advance(&self, key: &str, from: u64) -> Option<u64> {
        let next = from.wrapping_add(1);
        self.slot(key)
            .compare_exchange(from, next, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| next)
    }

    pub(crate) fn bump_all(&self) {
        for slot in self.slots.iter() {
            slot.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Invalidations and writes Redis did not take (breaker open, timeout, lost `PUBLISH`): this
/// process honours them at once (entries they cover are not served from L1 or Redis here, and
/// loads covered by them are not stored), and a background task replays them with backoff until
/// Redis takes them, whether or not the breaker opened, so the other instances follow. Bounded:
/// past [`MAX_PENDING`] entries the replay becomes one namespace bump, which covers everything.
#[derive(Debug, Default)]
pub(crate) struct MissedInvalidations {
    pub(crate) hard: std::collections::BTreeSet<String>,
    pub(crate) soft: std::collections::BTreeSet<String>,
    pub(crate) keys: std::collections::BTreeSet<String>,
    pub(crate) namespace: bool,
}

const MAX_PENDING: usize = 10_000;

impl MissedInvalidations {
    pub(crate) fn is_empty(&self) -> bool {
        !self.namespace && self.hard.is_empty() && self.soft.is_empty() && self.keys.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.hard.len() + self.soft.len() + self.keys.len() + usize::from(self.namespace)
    }

    pub(crate) fn overflowed(&mut self) {
        if self.len() > MAX_PENDING {
            *self = MissedInvalidations {
                namespace: true,
                ..MissedInvalidations::default()
            };
        }
    }
}

/// The pending set with a lock-free "anything pending?" for the read path.
#[derive(Debug, Default)]
pub(crate) struct MissedBook {
    set: std::sync::Mutex<MissedInvalidations>,
    len: std::sync::atomic::AtomicUsize,
    pub(crate) replaying: std::sync::atomic::AtomicBool,
}

impl MissedBook {
    /// How many invalidations and writes wait for Redis.
    pub(crate) fn len(&self) -> usize {
        self.len.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut MissedInvalidations) -> R) -> R {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut set);
        self.len
            .store(set.len(), std::sync::atomic::Ordering::Release);
        out
    }
}

/// The Redis key of an entry, resolved with the current namespace version, plus what an L1 fill
/// after reading it needs (derefs to the Redis key).
#[derive(Debug, Clone)]
pub(crate) struct EntryKey {
    redis: String,
    /// The namespace epoch it was resolved under (`UNKNOWN_EPOCH` in `cache/write.rs` when none could be read).
    pub(crate) version: u64,
    /// What an L1 fill needs, only when there is an L1 tier (no allocation otherwise): the
    /// caller's key and the eviction ticket taken before the read (see [`Tickets`]).
    l1: Option<(String, u64)>,
}

impl EntryKey {
    /// The key `redis` of an entry under namespace epoch `version`, with the L1 fill ticket
    /// ([`Knowledge::fill_ticket`]).
    pub(crate) fn new(redis: String, version: u64, l1: Option<(String, u64)>) -> Self {
        EntryKey { redis, version, l1 }
    }
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

/// What an L1 fill ([`Knowledge::l1_fill`]) follows, which decides what it does with its key's
/// eviction ticket (taken when the key was resolved, before the store was read or written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FillAfter {
    /// A read of the store (or a fill after a load): the value goes in unless an eviction of the
    /// key happened since the ticket was taken (the value may be the one the eviction was
    /// about). The ticket is checked again after the insert: an eviction that slipped in between
    /// the first check and the insert would otherwise be undone by it, so the copy is taken out
    /// again.
    Read,
    /// `set`'s write, once the store took it: the L1 copy from before the write goes, whatever
    /// happens, and the value takes its place unless the key was evicted since it was resolved.
    /// The ticket is moved on (only from the one taken before the write): a reader that read the
    /// store before the write landed holds an older ticket, so its L1 fill of the previous value
    /// is refused from here on, even if it comes after this one. If anything else moved the
    /// ticket meanwhile (an eviction of a key sharing the slot, a bus message, a clear), the value
    /// is not inserted, but the previous copy is still removed: the next read goes to the store,
    /// which holds the value or something newer.
    Write,
}

/// What an L1 copy ([`Knowledge::l1_fill`]) is made of.
pub(crate) struct L1Copy<'v, T, I> {
    /// The decoded value.
    pub(crate) value: &'v T,
    pub(crate) timing: Timing,
    /// Its tags with the versions its load saw.
    pub(crate) tags: I,
    /// How long it may live (its hard expiry, or less while the bus is down).
    pub(crate) ttl: Duration,
    /// Its serialized size (its weight, with its tags).
    pub(crate) serialized_len: usize,
}

/// The bus's state as far as trusting local facts goes. The bus (`bus.rs`) is its only writer;
/// everything that decides whether a local fact may be used reads it here.
pub(crate) struct TrustState {
    /// Whether other processes share the store (then a bus runs and facts need stamps).
    remote: bool,
    started: AtomicBool,
    up: AtomicBool,
    generation: AtomicU64,
    /// When the subscription was last lost (or the bus started); meaningful while down.
    down_since: Mutex<Instant>,
    fallback_ttl: Duration,
}

impl TrustState {
    /// The trust state of a cache whose store is shared with other processes (`remote`) or not;
    /// while the bus is down, facts are trusted for `fallback_ttl`.
    pub(crate) fn new(remote: bool, fallback_ttl: Duration) -> Self {
        TrustState {
            remote,
            started: AtomicBool::new(false),
            up: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            down_since: Mutex::new(Instant::now()),
            fallback_ttl,
        }
    }

    /// Whether there is a bus at all (a store shared with other processes).
    pub(crate) fn is_remote(&self) -> bool {
        self.remote
    }

    /// Whether the subscriber task is running (it may still be connecting).
    pub(crate) fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// A stamp for a fact about to be fetched (take it *before* sending the read).
    pub(crate) fn trust_now(&self) -> Trust {
        let generation = if self.is_up() {
            self.generation.load(Ordering::Acquire)
        } else {
            0
        };
        Trust {
            generation,
            at: Instant::now(),
        }
    }

    /// Whether a fact stamped `trust` is still current.
    pub(crate) fn is_trusted(&self, trust: Trust) -> bool {
        if !self.is_remote() {
            return true;
        }
        (trust.generation != 0
            && self.is_up()
            && trust.generation == self.generation.load(Ordering::Acquire))
            || trust.at.elapsed() < self.fallback_ttl
    }

    /// Whether an L1 entry inserted at `inserted` may be served.
    pub(crate) fn l1_trusted(&self, inserted: Instant) -> bool {
        if !self.is_remote() || self.is_up() {
            return true;
        }
        let down_since = *util::lock(&self.down_since);
        down_since.max(inserted).elapsed() < self.fallback_ttl
    }

    /// How long an L1 entry inserted now may live at most (short while the bus is down).
    pub(crate) fn l1_ttl(&self, ttl: Duration) -> Duration {
        if !self.is_remote() || self.is_up() {
            ttl
        } else {
            ttl.min(self.fallback_ttl)
        }
    }

    /// The bus: marks the subscriber started; `false` if it already was.
    pub(crate) fn mark_started(&self) -> bool {
        self.started
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The bus: the subscriber task ended.
    pub(crate) fn mark_stopped(&self) {
        self.started.store(false, Ordering::Release);
    }

    /// The bus: a new subscription is live; returns its generation.
    pub(crate) fn mark_up(&self) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.up.store(true, Ordering::Release);
        generation
    }

    /// The bus: down as of `since` (the last moment it was known to work: L1 copies and facts
    /// are trusted only the fallback TTL from then).
    pub(crate) fn mark_down_since(&self, since: Instant) {
        if self.up.swap(false, Ordering::AcqRel) {
            *util::lock(&self.down_since) = since;
        }
    }
}

/// Everything this process knows of the store's state, and the L1 copies it may serve: the one
/// owner the read path asks whether a copy may be served (an L1 hit, or the validity of an entry
/// read from the store). The write path and the bus write into it; it calls nothing above it.
pub(crate) struct Knowledge {
    /// The L1 tier, when enabled.
    pub(crate) tier: Option<L1Tier>,
    /// The bus's trust state (written by the bus).
    pub(crate) trust: Arc<TrustState>,
    /// Eviction tickets for L1 fills.
    pub(crate) tickets: Tickets,
    /// Tag times this process knows (bounded; refreshed by the bus).
    pub(crate) tags: TagBook,
    /// The namespace version this process knows.
    pub(crate) namespace: NamespaceBook,
    /// Invalidations and writes the store did not take, honoured here and replayed until it does.
    pub(crate) missed: MissedBook,
    /// Hard tag invalidations of this process sent to the store and not yet recorded in `tags`.
    /// While one is, this process's readers may still trust what it invalidates.
    pub(crate) hard_bumps_in_flight: std::sync::atomic::AtomicUsize,
}

impl Knowledge {
    pub(crate) fn new(tier: Option<L1Tier>, trust: Arc<TrustState>, max_tags: u64) -> Self {
        Knowledge {
            tier,
            trust,
            tickets: Tickets::new(1024),
            tags: TagBook::new(max_tags),
            namespace: NamespaceBook::new(),
            missed: MissedBook::default(),
            hard_bumps_in_flight: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// What an L1 fill after reading `key` needs: the key and its ticket, taken now (before the
    /// read); `None` without an L1 tier (no allocation).
    pub(crate) fn fill_ticket(&self, key: &str) -> Option<(String, u64)> {
        self.tier
            .as_ref()
            .map(|_| (key.to_owned(), self.tickets.ticket(key)))
    }

    /// The entry key of `key` when the namespace version needs no refresh (steady state: no
    /// await, nothing read); `None` when it must be read first (`Cache::entry_key`).
    pub(crate) fn entry_key(&self, key: &str, keys: &KeySpace) -> Option<EntryKey> {
        let l1 = self.fill_ticket(key);
        let version = self.trusted_version()?;
        Some(EntryKey::new(keys.entry(key, version), version, l1))
    }

    /// The namespace version if it needs no refresh (and the bus is running).
    pub(crate) fn trusted_version(&self) -> Option<u64> {
        let record = self.namespace.get();
        let trusted = !self.trust.is_remote()
            || (self.trust.is_started() && record.trust.is_some_and(|t| self.trust.is_trusted(t)));
        trusted.then_some(record.version)
    }

    /// The tags of `tags` whose records this process does not know (or no longer trusts): what a
    /// lookup reads along with the entry.
    pub(crate) fn untrusted_tags<'t>(&self, tags: &'t [String]) -> Vec<&'t str> {
        tags.iter()
            .filter(|tag| {
                !self
                    .tags
                    .get(tag)
                    .is_some_and(|record| self.trust.is_trusted(record.trust))
            })
            .map(String::as_str)
            .collect()
    }

    /// The validity of an entry from local knowledge only; `None` if a tag's record is unknown,
    /// no longer trusted, or older than the entry's.
    pub(crate) fn known_validity<'a>(
        &self,
        tags: impl IntoIterator<Item = (&'a str, TagTimes)>,
    ) -> Option<Validity> {
        let mut verdict = Validity::Valid;
        for (tag, recorded) in tags {
            let record = self.tags.get(tag)?;
            if !self.trust.is_trusted(record.trust) {
                return None;
            }
            verdict = verdict.and(Validity::of(record.times, recorded)?);
        }
        Some(verdict)
    }

    /// Whether an invalidation this process has not got into the store yet covers `key` itself
    /// or the whole namespace: then nothing the store holds for it is served here.
    pub(crate) fn pending_covers(&self, key: &str) -> bool {
        self.missed.len() > 0
            && self
                .missed
                .with(|pending| pending.namespace || pending.keys.contains(key))
    }

    /// Whether a hard invalidation of one of `tags` waits for the store.
    pub(crate) fn has_pending_tags<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> bool {
        if self.missed.len() == 0 {
            return false;
        }
        let tags: Vec<&str> = tags.into_iter().collect();
        self.missed
            .with(|pending| pending.namespace || tags.iter().any(|tag| pending.hard.contains(*tag)))
    }

    /// The validity pending invalidations impose on an entry with `tags` (`Valid` when none).
    pub(crate) fn pending_validity<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> Validity {
        if self.missed.len() == 0 {
            return Validity::Valid;
        }
        let tags: Vec<&str> = tags.into_iter().collect();
        self.missed.with(|pending| {
            if pending.namespace || tags.iter().any(|tag| pending.hard.contains(*tag)) {
                Validity::Invalid
            } else if tags.iter().any(|tag| pending.soft.contains(*tag)) {
                Validity::Expired
            } else {
                Validity::Valid
            }
        })
    }

    /// The timing to serve an entry read from the store with (`timing`, its tags with the
    /// versions its load saw), from local knowledge only: `Ok(None)` when an invalidation covers
    /// it; `Err` with the validity pending invalidations impose when a tag's record is not known
    /// here (the caller reads the records: `Cache::unknown_timing`).
    pub(crate) fn known_timing<'a>(
        &self,
        timing: Timing,
        tags: impl IntoIterator<Item = &'a str>,
        versions: impl IntoIterator<Item = (&'a str, TagTimes)>,
        now: u64,
    ) -> Result<Option<Timing>, Validity> {
        // Pending invalidations first: a replay raises the tag versions this process knows before
        // it clears them, so one that is gone by now is seen in the versions read next.
        let pending = self.pending_validity(tags);
        match self.known_validity(versions) {
            Some(validity) => Ok(served_timing(timing, validity.and(pending), now)),
            None => Err(pending),
        }
    }

    /// A fresh L1 value of type `T`, if the tier is enabled and holds one.
    pub(crate) fn l1_get<T: Clone + 'static>(&self, key: &str, now: u64) -> Option<T> {
        self.l1_lookup(key, now)
            .filter(|(_, timing)| timing.fresh_until_ms > now)
            .map(|(value, _)| value)
    }

    /// An L1 value of type `T` that no invalidation covers (fresh or within its grace period).
    /// An L1 hit makes no store call: the namespace version and tag times are checked against
    /// what this process knows; when it does not know them (or the bus is down past its fallback
    /// TTL) this is a miss and the caller reads the store, which refreshes that knowledge.
    pub(crate) fn l1_lookup<T: Clone + 'static>(&self, key: &str, now: u64) -> Option<(T, Timing)> {
        let l1 = self.tier.as_ref()?;
        let entry = l1.get(key)?;
        if entry.timing.stale_until_ms <= now {
            return None;
        }
        if !self.trust.l1_trusted(entry.inserted) {
            l1.remove(key);
            return None;
        }
        // Pending invalidations before the epoch and the tag versions: a replay moves those
        // before it clears the invalidation, so one that is gone by now is seen in them.
        if self.pending_covers(key) {
            return None;
        }
        let pending = self.pending_validity(entry.tags.iter().map(|(tag, _)| tag.as_str()));
        let namespace = self.namespace.get();
        let namespace_trusted =
            !self.trust.is_remote() || namespace.trust.is_some_and(|t| self.trust.is_trusted(t));
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

    /// Mirrors `copy` of `key` into L1 after the store was read or written (see [`FillAfter`]
    /// for how each treats the key's eviction ticket).
    pub(crate) fn l1_fill<'a, T, I>(&self, after: FillAfter, key: &EntryKey, copy: L1Copy<'_, T, I>)
    where
        T: Clone + Send + Sync + 'static,
        I: IntoIterator<Item = (&'a str, TagTimes)>,
    {
        let (Some(l1), Some((user_key, ticket))) = (&self.tier, &key.l1) else {
            return;
        };
        let claimed = match after {
            FillAfter::Read => (self.tickets.ticket(user_key) == *ticket).then_some(*ticket),
            FillAfter::Write => self.tickets.advance(user_key, *ticket),
        };
        match (claimed, after) {
            (Some(ticket), _) => {
                let entry = self.l1_entry(key.version, copy);
                self.l1_put(l1, user_key, ticket, entry);
            }
            (None, FillAfter::Read) => {}
            (None, FillAfter::Write) => {
                self.tickets.bump(user_key);
                l1.remove(user_key);
            }
        }
    }

    /// Evicts the L1 copy of `key` and bumps its ticket (fills in flight for it are dropped).
    pub(crate) fn evict(&self, key: &str) {
        self.tickets.bump(key);
        if let Some(l1) = &self.tier {
            l1.remove(key);
        }
    }

    /// Empties L1 and bumps every ticket (anything learned before may be out of date).
    pub(crate) fn forget_l1(&self) {
        self.tickets.bump_all();
        if let Some(l1) = &self.tier {
            l1.clear();
        }
    }

    /// An L1 entry for `value`, read or written under namespace epoch `version`.
    fn l1_entry<'a, T, I>(&self, version: u64, copy: L1Copy<'_, T, I>) -> L1Entry
    where
        T: Clone + Send + Sync + 'static,
        I: IntoIterator<Item = (&'a str, TagTimes)>,
    {
        let now = Instant::now();
        let tags: Arc<[(String, TagTimes)]> = copy
            .tags
            .into_iter()
            .map(|(t, v)| (t.to_owned(), v))
            .collect();
        let tag_bytes: usize = tags.iter().map(|(t, _)| t.len() + 16).sum();
        L1Entry {
            value: Arc::new(copy.value.clone()),
            timing: copy.timing,
            expires_at: now + self.trust.l1_ttl(copy.ttl),
            inserted: now,
            version,
            bytes: copy.serialized_len.saturating_add(tag_bytes) as u64,
            tags,
        }
    }

    /// Inserts `entry` for `user_key`, then takes it out again if the key's ticket is no longer
    /// `ticket` (an eviction slipped in between the caller's check and the insert).
    fn l1_put(&self, l1: &L1Tier, user_key: &str, ticket: u64, entry: L1Entry) {
        let inserted = entry.inserted;
        l1.insert(user_key, entry);
        if self.tickets.ticket(user_key) != ticket {
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
pub(crate) fn served_timing(timing: Timing, validity: Validity, now: u64) -> Option<Timing> {
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

/// One decoded value in L1.
#[derive(Clone)]
pub(crate) struct L1Entry {
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    pub(crate) timing: Timing,
    /// Its tags with the versions its load saw.
    pub(crate) tags: Arc<[(String, TagTimes)]>,
    /// When this copy stops being trusted (hard expiry, or sooner while the bus is down).
    pub(crate) expires_at: Instant,
    /// When it was inserted (while the bus is down, copies live only the fallback TTL).
    pub(crate) inserted: Instant,
    /// The namespace version it belongs to.
    pub(crate) version: u64,
    /// Bytes it holds: its value's serialized size plus its tags (the key is added when weighed).
    pub(crate) bytes: u64,
}

/// Entries of the L1 tier a cache on the embedded in-memory store keeps when
/// [`CacheBuilder::local`](crate::CacheBuilder::local) is not given (see
/// [`CacheBuilder::memory_max_bytes`](crate::CacheBuilder::memory_max_bytes)).
pub const IMPLICIT_L1_ENTRIES: u64 = 100_000;

/// Default byte budget of the L1 tier ([`CacheBuilder::local_max_bytes`](crate::CacheBuilder::local_max_bytes)).
pub const DEFAULT_L1_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes of bookkeeping counted per entry besides its key and value.
const ENTRY_OVERHEAD: u64 = 128;

struct UntilExpiry;

impl Expiry<Arc<str>, Arc<L1Entry>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _: &Arc<str>,
        e: &Arc<L1Entry>,
        now: Instant,
    ) -> Option<Duration> {
        Some(e.expires_at.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &Arc<str>,
        e: &Arc<L1Entry>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.expires_at.saturating_duration_since(now))
    }
}

/// Bounded L1 tier. Entries are shared (`Arc`): a hit clones one pointer out of moka, not the
/// entry's fields.
#[derive(Clone)]
pub(crate) struct L1Tier {
    entries: MokaCache<Arc<str>, Arc<L1Entry>>,
}

impl L1Tier {
    /// A tier of at most `max_entries` holding at most `max_bytes`; `on_evict` is called for each
    /// entry pushed out by the size bound (not for expiries or explicit removals).
    pub(crate) fn new(
        max_entries: u64,
        max_bytes: u64,
        on_evict: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        // Every entry weighs at least `floor`, so at most `max_entries` fit in `max_bytes`.
        let capacity = if max_entries == 0 { 0 } else { max_bytes };
        let floor = max_bytes / max_entries.max(1);
        L1Tier {
            entries: MokaCache::builder()
                .max_capacity(capacity)
                .weigher(move |key: &Arc<str>, entry: &Arc<L1Entry>| {
                    let bytes = entry
                        .bytes
                        .saturating_add(key.len() as u64)
                        .saturating_add(ENTRY_OVERHEAD)
                        .max(floor);
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .expire_after(UntilExpiry)
                .eviction_listener(move |_key, _value, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        on_evict();
                    }
                })
                .build(),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<L1Entry>> {
        self.entries.get(key)
    }

    pub(crate) fn insert(&self, key: &str, entry: L1Entry) {
        self.entries.insert(Arc::from(key), Arc::new(entry));
    }

    pub(crate) fn remove(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// Removes the entry of `key` only if it is the one inserted at `inserted` (a newer copy stays).
    pub(crate) fn remove_if_inserted_at(&self, key: &str, inserted: Instant) {
        self.entries
            .entry(Arc::from(key))
            .and_compute_with(|current| match current {
                Some(entry) if entry.value().inserted == inserted => moka::ops::compute::Op::Remove,
                _ => moka::ops::compute::Op::Nop,
            });
    }

    pub(crate) fn clear(&self) {
        self.entries.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::now_ms;

    fn entry(bytes: u64) -> L1Entry {
        let now = Instant::now();
        L1Entry {
            value: Arc::new(()),
            timing: Timing {
                created_ms: 0,
                fresh_until_ms: u64::MAX / 2,
                stale_until_ms: u64::MAX / 2,
                delta_ms: 0,
            },
            tags: Arc::from(Vec::new()),
            expires_at: now + Duration::from_secs(60),
            inserted: now,
            version: 0,
            bytes,
        }
    }

    fn trust() -> Trust {
        Trust {
            generation: 1,
            at: Instant::now(),
        }
    }

    #[test]
    fn entries_are_valid_only_under_the_versions_their_load_saw() {
        let v = |hard_ms, soft_ms| TagTimes { hard_ms, soft_ms };
        let recorded = v(1_000, 2_000);
        assert_eq!(
            Validity::of(v(1_000, 2_000), recorded),
            Some(Validity::Valid)
        );
        assert_eq!(
            Validity::of(v(1_001, 2_000), recorded),
            Some(Validity::Invalid)
        );
        assert_eq!(Validity::of(v(1_001, 1), recorded), Some(Validity::Invalid));
        assert_eq!(
            Validity::of(v(1_000, 2_001), recorded),
            Some(Validity::Expired)
        );
        // What this process knows is older than what the entry saw: unknown.
        assert_eq!(Validity::of(v(999, 2_000), recorded), None);
        assert_eq!(Validity::of(v(1_000, 1_999), recorded), None);
        assert_eq!(
            Validity::Valid.and(Validity::Expired).and(Validity::Valid),
            Validity::Expired
        );
        assert_eq!(Validity::Expired.and(Validity::Invalid), Validity::Invalid);
    }

    #[test]
    fn tag_times_round_trip_and_reject_garbage() {
        let times = TagTimes {
            hard_ms: 17,
            soft_ms: 4,
        };
        assert_eq!(TagTimes::parse(times.render().as_bytes()), Some(times));
        assert_eq!(TagTimes::parse(b"17"), None);
        assert_eq!(TagTimes::parse(b"x:1"), None);
        assert_eq!(TagTimes::parse(&[0xff, b':', b'1']), None);
    }

    #[test]
    fn the_book_never_moves_times_back() {
        let book = TagBook::new(10);
        let t = |hard_ms, soft_ms| TagTimes { hard_ms, soft_ms };
        book.merge("a", t(10, 0), trust());
        book.merge("a", t(5, 7), trust());
        assert_eq!(book.get("a").map(|r| r.times), Some(t(10, 7)));
        assert!(book.get("b").is_none());
    }

    #[test]
    fn the_book_is_bounded() {
        let book = TagBook::new(100);
        for i in 0..10_000 {
            book.merge(&format!("tag:{i}"), TagTimes::default(), trust());
        }
        book.map.run_pending_tasks();
        assert!(book.map.entry_count() <= 100, "{}", book.map.entry_count());
    }

    #[test]
    fn namespace_versions_only_move_forward() {
        let book = NamespaceBook::new();
        assert!(book.merge(3, trust()));
        assert!(!book.merge(2, trust()));
        assert_eq!(book.get().version, 3);
    }
    #[test]
    fn tickets_change_when_their_slot_is_bumped() {
        let tickets = Tickets::new(64);
        let before = tickets.ticket("a");
        tickets.bump("a");
        assert_ne!(tickets.ticket("a"), before);
        let before = tickets.ticket("b");
        tickets.bump_all();
        assert_ne!(tickets.ticket("b"), before);
    }

    #[test]
    fn a_ticket_advances_only_from_the_current_one() {
        let tickets = Tickets::new(64);
        let taken = tickets.ticket("a");
        let next = tickets.advance("a", taken).expect("nothing bumped it");
        assert_eq!(tickets.ticket("a"), next);
        assert_ne!(next, taken);
        assert_eq!(
            tickets.advance("a", taken),
            None,
            "a stale ticket cannot advance"
        );
        tickets.bump("a");
        assert_eq!(
            tickets.advance("a", next),
            None,
            "bumped since it was taken"
        );
    }

    #[test]
    fn without_redis_everything_is_trusted() {
        let bus = TrustState::new(false, Duration::ZERO);
        let stale = Trust {
            generation: 0,
            at: Instant::now() - Duration::from_secs(3600),
        };
        assert!(bus.is_trusted(stale));
        assert!(bus.l1_trusted(stale.at));
    }

    #[test]
    fn while_down_facts_live_only_the_fallback_ttl() {
        // A shared store whose bus is down.
        let bus = TrustState::new(true, Duration::from_millis(200));
        let fresh = bus.trust_now();
        assert_eq!(fresh.generation, 0);
        assert!(bus.is_trusted(fresh));
        let old = Trust {
            generation: 0,
            at: Instant::now() - Duration::from_secs(1),
        };
        assert!(!bus.is_trusted(old));
        assert_eq!(
            bus.l1_ttl(Duration::from_secs(60)),
            Duration::from_millis(200)
        );
    }

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

    #[test]
    fn bounded_by_bytes_and_by_entries() {
        let evicted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = evicted.clone();
        // 1000 entries, 1 MiB: ten 256 KiB values cannot all stay.
        let tier = L1Tier::new(1000, 1024 * 1024, move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        for i in 0..10 {
            tier.insert(&format!("big{i}"), entry(256 * 1024));
        }
        tier.entries.run_pending_tasks();
        assert!(tier.entries.weighted_size() <= 1024 * 1024);
        assert!(
            tier.entries.entry_count() <= 4,
            "{}",
            tier.entries.entry_count()
        );
        assert!(evicted.load(std::sync::atomic::Ordering::Relaxed) >= 6);
        // Small values: the entry bound applies (each weighs at least 1 MiB / 1000).
        let tier = L1Tier::new(10, 1024 * 1024, || {});
        for i in 0..50 {
            tier.insert(&format!("small{i}"), entry(8));
        }
        tier.entries.run_pending_tasks();
        assert!(
            tier.entries.entry_count() <= 10,
            "{}",
            tier.entries.entry_count()
        );
        // A value larger than the whole budget is not kept.
        let tier = L1Tier::new(10, 1024, || {});
        tier.insert("huge", entry(4096));
        tier.entries.run_pending_tasks();
        assert!(tier.get("huge").is_none());
    }
}

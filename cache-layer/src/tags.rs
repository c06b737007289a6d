//! Tag and namespace invalidation state, and the clock entries are stamped with.
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
//! # The clock
//!
//! Entry stamps (`created_ms`, the base of `Age` and early refresh) are a lower bound of the Redis
//! clock: each process measures its offset to it (best of a few `TIME` round trips) on first use,
//! with or without a bus, and the bus re-measures it every minute. Before a measurement exists
//! stamps subtract the configured worst-case skew (`CacheBuilder::clock_skew`, default 1 s).
//! Validity never depends on it.
//!
//! # Bounded bookkeeping
//!
//! Tag records expire after the tag TTL (default 7 days); tagged entries never live longer in
//! Redis than that. A record that expired before an entry carrying it makes that entry invalid
//! (repaired, see above): a reload, never a stale read. The tag versions a process knows are
//! cached in a bounded moka map and kept current by the bus.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use moka::{ops::compute::Op, sync::Cache as MokaCache};

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

pub(crate) use crate::store::TagTimes;

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

/// Whose clock a cache's entry stamps and tag times follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClockReference {
    /// The store lives in this process: its clock is the local one (nothing to measure).
    Local,
    /// A shared store: its clock, estimated from `TIME` readings (see the module docs).
    Store,
}

/// One measurement of the Redis clock against the local monotonic clock.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    redis_ms: f64,
    err_ms: f64,
}

/// The Redis server clock as seen from this process (see the module docs on skew).
pub(crate) struct RedisClock {
    sample: Mutex<Option<Sample>>,
    /// Assumed worst-case skew before a measurement exists.
    unmeasured_skew_ms: u64,
    /// Whose clock entry stamps follow.
    reference: ClockReference,
}

/// Drift allowance of the local monotonic clock against the Redis clock (100 ppm).
const DRIFT: f64 = 1e-4;

impl RedisClock {
    pub(crate) fn new(reference: ClockReference, unmeasured_skew: Duration) -> Self {
        RedisClock {
            sample: Mutex::new(None),
            unmeasured_skew_ms: u64::try_from(unmeasured_skew.as_millis()).unwrap_or(u64::MAX),
            reference,
        }
    }

    /// The current Redis time estimate and its error bound.
    fn estimate(&self) -> Option<(f64, f64)> {
        let sample = (*crate::util::lock(&self.sample))?;
        let elapsed = sample.at.elapsed().as_secs_f64() * 1000.0;
        Some((
            sample.redis_ms + elapsed,
            sample.err_ms + elapsed * DRIFT + 1.0,
        ))
    }

    /// A lower bound of the Redis clock now: what load starts are stamped with.
    pub(crate) fn lower_ms(&self) -> u64 {
        let wall = crate::util::now_ms();
        if self.reference == ClockReference::Local {
            return wall;
        }
        match self.estimate() {
            Some((now, err)) => (now - err).max(0.0) as u64,
            None => wall.saturating_sub(self.unmeasured_skew_ms),
        }
    }

    /// An upper bound of the Redis clock now: used for invalidations recorded without Redis.
    pub(crate) fn upper_ms(&self) -> u64 {
        let wall = crate::util::now_ms();
        if self.reference == ClockReference::Local {
            return wall;
        }
        match self.estimate() {
            Some((now, err)) => (now + err).ceil() as u64,
            None => wall.saturating_add(self.unmeasured_skew_ms),
        }
    }

    /// Records a `TIME` reply (`redis_us`, microseconds) sent at `sent` and received at `received`.
    /// Keeps whichever sample gives the tighter bound now.
    pub(crate) fn record(&self, sent: Instant, received: Instant, redis_us: u64) {
        let rtt = received.saturating_duration_since(sent);
        let candidate = Sample {
            at: sent + rtt / 2,
            redis_ms: redis_us as f64 / 1000.0,
            err_ms: rtt.as_secs_f64() * 1000.0 / 2.0 + 1.0,
        };
        let mut slot = crate::util::lock(&self.sample);
        let keep_old = slot.is_some_and(|old| {
            let aged = old.err_ms
                + candidate.at.saturating_duration_since(old.at).as_secs_f64() * 1000.0 * DRIFT;
            aged < candidate.err_ms
        });
        if !keep_old {
            *slot = Some(candidate);
        }
    }

    /// The current error bound in milliseconds (for diagnostics); `None` before a measurement.
    pub(crate) fn error_ms(&self) -> Option<f64> {
        if self.reference == ClockReference::Local {
            return Some(0.0);
        }
        self.estimate().map(|(_, err)| err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn clock_bounds_bracket_the_measured_time() {
        let clock = RedisClock::new(ClockReference::Store, Duration::from_secs(1));
        let wall = crate::util::now_ms();
        assert!(clock.lower_ms() <= wall - 999);
        assert!(clock.upper_ms() >= wall + 999);
        // Redis is 10 s ahead of this host; measured with a 4 ms round trip.
        let sent = Instant::now();
        let redis_us = (wall + 10_000) * 1000;
        clock.record(sent, sent + Duration::from_millis(4), redis_us);
        let (lower, upper) = (clock.lower_ms(), clock.upper_ms());
        assert!(
            lower <= wall + 10_000 && lower >= wall + 10_000 - 10,
            "{lower}"
        );
        assert!(
            upper >= wall + 10_000 && upper <= wall + 10_000 + 10,
            "{upper}"
        );
        // A sloppier sample does not replace a tight one.
        clock.record(
            Instant::now(),
            Instant::now() + Duration::from_millis(400),
            0,
        );
        assert!(clock.lower_ms() >= wall + 9_000);
        let err = clock.error_ms().unwrap();
        assert!((4.0..5.0).contains(&err), "{err}");
    }

    #[test]
    fn namespace_versions_only_move_forward() {
        let book = NamespaceBook::new();
        assert!(book.merge(3, trust()));
        assert!(!book.merge(2, trust()));
        assert_eq!(book.get().version, 3);
    }
}

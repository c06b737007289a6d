//! The in-process side of a counter set: increments coalesce in a map, a pusher task sends them to
//! Redis in idempotent pushes (group commit), and while Redis is unavailable the map is the bounded
//! buffer that keeps them.
//!
//! Life of an increment: `incr` adds it to `BufferState::map` (generation `gen`) and waits. The pusher
//! freezes the map into chunks (each with the next sequence number of this writer), sends them one
//! after the other with the `PUSH` script, and publishes `pushed = gen` when all landed; every
//! waiter of that generation returns. A chunk that failed stays frozen, unchanged, and is sent
//! again with the same sequence number until Redis acknowledges it: the script applies a sequence
//! number at most once, so a push whose reply was lost (Redis killed after applying it) is not
//! counted twice, and one that never landed is not lost.
//!
//! What a waiter learns: each generation has a [`Generation`] record the waiters hold. Before the
//! pusher publishes a generation's fate it records there the ids Redis refused (the stored value
//! would overflow `i64`), so each waiter of a refused id gets [`Error::CounterRejected`] and the
//! others `Ok`. Where the server has replicas, a chunk counts as landed only once a replica
//! acknowledged it: until then it stays frozen and is resent (a resend is never applied twice),
//! and the waiters are told [`Error::NotReplicated`] (`Progress::unreplicated`), as are later
//! awaited increments until a replica acknowledges again.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Poll, Waker},
    time::{Duration, Instant},
};

use futures_util::{stream::FuturesOrdered, StreamExt};
use hashbrown::hash_map::EntryRef;
use tokio::sync::{watch, Notify};

use super::{storage, CountersConfig};
use crate::{
    cache::WeakCache,
    error::counter_overflow,
    store::{CounterKeys, MemoryStore, PushOutcome, PushStatus, Store},
    util::lock,
    Cache, Error,
};

/// One frozen push: a sequence number and the deltas it carries.
#[derive(Debug)]
pub(crate) struct Chunk {
    seq: u64,
    entries: Vec<(String, i64)>,
    /// The generation the deltas belong to.
    generation: Arc<Generation>,
}

/// What became of one generation's increments, beyond landing: kept by its waiters.
#[derive(Debug, Default)]
pub(crate) struct Generation {
    number: u64,
    /// Ids Redis refused to increment, with the refused delta.
    rejected: Mutex<HashMap<String, i64>>,
    /// Whether `rejected` holds anything (so a waiter of a generation without refusals, the
    /// common case, does not take its lock).
    any_rejected: AtomicBool,
    /// The wakers of this generation's waiters, woken when [`Progress`] changed in a way that may
    /// settle this generation (its push landed, Redis turned out unavailable, no replica
    /// acknowledged, the pusher ended). Only this generation's waiters wake: those of the next
    /// one, gathering while this one is pushed, do not. (A plain list under a mutex: with a
    /// tokio `Notify` here, registering into its list, being woken and unregistering cost each
    /// awaited increment ~190 instructions more.)
    waiters: Mutex<Vec<Waker>>,
}

impl Generation {
    fn new(number: u64) -> Arc<Self> {
        Arc::new(Generation {
            number,
            ..Generation::default()
        })
    }

    /// The delta of `id` Redis refused, if it did.
    fn rejected(&self, id: &str) -> Option<i64> {
        if !self.any_rejected.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.rejected).get(id).copied()
    }

    /// Registers `waker` to be woken by [`wake_waiters`](Self::wake_waiters).
    fn register(&self, waker: &Waker) {
        lock(&self.waiters).push(waker.clone());
    }

    /// Wakes every waiter registered so far (they re-read the progress).
    fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *lock(&self.waiters));
        for waker in waiters {
            waker.wake();
        }
    }

    /// Records ids Redis refused (before the generation's fate is published).
    fn record_rejected(&self, refused: impl IntoIterator<Item = (String, i64)>) {
        lock(&self.rejected).extend(refused);
        self.any_rejected.store(true, Ordering::Release);
    }
}

/// What `CounterSet::add` did with an increment.
#[derive(Debug)]
pub(crate) enum Added {
    /// Applied (a store in this process), or buffered while Redis is unavailable.
    Done,
    /// Buffered; wait for this generation's push.
    Wait(Arc<Generation>),
    /// Buffered while no replica acknowledges pushes: reported at once.
    Unreplicated(Duration),
}

/// How the last push went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Landed (and acknowledged by a replica where there are replicas).
    Healthy,
    /// Redis is unavailable: `incr` returns once buffered instead of waiting for a push.
    Degraded,
    /// Redis took it but no replica acknowledged it within this time: awaited `incr`s are told.
    Unreplicated(Duration),
}

#[derive(Debug)]
pub(crate) struct BufferState {
    /// Increments not yet frozen, coalesced per id (this is the bounded buffer).
    map: Buffer,
    /// Generation of the increments in `map`.
    gen: u64,
    /// Its record, handed to its waiters.
    current: Arc<Generation>,
    /// Chunks not yet acknowledged, oldest first (in sequence-number order; of one generation,
    /// or of several while pushes are pipelined).
    frozen: VecDeque<Arc<Chunk>>,
    /// The newest generation frozen so far.
    last_frozen: u64,
    /// Ids in `frozen` (they count against the buffer's bound until Redis has them).
    frozen_ids: usize,
    /// The ids in `frozen`, built only when the buffer is full (an id being pushed still fits).
    frozen_set: Option<std::collections::HashSet<String>>,
    next_seq: u64,
    health: Health,
    /// Identity of the running pusher task (0: none).
    pusher: u64,
    pushers_started: u64,
}

impl BufferState {
    /// The records of the generations that may have waiters: those being pushed and the one
    /// gathering increments (every older one was settled).
    fn waited_on(&self) -> Vec<Arc<Generation>> {
        let mut records: Vec<Arc<Generation>> = Vec::with_capacity(3);
        for chunk in &self.frozen {
            if !records
                .last()
                .is_some_and(|r| Arc::ptr_eq(r, &chunk.generation))
            {
                records.push(chunk.generation.clone());
            }
        }
        records.push(self.current.clone());
        records
    }

    /// Freezes the map into chunks of generation `gen` (each with the next sequence number) and
    /// starts the next generation; `false` when the map is empty.
    fn freeze(&mut self, max_push: usize) -> bool {
        if self.map.is_empty() {
            return false;
        }
        // Drained, not replaced: the next generation reuses the table (unless an outage's backlog
        // grew it far beyond what a generation holds).
        let entries: Vec<(String, i64)> = self.map.drain().collect();
        if self.map.capacity() > 4 * entries.len().max(1024) {
            self.map.shrink_to(entries.len());
        }
        let mut rest = entries.into_iter().peekable();
        let next = Generation::new(self.gen + 1);
        let generation = std::mem::replace(&mut self.current, next);
        while rest.peek().is_some() {
            let chunk: Vec<(String, i64)> = rest.by_ref().take(max_push.max(1)).collect();
            self.frozen_ids += chunk.len();
            let seq = self.next_seq;
            self.next_seq += 1;
            self.frozen.push_back(Arc::new(Chunk {
                seq,
                entries: chunk,
                generation: generation.clone(),
            }));
        }
        self.frozen_set = None;
        self.last_frozen = self.gen;
        self.gen += 1;
        true
    }

    /// Adds `by` to `id`'s buffered delta (one hash of `id`): `Ok(true)` when `id` is new in the
    /// buffer, `Ok(false)` when added to its delta; `Err(None)` when the buffer is full and `id`
    /// is not being pushed either, `Err(Some(..))` when its delta would overflow.
    fn add(&mut self, id: &str, by: i64, max_buffered: usize) -> Result<bool, Option<Error>> {
        let BufferState {
            map,
            frozen,
            frozen_ids,
            frozen_set,
            ..
        } = self;
        let full = map.len() + *frozen_ids >= max_buffered;
        match map.entry_ref(id) {
            EntryRef::Occupied(mut slot) => {
                let sum = slot.get().checked_add(by).ok_or_else(counter_overflow);
                *slot.get_mut() = sum.map_err(Some)?;
                Ok(false)
            }
            EntryRef::Vacant(slot) => {
                if full && !frozen_contains(frozen, frozen_set, id) {
                    return Err(None);
                }
                slot.insert(by);
                Ok(true)
            }
        }
    }
}

/// Whether `id` is in a chunk being pushed (`set`: the ids of `frozen`, built on first use).
fn frozen_contains(
    frozen: &VecDeque<Arc<Chunk>>,
    set: &mut Option<std::collections::HashSet<String>>,
    id: &str,
) -> bool {
    set.get_or_insert_with(|| {
        frozen
            .iter()
            .flat_map(|c| c.entries.iter().map(|(id, _)| id.clone()))
            .collect()
    })
    .contains(id)
}

/// The in-memory buffer: deltas by id, with std's (SipHash, randomly keyed) hasher, as ids may come
/// from users.
type Buffer = hashbrown::HashMap<String, i64, std::collections::hash_map::RandomState>;

/// What waiters read. Updated only while `BufferState` is locked, so updates are ordered; each
/// update that may settle a generation is followed by a wake-up of that generation's waiters
/// ([`Generation::wake_waiters`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    /// Every increment of a generation `<= pushed` is in Redis.
    pushed: u64,
    /// Waiters of a generation `<= released` stop waiting (Redis unavailable: kept in memory).
    released: u64,
    /// Waiters of a generation `<= unreplicated` stop waiting with [`Error::NotReplicated`]: a
    /// push was not acknowledged by a replica within `ack_timeout` (kept and resent).
    unreplicated: u64,
    ack_timeout: Duration,
    /// A pusher task is running.
    pusher: bool,
}

#[derive(Debug)]
struct SetMetrics {
    overflow: metrics::Counter,
    push_failures: metrics::Counter,
    pushes: metrics::Counter,
    rejected_fields: metrics::Counter,
    pub(crate) unreplicated: metrics::Counter,
    buffered: metrics::Gauge,
    pub(crate) batches: metrics::Counter,
    pub(crate) sink_failures: metrics::Counter,
}

/// Live statistics of a counter set.
#[derive(Debug, Default)]
pub(crate) struct SetStats {
    pub(crate) overflows: AtomicU64,
    pub(crate) pushes: AtomicU64,
    pub(crate) push_failures: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) entries: AtomicU64,
    pub(crate) sink_failures: AtomicU64,
    pub(crate) unconfirmed: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) unreplicated: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
}

/// One named counter set of one cache (shared by every `Counters` handle of that name).
#[derive(Debug)]
pub(crate) struct CounterSet {
    pub(crate) name: String,
    pub(crate) keys: CounterKeys,
    pub(crate) config: CountersConfig,
    /// This process's identity: writer id for pushes and owner token for batch leases.
    pub(crate) token: String,
    cache: WeakCache,
    /// The cache's store when it lives in this process: increments apply to it at once.
    in_process: Option<MemoryStore>,
    state: Mutex<BufferState>,
    progress: watch::Sender<Progress>,
    wake: Notify,
    closed: AtomicBool,
    /// One push at a time (sequence numbers are sent in order).
    push_lock: tokio::sync::Mutex<()>,
    /// One flush cycle at a time in this process (leases are per process).
    pub(crate) flush_lock: tokio::sync::Mutex<()>,
    metrics: SetMetrics,
    pub(crate) stats: SetStats,
}

/// Clears the running flag when the pusher task ends or is dropped (runtime shut down).
struct PusherGuard {
    set: Arc<CounterSet>,
    id: u64,
}

impl Drop for PusherGuard {
    fn drop(&mut self) {
        let mut st = lock(&self.set.state);
        if st.pusher == self.id {
            st.pusher = 0;
            self.set.progress.send_modify(|p| p.pusher = false);
            let waited_on = st.waited_on();
            drop(st);
            wake_all(&waited_on);
        }
    }
}

impl CounterSet {
    pub(crate) fn new(cache: &Cache, name: &str, config: CountersConfig) -> Self {
        let labels = |metric: &'static str| metrics::counter!(metric, "cache" => cache.name().to_owned(), "counters" => name.to_owned());
        CounterSet {
            name: name.to_owned(),
            keys: storage::counter_keys(cache.keys(), name),
            config,
            token: format!("{:032x}", rand::random::<u128>()),
            cache: cache.downgrade(),
            in_process: cache.store().in_process().cloned(),
            state: Mutex::new(BufferState {
                map: Buffer::default(),
                gen: 1,
                current: Generation::new(1),
                frozen: VecDeque::new(),
                last_frozen: 0,
                frozen_ids: 0,
                frozen_set: None,
                next_seq: 1,
                health: Health::Healthy,
                pusher: 0,
                pushers_started: 0,
            }),
            progress: watch::Sender::new(Progress::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            push_lock: tokio::sync::Mutex::new(()),
            flush_lock: tokio::sync::Mutex::new(()),
            metrics: SetMetrics {
                overflow: labels("cache_counter_overflow_total"),
                push_failures: labels("cache_counter_push_failures_total"),
                pushes: labels("cache_counter_pushes_total"),
                rejected_fields: labels("cache_counter_rejected_total"),
                unreplicated: labels("cache_counter_unreplicated_total"),
                buffered: metrics::gauge!("cache_counter_buffered_ids",
                    "cache" => cache.name().to_owned(), "counters" => name.to_owned()),
                batches: labels("cache_counter_batches_total"),
                sink_failures: labels("cache_counter_sink_failures_total"),
            },
            stats: SetStats::default(),
        }
    }

    /// Called when the cache is dropped: the pusher ends.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub(crate) fn note_batch(&self, entries: u64) {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.entries.fetch_add(entries, Ordering::Relaxed);
        self.metrics.batches.increment(1);
    }

    pub(crate) fn note_sink_failure(&self) {
        self.stats.sink_failures.fetch_add(1, Ordering::Relaxed);
        self.metrics.sink_failures.increment(1);
    }

    /// Counts a write (push, seal, claim) that no replica acknowledged in time.
    pub(crate) fn note_unreplicated(&self) {
        self.stats.unreplicated.fetch_add(1, Ordering::Relaxed);
        self.metrics.unreplicated.increment(1);
    }

    /// Counts and logs increments Redis refused.
    fn note_rejected(&self, rejected: &[(String, i64)]) {
        self.stats
            .rejected
            .fetch_add(rejected.len() as u64, Ordering::Relaxed);
        self.metrics
            .rejected_fields
            .increment(rejected.len() as u64);
        tracing::error!(counters = %self.name, rejected = ?rejected,
            "write-behind counters: increments refused, the stored value would overflow i64 \
             (not applied, not retried)");
    }

    /// Ids (distinct) held in this process: waiting to be pushed or being pushed.
    pub(crate) fn buffered(&self) -> usize {
        let st = lock(&self.state);
        st.map.len() + st.frozen_ids
    }

    /// Adds `by` to `id` in the buffer (see [`Added`]).
    pub(crate) fn add(self: &Arc<Self>, id: &str, by: i64) -> Result<Added, Error> {
        if let Some(store) = &self.in_process {
            if store.counters_incr(&self.keys, id, by).is_err() {
                // The stored value would overflow: what Redis refuses, refused here too.
                let rejected = vec![(id.to_owned(), by)];
                self.note_rejected(&rejected);
                return Err(Error::CounterRejected {
                    counters: self.name.clone(),
                    rejected,
                });
            }
            return Ok(Added::Done);
        }
        let (ticket, first) = {
            let mut st = lock(&self.state);
            // The pusher waits for work only while the map is empty: the increment that makes it
            // non-empty wakes it, the others need not (one wake-up per batch, not per caller).
            let first = st.map.is_empty();
            match st.add(id, by, self.config.max_buffered) {
                Ok(true) => self.metrics.buffered.increment(1.0),
                Ok(false) => {}
                Err(Some(overflow)) => return Err(overflow),
                Err(None) => {
                    drop(st);
                    return Err(self.overflowed());
                }
            }
            self.ensure_pusher(&mut st);
            let ticket = match st.health {
                Health::Healthy => Added::Wait(st.current.clone()),
                Health::Degraded => Added::Done,
                Health::Unreplicated(timeout) => Added::Unreplicated(timeout),
            };
            (ticket, first)
        };
        if first {
            self.wake.notify_one();
        }
        Ok(ticket)
    }

    fn overflowed(&self) -> Error {
        self.stats.overflows.fetch_add(1, Ordering::Relaxed);
        self.metrics.overflow.increment(1);
        tracing::warn!(counters = %self.name, capacity = self.config.max_buffered,
            "write-behind buffer full: increment of a new id rejected");
        Error::CounterOverflow {
            counters: self.name.clone(),
            capacity: self.config.max_buffered,
        }
    }

    /// Waits until the increments of `generation` are in Redis, or Redis turned out to be
    /// unavailable (they stay buffered), or no pusher is running; then says what became of the
    /// increment of `id`: `Ok`, [`Error::CounterRejected`] (Redis refused it) or
    /// [`Error::NotReplicated`] (no replica acknowledged it yet; kept and resent).
    pub(crate) async fn wait(&self, id: &str, generation: &Generation) -> Result<(), Error> {
        let ticket = generation.number;
        let settled = |p: &Progress| {
            p.pushed >= ticket || p.released >= ticket || p.unreplicated >= ticket || !p.pusher
        };
        // Each poll that finds the generation unsettled registers its waker, then reads the
        // progress again: an update after that read wakes it. (Waking takes every registered
        // waker out of the list, so a poll after a wake that did not settle registers again.)
        let progress = std::future::poll_fn(|cx| {
            let p = *self.progress.borrow();
            if settled(&p) {
                return Poll::Ready(p);
            }
            generation.register(cx.waker());
            let p = *self.progress.borrow();
            if settled(&p) {
                Poll::Ready(p)
            } else {
                Poll::Pending
            }
        })
        .await;
        if let Some(delta) = generation.rejected(id) {
            return Err(Error::CounterRejected {
                counters: self.name.clone(),
                rejected: vec![(id.to_owned(), delta)],
            });
        }
        if progress.pushed < ticket && progress.unreplicated >= ticket {
            return Err(Error::NotReplicated {
                timeout: progress.ack_timeout,
            });
        }
        Ok(())
    }

    /// Starts the pusher task if none runs (lazily: `incr` runs inside the runtime, building the
    /// cache need not). Without a Tokio runtime nothing is spawned; `sync` pushes instead.
    fn ensure_pusher(self: &Arc<Self>, st: &mut BufferState) {
        if st.pusher != 0 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        st.pushers_started += 1;
        let id = st.pushers_started;
        st.pusher = id;
        self.progress.send_modify(|p| p.pusher = true);
        let guard = PusherGuard {
            set: self.clone(),
            id,
        };
        runtime.spawn(run_pusher(guard));
    }

    fn has_work(&self) -> bool {
        let st = lock(&self.state);
        !st.map.is_empty() || !st.frozen.is_empty()
    }

    fn degraded(&self) -> bool {
        lock(&self.state).health == Health::Degraded
    }

    fn cache(&self) -> Option<Cache> {
        self.cache.upgrade()
    }

    /// Pushes everything buffered when called; `Err` when Redis is unavailable (the increments
    /// stay buffered and the pusher keeps retrying).
    pub(crate) async fn sync(self: &Arc<Self>, cache: &Cache) -> Result<(), Error> {
        if self.in_process.is_some() {
            return Ok(());
        }
        let ticket = {
            let st = lock(&self.state);
            if !st.map.is_empty() {
                st.gen
            } else if !st.frozen.is_empty() {
                st.last_frozen
            } else {
                return Ok(());
            }
        };
        while self.progress.borrow().pushed < ticket {
            self.push_round(cache, Some(ticket)).await?;
        }
        Ok(())
    }

    /// Pushes the frozen chunks in order, up to [`PUSHES_IN_FLIGHT`] at a time, freezing the
    /// buffer into new generations as it goes, up to generation `until` (default: this round's
    /// share, [`GENERATIONS_PER_ROUND`], so a `sync` waiting for the lock gets it soon). Returns
    /// when nothing frozen is left, or with the first failure (the chunks not acknowledged stay
    /// frozen and are resent, with the same sequence numbers, by the next round).
    ///
    /// A push sent while another is in flight carries that one's sequence number (`after`): the
    /// store refuses it ([`PushStatus::OutOfOrder`]) if it arrives first, or after the first was
    /// lost. The round then lets what is in flight come back (everything after a refused push is
    /// refused too) and sends again from the oldest chunk not acknowledged. So increments are
    /// applied in sequence order, and a resend of a landed push is always recognized.
    async fn push_round(&self, cache: &Cache, until: Option<u64>) -> Result<(), Error> {
        let _one_at_a_time = self.push_lock.lock().await;
        let until = until.unwrap_or_else(|| lock(&self.state).last_frozen + GENERATIONS_PER_ROUND);
        let mut in_flight = FuturesOrdered::new();
        let mut resend_from_oldest = false;
        // Whether the buffer may be frozen into a new push now: always when nothing is in
        // flight; while a push is, only once the increments of a wave gathered (below).
        let mut gathered = false;
        loop {
            if !resend_from_oldest {
                while in_flight.len() < PUSHES_IN_FLIGHT {
                    let may_freeze = std::mem::take(&mut gathered) | in_flight.is_empty();
                    let Some((chunk, after)) =
                        self.next_to_send(in_flight.len(), may_freeze, until)
                    else {
                        break;
                    };
                    in_flight.push_back(async move {
                        let result = self.push_chunk(cache, &chunk, after).await;
                        (chunk, result)
                    });
                }
            }
            let slot_free = in_flight.len() < PUSHES_IN_FLIGHT && !resend_from_oldest;
            let returned = if in_flight.is_empty() {
                if resend_from_oldest {
                    resend_from_oldest = false;
                    continue;
                }
                break;
            } else if slot_free {
                // While one push is in flight, increments gather for the next: wake up for
                // the first, let the others of its wave arrive, then send them.
                tokio::select! {
                    biased;
                    returned = in_flight.next() => returned,
                    () = self.wake.notified() => {
                        self.let_increments_gather().await;
                        gathered = true;
                        continue;
                    }
                }
            } else {
                in_flight.next().await
            };
            let Some((chunk, result)) = returned else {
                continue;
            };
            match result {
                Ok(PushStatus::OutOfOrder) => {
                    self.stats.out_of_order.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(counters = %self.name, seq = chunk.seq,
                        "write-behind push arrived before the one sent ahead of it; resent");
                    resend_from_oldest = true;
                }
                Ok(_) => self.landed(&chunk),
                Err(err) => {
                    match err {
                        Error::NotReplicated { timeout } => self.enter_unreplicated(timeout),
                        ref err => self.enter_degraded(err),
                    }
                    return Err(err);
                }
            }
        }
        let mut st = lock(&self.state);
        let was = std::mem::replace(&mut st.health, Health::Healthy);
        match was {
            Health::Healthy => {}
            Health::Degraded => {
                tracing::info!(counters = %self.name, "write-behind counters: redis is back, buffer pushed");
            }
            Health::Unreplicated(_) => {
                tracing::info!(counters = %self.name,
                    "write-behind counters: a replica acknowledges pushes again, buffer pushed");
            }
        }
        if was != Health::Healthy {
            // The waiters of the buffer's generation were released (or told) already; increments
            // from now on start a new one, so their callers wait for their own push instead of
            // finding their generation released.
            st.gen += 1;
            st.current = Generation::new(st.gen);
        }
        Ok(())
    }

    /// The next chunk to send when `sending` chunks are in flight (they are the oldest
    /// `sending` frozen ones), freezing the buffer (if `may_freeze`) when every frozen chunk is
    /// out and generation `until` is not frozen yet; with the sequence number of the chunk before
    /// it (0 if none is in flight).
    fn next_to_send(
        &self,
        sending: usize,
        may_freeze: bool,
        until: u64,
    ) -> Option<(Arc<Chunk>, u64)> {
        let mut st = lock(&self.state);
        if st.frozen.len() <= sending
            && !(may_freeze && st.last_frozen < until && st.freeze(self.config.max_push))
        {
            return None;
        }
        let after = match sending {
            0 => 0,
            n => st.frozen[n - 1].seq,
        };
        Some((st.frozen[sending].clone(), after))
    }

    /// Lets the tasks woken with the first increment of a wave add theirs (they were woken
    /// together when their previous push landed): yields until the buffer stops growing.
    async fn let_increments_gather(&self) {
        let mut seen = lock(&self.state).map.len();
        for _ in 0..GATHER_YIELDS {
            tokio::task::yield_now().await;
            let now = lock(&self.state).map.len();
            if now == seen {
                break;
            }
            seen = now;
        }
    }

    /// `chunk` landed: it leaves the buffer, and when it was its generation's last, the
    /// generation's waiters are told.
    fn landed(&self, chunk: &Chunk) {
        let mut st = lock(&self.state);
        let Some(at) = st.frozen.iter().position(|c| c.seq == chunk.seq) else {
            return;
        };
        st.frozen.remove(at);
        st.frozen_ids -= chunk.entries.len();
        st.frozen_set = None;
        self.metrics.buffered.decrement(chunk.entries.len() as f64);
        let gen = chunk.generation.number;
        let settled = st.frozen.front().is_none_or(|c| c.generation.number > gen);
        if !settled {
            return;
        }
        let advanced = self.progress.send_if_modified(|p| {
            let advance = p.pushed < gen;
            p.pushed = p.pushed.max(gen);
            advance
        });
        drop(st);
        if advanced {
            chunk.generation.wake_waiters();
        }
    }

    /// Redis is unavailable: release every waiter (their increments stay buffered).
    fn enter_degraded(&self, err: &Error) {
        self.stats.push_failures.fetch_add(1, Ordering::Relaxed);
        self.metrics.push_failures.increment(1);
        let mut st = lock(&self.state);
        if st.health != Health::Degraded {
            st.health = Health::Degraded;
            tracing::warn!(counters = %self.name, error = %err,
                "write-behind counters: redis unavailable, buffering increments in memory");
        }
        let gen = st.gen;
        self.progress
            .send_modify(|p| p.released = p.released.max(gen));
        let waited_on = st.waited_on();
        drop(st);
        wake_all(&waited_on);
    }

    /// Redis took a push but no replica acknowledged it: every waiter is told (their increments
    /// stay buffered and are resent until a replica acknowledges them), and so are later awaited
    /// increments until then.
    fn enter_unreplicated(&self, timeout: Duration) {
        self.note_unreplicated();
        let mut st = lock(&self.state);
        if !matches!(st.health, Health::Unreplicated(_)) {
            tracing::warn!(counters = %self.name, timeout = ?timeout,
                "write-behind counters: no replica acknowledged a push; keeping it and resending \
                 until one does");
        }
        st.health = Health::Unreplicated(timeout);
        let gen = st.gen;
        self.progress.send_modify(|p| {
            p.unreplicated = p.unreplicated.max(gen);
            p.ack_timeout = timeout;
        });
        let waited_on = st.waited_on();
        drop(st);
        wake_all(&waited_on);
    }

    /// One `PUSH` script call: what became of the chunk.
    async fn push_chunk(
        &self,
        cache: &Cache,
        chunk: &Chunk,
        after: u64,
    ) -> Result<PushStatus, Error> {
        let push = cache.store().counters_push(
            &self.keys,
            &self.token,
            chunk.seq,
            after,
            self.config.writer_ttl,
            &chunk.entries,
        );
        let PushOutcome {
            status,
            rejected,
            replica,
        } = cache.store_op(push).await?;
        if status == PushStatus::OutOfOrder {
            return Ok(status);
        }
        self.stats.pushes.fetch_add(1, Ordering::Relaxed);
        self.metrics.pushes.increment(1);
        if status == PushStatus::AlreadyApplied {
            self.stats.replayed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(counters = %self.name, seq = chunk.seq,
                "write-behind push had already landed (reply lost, or resent for a replica); \
                 not applied twice");
        }
        if !rejected.is_empty() {
            let refused: Vec<(String, i64)> = chunk
                .entries
                .iter()
                .filter(|(id, _)| rejected.contains(id))
                .cloned()
                .collect();
            self.note_rejected(&refused);
            // Recorded before the generation's fate is published (below, or by the caller).
            chunk.generation.record_rejected(refused);
        }
        replica.check().map(|()| status)
    }
}

/// Wakes the waiters of `generations` (they re-read the progress).
fn wake_all(generations: &[Arc<Generation>]) {
    for generation in generations {
        generation.wake_waiters();
    }
}

/// The pusher task: waits for increments, lets them coalesce for `linger`, pushes; retries with
/// backoff while Redis is unavailable. Ends when the cache is dropped.
async fn run_pusher(guard: PusherGuard) {
    let set = guard.set.clone();
    let config = &set.config;
    let mut backoff = config.retry_min;
    // Linger only for the first increment after a quiet spell: when increments arrive within
    // `linger` of the last push landing, they come from a busy caller set (often the very tasks
    // that push released, incrementing again), and they are gathered by letting those tasks run
    // (`let_increments_gather`), not by a timer. Lingering after every push capped awaited
    // `incr` below one `HINCRBY` per call (BENCHMARKS.md, "Write-behind").
    let mut last_landed: Option<Instant> = None;
    loop {
        loop {
            let notified = set.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if set.closed.load(Ordering::Acquire) {
                return;
            }
            if set.has_work() {
                break;
            }
            notified.await;
        }
        let quiet = last_landed.is_none_or(|at| at.elapsed() >= config.linger);
        if quiet && !config.linger.is_zero() && !set.degraded() {
            tokio::time::sleep(config.linger).await;
        } else {
            set.let_increments_gather().await;
        }
        let Some(cache) = set.cache() else {
            return;
        };
        match set.push_round(&cache, None).await {
            Ok(()) => {
                backoff = config.retry_min;
                last_landed = Some(Instant::now());
            }
            Err(err) => {
                last_landed = None;
                tracing::debug!(counters = %set.name, error = %err, retry_in = ?backoff,
                    "write-behind push failed");
                drop(cache);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.retry_max.max(config.retry_min));
            }
        }
    }
}

/// Pushes of one counter set in flight at once: while Redis applies one, the next is on its way
/// (and the increments of the tasks its predecessor released gather for the one after).
const PUSHES_IN_FLIGHT: usize = 2;

/// Generations one round of the pusher freezes before it lets a waiting `sync` have the lock.
const GENERATIONS_PER_ROUND: u64 = 16;

/// Most yields while the increments of a wave gather (it stops as soon as none arrived).
const GATHER_YIELDS: usize = 8;

/// Default coalescing window.
pub(crate) const DEFAULT_LINGER: Duration = Duration::from_millis(1);

#[cfg(test)]
mod tests {
    use super::*;

    /// An awaited increment of `set`, as `Counters::incr` makes it.
    async fn incr(set: Arc<CounterSet>, id: &'static str) -> Result<(), Error> {
        match set.add(id, 1)? {
            Added::Wait(generation) => set.wait(id, &generation).await,
            other => panic!("a healthy buffer waits for its push, got {other:?}"),
        }
    }

    /// The pusher's half of the ordering protocol (the script's half is tested in `scripts.rs`
    /// on a real server): a push that reaches the store before the one sent ahead of it is
    /// refused there, and the pusher sends it again once the one ahead landed, so each applies
    /// once. The in-memory store stands in for Redis (same push semantics); it can hold a push
    /// on its way, which a real connection cannot be made to do on demand.
    #[tokio::test]
    async fn a_push_that_overtakes_the_one_ahead_of_it_is_resent_after_it() {
        let cache = Cache::in_memory();
        let Some(store) = cache.store().in_process().cloned() else {
            panic!("an in-memory cache has an in-process store");
        };
        let config = CountersConfig::default().linger(Duration::ZERO);
        let mut set = CounterSet::new(&cache, "views", config);
        set.in_process = None; // push through the store, as to Redis
        let set = Arc::new(set);

        let (first_reached, release_first) = store.hold_next_push();
        let first = tokio::spawn(incr(set.clone(), "a"));
        // The first push is on its way (held); the second goes out behind it, overtakes it and
        // is refused.
        first_reached.await.unwrap();
        let second = tokio::spawn(incr(set.clone(), "b"));
        store.pushed(1).await;
        assert_eq!(set.stats.out_of_order.load(Ordering::Relaxed), 0);
        release_first.send(()).unwrap();
        first.await.unwrap().expect("first increment");
        second.await.unwrap().expect("second increment");

        assert_eq!(set.stats.out_of_order.load(Ordering::Relaxed), 1);
        assert_eq!(
            set.stats.pushes.load(Ordering::Relaxed),
            2,
            "each applied once"
        );
        assert_eq!(store.pushes(), 3, "the refused push was sent again");
        let batch = store
            .counters_seal(&set.keys, "b1", &set.token, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(batch);
        let mut totals = store.counters_read(&set.keys, "b1").await.unwrap();
        totals.sort();
        assert_eq!(totals, [("a".to_owned(), 1), ("b".to_owned(), 1)]);
        assert_eq!(set.buffered(), 0);
    }
}

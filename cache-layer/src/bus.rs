//! The invalidation bus: a Redis pub/sub channel (`<namespace>:__bus`) shared by every instance of
//! a cache.
//!
//! Explicit writes (`set`), deletes and invalidations publish one small JSON message; every other
//! instance evicts its L1 copies, detaches loads in flight that the message covers, and updates
//! the tag times and namespace version it caches. A fill after a miss publishes nothing.
//!
//! The subscriber is one task per cache, started by the first operation that needs Redis (so
//! `build()` works outside a runtime). It reconnects with backoff after Redis restarts, and it
//! stops when the last handle of the cache is dropped (or its runtime shuts down; the next
//! operation then starts a new one).
//!
//! Pub/sub delivers at most once: messages sent while the subscription is down are lost. So
//! everything cached locally carries a [`Trust`] stamp: a fact fetched while the bus was subscribed
//! stays current for as long as that subscription lives (every later change is a message); any
//! other fact, and every L1 entry while the bus is down, is trusted only for the short fallback
//! TTL. On every (re)subscription the L1 tier is cleared. With the in-memory store there is no bus:
//! a single process knows everything.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    store::{Backend, EvictionSettings, Store, Subscription},
    tags::Trust,
    util,
};

/// One bus message. Field names are short: this crosses the network for every invalidation.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Message {
    /// The publishing instance (its own messages are ignored: it applied them already).
    #[serde(rename = "o")]
    pub(crate) origin: u64,
    /// User keys whose L1 copies to evict (and whose loads in flight to detach).
    #[serde(rename = "k", default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) keys: Vec<String>,
    /// Tags with their new times: `(tag, hard_ms, soft_ms)`.
    #[serde(rename = "t", default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) tags: Vec<(String, u64, u64)>,
    /// A namespace epoch that moved (bumped, or repaired): `(epoch, Redis time ms of the move)`.
    /// Receivers merge the epoch; the time is informational (kept so the format stays the same).
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub(crate) namespace: Option<(u64, u64)>,
}

/// How often the subscriber re-measures the Redis clock.
const CLOCK_RESYNC: Duration = Duration::from_secs(60);
/// How often the subscriber pings its connection, and how long it waits for the answer: a
/// silently dead link (the socket open, nothing arriving) is noticed within about two seconds.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Counters that make L1 fills racing an eviction harmless: a reader takes a ticket for its key
/// before it reads Redis, and its L1 insert is dropped if an eviction of a key in the same slot
/// (or a clear) happened in between.
pub(crate) struct Tickets {
    slots: Box<[AtomicU64]>,
}

impl Tickets {
    fn new(slots: usize) -> Self {
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

/// What the bus calls back into: the cache's coherence state, behind this narrow surface (the bus
/// knows nothing else of the cache). The breaker's recovery calls [`start_over`](Self::start_over)
/// too.
pub(crate) trait Listener: Send + Sync + 'static {
    /// Anything learned before may be out of date (the bus (re)subscribed, or the breaker closed
    /// after the store was skipped): L1 starts over, and invalidations the store missed are
    /// replayed.
    fn start_over(self: Arc<Self>);

    /// A message from another instance.
    fn apply(self: Arc<Self>, message: Message);

    /// One reading of the store's clock, `store_time` since the Unix epoch, taken between `sent`
    /// and `received`.
    fn clock_sample(&self, sent: Instant, received: Instant, store_time: Duration);

    /// The store's eviction settings, read after each subscription.
    fn eviction_settings(&self, settings: EvictionSettings);
}

/// Bus state shared between the cache and its subscriber task.
struct Shared {
    started: AtomicBool,
    up: AtomicBool,
    generation: AtomicU64,
    /// When the subscription was last lost (or the bus started); meaningful while down.
    down_since: Mutex<Instant>,
    /// Subscription attempts finished (successful or not); lets the first operation wait for the
    /// first attempt.
    attempts: watch::Sender<u64>,
}

/// The bus of one cache.
pub(crate) struct Bus {
    shared: Arc<Shared>,
    pub(crate) tickets: Tickets,
    pub(crate) origin: u64,
    channel: String,
    /// The store to subscribe on; `None` when no other process shares it (no bus needed).
    store: Option<Backend>,
    fallback_ttl: Duration,
    first_wait: Duration,
    /// Dropped with the cache: the subscriber task sees the channel close and exits.
    shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("channel", &self.channel)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// A bus on `channel`; `store` is `None` when no other process shares the store (no bus,
    /// everything local).
    pub(crate) fn new(
        channel: String,
        store: Option<Backend>,
        fallback_ttl: Duration,
        first_wait: Duration,
    ) -> Self {
        let (attempts, _) = watch::channel(0);
        let (shutdown, _) = watch::channel(());
        Bus {
            shared: Arc::new(Shared {
                started: AtomicBool::new(false),
                up: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                down_since: Mutex::new(Instant::now()),
                attempts,
            }),
            tickets: Tickets::new(1024),
            origin: rand::random::<u64>(),
            channel,
            store,
            fallback_ttl,
            first_wait,
            shutdown,
        }
    }

    /// Whether there is a bus at all (a store shared with other processes).
    pub(crate) fn is_remote(&self) -> bool {
        self.store.is_some()
    }

    /// Whether the subscriber task is running (it may still be connecting).
    pub(crate) fn is_started(&self) -> bool {
        self.shared.started.load(Ordering::Acquire)
    }

    pub(crate) fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// A stamp for a fact about to be fetched (take it *before* sending the read).
    pub(crate) fn trust_now(&self) -> Trust {
        let generation = if self.is_up() {
            self.shared.generation.load(Ordering::Acquire)
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
            && trust.generation == self.shared.generation.load(Ordering::Acquire))
            || trust.at.elapsed() < self.fallback_ttl
    }

    /// Whether an L1 entry inserted at `inserted` may be served.
    pub(crate) fn l1_trusted(&self, inserted: Instant) -> bool {
        if !self.is_remote() || self.is_up() {
            return true;
        }
        let down_since = *util::lock(&self.shared.down_since);
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

    /// Starts the subscriber if it is not running, and then waits (bounded) for its first
    /// subscription attempt, so the first facts fetched are already covered by the bus. Returns
    /// `true` when this call started it and that attempt failed (Redis is probably unreachable).
    pub(crate) async fn ensure_started<L: Listener>(&self, listener: &Arc<L>) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        if self.shared.started.load(Ordering::Acquire) {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if self
            .shared
            .started
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let mut attempts = self.shared.attempts.subscribe();
        let seen = *attempts.borrow_and_update();
        let task = Subscriber {
            listener: Arc::downgrade(listener) as Weak<dyn Listener>,
            origin: self.origin,
            shared: self.shared.clone(),
            store: store.clone(),
            channel: self.channel.clone(),
            shutdown: self.shutdown.subscribe(),
            connect_timeout: self.first_wait,
        };
        runtime.spawn(task.run());
        let first_attempt = attempts.wait_for(|&n| n > seen);
        let _ = tokio::time::timeout(self.first_wait, first_attempt).await;
        !self.is_up()
    }
}

/// Marks the bus stopped when the subscriber task ends for any reason (including its runtime
/// shutting down), so the next operation starts a new one.
struct RunningGuard(Arc<Shared>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        mark_down(&self.0);
        self.0.started.store(false, Ordering::Release);
    }
}

fn mark_down(shared: &Shared) {
    mark_down_since(shared, Instant::now());
}

/// Marks the bus down as of `since` (the last moment it was known to work: L1 copies and facts
/// are trusted only the fallback TTL from then).
fn mark_down_since(shared: &Shared, since: Instant) {
    if shared.up.swap(false, Ordering::AcqRel) {
        *util::lock(&shared.down_since) = since;
    }
}

struct Subscriber {
    listener: Weak<dyn Listener>,
    /// This instance's messages carry it (ignored: it applied them already).
    origin: u64,
    shared: Arc<Shared>,
    store: Backend,
    channel: String,
    shutdown: watch::Receiver<()>,
    connect_timeout: Duration,
}

enum Ended {
    /// The cache was dropped: stop for good.
    Shutdown,
    /// The connection failed or closed: reconnect.
    Lost,
}

impl Subscriber {
    async fn run(mut self) {
        let _running = RunningGuard(self.shared.clone());
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.session().await {
                Ended::Shutdown => return,
                Ended::Lost => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn listener(&self) -> Option<Arc<dyn Listener>> {
        self.listener.upgrade()
    }

    /// Measures the offset to the store's clock (best of three readings).
    async fn measure_clock(&self, listener: &dyn Listener) {
        for _ in 0..3 {
            let sent = Instant::now();
            match self.store.server_time().await {
                Ok(time) => listener.clock_sample(sent, Instant::now(), time),
                Err(_) => return,
            }
        }
    }

    /// One subscription: connect, subscribe, measure the clock, then apply messages until the
    /// connection ends.
    async fn session(&mut self) -> Ended {
        let connected = tokio::select! {
            result = tokio::time::timeout(
                self.connect_timeout,
                self.store.subscribe(&self.channel),
            ) => result,
            _ = self.shutdown.changed() => return Ended::Shutdown,
        };
        let mut subscription: Subscription = match connected {
            Ok(Ok(subscription)) => subscription,
            Ok(Err(err)) => {
                tracing::debug!(channel = %self.channel, error = %err, "bus: subscribe failed");
                self.shared.attempts.send_modify(|n| *n += 1);
                return Ended::Lost;
            }
            Err(_) => {
                tracing::debug!(channel = %self.channel, "bus: subscribe timed out");
                self.shared.attempts.send_modify(|n| *n += 1);
                return Ended::Lost;
            }
        };
        let Some(listener) = self.listener() else {
            return Ended::Shutdown;
        };
        self.measure_clock(&*listener).await;
        match self.store.eviction_settings().await {
            Ok(Some(settings)) => listener.eviction_settings(settings),
            Ok(None) => {}
            // E.g. an ACL user without `+info`: the check is skipped.
            Err(err) => tracing::debug!(channel = %self.channel, error = %err,
                "cannot read maxmemory-policy (INFO memory); not checked"),
        }
        // Subscribed: from now on every change is delivered. Everything learned before may have
        // missed messages, so L1 starts empty and in-flight L1 fills are dropped.
        listener.clone().start_over();
        let generation = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.up.store(true, Ordering::Release);
        self.shared.attempts.send_modify(|n| *n += 1);
        tracing::debug!(channel = %self.channel, generation, "bus: subscribed");
        drop(listener);

        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let mut resync =
            tokio::time::interval_at(tokio::time::Instant::now() + CLOCK_RESYNC, CLOCK_RESYNC);
        // The last moment the subscription was known to work (a message or a pong).
        let mut alive_at = Instant::now();
        let ended = loop {
            tokio::select! {
                message = subscription.next() => {
                    let Some(message) = message else { break Ended::Lost };
                    alive_at = Instant::now();
                    let Some(listener) = self.listener() else { break Ended::Shutdown };
                    match serde_json::from_slice::<Message>(&message) {
                        Ok(message) => {
                            if message.origin != self.origin {
                                listener.apply(message);
                            }
                        }
                        Err(err) => tracing::debug!(channel = %self.channel, error = %err,
                            "bus: ignoring a message that does not parse"),
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        PING_TIMEOUT.min(self.connect_timeout.max(Duration::from_millis(100))),
                        subscription.ping(),
                    ).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::info!(channel = %self.channel, "bus: no answer to a ping; the subscription is dead");
                        mark_down_since(&self.shared, alive_at);
                        break Ended::Lost;
                    }
                    alive_at = Instant::now();
                }
                _ = resync.tick() => {
                    let Some(listener) = self.listener() else { break Ended::Shutdown };
                    self.measure_clock(&*listener).await;
                }
                _ = self.shutdown.changed() => break Ended::Shutdown,
            }
        };
        mark_down(&self.shared);
        if matches!(ended, Ended::Lost) {
            tracing::info!(channel = %self.channel, "bus: subscription lost, reconnecting");
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_compact_and_round_trip() {
        let message = Message {
            origin: 7,
            keys: vec!["product:1".into()],
            tags: vec![("catalog".into(), 10, 0)],
            namespace: None,
        };
        let json = serde_json::to_string(&message).unwrap();
        assert_eq!(json, r#"{"o":7,"k":["product:1"],"t":[["catalog",10,0]]}"#);
        assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), message);
        let bump: Message = serde_json::from_str(r#"{"o":1,"n":[3,99]}"#).unwrap();
        assert_eq!(bump.namespace, Some((3, 99)));
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
        let bus = Bus::new("c".into(), None, Duration::ZERO, Duration::ZERO);
        let stale = Trust {
            generation: 0,
            at: Instant::now() - Duration::from_secs(3600),
        };
        assert!(bus.is_trusted(stale));
        assert!(bus.l1_trusted(stale.at));
    }

    #[test]
    fn while_down_facts_live_only_the_fallback_ttl() {
        let store =
            crate::store::RedisStore::new("redis://127.0.0.1:1", Default::default()).unwrap();
        let bus = Bus::new(
            "c".into(),
            Some(Backend::Redis(store)),
            Duration::from_millis(200),
            Duration::ZERO,
        );
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
}

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
//! everything cached locally carries a [`Trust`](crate::l1::Trust) stamp (the trust state lives in `l1.rs`; the bus is its only writer): a fact fetched while the bus was subscribed
//! stays current for as long as that subscription lives (every later change is a message); any
//! other fact, and every L1 entry while the bus is down, is trusted only for the short fallback
//! TTL. On every (re)subscription the L1 tier is cleared. With the in-memory store there is no bus:
//! a single process knows everything.

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    l1::TrustState,
    store::{Backend, EvictionSettings, Store, Subscription},
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
    /// What readers trust (`l1.rs`); the bus is its only writer.
    trust: Arc<TrustState>,
    /// Subscription attempts finished (successful or not); lets the first operation wait for the
    /// first attempt.
    attempts: watch::Sender<u64>,
}

/// The bus of one cache.
pub(crate) struct Bus {
    shared: Arc<Shared>,
    pub(crate) origin: u64,
    channel: String,
    /// The store to subscribe on; `None` when no other process shares it (no bus needed).
    store: Option<Backend>,
    first_wait: Duration,
    /// Dropped with the cache: the subscriber task sees the channel close and exits.
    shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("channel", &self.channel)
            .field("up", &self.shared.trust.is_up())
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// A bus on `channel`, writing what it learns of the subscription into `trust`; `store` is
    /// `None` when no other process shares the store (no bus, everything local).
    pub(crate) fn new(
        channel: String,
        store: Option<Backend>,
        trust: Arc<TrustState>,
        first_wait: Duration,
    ) -> Self {
        let (attempts, _) = watch::channel(0);
        let (shutdown, _) = watch::channel(());
        Bus {
            shared: Arc::new(Shared { trust, attempts }),
            origin: rand::random::<u64>(),
            channel,
            store,
            first_wait,
            shutdown,
        }
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// Starts the subscriber if it is not running, and then waits (bounded) for its first
    /// subscription attempt, so the first facts fetched are already covered by the bus. Returns
    /// `true` when this call started it and that attempt failed (Redis is probably unreachable).
    pub(crate) async fn ensure_started<L: Listener>(&self, listener: &Arc<L>) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        if self.shared.trust.is_started() {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if !self.shared.trust.mark_started() {
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
        !self.shared.trust.is_up()
    }
}

/// Marks the bus stopped when the subscriber task ends for any reason (including its runtime
/// shutting down), so the next operation starts a new one.
struct RunningGuard(Arc<Shared>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        mark_down(&self.0);
        self.0.trust.mark_stopped();
    }
}

fn mark_down(shared: &Shared) {
    shared.trust.mark_down_since(Instant::now());
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
        let generation = self.shared.trust.mark_up();
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
                        self.shared.trust.mark_down_since(alive_at);
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
}

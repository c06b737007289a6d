//! The write path: filling an entry after a load (`write_entry`), `set`, `delete`, tag and
//! namespace invalidation, and the replay of invalidations the store did not take.
//!
//! Every write updates this process first (loads in flight detached, L1 evicted, tag times and
//! namespace version learned through [`coherence`](super::coherence)), then the store, then tells
//! the other instances on the bus. See [`tags`](crate::tags) for the model (tag times vs. load
//! starts, clock skew) and [`bus`](crate::bus) for how other instances learn about changes.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{Cache, Inner};
use crate::{
    bus::{Listener, Message},
    envelope::{Envelope, Timing},
    store::{NamespaceBump, Store, TagField},
    tags::{TagTimes, Validity},
    util::{self, now_ms},
    Error, Policy,
};

/// Invalidations Redis did not take (breaker open, timeout, lost `PUBLISH`): this process honours
/// them at once; they are replayed when the breaker closes or the bus resubscribes, so the other
/// instances (and this one, once its local record is gone) follow. Bounded: past
/// [`MAX_PENDING`] entries the replay becomes one namespace bump, which covers everything.
#[derive(Debug, Default)]
pub(crate) struct MissedInvalidations {
    hard: std::collections::BTreeSet<String>,
    soft: std::collections::BTreeSet<String>,
    keys: std::collections::BTreeSet<String>,
    namespace: bool,
}

const MAX_PENDING: usize = 10_000;

impl MissedInvalidations {
    fn is_empty(&self) -> bool {
        !self.namespace && self.hard.is_empty() && self.soft.is_empty() && self.keys.is_empty()
    }

    fn len(&self) -> usize {
        self.hard.len() + self.soft.len() + self.keys.len()
    }

    fn overflowed(&mut self) {
        if self.len() > MAX_PENDING {
            *self = MissedInvalidations {
                namespace: true,
                ..MissedInvalidations::default()
            };
        }
    }
}

impl Cache {
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
            || self.known_validity(tags.iter().map(String::as_str), timing.created_ms)
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
        let serialized_len = Envelope::parse(&bytes).map_or(bytes.len(), |e| e.payload_len());
        self.l1_insert(&full_key, value, timing, tags, ttl, serialized_len);
        self.store_op(inner.store.set(&full_key, bytes, ttl)).await
    }

    /// `set`: encodes and stores `value`, tells the other instances; on failure deletes the key.
    pub(crate) async fn write_through<T>(
        &self,
        key: &str,
        value: &T,
        policy: &Policy,
    ) -> Result<(), Error>
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
                if let Some(l1) = &self.inner.l1 {
                    l1.remove(key);
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

    /// `delete`: removes the entry here, in the store and (via the bus) in the other instances.
    pub(crate) async fn remove(&self, key: &str) -> Result<bool, Error> {
        let inner = &self.inner;
        inner.metrics.invalidation();
        inner.flights.detach_key(key);
        inner.bus.tickets.bump(key);
        if let Some(l1) = &inner.l1 {
            l1.remove(key);
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
        let results =
            futures_util::future::join_all(tags.iter().map(|tag| self.bump_tag(tag, field))).await;
        let mut first_error = None;
        let mut published = Vec::with_capacity(tags.len());
        for (tag, result) in tags.iter().zip(results) {
            inner.metrics.invalidation();
            let trust = inner.bus.trust_now();
            let times = match result {
                Ok(times) => {
                    published.push((tag.clone(), times.hard_ms, times.soft_ms));
                    times
                }
                Err(err) => {
                    // Redis did not take it: this process honours it now, with an upper bound of
                    // the Redis clock as its time, and replays it when Redis is back.
                    self.remember_missed(|pending| {
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

    /// `invalidate_namespace`: bumps the namespace version in the store and announces it.
    pub(crate) async fn bump_namespace(&self) -> Result<(), Error> {
        let inner = &self.inner;
        inner.bus.ensure_started(&self.inner).await;
        let trust = inner.bus.trust_now();
        inner.metrics.invalidation();
        let version_key = inner.keys.version();
        let NamespaceBump { version, bumped_ms } = match self
            .store_op(inner.store.bump_namespace(&version_key))
            .await
        {
            Ok(bumped) => bumped,
            Err(err) => {
                // Not bumped anywhere: stop serving L1 copies here, and bump it as soon as
                // Redis is back.
                self.remember_missed(|pending| pending.namespace = true);
                inner.flights.detach_all();
                self.forget_l1();
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
            self.remember_missed(|pending| pending.namespace = true);
        }
        match published {
            Err(Error::BreakerOpen) => Ok(()),
            other => other,
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

    /// See [`Listener::start_over`]: L1 starts over and the invalidations the store missed
    /// are replayed.
    pub(super) fn start_over(&self) {
        self.forget_l1();
        self.replay_missed();
    }

    fn remember_missed(&self, add: impl FnOnce(&mut MissedInvalidations)) {
        if !self.inner.bus.is_remote() {
            return;
        }
        let mut pending = util::lock(&self.inner.missed);
        add(&mut pending);
        pending.overflowed();
    }

    /// Replays the invalidations Redis did not take, in the background (Redis just came back).
    fn replay_missed(&self) {
        let pending = {
            let mut pending = util::lock(&self.inner.missed);
            if pending.is_empty() {
                return;
            }
            std::mem::take(&mut *pending)
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            *util::lock(&self.inner.missed) = pending;
            return;
        };
        let cache = self.clone();
        runtime.spawn(async move {
            tracing::info!(cache = %cache.inner.name, tags = pending.hard.len() + pending.soft.len(),
                keys = pending.keys.len(), namespace = pending.namespace,
                "replaying invalidations redis missed");
            // Failures land in `pending` again (same code paths) for the next recovery.
            if pending.namespace {
                let _ = cache.bump_namespace().await;
                return;
            }
            if !pending.hard.is_empty() {
                let _ = cache.bump_tags(pending.hard, TagField::Hard).await;
            }
            if !pending.soft.is_empty() {
                let _ = cache.bump_tags(pending.soft, TagField::Soft).await;
            }
            for key in pending.keys {
                let _ = cache.remove(&key).await;
            }
        });
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
}

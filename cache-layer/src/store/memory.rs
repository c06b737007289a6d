//! The embedded in-memory store: entries, tag records and namespace versions in a bounded moka
//! cache (the same keys Redis would hold), plus in-process pub/sub channels and write-behind
//! counter sets. Its clock is the local one.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use moka::{
    ops::compute::{CompResult, Op},
    sync::Cache as MokaCache,
    Expiry,
};
use tokio::sync::broadcast;

use super::{
    commands::parse_version, CounterKeys, LockToken, NamespaceBump, PushOutcome, PushStatus,
    ReplicaAck, Store, Subscription, TagField, TagTimes,
};
use crate::{
    error::counter_overflow,
    util::{lock, now_ms},
    Error,
};

/// One value held by the in-memory store.
#[derive(Clone)]
struct MemoryValue {
    bytes: Arc<[u8]>,
    expires_at: Instant,
}

impl MemoryValue {
    fn new(bytes: impl Into<Arc<[u8]>>, ttl: Duration) -> Self {
        MemoryValue {
            bytes: bytes.into(),
            expires_at: Instant::now() + ttl,
        }
    }

    fn is_live(&self) -> bool {
        self.expires_at > Instant::now()
    }
}

/// How long a key without a TTL (a namespace version, like Redis `INCR`) lives.
const NO_EXPIRY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

struct ExpireAtDeadline;

impl Expiry<Arc<str>, MemoryValue> for ExpireAtDeadline {
    fn expire_after_create(
        &self,
        _: &Arc<str>,
        value: &MemoryValue,
        now: Instant,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &Arc<str>,
        value: &MemoryValue,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(now))
    }
}

/// Pub/sub channels and counter sets of one store (shared by its clones).
#[derive(Default)]
struct InProcess {
    channels: Mutex<HashMap<String, broadcast::Sender<Arc<[u8]>>>>,
    /// Counter sets by their live key.
    counters: Mutex<HashMap<String, CounterSet>>,
    /// Unit tests of the pusher: the next push waits for a release (see `hold_next_push`), and
    /// every push is announced.
    #[cfg(test)]
    held_push: Mutex<Option<HeldPush>>,
    #[cfg(test)]
    pushes: std::sync::atomic::AtomicU64,
    #[cfg(test)]
    pushed: tokio::sync::Notify,
}

/// Unit tests: a push held on its way (`MemoryStore::hold_next_push`).
#[cfg(test)]
struct HeldPush {
    reached: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

/// An embedded key-value store with per-key TTLs, bounded by total bytes (moka underneath).
///
/// It is the store of [`Cache::in_memory`](crate::Cache::in_memory) and of a builder with no Redis
/// configured. It is per process: nothing is shared between instances.
///
/// ```
/// use std::time::Duration;
/// use cache_layer::store::{MemoryStore, Store};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_layer::Error> {
/// let store = MemoryStore::new(64 * 1024 * 1024);
/// store.set("k", b"v".to_vec(), Duration::from_secs(60)).await?;
/// assert_eq!(store.get("k").await?, Some(b"v".to_vec()));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    entries: MokaCache<Arc<str>, MemoryValue>,
    in_process: Arc<InProcess>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl MemoryStore {
    /// A store holding at most about `max_bytes` of keys and values.
    pub fn new(max_bytes: u64) -> Self {
        let entries = MokaCache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &Arc<str>, value: &MemoryValue| {
                u32::try_from(key.len() + value.bytes.len() + 64).unwrap_or(u32::MAX)
            })
            .expire_after(ExpireAtDeadline)
            .build();
        MemoryStore {
            entries,
            in_process: Arc::default(),
        }
    }

    fn live(&self, key: &str) -> Option<MemoryValue> {
        self.entries.get(key).filter(MemoryValue::is_live)
    }

    /// Replaces the value at `key` with `update(current live bytes)` (`None`: leave it), in one
    /// atomic step; returns what was stored.
    fn update<R>(
        &self,
        key: &str,
        update: impl FnOnce(Option<&[u8]>) -> Option<(MemoryValue, R)>,
    ) -> Option<R> {
        let mut out = None;
        self.entries
            .entry(Arc::from(key))
            .and_compute_with(|current| {
                let live = current
                    .as_ref()
                    .map(|entry| entry.value())
                    .filter(|value| value.is_live());
                match update(live.map(|value| &*value.bytes)) {
                    Some((value, result)) => {
                        out = Some(result);
                        Op::Put(value)
                    }
                    None => Op::Nop,
                }
            });
        out
    }

    /// Counter set `keys` (created on first use).
    fn with_counters<R>(&self, keys: &CounterKeys, f: impl FnOnce(&mut CounterSet) -> R) -> R {
        let mut sets = lock(&self.in_process.counters);
        f(sets.entry(keys.live().to_owned()).or_default())
    }

    /// Unit tests: the next `counters_push` waits, before it does anything, until the second
    /// returned sender is used or dropped; the first receiver hears when it started waiting.
    #[cfg(test)]
    pub(crate) fn hold_next_push(
        &self,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (reached_tx, reached) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel();
        *lock(&self.in_process.held_push) = Some(HeldPush {
            reached: reached_tx,
            release: release_rx,
        });
        (reached, release)
    }

    /// Unit tests: how many `counters_push` calls returned.
    #[cfg(test)]
    pub(crate) fn pushes(&self) -> u64 {
        self.in_process
            .pushes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Unit tests: waits until `n` `counters_push` calls returned.
    #[cfg(test)]
    pub(crate) async fn pushed(&self, n: u64) {
        loop {
            let pushed = self.in_process.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            if self.pushes() >= n {
                return;
            }
            pushed.await;
        }
    }

    /// Adds `by` to counter `id` at once (a store in this process needs no buffering).
    pub(crate) fn counters_incr(&self, keys: &CounterKeys, id: &str, by: i64) -> Result<(), Error> {
        self.with_counters(keys, |set| set.incr(id, by))
    }
}

impl Default for MemoryStore {
    /// 256 MiB.
    fn default() -> Self {
        MemoryStore::new(256 * 1024 * 1024)
    }
}

impl Store for MemoryStore {
    fn is_shared(&self) -> bool {
        false
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.live(key).map(|value| value.bytes.to_vec()))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        Ok(keys
            .iter()
            .map(|key| self.live(key).map(|value| value.bytes.to_vec()))
            .collect())
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), Error> {
        self.entries
            .insert(Arc::from(key), MemoryValue::new(value, ttl));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        Ok(self
            .entries
            .remove(key)
            .is_some_and(|value| value.is_live()))
    }

    async fn set_if_absent(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool, Error> {
        let stored = self.update(key, |current| match current {
            Some(_) => None,
            None => Some((MemoryValue::new(value, ttl), ())),
        });
        Ok(stored.is_some())
    }

    async fn lock_acquire(&self, lock: &LockToken, ttl: Duration) -> Result<bool, Error> {
        self.set_if_absent(&lock.key, lock.token.clone(), ttl).await
    }

    async fn lock_renew(&self, lock: &LockToken, ttl: Duration) -> Result<bool, Error> {
        let renewed = self.update(&lock.key, |current| match current {
            Some(held) if held == &lock.token[..] => {
                Some((MemoryValue::new(lock.token.clone(), ttl), ()))
            }
            _ => None,
        });
        Ok(renewed.is_some())
    }

    async fn lock_release(&self, lock: &LockToken) -> Result<bool, Error> {
        let result = self
            .entries
            .entry(Arc::from(lock.key.as_str()))
            .and_compute_with(|current| match current {
                Some(entry)
                    if entry.value().is_live() && *entry.value().bytes == lock.token[..] =>
                {
                    Op::Remove
                }
                _ => Op::Nop,
            });
        Ok(matches!(result, CompResult::Removed(_)))
    }

    async fn bump_tag(&self, key: &str, field: TagField, ttl: Duration) -> Result<TagTimes, Error> {
        let times = self.update(key, |current| {
            let mut times = current.and_then(TagTimes::parse).unwrap_or_default();
            // One process: the local clock is the reference.
            let now = now_ms();
            match field {
                TagField::Hard => times.hard_ms = (times.hard_ms + 1).max(now),
                TagField::Soft => times.soft_ms = (times.soft_ms + 1).max(now),
            }
            Some((MemoryValue::new(times.render().into_bytes(), ttl), times))
        });
        Ok(times.unwrap_or_default())
    }

    async fn tag_times(&self, keys: &[String]) -> Result<Vec<Option<TagTimes>>, Error> {
        Ok(keys
            .iter()
            .map(|key| {
                self.live(key)
                    .and_then(|value| TagTimes::parse(&value.bytes))
            })
            .collect())
    }

    async fn repair_tags(
        &self,
        keys: &[String],
        known_hard: &[u64],
        ttl: Duration,
    ) -> Result<Vec<TagTimes>, Error> {
        Ok(keys
            .iter()
            .zip(known_hard)
            .map(|(key, &known)| {
                let mut kept = None;
                let repaired =
                    self.update(key, |current| match current.and_then(TagTimes::parse) {
                        Some(times) if times.hard_ms >= known => {
                            kept = Some(times);
                            None
                        }
                        _ => {
                            let v = known.saturating_add(1).max(now_ms());
                            let times = TagTimes {
                                hard_ms: v,
                                soft_ms: v,
                            };
                            Some((MemoryValue::new(times.render().into_bytes(), ttl), times))
                        }
                    });
                kept.or(repaired).unwrap_or_default()
            })
            .collect())
    }

    async fn bump_namespace(&self, key: &str, known: u64) -> Result<NamespaceBump, Error> {
        let now = now_ms();
        let version = self.update(key, |current| {
            let version = match parse_version(current) {
                Some(cur) if cur >= known => cur + 1,
                _ => known.saturating_add(1).max(now),
            };
            let stored = MemoryValue::new(version.to_string().into_bytes(), NO_EXPIRY);
            Some((stored, version))
        });
        Ok(NamespaceBump {
            version: version.unwrap_or(known + 1),
            bumped_ms: now,
        })
    }

    async fn namespace_version(&self, key: &str) -> Result<Option<u64>, Error> {
        Ok(parse_version(self.live(key).as_ref().map(|v| &*v.bytes)))
    }

    async fn repair_namespace(&self, key: &str, known: u64) -> Result<u64, Error> {
        let mut kept = None;
        let repaired = self.update(key, |current| match parse_version(current) {
            Some(cur) if cur >= known => {
                kept = Some(cur);
                None
            }
            _ => {
                let version = known.saturating_add(1).max(now_ms());
                let stored = MemoryValue::new(version.to_string().into_bytes(), NO_EXPIRY);
                Some((stored, version))
            }
        });
        Ok(kept.or(repaired).unwrap_or(known))
    }

    async fn fill_if(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
        seen: &[u8],
    ) -> Result<bool, Error> {
        let stored = self.update(key, |current| {
            super::fill_matches(current, seen).then(|| (MemoryValue::new(value, ttl), ()))
        });
        Ok(stored.is_some())
    }

    async fn delete_to_tombstone(
        &self,
        key: &str,
        tombstone: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, Error> {
        let live = self.update(key, |current| {
            let live = current.is_some_and(|bytes| !super::is_tombstone(bytes));
            Some((MemoryValue::new(tombstone, ttl), live))
        });
        Ok(live.unwrap_or(false))
    }

    async fn server_time(&self) -> Result<Duration, Error> {
        Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default())
    }

    async fn publish(&self, channel: &str, message: &[u8]) -> Result<(), Error> {
        if let Some(tx) = lock(&self.in_process.channels).get(channel) {
            // No receiver: nobody subscribed, nothing to deliver (as with Redis).
            let _ = tx.send(Arc::from(message));
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), Error> {
        Ok(())
    }

    async fn eviction_settings(&self) -> Result<Option<super::EvictionSettings>, Error> {
        Ok(None)
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription, Error> {
        let mut channels = lock(&self.in_process.channels);
        let tx = channels
            .entry(channel.to_owned())
            .or_insert_with(|| broadcast::channel(1024).0);
        Ok(Subscription::memory(tx.subscribe()))
    }

    async fn counters_push(
        &self,
        keys: &CounterKeys,
        token: &str,
        seq: u64,
        after: u64,
        _writer_ttl: Duration,
        entries: &[(String, i64)],
    ) -> Result<PushOutcome, Error> {
        #[cfg(test)]
        {
            let held = lock(&self.in_process.held_push).take();
            if let Some(held) = held {
                let _ = held.reached.send(());
                let _ = held.release.await;
            }
        }
        let outcome = self.with_counters(keys, |set| set.push(token, seq, after, entries));
        #[cfg(test)]
        {
            let in_process = &self.in_process;
            in_process
                .pushes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            in_process.pushed.notify_waiters();
        }
        Ok(outcome)
    }

    async fn counters_seal(
        &self,
        keys: &CounterKeys,
        id: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        Ok(self.with_counters(keys, |set| set.seal(id, token, lease)))
    }

    async fn counters_claim(
        &self,
        keys: &CounterKeys,
        token: &str,
        lease: Duration,
    ) -> Result<Option<String>, Error> {
        Ok(self.with_counters(keys, |set| set.claim(token, lease)))
    }

    async fn counters_renew(
        &self,
        keys: &CounterKeys,
        id: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        Ok(self.with_counters(keys, |set| set.renew(id, token, lease)))
    }

    async fn counters_release(
        &self,
        keys: &CounterKeys,
        id: &str,
        token: &str,
    ) -> Result<(), Error> {
        self.with_counters(keys, |set| set.release(id, token));
        Ok(())
    }

    async fn counters_complete(&self, keys: &CounterKeys, id: &str) -> Result<(), Error> {
        self.with_counters(keys, |set| set.complete(id));
        Ok(())
    }

    async fn counters_read(
        &self,
        keys: &CounterKeys,
        id: &str,
    ) -> Result<Vec<(String, i64)>, Error> {
        Ok(self.with_counters(keys, |set| set.read(id)))
    }
}

/// One write-behind counter set in process memory: the protocol of the Redis scripts
/// (`scripts::COUNTERS_*`) on plain maps.
#[derive(Debug, Default)]
struct CounterSet {
    live: HashMap<String, i64>,
    batches: BTreeMap<String, SealedBatch>,
    /// Last push sequence number applied per writer token.
    writers: HashMap<String, u64>,
}

#[derive(Debug)]
struct SealedBatch {
    entries: Vec<(String, i64)>,
    lease: Option<(Instant, String)>,
}

impl CounterSet {
    fn incr(&mut self, id: &str, by: i64) -> Result<(), Error> {
        let slot = match self.live.get_mut(id) {
            Some(slot) => slot,
            None => self.live.entry(id.to_owned()).or_insert(0),
        };
        *slot = slot.checked_add(by).ok_or_else(counter_overflow)?;
        Ok(())
    }

    /// The push script's semantics (`COUNTERS_PUSH` in `scripts.rs`).
    fn push(
        &mut self,
        token: &str,
        seq: u64,
        after: u64,
        entries: &[(String, i64)],
    ) -> PushOutcome {
        let last = self.writers.entry(token.to_owned()).or_insert(0);
        let unapplied = |status| PushOutcome {
            status,
            rejected: Vec::new(),
            replica: ReplicaAck::NoReplicas,
        };
        if seq <= *last {
            return unapplied(PushStatus::AlreadyApplied);
        }
        if after > *last {
            return unapplied(PushStatus::OutOfOrder);
        }
        *last = seq;
        let rejected = entries
            .iter()
            .filter(|(id, by)| self.incr(id, *by).is_err())
            .map(|(id, _)| id.clone())
            .collect();
        PushOutcome {
            status: PushStatus::Applied,
            rejected,
            replica: ReplicaAck::NoReplicas,
        }
    }

    fn seal(&mut self, id: &str, token: &str, lease: Duration) -> bool {
        if self.live.is_empty() {
            return false;
        }
        let entries = std::mem::take(&mut self.live).into_iter().collect();
        let lease = Some((Instant::now() + lease, token.to_owned()));
        self.batches
            .insert(id.to_owned(), SealedBatch { entries, lease });
        true
    }

    fn claim(&mut self, token: &str, lease: Duration) -> Option<String> {
        let now = Instant::now();
        let (id, batch) = self.batches.iter_mut().find(|(_, b)| match &b.lease {
            None => true,
            Some((expiry, owner)) => *expiry <= now || owner == token,
        })?;
        batch.lease = Some((now + lease, token.to_owned()));
        Some(id.clone())
    }

    fn renew(&mut self, id: &str, token: &str, lease: Duration) -> bool {
        match self.batches.get_mut(id) {
            Some(SealedBatch {
                lease: Some((expiry, owner)),
                ..
            }) if owner == token => {
                *expiry = Instant::now() + lease;
                true
            }
            _ => false,
        }
    }

    fn release(&mut self, id: &str, token: &str) {
        if let Some(batch) = self.batches.get_mut(id) {
            if batch
                .lease
                .as_ref()
                .is_some_and(|(_, owner)| owner == token)
            {
                batch.lease = None;
            }
        }
    }

    fn read(&self, id: &str) -> Vec<(String, i64)> {
        self.batches
            .get(id)
            .map(|b| b.entries.clone())
            .unwrap_or_default()
    }

    fn complete(&mut self, id: &str) {
        self.batches.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_expire_after_their_ttl() {
        let store = MemoryStore::default();
        store
            .set("k", b"v".to_vec(), Duration::from_millis(30))
            .await
            .unwrap();
        assert_eq!(store.get("k").await.unwrap(), Some(b"v".to_vec()));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(store.get("k").await.unwrap(), None);
    }

    fn token(key: &str, token: &[u8]) -> LockToken {
        LockToken {
            key: key.to_owned(),
            token: token.to_vec(),
        }
    }

    #[tokio::test]
    async fn locks_are_taken_once_and_renewed_or_released_by_their_holder_only() {
        let store = MemoryStore::default();
        let ttl = Duration::from_secs(10);
        let (a, b) = (token("lock", b"a"), token("lock", b"b"));
        assert!(store.lock_acquire(&a, ttl).await.unwrap());
        assert!(!store.lock_acquire(&b, ttl).await.unwrap());
        assert!(!store.lock_renew(&b, ttl).await.unwrap());
        assert!(store.lock_renew(&a, ttl).await.unwrap());
        assert!(!store.lock_release(&b).await.unwrap());
        assert!(store.lock_release(&a).await.unwrap());
        assert!(store.lock_acquire(&b, ttl).await.unwrap());
    }

    #[tokio::test]
    async fn tag_records_and_namespace_versions_move_forward() {
        let store = MemoryStore::default();
        let ttl = Duration::from_secs(10);
        let first = store.bump_tag("t", TagField::Hard, ttl).await.unwrap();
        let second = store.bump_tag("t", TagField::Hard, ttl).await.unwrap();
        assert!(second.hard_ms > first.hard_ms && second.soft_ms == 0);
        let soft = store.bump_tag("t", TagField::Soft, ttl).await.unwrap();
        assert_eq!(soft.hard_ms, second.hard_ms);
        assert!(soft.soft_ms >= first.hard_ms);
        assert_eq!(
            store.tag_times(&["t".into(), "u".into()]).await.unwrap(),
            vec![Some(soft), None],
            "a missing record is unknown, not 'never invalidated'"
        );
        // A missing record is repaired as if invalidated now; a present one is kept.
        let repaired = store.repair_tags(&["u".into()], &[0], ttl).await.unwrap()[0];
        assert!(repaired.hard_ms >= first.hard_ms && repaired.hard_ms == repaired.soft_ms);
        assert_eq!(
            store.repair_tags(&["t".into()], &[0], ttl).await.unwrap(),
            vec![soft]
        );

        // The namespace epoch: absent is unknown; repaired above what is known, bumped by one.
        assert_eq!(store.namespace_version("v").await.unwrap(), None);
        let epoch = store.repair_namespace("v", 0).await.unwrap();
        assert!(epoch >= first.hard_ms, "repaired to the store's time");
        assert_eq!(
            store.bump_namespace("v", epoch).await.unwrap().version,
            epoch + 1
        );
        assert_eq!(store.namespace_version("v").await.unwrap(), Some(epoch + 1));
        let ahead = store.repair_namespace("v", epoch + 10).await.unwrap();
        assert!(
            ahead > epoch + 10,
            "an epoch behind what is known is repaired upward"
        );
    }

    #[tokio::test]
    async fn fills_are_conditional_and_tombstones_refuse_them() {
        let store = MemoryStore::default();
        let ttl = Duration::from_secs(10);
        assert!(store.fill_if("k", b"x1".to_vec(), ttl, b"").await.unwrap());
        assert!(!store.fill_if("k", b"x2".to_vec(), ttl, b"").await.unwrap());
        assert!(store.fill_if("k", b"x3".to_vec(), ttl, b"x").await.unwrap());
        let mut tomb = b"CL\x02\x80".to_vec();
        tomb.extend_from_slice(&[0; 28]);
        tomb.extend_from_slice(b"12345678");
        assert!(store
            .delete_to_tombstone("k", tomb.clone(), ttl)
            .await
            .unwrap());
        assert!(!store.delete_to_tombstone("k", tomb, ttl).await.unwrap());
        assert!(!store.fill_if("k", b"x4".to_vec(), ttl, b"").await.unwrap());
        assert!(store
            .fill_if("k", b"x5".to_vec(), ttl, b"12345678")
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn published_messages_reach_subscribers_of_their_channel() {
        let store = MemoryStore::default();
        store.publish("c", b"before").await.unwrap();
        let mut sub = store.subscribe("c").await.unwrap();
        let mut other = store.subscribe("d").await.unwrap();
        store.publish("c", b"hello").await.unwrap();
        assert_eq!(sub.next().await.as_deref(), Some(&b"hello"[..]));
        sub.ping().await.unwrap();
        store.publish("d", b"there").await.unwrap();
        assert_eq!(other.next().await.as_deref(), Some(&b"there"[..]));
    }

    #[tokio::test]
    async fn counter_sets_follow_the_protocol_of_the_scripts() {
        let store = MemoryStore::default();
        let keys = CounterKeys::new("ns:__counters:{views}".into());
        let lease = Duration::from_secs(60);
        store.counters_incr(&keys, "a", 2).unwrap();
        let pushed = store
            .counters_push(&keys, "w", 1, 0, lease, &[("a".into(), 3)])
            .await
            .unwrap();
        assert_eq!(pushed.status, PushStatus::Applied);
        let resent = store
            .counters_push(&keys, "w", 1, 0, lease, &[("a".into(), 3)])
            .await
            .unwrap();
        assert_eq!(
            resent.status,
            PushStatus::AlreadyApplied,
            "a resent push is not applied twice"
        );
        let early = store
            .counters_push(&keys, "w", 3, 2, lease, &[("a".into(), 100)])
            .await
            .unwrap();
        assert_eq!(
            early.status,
            PushStatus::OutOfOrder,
            "refused while the push before it has not landed"
        );
        assert!(store.counters_seal(&keys, "b1", "me", lease).await.unwrap());
        assert!(!store.counters_seal(&keys, "b2", "me", lease).await.unwrap());
        assert_eq!(
            store.counters_claim(&keys, "other", lease).await.unwrap(),
            None
        );
        assert_eq!(
            store
                .counters_claim(&keys, "me", lease)
                .await
                .unwrap()
                .as_deref(),
            Some("b1"),
            "own lease reclaimed"
        );
        store.counters_release(&keys, "b1", "me").await.unwrap();
        assert_eq!(
            store
                .counters_claim(&keys, "other", lease)
                .await
                .unwrap()
                .as_deref(),
            Some("b1")
        );
        assert!(!store
            .counters_renew(&keys, "b1", "me", lease)
            .await
            .unwrap());
        assert!(store
            .counters_renew(&keys, "b1", "other", lease)
            .await
            .unwrap());
        assert_eq!(
            store.counters_read(&keys, "b1").await.unwrap(),
            vec![("a".to_owned(), 5)]
        );
        store.counters_complete(&keys, "b1").await.unwrap();
        assert_eq!(
            store.counters_claim(&keys, "me", lease).await.unwrap(),
            None
        );
        store.counters_incr(&keys, "x", i64::MAX).unwrap();
        assert!(store.counters_incr(&keys, "x", 1).is_err());
        let overflow = store
            .counters_push(&keys, "w", 2, 1, lease, &[("x".into(), 1), ("y".into(), 1)])
            .await
            .unwrap();
        assert_eq!(overflow.rejected, vec!["x".to_owned()]);
    }

    #[tokio::test]
    async fn delete_reports_whether_something_was_removed() {
        let store = MemoryStore::default();
        assert!(!store.delete("nothing").await.unwrap());
        store
            .set("k", vec![1], Duration::from_secs(10))
            .await
            .unwrap();
        assert!(store.delete("k").await.unwrap());
        assert!(!store.delete("k").await.unwrap());
    }
}

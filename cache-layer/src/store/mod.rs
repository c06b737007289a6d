//! Where entries live: the [`Store`] trait and its implementations.
//!
//! - [`RedisStore`]: a bb8 pool of multiplexed redis-rs connections (one Redis server).
//! - [`ClusterStore`]: Redis Cluster through redis-rs' multiplexed async cluster connection.
//! - [`MemoryStore`]: an embedded, bounded in-memory store with TTLs; the default when no Redis is
//!   configured, so an application (and its tests) run anywhere.
//!
//! The store owns every Redis-level operation, as a domain operation: entries (get, set, delete,
//! get-many, conditional fill), tag records, namespace versions, entry locks, pub/sub, the server
//! clock and the write-behind counters' protocol (with a replica's acknowledgement where the server
//! has replicas: `replicas.rs`). Nothing outside this module builds a Redis
//! command or names a redis-rs type (except the error conversion in `error.rs`); all Lua lives in
//! `scripts.rs`. The three stores implement the whole trait; the in-memory store keeps the same
//! semantics in process (its clock is the local one, its pub/sub reaches this process only).
//!
//! Stores work on raw bytes; the [`Cache`](crate::Cache) owns encoding, validity and stampede
//! logic.

#[cfg(feature = "cluster")]
mod cluster;
mod commands;
pub(crate) mod endpoint;
mod memory;
mod redis;
mod replicas;
mod scripts;
mod subscription;

use std::{future::Future, time::Duration};

#[cfg(feature = "cluster")]
pub use self::cluster::ClusterStore;
pub use self::memory::MemoryStore;
pub use self::redis::{default_pool_size, RedisStore, RedisStoreConfig};
pub use self::subscription::Subscription;
use crate::Error;

/// The two versions of a tag record, each raised to `max(previous + 1, store time in ms)`: hard by
/// `invalidate_tag` (entries that recorded a lower one are invalid), soft by `expire_tag` (entries
/// that recorded a lower one are stale).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TagTimes {
    /// Raised by `invalidate_tag`.
    pub hard_ms: u64,
    /// Raised by `expire_tag`.
    pub soft_ms: u64,
}

impl TagTimes {
    /// Parses a tag record as stored (`"<hard>:<soft>"`).
    pub(crate) fn parse(bytes: &[u8]) -> Option<TagTimes> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (hard, soft) = text.split_once(':')?;
        Some(TagTimes {
            hard_ms: hard.parse().ok()?,
            soft_ms: soft.parse().ok()?,
        })
    }

    /// The stored form of a tag record.
    pub(crate) fn render(self) -> String {
        format!("{}:{}", self.hard_ms, self.soft_ms)
    }
}

/// Which of a tag's two times an operation raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagField {
    /// Invalidation: tagged entries created before it are not served.
    Hard,
    /// Soft expiry: tagged entries created before it are served only within their grace period.
    Soft,
}

/// A namespace epoch after a bump, with the store's time of the bump (ms since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceBump {
    /// The new version.
    pub version: u64,
    /// When it was bumped, on the store's clock.
    pub bumped_ms: u64,
}

/// The keys of one write-behind counter set (all in one cluster hash slot): the live hash that
/// increments go to, the index of sealed batches, their leases, and the prefixes of batch and
/// writer keys.
#[derive(Debug, Clone)]
pub struct CounterKeys {
    live: String,
    index: String,
    leases: String,
    batch_prefix: String,
    writer_prefix: String,
}

impl CounterKeys {
    /// The keys derived from the live hash's key (which must carry the set's hash tag).
    pub(crate) fn new(live: String) -> Self {
        CounterKeys {
            index: format!("{live}:batches"),
            leases: format!("{live}:leases"),
            batch_prefix: format!("{live}:batch:"),
            writer_prefix: format!("{live}:writer:"),
            live,
        }
    }

    /// The live hash (`id -> accumulated delta`).
    pub fn live(&self) -> &str {
        &self.live
    }

    pub(crate) fn index(&self) -> &str {
        &self.index
    }

    pub(crate) fn leases(&self) -> &str {
        &self.leases
    }

    /// The key of sealed batch `id`.
    pub(crate) fn batch(&self, id: &str) -> String {
        format!("{}{id}", self.batch_prefix)
    }

    /// The key holding the last push sequence number applied for writer `token`.
    pub(crate) fn writer(&self, token: &str) -> String {
        format!("{}{token}", self.writer_prefix)
    }
}

/// What a push of counter increments did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// Applied, applied before (a resend), or refused until the push before it lands.
    pub status: PushStatus,
    /// Ids whose stored value would have overflowed `i64` (not incremented).
    pub rejected: Vec<String>,
    /// Whether a replica has the push (everything this push made true, a resend included).
    pub replica: ReplicaAck,
}

/// Whether a push of counter increments was applied.
///
/// ```
/// use cache_layer::store::PushStatus;
///
/// assert!(PushStatus::Applied.landed());
/// assert!(PushStatus::AlreadyApplied.landed());
/// assert!(!PushStatus::OutOfOrder.landed());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushStatus {
    /// Applied now.
    Applied,
    /// This sequence number had landed already (a resend after a lost reply); nothing was applied
    /// again.
    AlreadyApplied,
    /// Refused, nothing written: the push sent before it (its `after`) has not landed yet. Send
    /// it again once that one is acknowledged.
    OutOfOrder,
}

impl PushStatus {
    /// Whether the push is in the store (applied now or before).
    pub fn landed(self) -> bool {
        !matches!(self, PushStatus::OutOfOrder)
    }
}

/// Whether a write-behind write (a push, the sealing or claiming of a batch) reached a replica.
///
/// Where the server has connected replicas (`INFO replication` `connected_slaves`, read at most
/// every 10 s, per node on a Cluster), the write's script is followed by `WAIT 1 <timeout>` on
/// a connection of its own (`WAIT` blocks its connection, so it never runs on one that other
/// callers share). Without replicas nothing is waited for and no command is added.
///
/// ```
/// use std::time::Duration;
/// use cache_layer::store::ReplicaAck;
///
/// assert!(ReplicaAck::NoReplicas.is_settled());
/// assert!(ReplicaAck::Acknowledged(1).is_settled());
/// assert!(!ReplicaAck::TimedOut(Duration::from_millis(83)).is_settled());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaAck {
    /// The server has no connected replica (or a store in this process): nothing to wait for.
    NoReplicas,
    /// This many replicas acknowledged the write.
    Acknowledged(u32),
    /// No replica acknowledged the write within this time.
    TimedOut(Duration),
}

impl ReplicaAck {
    /// The write is as durable as the deployment allows: acknowledged, or nothing to wait for.
    pub fn is_settled(self) -> bool {
        !matches!(self, ReplicaAck::TimedOut(_))
    }

    /// `Err(Error::NotReplicated)` when no replica acknowledged in time.
    pub(crate) fn check(self) -> Result<(), Error> {
        match self {
            ReplicaAck::TimedOut(timeout) => Err(Error::NotReplicated { timeout }),
            ReplicaAck::NoReplicas | ReplicaAck::Acknowledged(_) => Ok(()),
        }
    }
}

/// A Redis server's eviction settings (`maxmemory-policy` and `maxmemory`, from `INFO memory`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictionSettings {
    /// `maxmemory-policy`, e.g. `volatile-ttl`.
    pub policy: String,
    /// `maxmemory` in bytes (0: no limit).
    pub maxmemory: u64,
}

/// A lock on one entry held by one loader: its key and the holder's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken {
    /// The lock's key.
    pub key: String,
    /// Identifies the holder: only it renews or releases the lock.
    pub token: Vec<u8>,
}

/// A backend with per-key TTLs and the operations the cache runs on it.
///
/// Every method is one logical operation (one round trip on a networked store, except
/// [`counters_read`](Store::counters_read), which pages). Implementations apply their own
/// timeouts and never block a caller longer than that.
///
/// ```
/// use std::time::Duration;
/// use cache_layer::store::{MemoryStore, Store, TagField};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_layer::Error> {
/// let store = MemoryStore::default();
/// store.set("k", b"v".to_vec(), Duration::from_secs(60)).await?;
/// assert_eq!(store.get_many(&["k".into(), "none".into()]).await?, vec![Some(b"v".to_vec()), None]);
/// let times = store.bump_tag("tag:t", TagField::Hard, Duration::from_secs(60)).await?;
/// assert_eq!(store.tag_times(&["tag:t".into()]).await?, vec![Some(times)]);
/// # Ok(()) }
/// ```
pub trait Store: Send + Sync + 'static {
    /// Whether other processes share this store (Redis, Cluster): then invalidations must be
    /// announced on its pub/sub and facts cached in this process may go out of date.
    fn is_shared(&self) -> bool;

    // ----- entries ------------------------------------------------------------------------------

    /// The bytes stored under `key`, if any and not expired.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, Error>> + Send;

    /// The bytes stored under each of `keys` (any hash slots), in order.
    fn get_many(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>, Error>> + Send;

    /// Stores `value` under `key` for `ttl` (`SET key value PX ttl`).
    fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Removes `key`; `true` when something was removed.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Conditional fill: stores `value` only if `key` does not exist (`SET NX PX`); `true` when
    /// stored.
    fn set_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    // ----- entry locks (`Stampede::Lock`) ------------------------------------------------------

    /// Takes `lock` for `ttl` if nobody holds it; `true` when taken.
    fn lock_acquire(
        &self,
        lock: &LockToken,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Extends `lock` to `ttl` from now if its holder still holds it; `true` when extended.
    fn lock_renew(
        &self,
        lock: &LockToken,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Releases `lock` if its holder still holds it (never another holder's); `true` when
    /// released.
    fn lock_release(&self, lock: &LockToken) -> impl Future<Output = Result<bool, Error>> + Send;

    // ----- tags and namespace versions ----------------------------------------------------------

    /// Raises one time of the tag record at `key` to `max(previous + 1, store time)` and keeps the
    /// record for `ttl`; returns the record.
    fn bump_tag(
        &self,
        key: &str,
        field: TagField,
        ttl: Duration,
    ) -> impl Future<Output = Result<TagTimes, Error>> + Send;

    /// The tag records at `keys`, in order (`None`: absent or unreadable, i.e. lost).
    fn tag_times(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Option<TagTimes>>, Error>> + Send;

    /// Repairs the tag records at `keys` that are missing, unreadable or below `known_hard[i]`
    /// (the hard version the caller knows): each becomes `max(known + 1, store time in ms)` for
    /// both versions, kept for `ttl`, as if the tag had been invalidated just now. Returns the
    /// records as they are afterwards.
    fn repair_tags(
        &self,
        keys: &[String],
        known_hard: &[u64],
        ttl: Duration,
    ) -> impl Future<Output = Result<Vec<TagTimes>, Error>> + Send;

    /// Raises the namespace epoch at `key` by one; a missing epoch, or one below `known`, is
    /// repaired to `max(known + 1, store time in ms)` instead (never reset).
    fn bump_namespace(
        &self,
        key: &str,
        known: u64,
    ) -> impl Future<Output = Result<NamespaceBump, Error>> + Send;

    /// The namespace epoch at `key` (`None`: absent or unreadable, i.e. never created or lost).
    fn namespace_version(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<u64>, Error>> + Send;

    /// Repairs a missing namespace epoch, or one below `known`, to
    /// `max(known + 1, store time in ms)`; returns the epoch.
    fn repair_namespace(
        &self,
        key: &str,
        known: u64,
    ) -> impl Future<Output = Result<u64, Error>> + Send;

    // ----- conditional fills and tombstones ------------------------------------------------------

    /// Stores `value` at `key` for `ttl` only if the key still holds what a load saw when it
    /// started (`seen`: empty = nothing; 8 bytes = the write id of a format-2 entry or tombstone,
    /// at offset 32 of a value starting `CL\x02`; `x` = a value of another format or Redis type).
    /// `true` when stored.
    fn fill_if(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
        seen: &[u8],
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Replaces whatever is at `key` by `tombstone` for `ttl`; `true` if a live entry (not a
    /// tombstone) was there.
    fn delete_to_tombstone(
        &self,
        key: &str,
        tombstone: Vec<u8>,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    // ----- clock and pub/sub --------------------------------------------------------------------

    /// The store's clock: time since the Unix epoch (`TIME`; the local clock for a store in this
    /// process).
    fn server_time(&self) -> impl Future<Output = Result<Duration, Error>> + Send;

    /// Sends `message` to every subscriber of `channel`.
    fn publish(
        &self,
        channel: &str,
        message: &[u8],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Subscribes to `channel` on a connection of its own.
    fn subscribe(&self, channel: &str) -> impl Future<Output = Result<Subscription, Error>> + Send;

    // ----- operations ---------------------------------------------------------------------------

    /// Checks that the store answers (`PING`); always `Ok` in process.
    fn ping(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// The server's eviction settings (`INFO memory`); `None` for a store in this process (or a
    /// reply without them).
    fn eviction_settings(
        &self,
    ) -> impl Future<Output = Result<Option<EvictionSettings>, Error>> + Send;

    // ----- write-behind counters ---------------------------------------------------------------

    /// Applies one push of `(id, delta)` increments from writer `token` exactly once per `seq`
    /// (the writer's record lives for `writer_ttl`), and only after push `after` (the writer's
    /// push sent before this one and not yet acknowledged, 0 for none) landed:
    /// [`PushStatus::OutOfOrder`] otherwise. Where the server has replicas, waits (a third of the
    /// op timeout) for one to acknowledge it and says so in [`PushOutcome::replica`]; a resend of
    /// a push that had landed is acknowledged only once a replica has the original too.
    fn counters_push(
        &self,
        keys: &CounterKeys,
        token: &str,
        seq: u64,
        after: u64,
        writer_ttl: Duration,
        entries: &[(String, i64)],
    ) -> impl Future<Output = Result<PushOutcome, Error>> + Send;

    /// Seals the live hash into batch `id`, leased to `token` for `lease`; `false` when there was
    /// nothing to seal. Where the server has replicas: [`Error::NotReplicated`] when none
    /// acknowledged the seal in time (the batch is sealed on the primary; the next
    /// [`counters_claim`](Store::counters_claim) of `token` finds it).
    fn counters_seal(
        &self,
        keys: &CounterKeys,
        id: &str,
        token: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Claims the oldest sealed batch nobody else holds, leased to `token` for `lease`. Where the
    /// server has replicas: [`Error::NotReplicated`] when none acknowledged the claim (and with
    /// it the batch's sealing) in time; the batch stays leased to `token`.
    fn counters_claim(
        &self,
        keys: &CounterKeys,
        token: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<String>, Error>> + Send;

    /// Extends `token`'s lease on batch `id`; `false` when it no longer holds it.
    fn counters_renew(
        &self,
        keys: &CounterKeys,
        id: &str,
        token: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Gives batch `id` back (if `token` holds it) so any flusher may retry it.
    fn counters_release(
        &self,
        keys: &CounterKeys,
        id: &str,
        token: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Deletes delivered batch `id`.
    fn counters_complete(
        &self,
        keys: &CounterKeys,
        id: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The `(id, delta)` pairs of sealed batch `id` (any order).
    fn counters_read(
        &self,
        keys: &CounterKeys,
        id: &str,
    ) -> impl Future<Output = Result<Vec<(String, i64)>, Error>> + Send;
}

/// Writes the [`Store`] methods that hand an operation on unchanged (all but `is_shared` and the
/// entry reads and writes, which each implementation writes out), so that their signatures are
/// listed once: `forward_ops!(variants)` for [`Backend`] (to the variant's store),
/// `forward_ops!(commands)` for the Redis stores (to the function of that name in `commands.rs`,
/// through `commands::impl_store!`).
macro_rules! forward_ops {
    ($to:ident) => {
        $crate::store::forward_ops! { @ops $to;
            delete(key: &str) -> bool;
            set_if_absent(key: &str, value: Vec<u8>, ttl: ::std::time::Duration) -> bool;
            lock_acquire(lock: &$crate::store::LockToken, ttl: ::std::time::Duration) -> bool;
            lock_renew(lock: &$crate::store::LockToken, ttl: ::std::time::Duration) -> bool;
            lock_release(lock: &$crate::store::LockToken) -> bool;
            bump_tag(key: &str, field: $crate::store::TagField, ttl: ::std::time::Duration) -> $crate::store::TagTimes;
            tag_times(keys: &[String]) -> Vec<Option<$crate::store::TagTimes>>;
            repair_tags(keys: &[String], known_hard: &[u64], ttl: ::std::time::Duration) -> Vec<$crate::store::TagTimes>;
            bump_namespace(key: &str, known: u64) -> $crate::store::NamespaceBump;
            namespace_version(key: &str) -> Option<u64>;
            repair_namespace(key: &str, known: u64) -> u64;
            fill_if(key: &str, value: Vec<u8>, ttl: ::std::time::Duration, seen: &[u8]) -> bool;
            delete_to_tombstone(key: &str, tombstone: Vec<u8>, ttl: ::std::time::Duration) -> bool;
            server_time() -> ::std::time::Duration;
            publish(channel: &str, message: &[u8]) -> ();
            subscribe(channel: &str) -> $crate::store::Subscription;
            ping() -> ();
            eviction_settings() -> Option<$crate::store::EvictionSettings>;
            counters_push(keys: &$crate::store::CounterKeys, token: &str, seq: u64, after: u64, writer_ttl: ::std::time::Duration, entries: &[(String, i64)]) -> $crate::store::PushOutcome;
            counters_seal(keys: &$crate::store::CounterKeys, id: &str, token: &str, lease: ::std::time::Duration) -> bool;
            counters_claim(keys: &$crate::store::CounterKeys, token: &str, lease: ::std::time::Duration) -> Option<String>;
            counters_renew(keys: &$crate::store::CounterKeys, id: &str, token: &str, lease: ::std::time::Duration) -> bool;
            counters_release(keys: &$crate::store::CounterKeys, id: &str, token: &str) -> ();
            counters_complete(keys: &$crate::store::CounterKeys, id: &str) -> ();
            counters_read(keys: &$crate::store::CounterKeys, id: &str) -> Vec<(String, i64)>;
        }
    };
    (@ops $to:ident; $($op:ident($($arg:ident: $ty:ty),*) -> $out:ty;)*) => {
        $(
            async fn $op(&self, $($arg: $ty),*) -> Result<$out, $crate::Error> {
                $crate::store::forward_ops!(@call $to, self, $op($($arg),*))
            }
        )*
    };
    (@call variants, $this:ident, $op:ident($($arg:ident),*)) => {
        match $this {
            $crate::store::Backend::Memory(store) => store.$op($($arg),*).await,
            $crate::store::Backend::Redis(store) => store.$op($($arg),*).await,
            #[cfg(feature = "cluster")]
            $crate::store::Backend::Cluster(store) => store.$op($($arg),*).await,
        }
    };
    (@call commands, $this:ident, $op:ident($($arg:ident),*)) => {
        $crate::store::commands::$op($this, $($arg),*).await
    };
}
pub(crate) use forward_ops;

/// The store a [`Cache`](crate::Cache) was built with (static dispatch, no boxing on the hot path).
// One per cache, never moved on the hot path: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Memory(MemoryStore),
    Redis(RedisStore),
    #[cfg(feature = "cluster")]
    Cluster(ClusterStore),
}

macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Backend::Memory($store) => $call.await,
            Backend::Redis($store) => $call.await,
            #[cfg(feature = "cluster")]
            Backend::Cluster($store) => $call.await,
        }
    };
}

impl Backend {
    /// The store when it lives in this process (write-behind increments apply to it directly).
    pub(crate) fn in_process(&self) -> Option<&MemoryStore> {
        match self {
            Backend::Memory(store) => Some(store),
            _ => None,
        }
    }
}

impl Store for Backend {
    fn is_shared(&self) -> bool {
        match self {
            Backend::Memory(s) => s.is_shared(),
            Backend::Redis(s) => s.is_shared(),
            #[cfg(feature = "cluster")]
            Backend::Cluster(s) => s.is_shared(),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        delegate!(self, s => s.get(key))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        delegate!(self, s => s.get_many(keys))
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), Error> {
        delegate!(self, s => s.set(key, value, ttl))
    }

    forward_ops!(variants);
}

/// Whether `current` (the value at a key, if any) is what a load saw (`seen`, see
/// [`Store::fill_if`]): the in-process form of the conditional-fill script.
pub(crate) fn fill_matches(current: Option<&[u8]>, seen: &[u8]) -> bool {
    match current {
        None => seen.is_empty(),
        Some(bytes) if bytes.len() >= 40 && bytes.starts_with(b"CL\x02") => {
            seen.len() == 8 && bytes[32..40] == *seen
        }
        Some(_) => seen == b"x",
    }
}

/// Whether `bytes` is a tombstone (format 2, flags `0x80`).
pub(crate) fn is_tombstone(bytes: &[u8]) -> bool {
    bytes.len() >= 40 && bytes.starts_with(b"CL\x02") && bytes[3] == 0x80
}

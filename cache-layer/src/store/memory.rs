//! The embedded in-memory store.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use moka::{ops::compute::Op, sync::Cache as MokaCache, Expiry};

use super::Store;
use crate::Error;

#[derive(Clone)]
struct Stored {
    bytes: Arc<[u8]>,
    expires_at: Instant,
}

struct ExpireAtDeadline;

impl Expiry<Arc<str>, Stored> for ExpireAtDeadline {
    fn expire_after_create(&self, _: &Arc<str>, value: &Stored, now: Instant) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &Arc<str>,
        value: &Stored,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(now))
    }
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
    entries: MokaCache<Arc<str>, Stored>,
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
            .weigher(|key: &Arc<str>, value: &Stored| {
                u32::try_from(key.len() + value.bytes.len() + 64).unwrap_or(u32::MAX)
            })
            .expire_after(ExpireAtDeadline)
            .build();
        MemoryStore { entries }
    }

    fn live(&self, key: &str) -> Option<Stored> {
        self.entries
            .get(key)
            .filter(|stored| stored.expires_at > Instant::now())
    }
}

/// What [`MemoryStore::update`] does with a key.
pub(crate) enum Update {
    /// Leave it as it is.
    Keep,
    /// Store these bytes for this long.
    Put(Vec<u8>, Duration),
}

impl MemoryStore {
    /// Reads the live value of `key` and replaces it per `decide`, atomically (no other operation
    /// on `key` interleaves). Returns what `decide` returned alongside.
    pub(crate) fn update<R>(
        &self,
        key: &str,
        decide: impl FnOnce(Option<&[u8]>) -> (Update, R),
    ) -> R {
        let mut out = None;
        self.entries
            .entry(Arc::from(key))
            .and_compute_with(|current| {
                let now = Instant::now();
                let live = current
                    .as_ref()
                    .map(|entry| entry.value())
                    .filter(|stored| stored.expires_at > now);
                let (update, result) = decide(live.map(|stored| &*stored.bytes));
                out = Some(result);
                match update {
                    Update::Keep => Op::Nop,
                    Update::Put(bytes, ttl) => Op::Put(Stored {
                        bytes: bytes.into(),
                        expires_at: now + ttl,
                    }),
                }
            });
        out.unwrap_or_else(|| unreachable!("and_compute_with calls its closure once"))
    }
}

impl Default for MemoryStore {
    /// 256 MiB.
    fn default() -> Self {
        MemoryStore::new(256 * 1024 * 1024)
    }
}

impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.live(key).map(|stored| stored.bytes.to_vec()))
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), Error> {
        let stored = Stored {
            bytes: value.into(),
            expires_at: Instant::now() + ttl,
        };
        self.entries.insert(Arc::from(key), stored);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        Ok(self
            .entries
            .remove(key)
            .is_some_and(|stored| stored.expires_at > Instant::now()))
    }

    async fn set_if_absent(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool, Error> {
        let stored = Stored {
            bytes: value.into(),
            expires_at: Instant::now() + ttl,
        };
        let result = self
            .entries
            .entry(Arc::from(key))
            .and_compute_with(|current| {
                let live = current.is_some_and(|entry| entry.value().expires_at > Instant::now());
                if live {
                    Op::Nop
                } else {
                    Op::Put(stored)
                }
            });
        Ok(matches!(
            result,
            moka::ops::compute::CompResult::Inserted(_)
                | moka::ops::compute::CompResult::ReplacedWith(_)
        ))
    }

    async fn delete_if_equals(&self, key: &str, expected: &[u8]) -> Result<bool, Error> {
        let result = self
            .entries
            .entry(Arc::from(key))
            .and_compute_with(|current| match current {
                Some(entry) if &*entry.value().bytes == expected => Op::Remove,
                _ => Op::Nop,
            });
        Ok(matches!(result, moka::ops::compute::CompResult::Removed(_)))
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

    #[tokio::test]
    async fn set_if_absent_and_compare_and_delete() {
        let store = MemoryStore::default();
        let ttl = Duration::from_secs(10);
        assert!(store
            .set_if_absent("lock", b"a".to_vec(), ttl)
            .await
            .unwrap());
        assert!(!store
            .set_if_absent("lock", b"b".to_vec(), ttl)
            .await
            .unwrap());
        assert!(!store.delete_if_equals("lock", b"b").await.unwrap());
        assert!(store.delete_if_equals("lock", b"a").await.unwrap());
        assert!(store
            .set_if_absent("lock", b"b".to_vec(), ttl)
            .await
            .unwrap());
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

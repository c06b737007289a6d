//! Where entries live: the [`Store`] trait and its implementations.
//!
//! - [`RedisStore`]: a bb8 pool of multiplexed redis-rs connections (see DESIGN.md "Redis access").
//! - [`MemoryStore`]: an embedded, bounded in-memory store with TTLs; the default when no Redis is
//!   configured, so an application (and its tests) run anywhere.
//!
//! Stores work on raw bytes; the [`Cache`](crate::Cache) owns encoding, tags and stampede logic.

mod memory;
mod redis;

use std::{future::Future, time::Duration};

pub use self::memory::MemoryStore;
pub use self::redis::{RedisStore, RedisStoreConfig};
use crate::Error;

/// A key-value backend with per-key TTLs.
///
/// Every method is one round trip on a networked store. Implementations apply their own timeouts
/// and never block a caller longer than that.
pub trait Store: Send + Sync + 'static {
    /// The bytes stored under `key`, if any and not expired.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, Error>> + Send;

    /// Stores `value` under `key` for `ttl` (`SET key value PX ttl`).
    fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Removes `key`; `true` when something was removed.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Stores `value` only if `key` does not exist (`SET NX PX`); `true` when stored.
    fn set_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Removes `key` only if it currently holds `expected` (compare-and-delete); `true` when removed.
    fn delete_if_equals(
        &self,
        key: &str,
        expected: &[u8],
    ) -> impl Future<Output = Result<bool, Error>> + Send;
}

/// The store a [`Cache`](crate::Cache) was built with (static dispatch, no boxing on the hot path).
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Memory(MemoryStore),
    Redis(RedisStore),
}

macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Backend::Memory($store) => $call.await,
            Backend::Redis($store) => $call.await,
        }
    };
}

impl Backend {
    pub(crate) fn is_remote(&self) -> bool {
        !matches!(self, Backend::Memory(_))
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        delegate!(self, s => s.get(key))
    }

    pub(crate) async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), Error> {
        delegate!(self, s => s.set(key, value, ttl))
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<bool, Error> {
        delegate!(self, s => s.delete(key))
    }

    pub(crate) async fn set_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, Error> {
        delegate!(self, s => s.set_if_absent(key, value, ttl))
    }

    pub(crate) async fn delete_if_equals(&self, key: &str, expected: &[u8]) -> Result<bool, Error> {
        delegate!(self, s => s.delete_if_equals(key, expected))
    }

    /// `PUBLISH channel message`; a no-op for the in-memory store (one process, nobody to tell).
    pub(crate) async fn publish(&self, channel: &str, message: &str) -> Result<(), Error> {
        match self {
            Backend::Memory(_) => Ok(()),
            Backend::Redis(store) => {
                let cmd = ::redis::cmd("PUBLISH").arg(channel).arg(message).clone();
                let _receivers: i64 = store.connection().await?.query(&cmd).await?;
                Ok(())
            }
        }
    }

    /// The redis-rs client, for connections that are not pooled (pub/sub).
    pub(crate) fn redis_client(&self) -> Option<::redis::Client> {
        match self {
            Backend::Memory(_) => None,
            Backend::Redis(store) => Some(store.client().clone()),
        }
    }
}

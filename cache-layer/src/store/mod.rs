//! Where entries live: the [`Store`] trait and its implementations.
//!
//! - [`RedisStore`]: a bb8 pool of multiplexed redis-rs connections (see DESIGN.md "Redis access").
//! - [`ClusterStore`]: Redis Cluster through redis-rs' multiplexed async cluster connection.
//! - [`MemoryStore`]: an embedded, bounded in-memory store with TTLs; the default when no Redis is
//!   configured, so an application (and its tests) run anywhere.
//!
//! Stores work on raw bytes; the [`Cache`](crate::Cache) owns encoding, tags and stampede logic.

#[cfg(feature = "cluster")]
mod cluster;
pub(crate) mod endpoint;
mod memory;
mod redis;

use std::{future::Future, time::Duration};

#[cfg(feature = "cluster")]
pub use self::cluster::ClusterStore;
pub use self::memory::MemoryStore;
pub use self::redis::{default_pool_size, RedisStore, RedisStoreConfig};
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
        if let Backend::Memory(_) = self {
            return Ok(());
        }
        let mut cmd = ::redis::cmd("PUBLISH");
        cmd.arg(channel).arg(message);
        let _receivers: i64 = self.query(&cmd).await?;
        Ok(())
    }

    /// Where connections that are not pooled (pub/sub) go: the node or the Sentinel group's
    /// current master; for a cluster, one node (cluster pub/sub messages reach every node).
    /// `None` for the in-memory store.
    pub(crate) fn pubsub_endpoint(&self) -> Option<endpoint::Endpoint> {
        match self {
            Backend::Memory(_) => None,
            Backend::Redis(store) => Some(store.endpoint().clone()),
            #[cfg(feature = "cluster")]
            Backend::Cluster(store) => store.pubsub_client().map(endpoint::Endpoint::Node),
        }
    }

    /// Runs one raw, idempotent command on Redis or Redis Cluster (retried on another connection
    /// when the first turns out dropped). The in-memory store has no raw commands: callers keep
    /// their own in-process representation for it.
    pub(crate) async fn query<T: ::redis::FromRedisValue>(
        &self,
        cmd: &::redis::Cmd,
    ) -> Result<T, Error> {
        match self {
            Backend::Memory(_) => Err(no_raw_commands()),
            Backend::Redis(store) => store.query(cmd).await,
            #[cfg(feature = "cluster")]
            Backend::Cluster(store) => store.query(cmd).await,
        }
    }

    /// Runs a pipeline (all keys in one hash slot). `retry` only when it is idempotent.
    pub(crate) async fn query_pipeline<T: ::redis::FromRedisValue>(
        &self,
        pipe: &::redis::Pipeline,
        retry: bool,
    ) -> Result<T, Error> {
        match self {
            Backend::Memory(_) => Err(no_raw_commands()),
            Backend::Redis(store) => store.query_pipeline(pipe, retry).await,
            #[cfg(feature = "cluster")]
            Backend::Cluster(store) => store.query_pipeline(pipe).await,
        }
    }

    /// Invokes a Lua script (all keys in one hash slot). `retry` only when it is idempotent.
    pub(crate) async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        invocation: &::redis::ScriptInvocation<'_>,
        retry: bool,
    ) -> Result<T, Error> {
        match self {
            Backend::Memory(_) => Err(no_raw_commands()),
            Backend::Redis(store) => store.invoke(invocation, retry).await,
            #[cfg(feature = "cluster")]
            Backend::Cluster(store) => store.invoke(invocation).await,
        }
    }
}

/// The commands behind [`Store`] on Redis and Redis Cluster (built once here; each store decides
/// how to run them: retries, deadlines).
pub(crate) mod commands {
    use std::time::Duration;

    /// A TTL in whole milliseconds for `PX` (at least 1: `PX 0` is an error).
    fn px(ttl: Duration) -> u64 {
        u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    pub(crate) fn get(key: &str) -> ::redis::Cmd {
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(key);
        cmd
    }

    pub(crate) fn set_px(key: &str, value: Vec<u8>, ttl: Duration) -> ::redis::Cmd {
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(key).arg(value).arg("PX").arg(px(ttl));
        cmd
    }

    pub(crate) fn set_nx_px(key: &str, value: Vec<u8>, ttl: Duration) -> ::redis::Cmd {
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(key).arg(value).arg("NX").arg("PX").arg(px(ttl));
        cmd
    }

    pub(crate) fn del(key: &str) -> ::redis::Cmd {
        let mut cmd = ::redis::cmd("DEL");
        cmd.arg(key);
        cmd
    }

    /// The compare-and-delete invocation for `key` holding `expected`.
    pub(crate) fn compare_and_delete<'a>(
        key: &str,
        expected: &[u8],
    ) -> ::redis::ScriptInvocation<'a> {
        let mut invocation = super::compare_and_delete().prepare_invoke();
        invocation.key(key).arg(expected);
        invocation
    }
}

fn no_raw_commands() -> Error {
    Error::Config("the in-memory store does not run Redis commands".into())
}

/// `DEL KEYS[1]` if it holds `ARGV[1]`: releases a lock only for its owner.
const COMPARE_AND_DELETE: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"#;

/// The compare-and-delete script (EVALSHA; redis-rs reloads it on NOSCRIPT).
pub(crate) fn compare_and_delete() -> &'static ::redis::Script {
    static SCRIPT: std::sync::OnceLock<::redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| ::redis::Script::new(COMPARE_AND_DELETE))
}

//! The crate's error type.

use std::time::Duration;

/// Errors reported by direct cache operations (`get`, `set`, `delete`, invalidation, build).
///
/// Read-through calls (`get_or_fetch`, cached fns, the HTTP layer) never return these: when the
/// cache fails they fall back to the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis answered with an error or the connection failed.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// A Redis operation (or pool checkout) took longer than the configured timeout.
    #[error("redis operation timed out after {0:?}")]
    Timeout(Duration),
    /// The circuit breaker is open: Redis failed recently and is being skipped until the cooldown ends.
    #[error("circuit breaker is open: redis is being skipped after recent failures")]
    BreakerOpen,
    /// A value could not be encoded for storage.
    #[error("could not encode value: {0}")]
    Encode(String),
    /// The builder was given an invalid setting.
    #[error("invalid cache configuration: {0}")]
    Config(String),
}

//! The crate's error type.

use std::time::Duration;

/// Errors reported by direct cache operations (`get`, `set`, `delete`, invalidation, build).
///
/// Read-through calls (`get_or_fetch`, cached fns, the HTTP layer) never return these: when the
/// cache fails they fall back to the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis answered with an error or the connection failed. The message starts with what it
    /// means (`redis authentication failed`, `redis is out of memory`, `could not connect to
    /// redis`, ...) followed by the server's or driver's own words.
    #[error("{}", describe(.0))]
    Redis(#[from] redis::RedisError),
    /// A Redis operation (waiting for a connection included) took longer than the timeout.
    #[error("redis did not answer within {0:?} (down, hung or overloaded?)")]
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
    /// A write-behind counter increment was rejected: the in-memory buffer that holds increments
    /// while Redis is unavailable (or slow) is full. Nothing was added.
    #[error("write-behind counters {counters:?}: buffer full ({capacity} ids waiting for redis), increment rejected")]
    CounterOverflow {
        /// The counter set's name.
        counters: String,
        /// The buffer's capacity in distinct ids.
        capacity: usize,
    },
    /// Write-behind counters: the server has connected replicas and none acknowledged the write
    /// (a push of increments, or the sealing or claiming of a batch) within `timeout` (`WAIT`).
    ///
    /// The write is on the primary but could be lost by a failover now, so it is not taken as
    /// done: the increments stay buffered in this process and are pushed again (idempotently:
    /// never counted twice) until a replica acknowledges them, and a batch is not handed to the
    /// sink until a replica has it. Do not repeat the increment: it is already counted. Counted in
    /// [`CounterStats::unreplicated`](crate::CounterStats::unreplicated) and
    /// `cache_counter_unreplicated_total`.
    #[error("no redis replica acknowledged the write-behind write within {timeout:?}: it is kept and retried until one does (do not repeat it)")]
    NotReplicated {
        /// How long the write waited for a replica (`WAIT 1 <timeout>`).
        timeout: Duration,
    },
    /// Write-behind counters: Redis refused to increment these counters because the stored value
    /// would overflow `i64` (`HINCRBY`: "increment or decrement would overflow").
    ///
    /// The listed deltas were not applied and are not retried (they never could be); every other
    /// counter pushed with them was applied. Counted in
    /// [`CounterStats::rejected`](crate::CounterStats::rejected) and
    /// `cache_counter_rejected_total`.
    #[error("write-behind counters {counters:?}: redis refused {} (the stored value would overflow i64); not applied", describe_rejected(.rejected))]
    CounterRejected {
        /// The counter set's name.
        counters: String,
        /// `(counter id, delta)` of each refused increment. The delta is what was pushed for that
        /// id at once: the caller's increment plus any made concurrently with it.
        rejected: Vec<(String, i64)>,
    },
    /// A write-behind flush sink returned an error; the batch is kept and delivered again later.
    #[error("write-behind flush sink failed: {0}")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// `id +delta, ...` for [`Error::CounterRejected`] (at most 10 listed).
fn describe_rejected(rejected: &[(String, i64)]) -> String {
    let mut out: Vec<String> = rejected
        .iter()
        .take(10)
        .map(|(id, delta)| format!("{id:?} {delta:+}"))
        .collect();
    if rejected.len() > 10 {
        out.push(format!("and {} more", rejected.len() - 10));
    }
    out.join(", ")
}

/// A plain-language summary of a Redis error, followed by the error itself.
fn describe(err: &redis::RedisError) -> String {
    let mentions_password = || err.detail().is_some_and(|d| d.contains("password"));
    let summary = match err.code() {
        Some("NOAUTH" | "WRONGPASS") => AUTH_FAILED,
        Some("ERR") if mentions_password() => AUTH_FAILED,
        Some("OOM") => {
            "redis is out of memory (maxmemory reached and the eviction policy frees nothing): \
             writes are rejected"
        }
        Some("BUSY") => "redis is busy running a script or function",
        Some("LOADING") => "redis is still loading its data set",
        Some("READONLY") => "redis is a read-only replica: writes are rejected",
        Some("NOPERM") => "the redis user lacks the ACL permission for this command",
        Some("WRONGTYPE") => {
            "the key holds another kind of redis value (not written by this cache)"
        }
        _ if err.kind() == redis::ErrorKind::AuthenticationFailed => AUTH_FAILED,
        _ if err.is_connection_refusal() => {
            "could not connect to redis (connection refused: is it running at that address?)"
        }
        _ if err.is_timeout() => "redis did not answer in time",
        _ if err.is_connection_dropped() => "the connection to redis was lost",
        _ if err.is_io_error() => "redis I/O error",
        _ => "redis error",
    };
    format!("{summary}: {err}")
}

const AUTH_FAILED: &str =
    "redis authentication failed (check the user name and password in the redis URL)";

/// The error of a write-behind increment whose accumulated delta would overflow `i64`.
pub(crate) fn counter_overflow() -> Error {
    Error::Encode("write-behind counter delta overflows i64".to_owned())
}

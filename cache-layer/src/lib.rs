//! # cache-layer
//!
//! Read-through caching on Redis for Rust services, with two front doors over one engine:
//!
//! - [`CacheLayer`]: a Tower middleware that caches whole HTTP responses (feature `http`, on by
//!   default; see [`http`]);
//! - [`cached`]: an attribute macro that turns an `async fn` into a read-through cached call.
//!
//! Both share one [`Cache`]: a Redis connection pool (or the embedded in-memory store when no Redis
//! is configured), an optional in-process L1 tier, single-flight loading, a circuit breaker that
//! sends every caller to the source when Redis is slow or down, and metrics.
//!
//! ```
//! use std::time::Duration;
//! use cache_layer::{Cache, Policy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_layer::Error> {
//! // No Redis configured: the embedded in-memory store. Use `.redis(url)` for Redis.
//! let cache = Cache::builder().namespace("shop").local(10_000).build()?;
//! let policy = Policy::ttl(Duration::from_secs(300)).tags(["product:42"]);
//!
//! let name: String = cache
//!     .get_or_fetch("product:42", &policy, || async { "espresso machine".to_string() })
//!     .await;
//! assert_eq!(name, "espresso machine");
//! assert_eq!(cache.get::<String>("product:42").await?, Some(name));
//! # Ok(()) }
//! ```
//!
//! # Layers
//!
//! For contributors: each layer uses only the ones below it, and no two modules import each other
//! (the life of a call, file by file, and the coherence invariants are in `docs/ARCHITECTURE.md`).
//!
//! 1. `util`, `error`, `value`: shared helpers, the error type, the one `Value` trait.
//! 2. [`store`]: every Redis-level operation as a domain operation, for Redis, Redis Cluster,
//!    Sentinel and the in-memory store (all Lua in `store/scripts.rs`; TLS and where connections
//!    go in `store/endpoint.rs`).
//! 3. `envelope`, `keys`, `l1`, `clock`, `metrics`, `breaker`, `policy`, `health`: the entry
//!    format, key layout, the L1 tier with everything this process knows of the store (tag and
//!    namespace books, trust, tickets, missed invalidations: whether a copy may be served), the
//!    store clock, counters, the circuit breaker, [`Policy`], what Redis' eviction policy weakens
//!    ([`MemoryPolicy`]).
//! 4. `bus`, `stampede`: the invalidation bus between instances (it writes the trust state `l1`
//!    reads); single-flight, the distributed lock and early refresh.
//! 5. `cache`: the engine: `read` → `write` → `coherence` → the `Cache` state. A hit goes
//!    `api` → `cache::read` → `l1` (and, from Redis, the store and `envelope`).
//! 6. `write_behind`: write-behind [`Counters`], built on the engine.
//! 7. `api` (every public method of [`Cache`]), [`http`] ([`CacheLayer`]) and `__private` (what
//!    [`cached`] expands to): the front doors.
#![deny(unsafe_code)]
// The write-behind flusher's spawned future nests deep enough that proving it `Send` needs more
// than the default 128 levels with some dependency versions (the minimal-versions check).
#![recursion_limit = "256"]
#![warn(missing_docs, unreachable_pub)]

mod api;
mod breaker;
mod bus;
mod cache;
mod clock;
mod envelope;
mod error;
mod health;
#[cfg(feature = "http")]
pub mod http;
mod keys;
mod l1;
mod metrics;
mod policy;
mod stampede;
pub mod store;
mod util;
mod value;
mod write_behind;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

#[cfg(feature = "http")]
pub use self::http::CacheLayer;
pub use breaker::{BreakerConfig, BreakerState};
pub use cache::{install, Cache, CacheBuilder};
pub use envelope::Codec;
pub use error::Error;
pub use health::MemoryPolicy;
pub use l1::{DEFAULT_L1_MAX_BYTES, IMPLICIT_L1_ENTRIES};
pub use metrics::{function_stats, FunctionStats, FunctionStatsSnapshot, Stats};
pub use policy::{Policy, Stampede};
pub use write_behind::{Batch, CounterStats, Counters, CountersConfig, FlushReport, Flusher};

pub use cache_macros::{cached, invalidate};

//! Stampede protection.
//!
//! - [`flight`]: in-process single-flight (always on unless [`Stampede::None`](crate::Stampede)).
//!   Concurrent misses of one key share one load; the loader never runs under a held lock.
//! - [`lock`]: [`Stampede::Lock`](crate::Stampede::Lock), a distributed lock so one process in the
//!   fleet loads while the others wait for the value to land.
//! - [`early`]: [`Stampede::Early`](crate::Stampede::Early), probabilistic early recomputation.
//! - Stale-while-revalidate and stale-if-error live in the engine (`cache/engine.rs`), driven by
//!   [`Policy::stale`](crate::Policy::stale) and [`Policy::load_timeout`](crate::Policy::load_timeout).

pub(crate) mod early;
pub(crate) mod flight;
pub(crate) mod lock;

//! Stampede protection.
//!
//! - [`flight`]: in-process single-flight (always on unless [`Stampede::None`](crate::Stampede)).
//!   Concurrent misses of one key share one load; the loader never runs under a held lock.

pub(crate) mod flight;

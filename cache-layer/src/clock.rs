//! The store's clock as seen from this process: what entry stamps and invalidations recorded
//! without the store follow.
//!
//! Entry stamps (`created_ms`, the base of `Age` and early refresh) are a lower bound of the Redis
//! clock: each process measures its offset to it (best of a few `TIME` round trips) on first use,
//! with or without a bus, and the bus re-measures it every minute. Before a measurement exists
//! stamps subtract the configured worst-case skew (`CacheBuilder::clock_skew`, default 1 s).
//! Validity never depends on it.
//!

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Whose clock a cache's entry stamps and tag times follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClockReference {
    /// The store lives in this process: its clock is the local one (nothing to measure).
    Local,
    /// A shared store: its clock, estimated from `TIME` readings (see the module docs).
    Store,
}

/// One measurement of the Redis clock against the local monotonic clock.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    redis_ms: f64,
    err_ms: f64,
}

/// The Redis server clock as seen from this process (see the module docs on skew).
pub(crate) struct RedisClock {
    sample: Mutex<Option<Sample>>,
    /// Assumed worst-case skew before a measurement exists.
    unmeasured_skew_ms: u64,
    /// Whose clock entry stamps follow.
    reference: ClockReference,
}

/// Drift allowance of the local monotonic clock against the Redis clock (100 ppm).
const DRIFT: f64 = 1e-4;

impl RedisClock {
    pub(crate) fn new(reference: ClockReference, unmeasured_skew: Duration) -> Self {
        RedisClock {
            sample: Mutex::new(None),
            unmeasured_skew_ms: u64::try_from(unmeasured_skew.as_millis()).unwrap_or(u64::MAX),
            reference,
        }
    }

    /// The current Redis time estimate and its error bound.
    fn estimate(&self) -> Option<(f64, f64)> {
        let sample = (*crate::util::lock(&self.sample))?;
        let elapsed = sample.at.elapsed().as_secs_f64() * 1000.0;
        Some((
            sample.redis_ms + elapsed,
            sample.err_ms + elapsed * DRIFT + 1.0,
        ))
    }

    /// A lower bound of the Redis clock now: what load starts are stamped with.
    pub(crate) fn lower_ms(&self) -> u64 {
        let wall = crate::util::now_ms();
        if self.reference == ClockReference::Local {
            return wall;
        }
        match self.estimate() {
            Some((now, err)) => (now - err).max(0.0) as u64,
            None => wall.saturating_sub(self.unmeasured_skew_ms),
        }
    }

    /// An upper bound of the Redis clock now: used for invalidations recorded without Redis.
    pub(crate) fn upper_ms(&self) -> u64 {
        let wall = crate::util::now_ms();
        if self.reference == ClockReference::Local {
            return wall;
        }
        match self.estimate() {
            Some((now, err)) => (now + err).ceil() as u64,
            None => wall.saturating_add(self.unmeasured_skew_ms),
        }
    }

    /// Records a `TIME` reply (`redis_us`, microseconds) sent at `sent` and received at `received`.
    /// Keeps whichever sample gives the tighter bound now.
    pub(crate) fn record(&self, sent: Instant, received: Instant, redis_us: u64) {
        let rtt = received.saturating_duration_since(sent);
        let candidate = Sample {
            at: sent + rtt / 2,
            redis_ms: redis_us as f64 / 1000.0,
            err_ms: rtt.as_secs_f64() * 1000.0 / 2.0 + 1.0,
        };
        let mut slot = crate::util::lock(&self.sample);
        let keep_old = slot.is_some_and(|old| {
            let aged = old.err_ms
                + candidate.at.saturating_duration_since(old.at).as_secs_f64() * 1000.0 * DRIFT;
            aged < candidate.err_ms
        });
        if !keep_old {
            *slot = Some(candidate);
        }
    }

    /// The current error bound in milliseconds (for diagnostics); `None` before a measurement.
    pub(crate) fn error_ms(&self) -> Option<f64> {
        if self.reference == ClockReference::Local {
            return Some(0.0);
        }
        self.estimate().map(|(_, err)| err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_bounds_bracket_the_measured_time() {
        let clock = RedisClock::new(ClockReference::Store, Duration::from_secs(1));
        let wall = crate::util::now_ms();
        assert!(clock.lower_ms() <= wall - 999);
        assert!(clock.upper_ms() >= wall + 999);
        // Redis is 10 s ahead of this host; measured with a 4 ms round trip.
        let sent = Instant::now();
        let redis_us = (wall + 10_000) * 1000;
        clock.record(sent, sent + Duration::from_millis(4), redis_us);
        let (lower, upper) = (clock.lower_ms(), clock.upper_ms());
        assert!(
            lower <= wall + 10_000 && lower >= wall + 10_000 - 10,
            "{lower}"
        );
        assert!(
            upper >= wall + 10_000 && upper <= wall + 10_000 + 10,
            "{upper}"
        );
        // A sloppier sample does not replace a tight one.
        clock.record(
            Instant::now(),
            Instant::now() + Duration::from_millis(400),
            0,
        );
        assert!(clock.lower_ms() >= wall + 9_000);
        let err = clock.error_ms().unwrap();
        assert!((4.0..5.0).contains(&err), "{err}");
    }
}

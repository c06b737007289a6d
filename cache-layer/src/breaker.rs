//! The circuit breaker shared by every front door of one [`Cache`](crate::Cache).
//!
//! Closed → open after `failure_threshold` consecutive failures → after `cooldown`, one probe
//! (half-open) → closed on success, open again on failure. While open, the engine skips Redis and
//! calls the source, so no caller waits on a dead or hung Redis.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Breaker settings (see [`CacheBuilder::breaker`](crate::CacheBuilder::breaker)).
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Consecutive failed Redis operations that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before one probe is let through.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cooldown: Duration::from_secs(2),
        }
    }
}

/// The breaker's state, as reported by [`Cache::stats`](crate::Cache::stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Redis is used normally.
    Closed,
    /// Redis is skipped; every caller goes to the source.
    Open,
    /// One probe operation is testing whether Redis is back.
    HalfOpen,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Lock-free breaker; `admit` is one atomic load while closed.
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` at which the breaker last opened.
    opened_at_ms: AtomicU64,
    epoch: Instant,
    transitions: AtomicU64,
    on_transition: Option<Arc<dyn Fn(BreakerState) + Send + Sync>>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("config", &self.config)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Whether an operation may use Redis, and whether it is the half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Allowed,
    Probe,
    Rejected,
}

impl Breaker {
    pub(crate) fn new(
        config: BreakerConfig,
        on_transition: Option<Arc<dyn Fn(BreakerState) + Send + Sync>>,
    ) -> Self {
        Breaker {
            config,
            state: AtomicU8::new(CLOSED),
            consecutive_failures: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            transitions: AtomicU64::new(0),
            on_transition,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Number of state changes since the cache was built.
    pub(crate) fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    /// Asks to use Redis.
    pub(crate) fn admit(&self) -> Admission {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Admission::Allowed,
            OPEN => {
                let opened = self.opened_at_ms.load(Ordering::Acquire);
                let cooldown = u64::try_from(self.config.cooldown.as_millis()).unwrap_or(u64::MAX);
                if self.now_ms().saturating_sub(opened) < cooldown {
                    return Admission::Rejected;
                }
                // Exactly one caller wins the transition and becomes the probe.
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.transitioned(BreakerState::HalfOpen);
                    Admission::Probe
                } else {
                    Admission::Rejected
                }
            }
            _ => Admission::Rejected,
        }
    }

    /// Reports a successful Redis operation.
    pub(crate) fn record_success(&self, admission: Admission) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if admission == Admission::Probe
            && self
                .state
                .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.transitioned(BreakerState::Closed);
        }
    }

    /// Reports a failed Redis operation (transport error or timeout).
    pub(crate) fn record_failure(&self, admission: Admission) {
        if admission == Admission::Probe {
            self.open(HALF_OPEN);
            return;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.config.failure_threshold {
            self.open(CLOSED);
        }
    }

    /// Releases a probe admission whose operation never ran (e.g. the caller was cancelled).
    pub(crate) fn abandon_probe(&self) {
        if self
            .state
            .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // Let the next caller probe immediately.
            self.opened_at_ms.store(0, Ordering::Release);
        }
    }

    fn open(&self, from: u8) {
        self.opened_at_ms.store(self.now_ms(), Ordering::Release);
        if self
            .state
            .compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.transitioned(BreakerState::Open);
        }
    }

    fn transitioned(&self, to: BreakerState) {
        self.transitions.fetch_add(1, Ordering::Relaxed);
        match to {
            BreakerState::Open => tracing::warn!(
                cooldown = ?self.config.cooldown,
                "cache circuit breaker opened: redis is skipped, callers go to the source"
            ),
            BreakerState::HalfOpen => {
                tracing::info!("cache circuit breaker half-open: probing redis")
            }
            BreakerState::Closed => tracing::info!("cache circuit breaker closed: redis is back"),
        }
        if let Some(hook) = &self.on_transition {
            hook(to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, cooldown_ms: u64) -> Breaker {
        Breaker::new(
            BreakerConfig {
                failure_threshold: threshold,
                cooldown: Duration::from_millis(cooldown_ms),
            },
            None,
        )
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker(3, 10_000);
        b.record_failure(Admission::Allowed);
        b.record_failure(Admission::Allowed);
        b.record_success(Admission::Allowed);
        b.record_failure(Admission::Allowed);
        b.record_failure(Admission::Allowed);
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_failure(Admission::Allowed);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Rejected);
    }

    #[test]
    fn one_probe_after_cooldown_then_closes_on_success() {
        let b = breaker(1, 0);
        b.record_failure(Admission::Allowed);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.admit(), Admission::Rejected, "only one probe at a time");
        b.record_success(Admission::Probe);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(), Admission::Allowed);
        assert_eq!(b.transitions(), 3);
    }

    #[test]
    fn failed_probe_reopens() {
        let b = breaker(1, 0);
        b.record_failure(Admission::Allowed);
        assert_eq!(b.admit(), Admission::Probe);
        b.record_failure(Admission::Probe);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn abandoned_probe_lets_the_next_caller_probe() {
        let b = breaker(1, 0);
        b.record_failure(Admission::Allowed);
        assert_eq!(b.admit(), Admission::Probe);
        b.abandon_probe();
        assert_eq!(b.admit(), Admission::Probe);
    }
}

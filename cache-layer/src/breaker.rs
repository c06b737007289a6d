//! The circuit breaker shared by every front door of one [`Cache`](crate::Cache).
//!
//! ```text
//!            N consecutive failures, or failure rate ≥ r over the window (≥ min_calls calls)
//!   Closed ─────────────────────────────────────────────────────────────────────────► Open
//!     ▲                                                                                │
//!     │ probe succeeds          cooldown elapsed: the first caller becomes the probe   │
//!     └──────────────────────────── HalfOpen ◄─────────────────────────────────────────┘
//!                                      │ probe fails: Open again, for another cooldown
//! ```
//!
//! While open (and while the one probe is in flight), the engine skips Redis and calls the source,
//! so no caller waits on a dead or hung Redis. Every transition is logged (`tracing`), counted in
//! [`Stats::breaker_transitions`](crate::Stats::breaker_transitions) and reported as metrics.
//!
//! The closed-state check ([`Breaker::admit`]) is one atomic load: the state and the time the
//! breaker opened share one word, so a caller can never see "open" with a stale opening time.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::{util::millis, Error};

/// Breaker settings (see [`CacheBuilder::breaker`](crate::CacheBuilder::breaker)).
///
/// Set only what you need and take the rest from the defaults:
///
/// ```
/// use std::time::Duration;
/// use cache_layer::BreakerConfig;
///
/// let config = BreakerConfig {
///     failure_threshold: 3,
///     cooldown: Duration::from_millis(500),
///     ..Default::default()
/// };
/// # let _ = cache_layer::Cache::builder().breaker(config).build()?;
/// # Ok::<(), cache_layer::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failed Redis operations that open the breaker (default 5; at least 1).
    pub failure_threshold: u32,
    /// How long the breaker stays open before one probe is let through (default 2 s).
    pub cooldown: Duration,
    /// Failure ratio (`0.0 < r ≤ 1.0`) over [`window`](Self::window) that opens the breaker even
    /// when failures are interleaved with successes (default 0.5). Operations are counted from
    /// the first failure after a quiet period (one without failures for a whole window), so the
    /// ratio describes the current trouble and a healthy cache pays nothing for it.
    pub failure_rate: f64,
    /// Length of the sliding window the failure ratio is measured over (default 10 s). Zero turns
    /// the ratio rule off (only consecutive failures open the breaker).
    pub window: Duration,
    /// Fewest operations in the window before the ratio is considered (default 20).
    pub min_calls: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cooldown: Duration::from_secs(2),
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 20,
        }
    }
}

impl BreakerConfig {
    /// Checks the settings (the builder calls this).
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.failure_threshold == 0 {
            return Err(Error::Config(
                "breaker failure_threshold must be at least 1".into(),
            ));
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(Error::Config(format!(
                "breaker failure_rate must be in (0.0, 1.0], got {}",
                self.failure_rate
            )));
        }
        Ok(())
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

impl BreakerState {
    /// A lower-case name for logs and metric labels: `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// The state word: low two bits are the state, the rest the time the breaker last opened
// (milliseconds since `Breaker::epoch`).
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const STATE_BITS: u64 = 0b11;
/// Opening time meaning "the cooldown is over": set when a probe is abandoned.
const PROBE_NOW: u64 = u64::MAX >> 2;

fn word(state: u64, opened_at_ms: u64) -> u64 {
    (opened_at_ms << 2) | state
}

/// Number of buckets of the sliding window.
const BUCKETS: usize = 10;
/// A bucket slot that matches no time slot (the window was reset).
const NO_SLOT: u64 = u64::MAX;

/// One time slice of the sliding window. Counts are approximate under races at slice boundaries
/// (an increment may land just before the slice is recycled), which is fine for a ratio.
struct Bucket {
    slot: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
}

/// Why the breaker opened (for the log line).
enum Trip {
    Consecutive(u32),
    Rate { failures: u64, calls: u64 },
    Probe,
}

/// Called on every state change (the cache updates its metrics).
pub(crate) type TransitionHook = Arc<dyn Fn(BreakerState) + Send + Sync>;

/// Lock-free breaker; `admit` is one atomic load while closed.
pub(crate) struct Breaker {
    config: BreakerConfig,
    /// Cache name, for logs.
    name: String,
    state: AtomicU64,
    consecutive_failures: AtomicU32,
    /// When the last failure was counted (ms since `epoch`, plus one; 0 = none recently). The
    /// window counts successes only while failures are recent, so a healthy cache's success path
    /// is two relaxed loads (no clock read, no shared write).
    last_failure: AtomicU64,
    buckets: [Bucket; BUCKETS],
    bucket_ms: u64,
    epoch: Instant,
    transitions: AtomicU64,
    on_transition: Option<TransitionHook>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

/// One Redis operation the breaker let through ([`Breaker::permit`]). Settle it with the
/// operation's result ([`settle`](Permit::settle)); dropped unsettled (the operation's future was
/// dropped midway), a probe admission is released, so a cancelled probe cannot leave the breaker
/// half-open forever.
#[must_use = "settle the permit with the operation's result"]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    admission: Admission,
    settled: bool,
}

impl Permit<'_> {
    /// Tells the breaker how the operation ended: a success, or a failure when the error says
    /// Redis is unhealthy ([`is_health_failure`]); any error is logged at `debug`.
    pub(crate) fn settle<R>(mut self, result: &Result<R, Error>) {
        self.settled = true;
        match result {
            Ok(_) => self.breaker.record_success(self.admission),
            Err(err) => {
                // The target it had when logged from `cache/mod.rs`, for filters that name it.
                tracing::debug!(target: "cache_layer::cache", cache = %self.breaker.name,
                    error = %err, "redis operation failed");
                if is_health_failure(err) {
                    self.breaker.record_failure(self.admission, err);
                } else {
                    self.breaker.record_success(self.admission);
                }
            }
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled && self.admission == Admission::Probe {
            self.breaker.abandon_probe();
        }
    }
}

/// Whether a failed Redis operation says something about Redis' health (and so counts against the
/// breaker), as opposed to a rejection of one command by a Redis that is otherwise serving: a wrong
/// key type, `OOM` (maxmemory with `noeviction`: writes fail, reads still hit), `READONLY`, an ACL
/// `NOPERM`. Opening the breaker for those would throw away the hits Redis can still serve.
fn is_health_failure(err: &Error) -> bool {
    match err {
        Error::Redis(e) => !matches!(e.code(), Some("WRONGTYPE" | "OOM" | "READONLY" | "NOPERM")),
        Error::Timeout(_) => true,
        Error::BreakerOpen | Error::Encode(_) | Error::Config(_) => false,
        // Redis answered: the write is on the primary (a replica lagging is not Redis failing).
        Error::NotReplicated { .. } => false,
        Error::CounterOverflow { .. } | Error::CounterRejected { .. } | Error::Sink(_) => false,
    }
}

/// How a counted operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Success,
    Failure,
}

impl Breaker {
    pub(crate) fn new(
        config: BreakerConfig,
        name: impl Into<String>,
        on_transition: Option<TransitionHook>,
    ) -> Self {
        let bucket_ms = (millis(config.window) / BUCKETS as u64).max(1);
        Breaker {
            config,
            name: name.into(),
            state: AtomicU64::new(word(CLOSED, 0)),
            consecutive_failures: AtomicU32::new(0),
            last_failure: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| Bucket {
                slot: AtomicU64::new(NO_SLOT),
                calls: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
            bucket_ms,
            epoch: Instant::now(),
            transitions: AtomicU64::new(0),
            on_transition,
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) & STATE_BITS {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Number of state changes since the cache was built.
    pub(crate) fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    /// Asks to use Redis. While closed this is one atomic load.
    #[inline]
    pub(crate) fn admit(&self) -> Admission {
        let current = self.state.load(Ordering::Acquire);
        if current & STATE_BITS == CLOSED {
            return Admission::Allowed;
        }
        self.admit_slow(current)
    }

    /// Lets one Redis operation through ([`Permit`]), or `Err(Error::BreakerOpen)`: then the
    /// operation must not run. While closed this is one atomic load.
    #[inline]
    pub(crate) fn permit(&self) -> Result<Permit<'_>, Error> {
        match self.admit() {
            Admission::Rejected => Err(Error::BreakerOpen),
            admission => Ok(Permit {
                breaker: self,
                admission,
                settled: false,
            }),
        }
    }

    #[cold]
    fn admit_slow(&self, current: u64) -> Admission {
        if current & STATE_BITS != OPEN {
            // Half-open: the probe is in flight; everyone else goes to the source.
            return Admission::Rejected;
        }
        let opened_at = current >> 2;
        if opened_at != PROBE_NOW
            && self.now_ms().saturating_sub(opened_at) < millis(self.config.cooldown)
        {
            return Admission::Rejected;
        }
        // Exactly one caller wins the transition and becomes the probe.
        let probing = word(HALF_OPEN, opened_at);
        if self
            .state
            .compare_exchange(current, probing, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.transitioned(BreakerState::HalfOpen, None, None);
            Admission::Probe
        } else {
            Admission::Rejected
        }
    }

    /// Reports a Redis operation that succeeded (or failed for reasons that say nothing about
    /// Redis' health, such as a wrong key type).
    pub(crate) fn record_success(&self, admission: Admission) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if admission == Admission::Probe {
            if self.transition(HALF_OPEN, CLOSED) {
                self.reset_counts();
                self.transitioned(BreakerState::Closed, None, None);
            }
            return;
        }
        self.count(Counted::Success);
    }

    /// Reports a failed Redis operation (transport error, timeout, server unable to serve).
    pub(crate) fn record_failure(&self, admission: Admission, cause: &dyn fmt::Display) {
        if admission == Admission::Probe {
            self.open(HALF_OPEN, Trip::Probe, cause);
            return;
        }
        let consecutive = self
            .consecutive_failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let (calls, failures) = self.count(Counted::Failure);
        if self.state.load(Ordering::Acquire) & STATE_BITS != CLOSED {
            // A straggler admitted before the breaker opened: it changes nothing.
            return;
        }
        if consecutive >= self.config.failure_threshold {
            self.open(CLOSED, Trip::Consecutive(consecutive), cause);
        } else if calls >= u64::from(self.config.min_calls)
            && calls > 0
            && failures as f64 >= self.config.failure_rate * calls as f64
        {
            self.open(CLOSED, Trip::Rate { failures, calls }, cause);
        }
    }

    /// Releases a probe admission whose operation never finished (e.g. the caller was
    /// cancelled): the next caller probes at once.
    pub(crate) fn abandon_probe(&self) {
        let current = self.state.load(Ordering::Acquire);
        if current & STATE_BITS == HALF_OPEN {
            let _ = self.state.compare_exchange(
                current,
                word(OPEN, PROBE_NOW),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// CAS from state `from` (whatever its opening time) to `to`, keeping the opening time.
    fn transition(&self, from: u64, to: u64) -> bool {
        let current = self.state.load(Ordering::Acquire);
        current & STATE_BITS == from
            && self
                .state
                .compare_exchange(
                    current,
                    word(to, current >> 2),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn open(&self, from: u64, trip: Trip, cause: &dyn fmt::Display) {
        let current = self.state.load(Ordering::Acquire);
        if current & STATE_BITS != from {
            return;
        }
        let opened = word(OPEN, self.now_ms());
        if self
            .state
            .compare_exchange(current, opened, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.reset_counts();
            self.transitioned(BreakerState::Open, Some(trip), Some(cause));
        }
    }

    /// Counts one operation in the sliding window; returns the window's `(calls, failures)` for a
    /// failure (the totals are only needed then).
    fn count(&self, outcome: Counted) -> (u64, u64) {
        let failed = outcome == Counted::Failure;
        if self.config.window.is_zero() {
            return (0, 0);
        }
        if !failed && self.last_failure.load(Ordering::Relaxed) == 0 {
            // Quiet: nothing failed within the window, so the ratio cannot matter yet.
            return (0, 0);
        }
        let now = self.now_ms();
        if failed {
            self.last_failure.store(now + 1, Ordering::Relaxed);
        } else {
            let last = self.last_failure.load(Ordering::Relaxed);
            if last != 0 && now.saturating_sub(last - 1) > millis(self.config.window) {
                // The last failure left the window: quiet again.
                let _ = self.last_failure.compare_exchange(
                    last,
                    0,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                return (0, 0);
            }
        }
        let slot = now / self.bucket_ms;
        let bucket = &self.buckets[(slot % BUCKETS as u64) as usize];
        let seen = bucket.slot.load(Ordering::Acquire);
        if seen != slot
            && bucket
                .slot
                .compare_exchange(seen, slot, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.calls.store(0, Ordering::Relaxed);
            bucket.failures.store(0, Ordering::Relaxed);
        }
        bucket.calls.fetch_add(1, Ordering::Relaxed);
        if !failed {
            return (0, 0);
        }
        bucket.failures.fetch_add(1, Ordering::Relaxed);
        let oldest = slot.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| (oldest..=slot).contains(&b.slot.load(Ordering::Acquire)))
            .fold((0, 0), |(calls, failures), b| {
                (
                    calls + b.calls.load(Ordering::Relaxed),
                    failures + b.failures.load(Ordering::Relaxed),
                )
            })
    }

    /// Forgets the window and the consecutive count (on open and on close), so failures from
    /// before an outage cannot re-open the breaker right after it closed.
    fn reset_counts(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.last_failure.store(0, Ordering::Relaxed);
        for bucket in &self.buckets {
            bucket.slot.store(NO_SLOT, Ordering::Release);
        }
    }

    fn transitioned(&self, to: BreakerState, trip: Option<Trip>, cause: Option<&dyn fmt::Display>) {
        self.transitions.fetch_add(1, Ordering::Relaxed);
        let cache = self.name.as_str();
        match to {
            BreakerState::Open => {
                let why = match trip {
                    Some(Trip::Consecutive(n)) => format!("{n} consecutive redis failures"),
                    Some(Trip::Rate { failures, calls }) => format!(
                        "{failures} of {calls} redis operations failed in the last {:?}",
                        self.config.window
                    ),
                    Some(Trip::Probe) | None => "the half-open probe failed".to_owned(),
                };
                let last_error = cause.map(ToString::to_string).unwrap_or_default();
                tracing::warn!(
                    cache,
                    reason = %why,
                    last_error = %last_error,
                    cooldown = ?self.config.cooldown,
                    "cache circuit breaker opened: redis is skipped, callers go to the source"
                );
            }
            BreakerState::HalfOpen => {
                tracing::info!(cache, "cache circuit breaker half-open: probing redis")
            }
            BreakerState::Closed => {
                tracing::info!(cache, "cache circuit breaker closed: redis is back")
            }
        }
        if let Some(hook) = &self.on_transition {
            hook(to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAUSE: &str = "test failure";

    fn breaker(config: BreakerConfig) -> Breaker {
        Breaker::new(config, "test", None)
    }

    /// Consecutive rule only.
    fn consecutive(threshold: u32, cooldown_ms: u64) -> Breaker {
        breaker(BreakerConfig {
            failure_threshold: threshold,
            cooldown: Duration::from_millis(cooldown_ms),
            window: Duration::ZERO,
            ..Default::default()
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = consecutive(3, 10_000);
        b.record_failure(Admission::Allowed, &CAUSE);
        b.record_failure(Admission::Allowed, &CAUSE);
        b.record_success(Admission::Allowed);
        b.record_failure(Admission::Allowed, &CAUSE);
        b.record_failure(Admission::Allowed, &CAUSE);
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_failure(Admission::Allowed, &CAUSE);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Rejected);
    }

    #[test]
    fn one_probe_after_cooldown_then_closes_on_success() {
        let b = consecutive(1, 0);
        b.record_failure(Admission::Allowed, &CAUSE);
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
    fn stays_open_during_the_cooldown() {
        let b = consecutive(1, 60_000);
        b.record_failure(Admission::Allowed, &CAUSE);
        for _ in 0..100 {
            assert_eq!(b.admit(), Admission::Rejected);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn failed_probe_reopens() {
        let b = consecutive(1, 0);
        b.record_failure(Admission::Allowed, &CAUSE);
        assert_eq!(b.admit(), Admission::Probe);
        b.record_failure(Admission::Probe, &CAUSE);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.transitions(), 3);
    }

    #[test]
    fn a_failed_probe_restarts_the_cooldown() {
        let b = consecutive(1, 60_000);
        b.record_failure(Admission::Allowed, &CAUSE);
        assert_eq!(b.admit(), Admission::Rejected);
        // Pretend the cooldown elapsed.
        b.state.store(word(OPEN, PROBE_NOW), Ordering::Release);
        assert_eq!(b.admit(), Admission::Probe);
        b.record_failure(Admission::Probe, &CAUSE);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Rejected, "a new cooldown started");
    }

    #[test]
    fn abandoned_probe_lets_the_next_caller_probe() {
        let b = consecutive(1, 60_000);
        b.record_failure(Admission::Allowed, &CAUSE);
        b.state.store(word(OPEN, PROBE_NOW), Ordering::Release);
        assert_eq!(b.admit(), Admission::Probe);
        b.abandon_probe();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Probe);
    }

    #[test]
    fn stragglers_do_not_move_an_open_breaker() {
        let b = consecutive(2, 0);
        b.record_failure(Admission::Allowed, &CAUSE);
        b.record_failure(Admission::Allowed, &CAUSE);
        assert_eq!(b.state(), BreakerState::Open);
        let transitions = b.transitions();
        // Operations admitted before the breaker opened finish late.
        b.record_failure(Admission::Allowed, &CAUSE);
        b.record_failure(Admission::Allowed, &CAUSE);
        b.record_success(Admission::Allowed);
        assert_eq!(b.state(), BreakerState::Open, "only the probe closes it");
        assert_eq!(b.transitions(), transitions);
    }

    #[test]
    fn opens_on_failure_rate_with_interleaved_successes() {
        let b = breaker(BreakerConfig {
            failure_threshold: 1000,
            cooldown: Duration::from_secs(60),
            failure_rate: 0.5,
            window: Duration::from_secs(60),
            min_calls: 20,
        });
        // failure, success, failure, success, ...: never 2 consecutive failures.
        for i in 0..20 {
            if i % 2 == 0 {
                b.record_failure(Admission::Allowed, &CAUSE);
            } else {
                b.record_success(Admission::Allowed);
            }
            assert_eq!(b.state(), BreakerState::Closed, "below min_calls at {i}");
        }
        b.record_failure(Admission::Allowed, &CAUSE); // 21 calls, 11 failures
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn successes_before_the_trouble_do_not_dilute_the_ratio() {
        let b = breaker(BreakerConfig {
            failure_threshold: 1000,
            failure_rate: 0.5,
            window: Duration::from_secs(60),
            min_calls: 20,
            ..Default::default()
        });
        // A long healthy period: not counted.
        for _ in 0..1000 {
            b.record_success(Admission::Allowed);
        }
        // Then Redis starts failing two calls in three.
        for i in 0..30 {
            if i % 3 == 0 {
                b.record_success(Admission::Allowed);
            } else {
                b.record_failure(Admission::Allowed, &CAUSE);
            }
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn a_low_failure_rate_keeps_it_closed() {
        let b = breaker(BreakerConfig {
            failure_threshold: 1000,
            failure_rate: 0.5,
            window: Duration::from_secs(60),
            min_calls: 10,
            ..Default::default()
        });
        for _ in 0..100 {
            for _ in 0..3 {
                b.record_success(Admission::Allowed);
            }
            b.record_failure(Admission::Allowed, &CAUSE);
        }
        assert_eq!(b.state(), BreakerState::Closed, "25% < 50%");
    }

    #[test]
    fn closing_forgets_old_failures() {
        let b = breaker(BreakerConfig {
            failure_threshold: 1000,
            cooldown: Duration::ZERO,
            failure_rate: 0.5,
            window: Duration::from_secs(60),
            min_calls: 4,
        });
        for _ in 0..4 {
            b.record_failure(Admission::Allowed, &CAUSE);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Probe);
        b.record_success(Admission::Probe);
        assert_eq!(b.state(), BreakerState::Closed);
        // One failure after recovery: 1 of 1 calls, but below min_calls and the old ones are gone.
        b.record_success(Admission::Allowed);
        b.record_success(Admission::Allowed);
        b.record_failure(Admission::Allowed, &CAUSE);
        b.record_success(Admission::Allowed);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let bad = [
            BreakerConfig {
                failure_threshold: 0,
                ..Default::default()
            },
            BreakerConfig {
                failure_rate: 0.0,
                ..Default::default()
            },
            BreakerConfig {
                failure_rate: 1.5,
                ..Default::default()
            },
            BreakerConfig {
                failure_rate: f64::NAN,
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
        assert!(BreakerConfig::default().validate().is_ok());
    }

    #[test]
    fn every_transition_reaches_the_hook_in_order() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hook: TransitionHook = {
            let seen = seen.clone();
            Arc::new(move |to| seen.lock().unwrap_or_else(|e| e.into_inner()).push(to))
        };
        let config = BreakerConfig {
            failure_threshold: 1,
            cooldown: Duration::ZERO,
            ..Default::default()
        };
        let b = Breaker::new(config, "test", Some(hook));
        b.record_failure(Admission::Allowed, &CAUSE);
        assert_eq!(b.admit(), Admission::Probe);
        b.record_failure(Admission::Probe, &CAUSE);
        assert_eq!(b.admit(), Admission::Probe);
        b.record_success(Admission::Probe);
        use BreakerState::*;
        assert_eq!(
            *seen.lock().unwrap_or_else(|e| e.into_inner()),
            [Open, HalfOpen, Open, HalfOpen, Closed]
        );
        assert_eq!(b.transitions(), 5);
    }

    #[test]
    fn concurrent_callers_get_exactly_one_probe() {
        let b = Arc::new(consecutive(1, 0));
        b.record_failure(Admission::Allowed, &CAUSE);
        let probes: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let b = b.clone();
                    s.spawn(move || (0..1000).filter(|_| b.admit() == Admission::Probe).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(probes, 1);
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }
}

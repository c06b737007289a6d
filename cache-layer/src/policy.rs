//! [`Policy`]: how long an entry lives, what it is tagged with and how misses are loaded.

use std::time::Duration;

use crate::{envelope::Codec, metrics::Door, FunctionStats};

/// How concurrent misses of one key are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Stampede {
    /// Every caller that misses loads on its own.
    None,
    /// Callers in one process share one load (single-flight). The default.
    #[default]
    Coalesce,
    /// Single-flight plus a distributed Redis lock, so one process in the fleet loads.
    Lock,
    /// Single-flight plus probabilistic early recomputation (XFetch) before expiry.
    Early,
}

/// What the cache does with one kind of entry: TTL, tags, stampede protection, grace period.
///
/// `Policy` is cheap to clone and is usually built once and reused.
///
/// ```
/// use std::time::Duration;
/// use cache_layer::{Policy, Stampede};
///
/// let policy = Policy::ttl(Duration::from_secs(300))
///     .tags(["product:42", "catalog"])
///     .stampede(Stampede::Lock)
///     .stale(Duration::from_secs(60))
///     .jitter(0.1);
/// assert_eq!(policy.ttl_duration(), Duration::from_secs(300));
/// ```
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) ttl: Duration,
    pub(crate) tags: Vec<String>,
    pub(crate) stampede: Stampede,
    pub(crate) stale: Duration,
    pub(crate) jitter: f64,
    pub(crate) lock_wait: Duration,
    pub(crate) beta: f64,
    pub(crate) load_timeout: Option<Duration>,
    pub(crate) codec: Option<Codec>,
    pub(crate) door: Door,
    pub(crate) observer: Option<&'static FunctionStats>,
}

impl Policy {
    /// A policy whose entries are fresh for `ttl`.
    pub fn ttl(ttl: Duration) -> Self {
        Policy {
            ttl,
            tags: Vec::new(),
            stampede: Stampede::default(),
            stale: Duration::ZERO,
            jitter: 0.0,
            lock_wait: Duration::from_secs(5),
            beta: 1.0,
            load_timeout: None,
            codec: None,
            door: Door::Direct,
            observer: None,
        }
    }

    /// Tags recorded on every entry written with this policy (for `invalidate_tag`).
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Adds one tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Stampede protection for misses (default [`Stampede::Coalesce`]).
    pub fn stampede(mut self, stampede: Stampede) -> Self {
        self.stampede = stampede;
        self
    }

    /// Grace period after the TTL during which a stale value may be served while it is refreshed,
    /// or when the source fails.
    pub fn stale(mut self, grace: Duration) -> Self {
        self.stale = grace;
        self
    }

    /// Spreads TTLs by ±`fraction` (clamped to `0.0..=0.5`) so keys written together do not
    /// expire together.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 0.5)
        } else {
            0.0
        };
        self
    }

    /// How long a caller waits for another process's load under [`Stampede::Lock`] before calling
    /// the source itself (default 5 s).
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// XFetch `beta` for [`Stampede::Early`] (default 1.0; larger refreshes earlier).
    pub fn beta(mut self, beta: f64) -> Self {
        self.beta = if beta.is_finite() && beta > 0.0 {
            beta
        } else {
            1.0
        };
        self
    }

    /// Soft load timeout: when a stale value exists and a load is slower than this, answer with
    /// the stale value and let the load finish in the background.
    pub fn load_timeout(mut self, soft: Duration) -> Self {
        self.load_timeout = Some(soft);
        self
    }

    /// Payload codec for entries written with this policy (default: the cache's codec).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = Some(codec);
        self
    }

    /// Also counts hits, misses and loads made with this policy into `stats` (see
    /// [`function_stats`](crate::function_stats)); `#[cached]` fns do this for you.
    pub fn observe(mut self, stats: &'static FunctionStats) -> Self {
        self.observer = Some(stats);
        self
    }

    /// The configured TTL.
    pub fn ttl_duration(&self) -> Duration {
        self.ttl
    }

    /// The configured tags.
    pub fn tag_list(&self) -> &[String] {
        &self.tags
    }

    /// The configured stampede protection.
    pub fn stampede_mode(&self) -> Stampede {
        self.stampede
    }

    /// The TTL with jitter applied (what one write actually uses).
    pub(crate) fn jittered_ttl(&self) -> Duration {
        if self.jitter <= 0.0 || self.ttl.is_zero() {
            return self.ttl;
        }
        let factor = 1.0 + self.jitter * (rand::random::<f64>() * 2.0 - 1.0);
        self.ttl.mul_f64(factor.max(0.0))
    }
}

impl Default for Policy {
    /// Five minutes, no tags, single-flight.
    fn default() -> Self {
        Policy::ttl(Duration::from_secs(300))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds() {
        let policy = Policy::ttl(Duration::from_secs(100)).jitter(0.1);
        for _ in 0..1000 {
            let ttl = policy.jittered_ttl();
            assert!(
                ttl >= Duration::from_secs(90) && ttl <= Duration::from_secs(110),
                "{ttl:?}"
            );
        }
    }

    #[test]
    fn jitter_spreads_values() {
        let policy = Policy::ttl(Duration::from_secs(100)).jitter(0.1);
        let distinct: std::collections::HashSet<_> =
            (0..100).map(|_| policy.jittered_ttl()).collect();
        assert!(distinct.len() > 50);
    }

    #[test]
    fn no_jitter_is_exact() {
        assert_eq!(
            Policy::ttl(Duration::from_secs(7)).jittered_ttl(),
            Duration::from_secs(7)
        );
    }
}

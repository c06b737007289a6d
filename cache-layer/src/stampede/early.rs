//! Probabilistic early recomputation (XFetch, Vattani, Chierichetti & Lowenstein, VLDB 2015).
//!
//! A reader recomputes before expiry when `now - delta * beta * ln(rand()) >= fresh_until`, where
//! `delta` is how long the last load took. Readers far from expiry almost never refresh; as expiry
//! approaches (relative to the load time) one of them does, so the value is replaced before anyone
//! sees a miss.

use crate::envelope::Timing;

/// Whether a reader at `now_ms` should refresh an entry with `timing` early.
pub(crate) fn should_refresh(timing: &Timing, now_ms: u64, beta: f64) -> bool {
    let r: f64 = rand::random::<f64>();
    // random::<f64>() is in [0, 1); ln(0) is -inf, which means "refresh now": harmless but avoid it.
    let r = r.max(f64::MIN_POSITIVE);
    should_refresh_with(timing, now_ms, beta, r)
}

/// Deterministic core of [`should_refresh`] for a given uniform sample `r` in (0, 1].
pub(crate) fn should_refresh_with(timing: &Timing, now_ms: u64, beta: f64, r: f64) -> bool {
    let gap = f64::from(timing.delta_ms) * beta * -r.ln();
    now_ms as f64 + gap >= timing.fresh_until_ms as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(delta_ms: u32) -> Timing {
        Timing {
            created_ms: 0,
            fresh_until_ms: 10_000,
            stale_until_ms: 10_000,
            delta_ms,
        }
    }

    #[test]
    fn never_early_when_far_from_expiry_for_typical_samples() {
        assert!(!should_refresh_with(&timing(100), 1_000, 1.0, 0.5));
    }

    #[test]
    fn always_after_expiry() {
        assert!(should_refresh_with(&timing(100), 10_000, 1.0, 0.999));
    }

    #[test]
    fn probability_rises_toward_expiry() {
        let rate = |now: u64| {
            (1..=10_000)
                .filter(|i| should_refresh_with(&timing(200), now, 1.0, *i as f64 / 10_000.0))
                .count()
        };
        let (far, near, nearer) = (rate(9_000), rate(9_800), rate(9_950));
        assert!(far < near && near < nearer, "{far} {near} {nearer}");
        assert!(
            far < 100,
            "1 s before expiry with a 200 ms load: rarely ({far}/10000)"
        );
    }

    #[test]
    fn larger_beta_refreshes_earlier() {
        let t = timing(200);
        let count = |beta: f64| {
            (1..=1000)
                .filter(|i| should_refresh_with(&t, 9_700, beta, *i as f64 / 1000.0))
                .count()
        };
        assert!(count(3.0) > count(1.0));
    }
}

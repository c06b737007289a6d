//! Small helpers every layer uses: wall-clock milliseconds, duration conversions, decimal
//! integers written into keys and headers, and locking a std mutex that a panicking thread may
//! have poisoned. Depends on nothing else in the crate.

use std::{
    sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Milliseconds since the Unix epoch (entry timestamps are wall-clock so processes agree).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// Appends `v` in decimal, as `Display` writes it, without the formatting machinery (keys and
/// headers built on every hit carry integers).
pub(crate) fn push_decimal(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // ASCII digits: one copy, not a `push` (with its UTF-8 encoding) per digit.
    out.push_str(std::str::from_utf8(&digits[start..]).unwrap_or_default());
}

/// [`push_decimal`] for signed integers.
pub(crate) fn push_signed_decimal(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    push_decimal(out, v.unsigned_abs());
}

/// `d` in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `d` in whole milliseconds for a Redis `PX` or TTL argument: at least 1 (`PX 0` is an error).
pub(crate) fn millis_at_least_one(d: Duration) -> u64 {
    millis(d).max(1)
}

/// Locks `mutex`, recovering from poisoning: every value guarded this way is consistent between
/// statements (counters, sets, timestamps), so a panic elsewhere leaves nothing half-written.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`lock`] for the read side of an `RwLock`.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`lock`] for the write side of an `RwLock`.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_what_display_writes() {
        for v in [0u64, 7, 10, 99, 100, 65_535, u64::MAX] {
            let mut out = String::from("x");
            push_decimal(&mut out, v);
            assert_eq!(out, format!("x{v}"));
        }
        for v in [0i64, -1, 42, -1000, i64::MIN, i64::MAX] {
            let mut out = String::new();
            push_signed_decimal(&mut out, v);
            assert_eq!(out, v.to_string());
        }
    }

    #[test]
    fn conversions_saturate_and_px_is_never_zero() {
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis_at_least_one(Duration::ZERO), 1);
        assert!(now_ms() > 1_600_000_000_000);
    }

    #[test]
    fn a_poisoned_mutex_still_locks() {
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let poisoner = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(mutex.is_poisoned());
        assert_eq!(*lock(&mutex), 1);
    }
}

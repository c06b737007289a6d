//! TEMPORARY instrumentation (chaos investigation). Not to be committed.
#![allow(missing_docs)]
use std::sync::{atomic::{AtomicBool, Ordering}, Mutex};
use std::time::Instant;

pub static ON: AtomicBool = AtomicBool::new(false);
static LOG: Mutex<Vec<(Instant, String, String, String)>> = Mutex::new(Vec::new());

pub fn ev(instance: &str, key: &str, msg: impl FnOnce() -> String) {
    if !ON.load(Ordering::Relaxed) { return; }
    let m = msg();
    LOG.lock().unwrap().push((Instant::now(), instance.to_owned(), key.to_owned(), m));
}

pub fn val<T: 'static>(v: &T) -> String {
    (v as &dyn std::any::Any).downcast_ref::<u64>().map_or("?".into(), |x| format!("v{x}"))
}

/// Events for `key` (and global ones, key starting with '*') within `window_ms` before `until`.
pub fn slot(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % 1024
}

pub fn dump(key: &str, from: Instant, until: Instant) -> Vec<String> {
    let slotkey = format!("*slot{}", slot(key));
    let log = LOG.lock().unwrap();
    log.iter()
        .filter(|(at, _, k, _)| *at >= from && *at <= until && (k == key || (k.starts_with('*') && !k.starts_with("*slot")) || *k == slotkey))
        .map(|(at, i, k, m)| format!("  -{:>5}ms [{i}] {k}: {m}", until.saturating_duration_since(*at).as_millis()))
        .collect()
}

#[test]
fn print_slots() {
    let mut v: Vec<(u64, String)> = (0..24).map(|k| (slot(&format!("item:{k}")), format!("item:{k}"))).collect();
    v.sort();
    eprintln!("{v:?}");
}

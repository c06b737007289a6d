//! An entry whose compressed payload claims a huge decompressed size (a decompression bomb, or a
//! corrupt length prefix) is a miss, and reading it allocates nothing near the claimed size.
//!
//! This test binary counts allocations with a wrapping global allocator: the largest single
//! allocation made while the entry is read must stay far below the claimed size.

mod support;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use cache_layer::Policy;
use support::RedisServer;

struct Watching;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates every call to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

#[tokio::test(flavor = "current_thread")]
async fn a_compressed_entry_claiming_a_huge_size_is_a_miss_without_a_huge_allocation() {
    let server = RedisServer::start();
    let cache = server.cache_builder("bomb").build().unwrap();
    let policy = Policy::ttl(Duration::from_secs(60));
    // Compressible and above the compression threshold: stored lz4-compressed.
    let value = "a".repeat(4_000);
    cache.set("k", &value, &policy).await.unwrap();
    assert_eq!(cache.get::<String>("k").await.unwrap(), Some(value.clone()));

    // The lz4 block is prefixed by the decompressed size (u32 little-endian). The MessagePack
    // payload of a 4000-byte string is 4003 bytes (str16 marker + length).
    let redis_key = cache.redis_key("k");
    let mut raw: Vec<u8> = server.query(redis::cmd("GET").arg(&redis_key));
    assert!(
        raw.len() < 1_000,
        "the entry is compressed ({} bytes)",
        raw.len()
    );
    let prefix = 4_003u32.to_le_bytes();
    let at = raw
        .windows(4)
        .rposition(|w| w == prefix)
        .expect("the size prefix of the compressed payload");
    const CLAIMED: u32 = 400 * 1024 * 1024;
    raw[at..at + 4].copy_from_slice(&CLAIMED.to_le_bytes());
    let ttl_ms: u64 = server.query(redis::cmd("PTTL").arg(&redis_key));
    let _: () = server.query(
        redis::cmd("SET")
            .arg(&redis_key)
            .arg(&raw)
            .arg("PX")
            .arg(ttl_ms.max(1)),
    );

    // A fresh instance (no L1, nothing cached in-process) reads the patched entry.
    let reader = server.cache_builder("bomb").build().unwrap();
    LARGEST.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    let read = reader.get::<String>("k").await;
    ARMED.store(false, Ordering::SeqCst);
    let largest = LARGEST.load(Ordering::SeqCst);
    assert!(
        largest < 16 * 1024 * 1024,
        "reading a {}-byte entry allocated {largest} bytes at once (claimed size {CLAIMED})",
        raw.len()
    );
    assert!(
        read.unwrap().is_none(),
        "an entry whose size prefix lies is corrupt: a miss"
    );
    assert!(reader.stats().corrupt >= 1, "counted as corrupt");
}

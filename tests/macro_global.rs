//! `#[cached]` without `cache = ...` uses the cache installed with `cache_layer::install`: here a
//! Redis-backed one (shared server, unique namespace), installed once for this test binary. Every
//! test uses its own fns, so tests sharing the global cache never share entries.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use cache_layer::{cached, invalidate, Cache};
use support::{shared_redis_url, unique_prefix};

/// Installs the global cache once and returns it.
fn global() -> Cache {
    static GLOBAL: OnceLock<Cache> = OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let cache = Cache::builder()
                .redis(shared_redis_url())
                .namespace(unique_prefix("macro_global"))
                .build()
                .expect("valid configuration");
            cache_layer::install(cache.clone());
            cache
        })
        .clone()
}

static PRICES: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "10m", tags = ["price:{sku}"])]
async fn price(sku: String) -> u64 {
    PRICES.fetch_add(1, Ordering::SeqCst);
    sku.len() as u64 * 100
}

#[invalidate(tags = ["price:{sku}"])]
async fn reprice(sku: &str) -> Result<(), String> {
    let _ = sku;
    Ok(())
}

#[tokio::test]
async fn uses_the_installed_cache() {
    let cache = global();
    assert_eq!(price("tea".into()).await, 300);
    assert_eq!(price("tea".into()).await, 300);
    assert_eq!(PRICES.load(Ordering::SeqCst), 1);
    // The entry is in the installed cache, under the default key.
    let key = format!("{}::price(\"tea\")", module_path!());
    assert_eq!(cache.get::<u64>(&key).await.ok().flatten(), Some(300));

    assert_eq!(reprice("tea").await, Ok(()));
    assert_eq!(
        cache.get::<u64>(&key).await.ok().flatten(),
        None,
        "tag invalidated"
    );
    assert_eq!(price("tea".into()).await, 300);
    assert!(PRICES.load(Ordering::SeqCst) >= 2);
}

static STOCK: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60)]
async fn stock(sku: String) -> u32 {
    STOCK.fetch_add(1, Ordering::SeqCst);
    sku.len() as u32
}

#[tokio::test]
async fn companions_use_the_installed_cache() {
    global();
    assert_eq!(stock("tea".into()).await, 3);
    assert_eq!(stock_invalidate("tea".into()).await.ok(), Some(true));
    assert_eq!(stock_invalidate("tea".into()).await.ok(), Some(false));
    assert_eq!(stock_refresh("tea".into()).await, 3);
    assert_eq!(stock("tea".into()).await, 3);
    assert_eq!(STOCK.load(Ordering::SeqCst), 2, "refresh stored the value");
    assert_eq!(stock_uncached("tea".into()).await, 3);
    assert_eq!(STOCK.load(Ordering::SeqCst), 3);
}

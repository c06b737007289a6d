//! Free fns of every return shape, with every `#[cached]` key, and their companions.
use std::sync::atomic::{AtomicUsize, Ordering};

use cache_layer::{cached, Cache};
use serde::{Deserialize, Serialize};

static CALLS: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: u64,
    pub name: String,
}

#[derive(Debug, PartialEq)]
pub struct DbError;

/// Plain value, default key.
#[cached(ttl = 300)]
pub async fn plain(id: u64, lang: String) -> Product {
    CALLS.fetch_add(1, Ordering::SeqCst);
    Product { id, name: lang }
}

#[cached(ttl = "5m", key = "product:{id}", tags = ["product:{id}", "catalog"], stampede = "lock", stale = 60, jitter = 0.1)]
pub(crate) async fn result(id: u64) -> Result<Product, DbError> {
    if id == 0 {
        return Err(DbError);
    }
    let name = fallible(id)?;
    Ok(Product { id, name })
}

fn fallible(id: u64) -> Result<String, DbError> {
    Ok(format!("p{id}"))
}

#[cached(stampede = "early")]
async fn option(id: u64) -> Option<u64> {
    (id > 0).then_some(id)
}

#[cached(none = true, stampede = "none")]
async fn option_none(id: u64) -> Option<u64> {
    (id > 0).then_some(id)
}

#[cached(stampede = "coalesce")]
async fn result_option(id: u64) -> Result<Option<u64>, String> {
    Ok((id > 0).then_some(id))
}

#[cached(none)]
async fn result_option_none(id: u64) -> std::result::Result<Option<u64>, String> {
    Ok((id > 0).then_some(id))
}

#[cached(ttl = 1, cache = &SECOND)]
async fn explicit_cache(n: u32) -> u32 {
    n + 1
}

static SECOND: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(Cache::in_memory);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    cache_layer::install(Cache::in_memory());
    assert_eq!(plain(1, "en".into()).await, Product { id: 1, name: "en".into() });
    assert_eq!(plain(1, "en".into()).await.id, 1);
    assert_eq!(CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(result(0).await, Err(DbError));
    assert_eq!(result(2).await.map(|p| p.name), Ok("p2".to_owned()));
    assert_eq!(option(0).await, None);
    assert_eq!(option_none(3).await, Some(3));
    assert_eq!(result_option(4).await, Ok(Some(4)));
    assert_eq!(result_option_none(0).await, Ok(None));
    assert_eq!(explicit_cache(1).await, 2);

    // Companions.
    assert!(plain_invalidate(1, "en".into()).await.unwrap());
    assert!(!plain_invalidate(1, "en".into()).await.unwrap());
    assert_eq!(plain_refresh(1, "en".into()).await.id, 1);
    assert_eq!(plain_uncached(1, "en".into()).await.id, 1);
    assert_eq!(CALLS.load(Ordering::SeqCst), 3);
    assert!(result_invalidate(2).await.unwrap());
    assert_eq!(option_refresh(5).await, Some(5));
    assert_eq!(result_option_uncached(6).await, Ok(Some(6)));
    assert!(explicit_cache_invalidate(1).await.unwrap());
}

//! `#[cached]` fn overhead vs calling `get_or_fetch` directly, on the L1 path (where any
//! per-call overhead of the macro — key building, policy, cache resolution — is most visible).

use std::time::Duration;

use cache_layer::{cached, Cache, Policy};

use super::{leak, measure_hits, page, Page, KEYS};
use crate::{
    report::{measure, Comparison},
    Settings,
};

const DIRECT: &str = "get_or_fetch (L1 hit, key formatted by caller)";
const MACRO: &str = "#[cached] fn (L1 hit)";

/// The function under test: the macro builds the key from `id` (the cache argument is skipped).
#[cached(ttl = 3600, cache = cache, skip = [cache], companions = false)]
async fn cached_page(cache: &Cache, id: u64) -> Page {
    page(id)
}

pub async fn run(settings: &Settings) -> Result<(), String> {
    let cache = Cache::builder()
        .namespace("bench-macro")
        .local(10_000)
        .build()
        .map_err(|err| format!("cannot build the cache: {err}"))?;
    let policy = Policy::ttl(Duration::from_secs(3600));
    for id in 0..KEYS {
        let _: Page = cache
            .get_or_fetch(
                &format!("page:{id}"),
                &policy,
                move || async move { page(id) },
            )
            .await;
        let _ = cached_page(&cache, id).await;
    }
    let mut table = Comparison::new("#[cached] vs get_or_fetch, 64 callers", "direct");
    for _ in 0..settings.rounds {
        let m = measure_hits(&cache, &policy, 64, settings.duration).await;
        table.record(DIRECT, m);
        let c = leak(cache.clone());
        let m = measure(64, settings.duration, move |i| async move {
            let v = cached_page(c, i % KEYS).await;
            assert_eq!(v.id, i % KEYS);
        })
        .await;
        table.record(MACRO, m);
    }
    table.print();
    let loads = cache.stats().loads;
    if loads != 2 * KEYS {
        return Err(format!(
            "macro: {loads} loads, expected only the {} primes",
            2 * KEYS
        ));
    }
    Ok(())
}

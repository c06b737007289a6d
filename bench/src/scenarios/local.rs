//! L1 hit: `get_or_fetch` answered by the in-process tier vs a bare moka get of the same value.

use std::time::Duration;

use cache_layer::{Cache, Policy};

use super::{leak, page, Page, KEYS};
use crate::{
    report::{measure, Comparison},
    Settings,
};

const MOKA: &str = "moka::sync::Cache::get (clone of the value)";
const OURS: &str = "cache-layer get_or_fetch (L1 hit)";

pub async fn run(settings: &Settings) -> Result<(), String> {
    // The L1 tier answers before the store is consulted; the in-memory store keeps this
    // independent of Redis.
    let cache = Cache::builder()
        .namespace("bench-l1")
        .local(10_000)
        .build()
        .map_err(|err| format!("cannot build the cache: {err}"))?;
    let policy = Policy::ttl(Duration::from_secs(3600));
    let moka: moka::sync::Cache<String, Page> = moka::sync::Cache::new(10_000);
    let keys: Vec<String> = (0..KEYS).map(|id| format!("page:{id}")).collect();
    for (id, key) in keys.iter().enumerate() {
        let value = page(id as u64);
        moka.insert(key.clone(), value.clone());
        let _: Page = cache
            .get_or_fetch(key, &policy, move || async move { value })
            .await;
    }
    // Both rows borrow what they read for the whole run: no reference count per call.
    let (cache_ref, policy, keys, moka) =
        (leak(cache.clone()), leak(policy), leak(keys), leak(moka));
    for concurrency in [1, 64] {
        let mut table = Comparison::new(
            format!("L1 hit, {concurrency} concurrent caller(s)"),
            "moka",
        );
        for _ in 0..settings.rounds {
            let measured = measure(concurrency, settings.duration, move |i| {
                let v = moka.get(&keys[(i % KEYS) as usize]);
                assert!(v.is_some());
                async {}
            })
            .await;
            table.record(MOKA, measured);
            let measured = measure(concurrency, settings.duration, move |i| async move {
                let v: Page = cache_ref
                    .get_or_fetch(&keys[(i % KEYS) as usize], policy, || async { page(0) })
                    .await;
                assert_eq!(v.id, i % KEYS);
            })
            .await;
            table.record(OURS, measured);
        }
        table.print();
    }
    let stats = cache.stats();
    if stats.local_hits == 0 || stats.loads != KEYS {
        return Err(format!(
            "l1: expected only L1 hits after priming: {stats:?}"
        ));
    }
    Ok(())
}

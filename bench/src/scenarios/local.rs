//! L1 hit: `get_or_fetch` answered by the in-process tier vs a bare moka get of the same value.

use std::time::Duration;

use cache_layer::{Cache, Policy};

use super::{page, Page, KEYS};
use crate::{
    report::{measure, print_table},
    Settings,
};

pub async fn run(settings: &Settings) {
    // The L1 tier answers before the store is consulted; the in-memory store keeps this
    // independent of Redis.
    let cache = match Cache::builder().namespace("bench-l1").local(10_000).build() {
        Ok(cache) => cache,
        Err(err) => return eprintln!("l1: cannot build the cache: {err}"),
    };
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
    let keys = std::sync::Arc::new(keys);
    for concurrency in [1, 64] {
        let mut rows = Vec::new();
        let (m, k) = (moka.clone(), keys.clone());
        rows.push(
            measure(
                "moka::sync::Cache::get (clone of the value)",
                concurrency,
                settings.duration,
                move |i| {
                    let v = m.get(&k[(i % KEYS) as usize]);
                    assert!(v.is_some());
                    async {}
                },
            )
            .await,
        );
        let (c, p, k) = (cache.clone(), policy.clone(), keys.clone());
        rows.push(
            measure(
                "cache-layer get_or_fetch (L1 hit)",
                concurrency,
                settings.duration,
                move |i| {
                    let (c, p, k) = (c.clone(), p.clone(), k.clone());
                    async move {
                        let v: Page = c
                            .get_or_fetch(&k[(i % KEYS) as usize], &p, || async { page(0) })
                            .await;
                        assert_eq!(v.id, i % KEYS);
                    }
                },
            )
            .await,
        );
        print_table(
            &format!("L1 hit, {concurrency} concurrent caller(s)"),
            &rows,
        );
    }
}

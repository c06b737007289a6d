//! L1 hit: `get_or_fetch` answered by the in-process tier vs a bare moka get of the same value.

use std::time::Duration;

use cache_layer::{Cache, Policy};

use super::{page, Page, KEYS};
use crate::{
    report::{measure, median, print_table},
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
        let (mut moka_rounds, mut ours_rounds) = (Vec::new(), Vec::new());
        for _ in 0..super::hit::ROUNDS {
            let (m, k) = (moka.clone(), keys.clone());
            moka_rounds.push(
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
            ours_rounds.push(
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
        }
        let rows: Vec<_> = [moka_rounds, ours_rounds]
            .into_iter()
            .filter_map(median)
            .collect();
        print_table(
            &format!(
                "L1 hit, {concurrency} concurrent caller(s), median of {} rounds",
                super::hit::ROUNDS
            ),
            &rows,
        );
    }
}

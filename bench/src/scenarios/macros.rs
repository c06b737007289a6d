//! `#[cached]` fn overhead vs calling `get_or_fetch` directly, on the L1 path (where any
//! per-call overhead of the macro — key building, policy, cache resolution — is most visible).

use std::time::Duration;

use cache_layer::{cached, Cache, Policy};

use super::{page, Page, KEYS};
use crate::{
    report::{measure, median, print_table},
    Settings,
};

/// The function under test: the macro builds the key from `id` (the cache argument is skipped).
#[cached(ttl = 3600, cache = cache, skip = [cache], companions = false)]
async fn cached_page(cache: &Cache, id: u64) -> Page {
    page(id)
}

pub async fn run(settings: &Settings) {
    let cache = match Cache::builder()
        .namespace("bench-macro")
        .local(10_000)
        .build()
    {
        Ok(cache) => cache,
        Err(err) => return eprintln!("macro: cannot build the cache: {err}"),
    };
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
    let (mut direct_rounds, mut macro_rounds) = (Vec::new(), Vec::new());
    for _ in 0..super::hit::ROUNDS {
        let (c, p) = (cache.clone(), policy.clone());
        direct_rounds.push(
            measure(
                "get_or_fetch (L1 hit, key formatted by caller)",
                64,
                settings.duration,
                move |i| {
                    let (c, p) = (c.clone(), p.clone());
                    async move {
                        let id = i % KEYS;
                        let v: Page = c
                            .get_or_fetch(
                                &format!("page:{id}"),
                                &p,
                                move || async move { page(id) },
                            )
                            .await;
                        assert_eq!(v.id, id);
                    }
                },
            )
            .await,
        );
        let c = cache.clone();
        macro_rounds.push(
            measure("#[cached] fn (L1 hit)", 64, settings.duration, move |i| {
                let c = c.clone();
                async move {
                    let v = cached_page(&c, i % KEYS).await;
                    assert_eq!(v.id, i % KEYS);
                }
            })
            .await,
        );
    }
    let rows: Vec<_> = [direct_rounds, macro_rounds]
        .into_iter()
        .filter_map(median)
        .collect();
    print_table(
        &format!(
            "#[cached] vs get_or_fetch, 64 callers, median of {} rounds",
            super::hit::ROUNDS
        ),
        &rows,
    );
}

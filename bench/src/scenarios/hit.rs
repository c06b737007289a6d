//! L2 hit: `get_or_fetch` on Redis vs raw redis-rs GET + rmp-serde decode vs the `cached` crate.

use std::time::Duration;

use cache_layer::{Cache, Policy};
use cached::ConcurrentCachedAsync;

use super::{measure_hits, page, Page, RawVsOurs, KEYS};
use crate::{
    redis_server::PrivateRedis,
    report::{measure, print_commands_per_op, Comparison},
    Settings,
};

const RAW: &str = "raw redis-rs GET + rmp-serde decode";
const OURS: &str = "cache-layer get_or_fetch (Redis hit)";
const CACHED: &str = "cached crate AsyncRedisCache get";
const TWO_CONNECTIONS: &str = "cache-layer get_or_fetch, pool_size(2)";

pub async fn run(settings: &Settings, server: Option<&PrivateRedis>) -> Result<(), String> {
    let cache = Cache::builder()
        .redis(settings.redis_url.as_str())
        .namespace("bench-hit")
        .build()
        .map_err(|err| format!("cannot build the cache: {err}"))?;
    // The default is one multiplexed connection; this one spreads its hits over two (the same
    // namespace, so it reads the entries `cache` primes).
    let two_connections = Cache::builder()
        .redis(settings.redis_url.as_str())
        .namespace("bench-hit")
        .pool_size(2)
        .build()
        .map_err(|err| format!("cannot build the cache: {err}"))?;
    let client = redis::Client::open(settings.redis_url.as_str())
        .map_err(|err| format!("bad redis url: {err}"))?;
    let raw = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|err| format!("redis unreachable at {}: {err}", settings.redis_url))?;
    let other = cached::AsyncRedisCache::<String, Page>::builder("bench-cached-crate")
        .ttl(Duration::from_secs(3600))
        .connection_string(&settings.redis_url)
        .build()
        .await
        .map_err(|err| format!("cannot build the cached crate's AsyncRedisCache: {err}"))?;
    let policy = Policy::ttl(Duration::from_secs(3600));
    let rows = RawVsOurs::new((RAW, OURS), &raw, &cache, &policy);
    rows.prime().await?;
    for id in 0..KEYS {
        other
            .async_cache_set(format!("page:{id}"), page(id))
            .await
            .map_err(|err| format!("cannot prime the cached crate: {err}"))?;
    }

    for concurrency in [1, 64] {
        let mut table = Comparison::new(
            format!("L2 hit, ~0.9 KiB value, {concurrency} concurrent caller(s)"),
            "raw",
        );
        for _ in 0..settings.rounds {
            rows.round(&mut table, concurrency, settings.duration).await;
            let other = other.clone();
            let m = measure(concurrency, settings.duration, move |i| {
                let other = other.clone();
                async move {
                    let v = other
                        .async_cache_get(&format!("page:{}", i % KEYS))
                        .await
                        .ok()
                        .flatten();
                    assert!(v.is_some(), "cached crate value missing");
                }
            })
            .await;
            table.record(CACHED, m);
            let m = measure_hits(&two_connections, &policy, concurrency, settings.duration).await;
            table.record(TWO_CONNECTIONS, m);
        }
        table.print();
        // The rounds above mix in the raw and cached-crate GETs: count ours in a run of its own.
        if let Some(server) = server {
            server.reset_stats();
            let m = measure_hits(&cache, &policy, concurrency, settings.duration).await;
            print_commands_per_op("cache-layer hit", Some(server), m.count);
        }
    }
    for (name, cache) in [("cache-layer", &cache), ("pool_size(2)", &two_connections)] {
        let stats = cache.stats();
        println!(
            "{name} stats: hits {} misses {} errors {}",
            stats.hits, stats.misses, stats.errors
        );
        if stats.misses != 0 || stats.errors != 0 {
            return Err(format!("hit: every call must be a hit: {stats:?}"));
        }
    }
    Ok(())
}

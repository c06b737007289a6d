//! L2 hit: `get_or_fetch` on Redis vs raw redis-rs GET + rmp-serde decode vs the `cached` crate.

use std::time::Duration;

use cache_layer::{Cache, Policy};
use cached::ConcurrentCachedAsync;

use super::{page, Page, KEYS};
use crate::{
    redis_server::PrivateRedis,
    report::{measure, print_commands_per_op, Comparison},
    Settings,
};

const RAW: &str = "raw redis-rs GET + rmp-serde decode";
const OURS: &str = "cache-layer get_or_fetch (Redis hit)";
const CACHED: &str = "cached crate AsyncRedisCache get";

pub async fn run(settings: &Settings, server: Option<&PrivateRedis>) -> Result<(), String> {
    let cache = Cache::builder()
        .redis(settings.redis_url.as_str())
        .namespace("bench-hit")
        .build()
        .map_err(|err| format!("cannot build the cache: {err}"))?;
    let client = redis::Client::open(settings.redis_url.as_str())
        .map_err(|err| format!("bad redis url: {err}"))?;
    let mut raw = client
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
    for id in 0..KEYS {
        let value = page(id);
        cache
            .set(&format!("page:{id}"), &value, &policy)
            .await
            .map_err(|err| format!("cannot prime the cache: {err}"))?;
        let bytes = rmp_serde::to_vec_named(&value).map_err(|err| err.to_string())?;
        let () = redis::cmd("SET")
            .arg(format!("raw:page:{id}"))
            .arg(bytes)
            .query_async(&mut raw)
            .await
            .map_err(|err| format!("cannot prime the raw keys: {err}"))?;
        other
            .async_cache_set(format!("page:{id}"), value)
            .await
            .map_err(|err| format!("cannot prime the cached crate: {err}"))?;
    }

    for concurrency in [1, 64] {
        let mut table = Comparison::new(
            format!("L2 hit, ~0.9 KiB value, {concurrency} concurrent caller(s)"),
            "raw",
        );
        for _ in 0..settings.rounds {
            let conn = raw.clone();
            let m = measure(concurrency, settings.duration, move |i| {
                let mut conn = conn.clone();
                async move {
                    let bytes: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(format!("raw:page:{}", i % KEYS))
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    let decoded: Option<Page> = bytes.and_then(|b| rmp_serde::from_slice(&b).ok());
                    assert!(decoded.is_some(), "raw value missing");
                }
            })
            .await;
            table.record(RAW, m);

            let (c, p) = (cache.clone(), policy.clone());
            let m = measure(concurrency, settings.duration, move |i| {
                let (c, p) = (c.clone(), p.clone());
                async move {
                    let id = i % KEYS;
                    let v: Page = c
                        .get_or_fetch(&format!("page:{id}"), &p, move || async move { page(id) })
                        .await;
                    assert_eq!(v.id, id);
                }
            })
            .await;
            table.record(OURS, m);

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
        }
        table.print();
        // The rounds above mix in the raw and cached-crate GETs: count ours in a run of its own.
        if let Some(server) = server {
            server.reset_stats();
            let (c, p) = (cache.clone(), policy.clone());
            let m = measure(concurrency, settings.duration, move |i| {
                let (c, p) = (c.clone(), p.clone());
                async move {
                    let id = i % KEYS;
                    let _: Page = c
                        .get_or_fetch(&format!("page:{id}"), &p, move || async move { page(id) })
                        .await;
                }
            })
            .await;
            print_commands_per_op("cache-layer hit", Some(server), m.count);
        }
    }
    let stats = cache.stats();
    println!(
        "cache-layer stats: hits {} misses {} errors {}",
        stats.hits, stats.misses, stats.errors
    );
    if stats.misses != 0 || stats.errors != 0 {
        return Err(format!("hit: every call must be a hit: {stats:?}"));
    }
    Ok(())
}

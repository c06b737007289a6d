//! L2 hit: `get_or_fetch` on Redis vs raw redis-rs GET + rmp-serde decode vs the `cached` crate.

use std::time::Duration;

use cache_layer::{Cache, Policy};
use cached::ConcurrentCachedAsync;

use super::{page, Page, KEYS};
use crate::{
    redis_server::PrivateRedis,
    report::{measure, median, print_table},
    Settings,
};

/// Interleaved rounds per row.
pub const ROUNDS: usize = 3;

pub async fn run(settings: &Settings, server: Option<&PrivateRedis>) {
    let cache = match Cache::builder()
        .redis(settings.redis_url.as_str())
        .namespace("bench-hit")
        .build()
    {
        Ok(cache) => cache,
        Err(err) => return eprintln!("hit: cannot build the cache: {err}"),
    };
    let client = match redis::Client::open(settings.redis_url.as_str()) {
        Ok(client) => client,
        Err(err) => return eprintln!("hit: bad redis url: {err}"),
    };
    let mut raw = match client.get_multiplexed_async_connection().await {
        Ok(conn) => conn,
        Err(err) => return eprintln!("hit: redis unreachable at {}: {err}", settings.redis_url),
    };
    let other = cached::AsyncRedisCache::<String, Page>::builder("bench-cached-crate")
        .ttl(Duration::from_secs(3600))
        .connection_string(&settings.redis_url)
        .build()
        .await;
    let policy = Policy::ttl(Duration::from_secs(3600));
    for id in 0..KEYS {
        let value = page(id);
        let _ = cache.set(&format!("page:{id}"), &value, &policy).await;
        let bytes = rmp_serde::to_vec_named(&value).unwrap_or_default();
        let _: Result<(), _> = redis::cmd("SET")
            .arg(format!("raw:page:{id}"))
            .arg(bytes)
            .query_async(&mut raw)
            .await;
        if let Ok(other) = &other {
            let _ = other.async_cache_set(format!("page:{id}"), value).await;
        }
    }

    for concurrency in [1, 64] {
        let (mut raw_rounds, mut ours_rounds, mut other_rounds) =
            (Vec::new(), Vec::new(), Vec::new());
        let mut commands = None;
        // Interleaved rounds: background noise hits every row alike; the median is reported.
        for _ in 0..ROUNDS {
            let conn = raw.clone();
            raw_rounds.push(
                measure(
                    "raw redis-rs GET + rmp-serde decode",
                    concurrency,
                    settings.duration,
                    move |i| {
                        let mut conn = conn.clone();
                        async move {
                            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                                .arg(format!("raw:page:{}", i % KEYS))
                                .query_async(&mut conn)
                                .await
                                .unwrap_or_default();
                            let decoded: Option<Page> =
                                bytes.and_then(|b| rmp_serde::from_slice(&b).ok());
                            assert!(decoded.is_some(), "raw value missing");
                        }
                    },
                )
                .await,
            );
            if let Some(server) = server {
                server.reset_stats();
            }
            let (c, p) = (cache.clone(), policy.clone());
            let ours =
                measure(
                    "cache-layer get_or_fetch (Redis hit)",
                    concurrency,
                    settings.duration,
                    move |i| {
                        let (c, p) = (c.clone(), p.clone());
                        async move {
                            let id = i % KEYS;
                            let v: Page =
                                c.get_or_fetch(&format!("page:{id}"), &p, move || async move {
                                    page(id)
                                })
                                .await;
                            assert_eq!(v.id, id);
                        }
                    },
                )
                .await;
            commands = server.map(|s| (s.command_calls(), ours.count));
            ours_rounds.push(ours);
            if let Ok(other) = &other {
                let other = other.clone();
                other_rounds.push(
                    measure(
                        "cached crate AsyncRedisCache get",
                        concurrency,
                        settings.duration,
                        move |i| {
                            let other = other.clone();
                            async move {
                                let v = other
                                    .async_cache_get(&format!("page:{}", i % KEYS))
                                    .await
                                    .ok()
                                    .flatten();
                                assert!(v.is_some(), "cached crate value missing");
                            }
                        },
                    )
                    .await,
                );
            }
        }
        let rows: Vec<_> = [raw_rounds, ours_rounds, other_rounds]
            .into_iter()
            .filter_map(median)
            .collect();
        print_table(
            &format!("L2 hit, ~0.9 KiB value, {concurrency} concurrent caller(s), median of {ROUNDS} interleaved rounds"),
            &rows,
        );
        if let Some((commands, ops)) = commands {
            let per_op: Vec<String> = commands
                .iter()
                .map(|(cmd, n)| format!("{cmd} {:.3}", *n as f64 / ops.max(1) as f64))
                .collect();
            println!(
                "\nRedis commands per cache-layer hit: {}",
                per_op.join(", ")
            );
        }
    }
    let stats = cache.stats();
    println!(
        "cache-layer stats: hits {} misses {} errors {}",
        stats.hits, stats.misses, stats.errors
    );
}

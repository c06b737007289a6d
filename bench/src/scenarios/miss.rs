//! Miss + fill: `get_or_fetch` on a cold key vs raw GET (nil) + SET PX of the same value.

use std::time::Duration;

use cache_layer::{Cache, Policy, Stampede};

use super::page;
use crate::{
    redis_server::PrivateRedis,
    report::{measure, print_table},
    Settings,
};

pub async fn run(settings: &Settings, server: Option<&PrivateRedis>) {
    let cache = match Cache::builder()
        .redis(settings.redis_url.as_str())
        .namespace("bench-miss")
        .build()
    {
        Ok(cache) => cache,
        Err(err) => return eprintln!("miss: cannot build the cache: {err}"),
    };
    let raw = match redis::Client::open(settings.redis_url.as_str()) {
        Ok(client) => match client.get_multiplexed_async_connection().await {
            Ok(conn) => conn,
            Err(err) => return eprintln!("miss: redis unreachable: {err}"),
        },
        Err(err) => return eprintln!("miss: bad redis url: {err}"),
    };
    // Every call uses a new key, so every call is a miss followed by a fill.
    let run_id = std::process::id();
    let mut rows = Vec::new();
    rows.push(
        measure(
            "raw GET (nil) + rmp-serde encode + SET PX",
            16,
            settings.duration,
            move |i| {
                let mut conn = raw.clone();
                async move {
                    let key = format!("raw-miss:{run_id}:{i}");
                    let found: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    assert!(found.is_none());
                    let bytes = rmp_serde::to_vec_named(&page(i)).unwrap_or_default();
                    let _: Result<(), _> = redis::cmd("SET")
                        .arg(&key)
                        .arg(bytes)
                        .arg("PX")
                        .arg(60_000)
                        .query_async(&mut conn)
                        .await;
                }
            },
        )
        .await,
    );
    if let Some(server) = server {
        server.reset_stats();
    }
    // Stampede::None: no single-flight bookkeeping, to compare the storage path only; the second
    // row shows what single-flight adds.
    for (name, stampede) in [
        ("cache-layer miss + fill (Stampede::None)", Stampede::None),
        ("cache-layer miss + fill (Coalesce)", Stampede::Coalesce),
    ] {
        let policy = Policy::ttl(Duration::from_secs(60)).stampede(stampede);
        let c = cache.clone();
        let tag = format!("{stampede:?}");
        let m = measure(name, 16, settings.duration, move |i| {
            let (c, p, tag) = (c.clone(), policy.clone(), tag.clone());
            async move {
                let v = c
                    .get_or_fetch(
                        &format!("miss:{run_id}:{tag}:{i}"),
                        &p,
                        move || async move { page(i) },
                    )
                    .await;
                assert_eq!(v.id, i);
            }
        })
        .await;
        if let (Some(server), true) = (server, stampede == Stampede::None) {
            let per_op: Vec<String> = server
                .command_calls()
                .iter()
                .map(|(cmd, n)| format!("{cmd} {:.3}", *n as f64 / m.count.max(1) as f64))
                .collect();
            println!(
                "\nRedis commands per cache-layer miss+fill: {}",
                per_op.join(", ")
            );
        }
        rows.push(m);
    }
    print_table(
        "Miss + fill, 16 concurrent callers, a new key per call",
        &rows,
    );
}

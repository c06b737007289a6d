//! Miss + fill: `get_or_fetch` on a cold key vs raw GET (nil) + encode + SET PX of the same value.

use std::time::Duration;

use cache_layer::{Cache, Policy, Stampede};

use super::page;
use crate::{
    redis_server::PrivateRedis,
    report::{measure, print_commands_per_op, Comparison},
    Settings,
};

const CALLERS: usize = 16;

pub async fn run(settings: &Settings, server: Option<&PrivateRedis>) -> Result<(), String> {
    let cache = Cache::builder()
        .redis(settings.redis_url.as_str())
        .namespace("bench-miss")
        .build()
        .map_err(|err| format!("cannot build the cache: {err}"))?;
    let raw = redis::Client::open(settings.redis_url.as_str())
        .map_err(|err| format!("bad redis url: {err}"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|err| format!("redis unreachable: {err}"))?;
    // Every call uses a new key (run id, round, row, counter), so every call is a miss + fill.
    let run_id = std::process::id();
    let mut table = Comparison::new(
        format!("Miss + fill, {CALLERS} concurrent callers, a new key per call"),
        "raw",
    );
    // Stampede::None: no single-flight bookkeeping, to compare the storage path only; the second
    // row shows what single-flight adds.
    let rows = [
        ("cache-layer miss + fill (Stampede::None)", Stampede::None),
        ("cache-layer miss + fill (Coalesce)", Stampede::Coalesce),
    ];
    for round in 0..settings.rounds {
        let conn = raw.clone();
        let m = measure(CALLERS, settings.duration, move |i| {
            let mut conn = conn.clone();
            async move {
                let key = format!("raw-miss:{run_id}:{round}:{i}");
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
        })
        .await;
        table.record("raw GET (nil) + rmp-serde encode + SET PX", m);
        for (row, (name, stampede)) in rows.into_iter().enumerate() {
            let policy = Policy::ttl(Duration::from_secs(60)).stampede(stampede);
            let c = cache.clone();
            let m = measure(CALLERS, settings.duration, move |i| {
                let (c, p) = (c.clone(), policy.clone());
                async move {
                    let key = format!("miss:{run_id}:{round}:{row}:{i}");
                    let v = c
                        .get_or_fetch(&key, &p, move || async move { page(i) })
                        .await;
                    assert_eq!(v.id, i);
                }
            })
            .await;
            table.record(name, m);
        }
    }
    table.print();
    if let Some(server) = server {
        server.reset_stats();
        let c = cache.clone();
        let policy = Policy::ttl(Duration::from_secs(60));
        let m = measure(CALLERS, settings.duration, move |i| {
            let (c, p) = (c.clone(), policy.clone());
            async move {
                let key = format!("miss:{run_id}:count:{i}");
                let _ = c
                    .get_or_fetch(&key, &p, move || async move { page(i) })
                    .await;
            }
        })
        .await;
        print_commands_per_op("cache-layer miss + fill", Some(server), m.count);
    }
    let stats = cache.stats();
    if stats.hits != 0 || stats.errors != 0 || stats.loads != stats.misses {
        return Err(format!(
            "miss: every call must be one miss and one load: {stats:?}"
        ));
    }
    Ok(())
}

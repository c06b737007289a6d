//! Cluster hit: `get_or_fetch` on a local 3-master Redis Cluster vs a raw redis-rs cluster `GET`
//! + rmp-serde decode of the same value, on the same cluster.
//!
//! The cluster is started by the benchmark itself (three `redis-server --cluster-enabled yes` on
//! free ports, joined with `redis-cli --cluster create`, stopped at the end of the section).

use std::time::Duration;

use cache_layer::{Cache, Policy};

use super::{page, Page, KEYS};
use crate::{
    redis_server::PrivateCluster,
    report::{measure, print_calls_per_op, Comparison},
    Settings,
};

const RAW: &str = "raw redis-rs cluster GET + rmp-serde decode";
const OURS: &str = "cache-layer get_or_fetch (cluster hit)";

pub async fn run(settings: &Settings) -> Result<(), String> {
    let cluster = PrivateCluster::start()?;
    let urls = cluster.urls();
    let cache = Cache::builder()
        .redis_cluster(urls.iter().cloned())
        .namespace("bench-cluster")
        .build()
        .map_err(|err| format!("cannot build the cache: {err}"))?;
    let raw = redis::cluster::ClusterClient::new(urls.clone())
        .map_err(|err| format!("bad cluster urls: {err}"))?
        .get_async_connection()
        .await
        .map_err(|err| format!("cluster unreachable: {err}"))?;
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
            .query_async(&mut raw.clone())
            .await
            .map_err(|err| format!("cannot prime the raw keys: {err}"))?;
    }
    for concurrency in [1, 64] {
        let mut table = Comparison::new(
            format!("Cluster hit (3 masters), ~0.9 KiB value, {concurrency} concurrent caller(s)"),
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
        }
        table.print();
        cluster.reset_stats();
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
        print_calls_per_op("cache-layer cluster hit", &cluster.command_calls(), m.count);
    }
    let stats = cache.stats();
    println!(
        "cache-layer stats: hits {} misses {} errors {}",
        stats.hits, stats.misses, stats.errors
    );
    if stats.misses != 0 || stats.errors != 0 || stats.loads != 0 {
        return Err(format!("cluster: every call must be a hit: {stats:?}"));
    }
    Ok(())
}

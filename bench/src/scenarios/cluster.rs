//! Cluster hit: `get_or_fetch` on a local 3-master Redis Cluster vs a raw redis-rs cluster `GET`
//! + rmp-serde decode of the same value, on the same cluster.
//!
//! The cluster is started by the benchmark itself (three `redis-server --cluster-enabled yes` on
//! free ports, joined with `redis-cli --cluster create`, stopped at the end of the section).

use std::time::Duration;

use cache_layer::{Cache, Policy};

use super::{measure_hits, RawVsOurs};
use crate::{
    redis_server::PrivateCluster,
    report::{print_calls_per_op, Comparison},
    Settings,
};

const RAW: &str = "raw redis-rs cluster GET + rmp-serde decode";
const RAW_TIMED: &str = "raw cluster GET + decode, 250 ms timeout";
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
    // The cache's cluster connection has a response timeout (its op timeout, 250 ms by default).
    let timed = redis::cluster::ClusterClientBuilder::new(urls.clone())
        .response_timeout(Duration::from_millis(250))
        .build()
        .map_err(|err| format!("bad cluster urls: {err}"))?
        .get_async_connection()
        .await
        .map_err(|err| format!("cluster unreachable: {err}"))?;
    let policy = Policy::ttl(Duration::from_secs(3600));
    let rows = RawVsOurs::new((RAW, OURS), &raw, &cache, &policy).with_timed_raw(RAW_TIMED, &timed);
    rows.prime().await?;
    for concurrency in [1, 64] {
        let mut table = Comparison::new(
            format!("Cluster hit (3 masters), ~0.9 KiB value, {concurrency} concurrent caller(s)"),
            "raw",
        );
        for _ in 0..settings.rounds {
            rows.round(&mut table, concurrency, settings.duration).await;
        }
        table.print();
        cluster.reset_stats();
        let m = measure_hits(&cache, &policy, concurrency, settings.duration).await;
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

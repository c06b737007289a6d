//! The backend-independent suites (`tests/suites`) against a single Redis node, a private Valkey
//! server, and a real local Redis Cluster (3 masters + 3 replicas started by the harness), plus
//! cluster-only checks: entries spread over all masters, and a master failover under load.

mod suites;
mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cache_layer::{BreakerConfig, Cache, Policy};
use support::{shared_redis_url, unique_prefix, Flavor, RedisCluster, RedisServer};

fn single_node_instances(url: &str, test: &str, count: usize) -> Vec<Cache> {
    let namespace = unique_prefix(test);
    (0..count)
        .map(|_| {
            Cache::builder()
                .redis(url)
                .namespace(namespace.as_str())
                .build()
                .expect("valid configuration")
        })
        .collect()
}

fn cluster_instances(cluster: &RedisCluster, test: &str, count: usize) -> Vec<Cache> {
    let namespace = unique_prefix(test);
    (0..count)
        .map(|_| {
            Cache::builder()
                .redis_cluster(cluster.urls())
                .namespace(namespace.as_str())
                .build()
                .expect("valid configuration")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_suite() {
    let url = shared_redis_url();
    let instances = |test: &str, count| single_node_instances(&url, test, count);
    suites::read_through(&instances).await;
    suites::lock_across_instances(&instances).await;
    suites::tags(&instances).await;
    suites::counters(&instances).await;
}

/// The same suites on Valkey 9 (a private `valkey-server`; see `support::valkey`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_suite() {
    if !support::valkey::valkey_available("valkey_suite") {
        return;
    }
    let server = RedisServer::start_valkey(&[]);
    let version = server.info_field("server", "valkey_version");
    assert!(
        version.as_deref().is_some_and(|v| v.starts_with("9.")),
        "expected Valkey 9, got {version:?}"
    );
    let url = server.url();
    let instances = |test: &str, count| single_node_instances(&url, test, count);
    suites::read_through(&instances).await;
    suites::lock_across_instances(&instances).await;
    suites::tags(&instances).await;
    suites::counters(&instances).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_suite() {
    let cluster = RedisCluster::start(3, 1);
    let instances = |test: &str, count| cluster_instances(&cluster, test, count);
    suites::read_through(&instances).await;
    suites::lock_across_instances(&instances).await;
    suites::tags(&instances).await;
    suites::counters(&instances).await;

    // Entries of one namespace spread over every master (hash tag per entry, not per namespace).
    let cache = cluster_instances(&cluster, "spread", 1).remove(0);
    let policy = Policy::ttl(Duration::from_secs(60));
    for i in 0..60u32 {
        cache
            .set(&format!("spread:{i}"), &i, &policy)
            .await
            .expect("set");
    }
    for port in cluster.masters() {
        let keys: u64 = cluster.node(port).query(&redis::cmd("DBSIZE"));
        assert!(keys > 0, "master {port} holds no entries");
    }
}

/// The suites on a Valkey 9 cluster (3 masters + 3 replicas).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_cluster_suite() {
    if !support::valkey::valkey_available("valkey_cluster_suite") {
        return;
    }
    let cluster = RedisCluster::start_of(Flavor::Valkey, 3, 1, &[]);
    let instances = |test: &str, count| cluster_instances(&cluster, test, count);
    suites::read_through(&instances).await;
    suites::lock_across_instances(&instances).await;
    suites::tags(&instances).await;
    suites::counters(&instances).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_failover_under_load() {
    let cluster = RedisCluster::start(3, 1);
    let cache = Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace(unique_prefix("failover"))
        .breaker(BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_millis(300),
            ..Default::default()
        })
        .build()
        .expect("valid configuration");
    let policy = Policy::ttl(Duration::from_secs(60));
    for i in 0..50u32 {
        cache
            .set(&format!("k:{i}"), &i, &policy)
            .await
            .expect("set");
    }
    cluster.wait_for_replication();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..20)
        .map(|task| {
            let (cache, policy, stop, answered) = (
                cache.clone(),
                policy.clone(),
                stop.clone(),
                answered.clone(),
            );
            tokio::spawn(async move {
                let mut worst = Duration::ZERO;
                let mut i = task;
                while !stop.load(Ordering::Relaxed) {
                    let key = i % 50;
                    let started = Instant::now();
                    let v: u32 = cache
                        .get_or_fetch(&format!("k:{key}"), &policy, move || async move { key })
                        .await;
                    assert_eq!(v, key, "every call answered with the right value");
                    worst = worst.max(started.elapsed());
                    answered.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                worst
            })
        })
        .collect();
    // Let the load run, kill the master serving slot 0, and keep going through the failover.
    let until = answered.load(Ordering::Relaxed) + 500;
    while answered.load(Ordering::Relaxed) < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed = cluster.kill_master(0);
    let recovered_by = Instant::now() + support::CLUSTER_READY_TIMEOUT;
    cluster.wait_for_state_ok();
    // After failover the cache works again: hits without errors on keys of every slot.
    loop {
        let before = cache.stats();
        let mut all_hits = true;
        for i in 0..50u32 {
            let _: u32 = cache
                .get_or_fetch(&format!("k:{i}"), &policy, move || async move { i })
                .await;
        }
        let after = cache.stats();
        all_hits &= after.misses == before.misses && after.errors == before.errors;
        if all_hits {
            break;
        }
        assert!(
            Instant::now() < recovered_by,
            "cache never recovered after killing {killed}: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let worst = reader.await.expect("no reader failed");
        assert!(
            worst < Duration::from_secs(3),
            "a call took {worst:?} during failover"
        );
    }
}

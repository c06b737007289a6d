//! The backend-independent suites (`tests/suites`) against a single Redis node, a private Valkey
//! server, and a real local Redis Cluster (3 masters + 3 replicas started by the harness), plus
//! cluster-only checks: entries spread over all masters, and a master failover under load.

mod suites;
mod support;

use std::time::{Duration, Instant};

use cache_layer::{BreakerConfig, Cache, Policy};
use support::load::{hits_resume, ReadLoad};
use support::{shared_redis_url, unique_prefix, Flavor, RedisCluster, RedisServer};

fn single_node_instances(url: &str, test: &str, count: usize) -> Vec<Cache> {
    suites::build(&Cache::builder().redis(url), &unique_prefix(test), count)
}

fn cluster_instances(cluster: &RedisCluster, test: &str, count: usize) -> Vec<Cache> {
    let builder = Cache::builder().redis_cluster(cluster.urls());
    suites::build(&builder, &unique_prefix(test), count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_suite() {
    let url = shared_redis_url();
    let instances = |test: &str, count| single_node_instances(&url, test, count);
    suites::all(&instances).await;
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
    suites::all(&instances).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_suite() {
    let cluster = RedisCluster::start(3, 1);
    let instances = |test: &str, count| cluster_instances(&cluster, test, count);
    suites::all(&instances).await;

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
    suites::all(&instances).await;
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

    let load = ReadLoad::start(&cache, &policy, 20, 50);
    // Let the load run, kill the master serving slot 0, and keep going through the failover.
    load.answer(500).await;
    let killed = cluster.kill_master(0);
    let recovered_by = Instant::now() + support::CLUSTER_READY_TIMEOUT;
    cluster.wait_for_state_ok();
    // After failover the cache works again: hits without errors on keys of every slot.
    let recovered = hits_resume(&cache, &policy, 50, recovered_by).await;
    assert!(
        recovered.is_ok(),
        "cache never recovered after killing {killed}: {recovered:?}"
    );
    for worst in load.stop().await {
        assert!(
            worst < Duration::from_secs(3),
            "a call took {worst:?} during failover"
        );
    }
}

/// A cluster that stops answering (every node paused with SIGSTOP, so no failover) costs a caller
/// one op timeout: a read fails with `Error::Timeout`, a read-through call is served by the
/// source, and once the nodes answer again the same connection serves hits. A cache that must
/// connect first (never used yet) is bounded too (its first call may make more than one Redis
/// operation, each within the op timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_operations_time_out_while_the_cluster_hangs() {
    let cluster = RedisCluster::start(3, 0);
    let op_timeout = Duration::from_millis(500);
    let build = || {
        Cache::builder()
            .redis_cluster(cluster.urls())
            .namespace(unique_prefix("cluster-hang"))
            .op_timeout(op_timeout)
            .breaker(BreakerConfig {
                cooldown: Duration::from_millis(100),
                ..Default::default()
            })
            .build()
            .expect("valid configuration")
    };
    let cache = build();
    // Building does not connect: this one connects on its first call, while the cluster hangs.
    let unconnected = build();
    let policy = Policy::ttl(Duration::from_secs(60));
    cache.set("k", &1u32, &policy).await.expect("set");
    assert_eq!(cache.get::<u32>("k").await.expect("get"), Some(1));

    tokio::task::block_in_place(|| cluster.nodes().iter().for_each(|n| n.pause()));
    let started = Instant::now();
    let err = cache.get::<u32>("k").await.expect_err("hung cluster");
    let waited = started.elapsed();
    assert!(
        matches!(err, cache_layer::Error::Timeout(t) if t == op_timeout),
        "{err:?}"
    );
    assert!(waited < Duration::from_secs(3), "bounded: took {waited:?}");
    let served: u32 = cache.get_or_fetch("other", &policy, || async { 7 }).await;
    assert_eq!(served, 7, "the source answers while the cluster hangs");
    // Its error is whichever bound fires first: ours, or redis-rs' connect timeout on the initial
    // connections (`connect_timeout`, shorter here).
    let started = Instant::now();
    unconnected
        .get::<u32>("k")
        .await
        .expect_err("hung cluster, first call");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "connecting is bounded too: took {waited:?}"
    );
    tokio::task::block_in_place(|| cluster.nodes().iter().for_each(|n| n.resume()));

    let back_by = Instant::now() + Duration::from_secs(10);
    loop {
        match cache.get::<u32>("k").await {
            Ok(Some(1)) => break,
            other => assert!(Instant::now() < back_by, "never answered again: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

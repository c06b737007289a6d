//! Invalidation on a real local Redis Cluster (3 masters): tag scripts on one key each, tag times
//! read one key at a time (no cross-slot command), versioned namespace, and the bus between two
//! independent instances (cluster pub/sub reaches every node).

mod support;

use std::time::{Duration, Instant};

use cache_layer::{Cache, Policy};
use support::RedisCluster;

fn instance(cluster: &RedisCluster, namespace: &str) -> Cache {
    Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace(namespace)
        .local(1_000)
        .build()
        .expect("valid configuration")
}

/// Polls until `cond` holds for `key` on `cache` (bounded).
async fn until_get(cache: &Cache, key: &str, cond: impl Fn(Option<u32>) -> bool) {
    let started = Instant::now();
    loop {
        let value = cache.get::<u32>(key).await.ok().flatten();
        if cond(value) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{key}: still {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_namespaces_invalidate_across_instances_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let (a, b) = (instance(&cluster, "shop"), instance(&cluster, "shop"));
    // Entries with several tags each, spread over the masters' slots.
    let policy = |i: u32| {
        Policy::ttl(Duration::from_secs(60)).tags([
            format!("product:{i}"),
            format!("brand:{}", i % 3),
            "catalog".to_string(),
        ])
    };
    for i in 0..30u32 {
        let v: u32 = b
            .get_or_fetch(&format!("p:{i}"), &policy(i), move || async move { i })
            .await;
        assert_eq!(v, i);
        // The first hit reads the entry's three tag times (three single-key GETs).
        assert_eq!(b.get::<u32>(&format!("p:{i}")).await.unwrap(), Some(i));
    }
    let _ = a.get::<u32>("warmup").await.unwrap();
    assert!(a.bus_connected() && b.bus_connected());

    a.invalidate_tags(["product:4", "brand:1"]).await.unwrap();
    for i in 0..30u32 {
        let key = format!("p:{i}");
        if i == 4 || i % 3 == 1 {
            until_get(&b, &key, |v| v.is_none()).await;
            assert_eq!(a.get::<u32>(&key).await.unwrap(), None, "{key} on A");
        } else {
            assert_eq!(b.get::<u32>(&key).await.unwrap(), Some(i), "{key} on B");
        }
    }

    let key_before = b.redis_key("p:0");
    a.invalidate_namespace().await.unwrap();
    until_get(&b, "p:0", |v| v.is_none()).await;
    assert_ne!(b.redis_key("p:0"), key_before, "b follows the new epoch");
    assert_eq!(b.redis_key("p:0"), a.redis_key("p:0"), "one epoch for both");
    let v: u32 = b.get_or_fetch("p:0", &policy(0), || async { 100 }).await;
    assert_eq!(v, 100);

    // Each tag key is its own slot: the bookkeeping spreads over the masters too.
    a.invalidate_tags((0..20).map(|i| format!("spread:{i}")))
        .await
        .unwrap();
    let mut masters_with_tags = 0;
    for port in cluster.masters() {
        let (_, keys): (u64, Vec<String>) = cluster.node(port).query(
            redis::cmd("SCAN")
                .arg(0)
                .arg("MATCH")
                .arg("shop:__tag:*")
                .arg("COUNT")
                .arg(1000),
        );
        masters_with_tags += usize::from(!keys.is_empty());
    }
    assert_eq!(masters_with_tags, 3, "tag keys on every master");
}

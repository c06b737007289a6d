//! Backend-independent end-to-end scenarios. `tests/backends.rs` runs every one of them against a
//! single Redis node and against a real local Redis Cluster, so both backends are held to the same
//! behaviour without copy-pasted tests.
#![allow(dead_code)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use cache_layer::{Cache, CacheBuilder, Policy, Stampede};

/// Builds independent cache handles (each with its own pool, flights and L1), as separate
/// service instances would have, all on the same backend and namespace.
pub type Instances<'a> = dyn Fn(&str, usize) -> Vec<Cache> + 'a;

/// `count` caches built from `builder`, all in `namespace`: what an [`Instances`] returns.
pub fn build(builder: &CacheBuilder, namespace: &str, count: usize) -> Vec<Cache> {
    (0..count)
        .map(|_| {
            builder
                .clone()
                .namespace(namespace)
                .build()
                .expect("valid configuration")
        })
        .collect()
}

/// `builder` with 1 s op, checkout and connect timeouts. A cold TLS connection (to a Sentinel
/// master: a sentinel, the master's ROLE check, the master; to a Cluster: every master) loads the
/// system trust store for each of its TLS connections (redis-rs does) before the first command;
/// in a debug build on a loaded 2-core machine that can exceed the default 250 ms budget.
pub fn cold_tls_timeouts(builder: CacheBuilder) -> CacheBuilder {
    builder
        .op_timeout(Duration::from_secs(1))
        .checkout_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1))
}

/// Every suite: [`read_through`], [`lock_across_instances`], [`tags`], [`counters`].
pub async fn all(instances: &Instances<'_>) {
    read_through(instances).await;
    lock_across_instances(instances).await;
    tags(instances).await;
    counters(instances).await;
}

/// Miss, fill, hit, delete, direct get/set, on many keys (so a cluster spreads them over slots).
pub async fn read_through(instances: &Instances<'_>) {
    let cache = instances("read_through", 1).remove(0);
    let policy = Policy::ttl(Duration::from_secs(60));
    let loads = Arc::new(AtomicUsize::new(0));
    for id in 0..100u32 {
        let loads = loads.clone();
        let v: u32 = cache
            .get_or_fetch(&format!("item:{id}"), &policy, move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                id * 2
            })
            .await;
        assert_eq!(v, id * 2);
    }
    for id in 0..100u32 {
        let v: u32 = cache
            .get_or_fetch(&format!("item:{id}"), &policy, || async { 0 })
            .await;
        assert_eq!(v, id * 2, "hit for item:{id}");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 100);
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.errors),
        (100, 100, 0),
        "{stats:?}"
    );
    assert!(cache.delete("item:7").await.expect("delete"));
    assert_eq!(cache.get::<u32>("item:7").await.expect("get"), None);
    cache.set("item:7", &70u32, &policy).await.expect("set");
    assert_eq!(cache.get::<u32>("item:7").await.expect("get"), Some(70));
}

/// Two instances, `Stampede::Lock`, 100 concurrent callers each on one cold key: one load in all.
pub async fn lock_across_instances(instances: &Instances<'_>) {
    let caches = instances("lock", 2);
    let policy = Policy::ttl(Duration::from_secs(60)).stampede(Stampede::Lock);
    let loads = Arc::new(AtomicUsize::new(0));
    let calls = caches.iter().flat_map(|cache| {
        (0..100).map(|_| {
            let (cache, policy, loads) = (cache.clone(), policy.clone(), loads.clone());
            tokio::spawn(async move {
                cache
                    .get_or_fetch("cold", &policy, move || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        "value".to_string()
                    })
                    .await
            })
        })
    });
    let results = futures_util::future::join_all(calls.collect::<Vec<_>>()).await;
    for result in results {
        assert_eq!(result.expect("caller task"), "value");
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "one load across both instances"
    );
}

/// Tag invalidation drops every tagged entry and nothing else.
pub async fn tags(instances: &Instances<'_>) {
    let cache = instances("tags", 1).remove(0);
    let tagged = Policy::ttl(Duration::from_secs(60)).tags(["product:1", "catalog"]);
    let other = Policy::ttl(Duration::from_secs(60)).tags(["product:2"]);
    for i in 0..20u32 {
        cache
            .set(&format!("p1:{i}"), &i, &tagged)
            .await
            .expect("set");
        cache
            .set(&format!("p2:{i}"), &i, &other)
            .await
            .expect("set");
    }
    cache.invalidate_tag("product:1").await.expect("invalidate");
    for i in 0..20u32 {
        assert_eq!(
            cache.get::<u32>(&format!("p1:{i}")).await.expect("get"),
            None
        );
        assert_eq!(
            cache.get::<u32>(&format!("p2:{i}")).await.expect("get"),
            Some(i)
        );
    }
}

/// Write-behind counters from two instances: every increment reaches the sink exactly once.
///
/// Where the backend has replicas (Sentinel, a Cluster with replicas), a loaded machine may see a
/// replica acknowledge later than the third of the op timeout the counters wait: `incr` then says
/// so with `Error::NotReplicated`, having counted the increment (repeating it would count it
/// twice), and keeps pushing it until a replica acknowledges. The suite accepts that answer,
/// pushes until acknowledged and checks the totals are still exact.
pub async fn counters(instances: &Instances<'_>) {
    let caches = instances("counters", 2);
    let unacknowledged = AtomicUsize::new(0);
    let unacknowledged = &unacknowledged;
    let calls = caches.iter().flat_map(|cache| {
        (0..50u32).map(move |task| {
            let views = cache.counters("views");
            async move {
                for i in 0..20u32 {
                    match views.incr(&format!("product:{}", (task + i) % 7), 1).await {
                        Ok(()) => {}
                        Err(cache_layer::Error::NotReplicated { .. }) => {
                            unacknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => panic!("incr: {err}"),
                    }
                }
            }
        })
    });
    futures_util::future::join_all(calls).await;
    for cache in &caches {
        let views = cache.counters("views");
        until_replicated("sync", || views.sync()).await;
    }
    let totals = std::sync::Mutex::new(std::collections::BTreeMap::<String, i64>::new());
    let views = caches[0].counters("views");
    until_replicated("flush", || {
        views.flush_now(|batch: Vec<(String, i64)>| {
            for (id, delta) in batch {
                *totals.lock().expect("totals").entry(id).or_default() += delta;
            }
            async { Ok::<(), std::io::Error>(()) }
        })
    })
    .await;
    if unacknowledged.load(Ordering::Relaxed) > 0 {
        eprintln!(
            "counters suite: {} increments waited longer than the replica timeout",
            unacknowledged.load(Ordering::Relaxed)
        );
    }
    let totals = totals.into_inner().expect("totals");
    assert_eq!(totals.values().sum::<i64>(), 2 * 50 * 20, "{totals:?}");
    assert_eq!(totals.len(), 7);
}

/// Runs `op` until it is not refused for want of a replica acknowledgement (bounded: 50 tries).
async fn until_replicated<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, cache_layer::Error>>,
{
    for _ in 0..50 {
        match op().await {
            Ok(value) => return value,
            Err(cache_layer::Error::NotReplicated { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("{what}: {err}"),
        }
    }
    panic!("{what}: no replica acknowledged within 50 tries");
}

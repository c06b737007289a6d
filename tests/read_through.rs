//! End-to-end read-through behaviour against real Redis (shared server, unique namespaces; private
//! servers where commands are counted or Redis is killed) and the embedded in-memory store.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cache_layer::{BreakerConfig, Cache, Policy, Stampede};
use serde::{Deserialize, Serialize};
use support::{redis_cache, redis_server::MISS_AND_FILL, shared_redis_url, RedisServer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: u32,
}

/// Spawns `call` on clones of `cache` and `policy`, then yields until `cache` has counted
/// `misses` misses (the spawned call's among them): the call is in flight.
async fn spawn_missing<T, Fut>(
    cache: &Cache,
    policy: &Policy,
    misses: u64,
    call: impl FnOnce(Cache, Policy) -> Fut,
) -> tokio::task::JoinHandle<T>
where
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handle = tokio::spawn(call(cache.clone(), policy.clone()));
    while cache.stats().misses < misses {
        tokio::task::yield_now().await;
    }
    handle
}

fn product(id: u64) -> Product {
    Product {
        id,
        name: format!("product {id}"),
        price_cents: 1999,
    }
}

/// The same scenarios run on both stores.
fn caches(test: &str) -> Vec<(&'static str, Cache)> {
    vec![("redis", redis_cache(test)), ("memory", Cache::in_memory())]
}

fn counting_loader(
    counter: &Arc<AtomicUsize>,
    value: Product,
) -> impl FnOnce() -> std::future::Ready<Product> + Send + 'static {
    let counter = counter.clone();
    move || {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(value)
    }
}

#[tokio::test]
async fn miss_fills_then_hits_without_loading() {
    for (store, cache) in caches("miss_fill_hit") {
        let policy = Policy::ttl(Duration::from_secs(60));
        let loads = Arc::new(AtomicUsize::new(0));
        let first = cache
            .get_or_fetch("p:1", &policy, counting_loader(&loads, product(1)))
            .await;
        let second = cache
            .get_or_fetch("p:1", &policy, counting_loader(&loads, product(999)))
            .await;
        assert_eq!(first, product(1), "{store}");
        assert_eq!(
            second,
            product(1),
            "{store}: the hit returns the stored value"
        );
        assert_eq!(loads.load(Ordering::SeqCst), 1, "{store}");
        let stats = cache.stats();
        assert_eq!(
            (stats.hits, stats.misses, stats.loads),
            (1, 1, 1),
            "{store}"
        );
        assert_eq!(
            cache.get::<Product>("p:1").await.unwrap(),
            Some(product(1)),
            "{store}"
        );
    }
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    for (store, cache) in caches("ttl_expiry") {
        let policy = Policy::ttl(Duration::from_millis(150));
        let loads = Arc::new(AtomicUsize::new(0));
        cache
            .get_or_fetch("p:2", &policy, counting_loader(&loads, product(2)))
            .await;
        cache
            .get_or_fetch("p:2", &policy, counting_loader(&loads, product(2)))
            .await;
        assert_eq!(loads.load(Ordering::SeqCst), 1, "{store}");
        // Waiting out the TTL is the behaviour under test.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(cache.get::<Product>("p:2").await.unwrap(), None, "{store}");
        cache
            .get_or_fetch("p:2", &policy, counting_loader(&loads, product(2)))
            .await;
        assert_eq!(
            loads.load(Ordering::SeqCst),
            2,
            "{store}: expired entry reloaded"
        );
    }
}

#[tokio::test]
async fn redis_ttl_is_the_hard_expiry() {
    let cache = redis_cache("redis_ttl");
    let policy = Policy::ttl(Duration::from_secs(30)).stale(Duration::from_secs(30));
    cache.set("k", &1u8, &policy).await.unwrap();
    let client = redis::Client::open(shared_redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(cache.redis_key("k"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (55_000..=60_000).contains(&pttl),
        "PTTL {pttl} should be ttl + stale"
    );
}

#[tokio::test]
async fn errors_are_returned_and_never_cached() {
    for (store, cache) in caches("errors_not_cached") {
        let policy = Policy::ttl(Duration::from_secs(60));
        let err: Result<Product, String> = cache
            .try_get_or_fetch("p:3", &policy, || async { Err("db down".to_string()) })
            .await;
        assert_eq!(err, Err("db down".to_string()), "{store}");
        assert_eq!(cache.get::<Product>("p:3").await.unwrap(), None, "{store}");
        let ok: Result<Product, String> = cache
            .try_get_or_fetch("p:3", &policy, || async { Ok(product(3)) })
            .await;
        assert_eq!(ok, Ok(product(3)), "{store}");
        let cached: Result<Product, String> = cache
            .try_get_or_fetch("p:3", &policy, || async { Err("not called".into()) })
            .await;
        assert_eq!(cached, Ok(product(3)), "{store}");
        assert_eq!(cache.stats().load_errors, 1, "{store}");
    }
}

// Current-thread runtime: a caller counts its miss and joins the in-flight load with no await in
// between, so on one thread "1000 misses counted" means "1000 callers joined". On a multi-thread
// runtime the OS can preempt a worker between the two; the load may then finish before that
// caller joins, and it (correctly) loads again: CI saw 2 loads once that way.
#[tokio::test]
async fn a_thousand_concurrent_callers_share_one_load() {
    for (store, cache) in caches("single_flight") {
        let policy = Policy::ttl(Duration::from_secs(60));
        let loads = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let mut callers = Vec::new();
        for _ in 0..1000 {
            let (cache, policy, loads) = (cache.clone(), policy.clone(), loads.clone());
            let mut release = release_rx.clone();
            callers.push(tokio::spawn(async move {
                cache
                    .get_or_fetch("hot", &policy, move || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        // Hold the load open until the test releases it, so every caller is
                        // certainly waiting on this one load.
                        let _ = release.wait_for(|go| *go).await;
                        product(7)
                    })
                    .await
            }));
        }
        // Let every caller reach the cache before the load completes.
        while cache.stats().misses < 1000 {
            tokio::task::yield_now().await;
        }
        release_tx.send_replace(true);
        for caller in callers {
            assert_eq!(caller.await.unwrap(), product(7), "{store}");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1, "{store}: exactly one load");
        assert_eq!(cache.stats().coalesced, 999, "{store}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_does_not_strand_the_others() {
    for (store, cache) in caches("cancelled_leader") {
        let policy = Policy::ttl(Duration::from_secs(60));
        let loads = Arc::new(AtomicUsize::new(0));
        let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(1);
        // Borrowing path: the leader's loader runs in the leader's task, so aborting the task
        // cancels the load and a follower must take over.
        let leader = {
            let (cache, policy, loads) = (cache.clone(), policy.clone(), loads.clone());
            tokio::spawn(async move {
                cache
                    .get_or_fetch_scoped("k", &policy, || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        let _ = started_tx.send(()).await;
                        std::future::pending::<Product>().await
                    })
                    .await
            })
        };
        started_rx.recv().await.expect("leader started loading");
        let follower = {
            let loads = loads.clone();
            spawn_missing(&cache, &policy, 2, |cache, policy| async move {
                cache
                    .get_or_fetch_scoped("k", &policy, || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        product(8)
                    })
                    .await
            })
            .await
        };
        leader.abort();
        assert_eq!(follower.await.unwrap(), product(8), "{store}");
        assert_eq!(loads.load(Ordering::SeqCst), 2, "{store}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_caller_does_not_cancel_a_static_load() {
    let cache = redis_cache("cancelled_static");
    let policy = Policy::ttl(Duration::from_secs(60));
    let loads = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let caller = {
        let (cache, policy, loads) = (cache.clone(), policy.clone(), loads.clone());
        tokio::spawn(async move {
            cache
                .get_or_fetch("k", &policy, move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    let _ = release_rx.await;
                    product(9)
                })
                .await
        })
    };
    while loads.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    // The load runs in its own task: releasing it after the caller is gone still stores the value.
    release_tx.send(()).expect("load still waiting");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.get::<Product>("k").await.unwrap() != Some(product(9)) {
        assert!(
            Instant::now() < deadline,
            "the orphaned load never stored its value"
        );
        tokio::task::yield_now().await;
    }
    let v = cache
        .get_or_fetch("k", &policy, counting_loader(&loads, product(0)))
        .await;
    assert_eq!(v, product(9));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loader_reaches_only_its_caller() {
    for (store, cache) in caches("panicking_loader") {
        let policy = Policy::ttl(Duration::from_secs(60));
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let leader = spawn_missing(&cache, &policy, 1, |cache, policy| async move {
            cache
                .get_or_fetch("k", &policy, move || async move {
                    let _ = go_rx.await;
                    panic!("loader bug");
                    #[allow(unreachable_code)]
                    product(0)
                })
                .await
        })
        .await;
        let follower = spawn_missing(&cache, &policy, 2, |cache, policy| async move {
            cache
                .get_or_fetch("k", &policy, || async { product(10) })
                .await
        })
        .await;
        go_tx.send(()).expect("leader waiting");
        let leader_result = leader.await;
        assert!(
            leader_result.unwrap_err().is_panic(),
            "{store}: the panic reaches its caller"
        );
        assert_eq!(
            follower.await.unwrap(),
            product(10),
            "{store}: the follower took over"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_wake_waiters_who_then_load_themselves() {
    let cache = redis_cache("error_wakes");
    let policy = Policy::ttl(Duration::from_secs(60));
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let leader = spawn_missing(&cache, &policy, 1, |cache, policy| async move {
        cache
            .try_get_or_fetch("k", &policy, move || async move {
                let _ = go_rx.await;
                Err::<Product, _>("boom")
            })
            .await
    })
    .await;
    let follower = spawn_missing(&cache, &policy, 2, |cache, policy| async move {
        cache
            .try_get_or_fetch("k", &policy, || async { Ok::<_, &str>(product(11)) })
            .await
    })
    .await;
    go_tx.send(()).expect("leader waiting");
    assert_eq!(leader.await.unwrap(), Err("boom"));
    assert_eq!(follower.await.unwrap(), Ok(product(11)));
}

#[tokio::test]
async fn a_loader_may_call_the_cache_without_deadlocking() {
    for (store, cache) in caches("nested") {
        let policy = Policy::ttl(Duration::from_secs(60));
        let inner_cache = cache.clone();
        let inner_policy = policy.clone();
        let outer: Vec<u32> = cache
            .get_or_fetch("outer", &policy, move || async move {
                let a: u32 = inner_cache
                    .get_or_fetch("inner:a", &inner_policy, || async { 1 })
                    .await;
                let b: u32 = inner_cache
                    .get_or_fetch("inner:b", &inner_policy, || async { 2 })
                    .await;
                vec![a, b]
            })
            .await;
        assert_eq!(outer, vec![1, 2], "{store}");
    }
}

#[tokio::test]
async fn stampede_none_loads_for_every_concurrent_caller() {
    let cache = Cache::in_memory();
    let policy = Policy::ttl(Duration::from_secs(60)).stampede(Stampede::None);
    let loads = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let calls = (0..3).map(|_| {
        let (loads, barrier) = (loads.clone(), barrier.clone());
        cache.get_or_fetch_scoped("k", &policy, move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            barrier.wait().await;
            1u8
        })
    });
    futures_util::future::join_all(calls).await;
    assert_eq!(loads.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn keys_are_binary_safe_and_long_keys_bounded() {
    for (store, cache) in caches("key_safety") {
        let policy = Policy::ttl(Duration::from_secs(60));
        let odd = "spaces and\nnewlines\r\n\0 nul {braces} ünïcödé *?[glob]";
        let long_a = "a".repeat(5_000);
        let long_b = format!("{}b", "a".repeat(4_999));
        cache.set(odd, &1u32, &policy).await.unwrap();
        cache.set(&long_a, &2u32, &policy).await.unwrap();
        cache.set(&long_b, &3u32, &policy).await.unwrap();
        assert_eq!(cache.get::<u32>(odd).await.unwrap(), Some(1), "{store}");
        assert_eq!(cache.get::<u32>(&long_a).await.unwrap(), Some(2), "{store}");
        assert_eq!(cache.get::<u32>(&long_b).await.unwrap(), Some(3), "{store}");
        assert!(cache.redis_key(&long_a).len() < 300);
        assert!(cache.redis_key("x").starts_with(cache.namespace()));
    }
}

#[tokio::test]
async fn namespaces_isolate_caches_on_one_redis() {
    let (a, b) = (redis_cache("ns_a"), redis_cache("ns_b"));
    let policy = Policy::ttl(Duration::from_secs(60));
    a.set("same-key", &"from a", &policy).await.unwrap();
    assert_eq!(b.get::<String>("same-key").await.unwrap(), None);
    assert_eq!(
        a.get::<String>("same-key").await.unwrap().as_deref(),
        Some("from a")
    );
}

/// Writes raw bytes under a cache key, as a foreign client or a bug would.
async fn poke(cache: &Cache, key: &str, bytes: &[u8]) {
    let client = redis::Client::open(shared_redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(cache.redis_key(key))
        .arg(bytes)
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn corrupt_truncated_foreign_and_mistyped_entries_are_misses() {
    let cache = redis_cache("corrupt");
    let policy = Policy::ttl(Duration::from_secs(60));
    // A genuine entry, to derive corrupt variants from.
    cache.set("genuine", &product(1), &policy).await.unwrap();
    let client = redis::Client::open(shared_redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let genuine: Vec<u8> = redis::cmd("GET")
        .arg(cache.redis_key("genuine"))
        .query_async(&mut conn)
        .await
        .unwrap();

    let mut flipped = genuine.clone();
    flipped[42] = 0xc1; // first payload byte (no tags): 0xc1 is never valid MessagePack
    let mut future_version = genuine.clone();
    future_version[2] = 200;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("foreign-json", br#"{"id":1,"name":"x"}"#.to_vec()),
        ("foreign-text", b"hello".to_vec()),
        ("empty", Vec::new()),
        ("truncated-header", genuine[..10].to_vec()),
        ("truncated-payload", genuine[..genuine.len() - 3].to_vec()),
        ("corrupt-payload", flipped),
        ("future-version", future_version),
    ];
    for (name, bytes) in &cases {
        poke(&cache, name, bytes).await;
        assert_eq!(
            cache.get::<Product>(name).await.unwrap(),
            None,
            "{name}: get is a miss"
        );
        let loaded = cache
            .get_or_fetch(name, &policy, || async { product(2) })
            .await;
        assert_eq!(
            loaded,
            product(2),
            "{name}: read-through loads and replaces it"
        );
        assert_eq!(
            cache.get::<Product>(name).await.unwrap(),
            Some(product(2)),
            "{name}"
        );
    }
    // Same key, different type: a miss for the other type, never a panic or an error.
    assert_eq!(cache.get::<Vec<String>>("genuine").await.unwrap(), None);
    let as_number: u64 = cache
        .get_or_fetch("genuine", &policy, || async { 5u64 })
        .await;
    assert_eq!(as_number, 5);
    assert!(cache.stats().corrupt >= cases.len() as u64);
    // A non-string value under our key (another client used it as a hash).
    let _: () = redis::cmd("DEL")
        .arg(cache.redis_key("hash"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(cache.redis_key("hash"))
        .arg("f")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let loaded = cache
        .get_or_fetch("hash", &policy, || async { product(3) })
        .await;
    assert_eq!(loaded, product(3));
}

#[tokio::test]
async fn one_hit_is_one_get_and_one_fill_is_one_conditional_set_px() {
    let server = RedisServer::start();
    let cache = server.cache_builder("count").build().unwrap();
    let tagged = Policy::ttl(Duration::from_secs(60)).tags(["product:1", "catalog"]);
    let plain = Policy::ttl(Duration::from_secs(60));
    // Warm the pool so connection setup commands are not counted, and create the tags' records
    // (the first miss carrying a new tag creates its record, once).
    let _ = cache.get::<u8>("warmup").await.unwrap();
    let _: Product = cache
        .get_or_fetch("p:0", &tagged, || async { product(0) })
        .await;
    server.reset_stats();

    let v: Product = cache
        .get_or_fetch("p:1", &tagged, || async { product(1) })
        .await;
    assert_eq!(v, product(1));
    // Two round trips: the GET, and the conditional fill (the load saw no key, so the condition
    // is `SET NX PX`; no script).
    assert_eq!(
        server.command_calls("evalsha"),
        0,
        "no script for a fill over nothing"
    );
    server.assert_cache_commands(
        &MISS_AND_FILL,
        "a miss is one GET and one fill, nothing else",
    );

    server.reset_stats();
    for _ in 0..10 {
        let _: Product = cache
            .get_or_fetch("p:1", &tagged, || async { product(0) })
            .await;
    }
    let _: Product = cache
        .get_or_fetch("p:2", &plain, || async { product(2) })
        .await;
    server.reset_stats();
    for _ in 0..10 {
        let _: Product = cache
            .get_or_fetch("p:2", &plain, || async { product(0) })
            .await;
    }
    server.assert_cache_commands(&[("get", 10)], "a warm hit is one GET");
    // The SET carried PX: the key has a millisecond TTL.
    let pttl: i64 = server.query(redis::cmd("PTTL").arg(cache.redis_key("p:2")));
    assert!(pttl > 0 && pttl <= 60_000, "{pttl}");
}

#[tokio::test]
async fn local_tier_hits_make_no_redis_calls() {
    let server = RedisServer::start();
    let cache = server.cache_builder("l1").local(100).build().unwrap();
    let policy = Policy::ttl(Duration::from_secs(60));
    let _: Product = cache
        .get_or_fetch("p", &policy, || async { product(1) })
        .await;
    server.reset_stats();
    for _ in 0..100 {
        let v: Product = cache
            .get_or_fetch("p", &policy, || async { product(0) })
            .await;
        assert_eq!(v, product(1));
    }
    assert_eq!(server.cache_command_calls(), vec![]);
    assert_eq!(cache.stats().local_hits, 100);
}

#[tokio::test]
async fn build_succeeds_with_redis_down_and_calls_fall_back_to_the_loader() {
    let port = support::free_port();
    let cache = Cache::builder()
        .redis(format!("redis://127.0.0.1:{port}"))
        .namespace("down")
        .breaker(BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_secs(60),
            ..Default::default()
        })
        .build()
        .expect("build never connects");
    let policy = Policy::ttl(Duration::from_secs(60));
    let loads = Arc::new(AtomicUsize::new(0));
    for i in 0..20u64 {
        let started = Instant::now();
        let v = cache
            .get_or_fetch("p", &policy, counting_loader(&loads, product(i)))
            .await;
        assert_eq!(v, product(i), "every call answered by the source");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "bounded: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(loads.load(Ordering::SeqCst), 20);
    let stats = cache.stats();
    assert_eq!(stats.breaker, cache_layer::BreakerState::Open);
    assert!(stats.errors >= 3);
    assert!(
        cache.get::<Product>("p").await.unwrap().is_none(),
        "open breaker reads as a miss"
    );
    assert!(
        cache.set("p", &product(1), &policy).await.is_ok(),
        "open breaker: set is a no-op"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_at_call_time_falls_back_and_recovers() {
    let server = RedisServer::start();
    let cache = server
        .cache_builder("dies")
        .breaker(BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_millis(200),
            ..Default::default()
        })
        .build()
        .unwrap();
    let policy = Policy::ttl(Duration::from_secs(60));
    let loads = Arc::new(AtomicUsize::new(0));
    let v = cache
        .get_or_fetch("p", &policy, counting_loader(&loads, product(1)))
        .await;
    assert_eq!(v, product(1));

    server.kill();
    for _ in 0..10 {
        let started = Instant::now();
        let v = cache
            .get_or_fetch("p", &policy, counting_loader(&loads, product(2)))
            .await;
        assert_eq!(v, product(2), "Redis down: answered by the source");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "bounded: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(loads.load(Ordering::SeqCst), 11);

    server.restart();
    // After the cooldown one probe closes the breaker; then values are cached again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = cache
            .get_or_fetch("p", &policy, counting_loader(&loads, product(3)))
            .await;
        if cache.stats().breaker == cache_layer::BreakerState::Closed
            && cache.get::<Product>("p").await.ok().flatten() == Some(product(3))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cache never recovered: {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_local_tier_is_bounded_and_counts_evictions() {
    let cache = Cache::builder().local(10).build().unwrap();
    let policy = Policy::ttl(Duration::from_secs(60));
    for i in 0..2_000u32 {
        let _: u32 = cache
            .get_or_fetch(&format!("k:{i}"), &policy, move || async move { i })
            .await;
    }
    let stats = cache.stats();
    assert!(stats.l1_evictions > 0, "{stats:?}");
    assert!(stats.l1_evictions <= 2_000, "{stats:?}");
}

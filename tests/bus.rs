//! The invalidation bus between instances: two independent `Cache` handles (own pools, L1 tiers
//! and bus subscriptions) on one private redis-server. Propagation of tag invalidations, deletes,
//! writes and namespace bumps; reconnection after a Redis restart; the short L1 trust while the
//! bus is down; which operations publish.

mod support;

use std::time::{Duration, Instant};

use cache_layer::{Cache, CacheBuilder, Policy};
use support::RedisServer;

fn instance(server: &RedisServer, namespace: &str) -> Cache {
    server
        .cache_builder(namespace)
        .local(1_000)
        .build()
        .expect("valid configuration")
}

/// On `server` in `namespace`, with a 100 ms op timeout and a breaker that opens at the first
/// failure and lets a probe through after 50 ms.
fn quick_breaker(server: &RedisServer, namespace: &str) -> CacheBuilder {
    server
        .cache_builder(namespace)
        .op_timeout(Duration::from_millis(100))
        .breaker(cache_layer::BreakerConfig {
            failure_threshold: 1,
            cooldown: Duration::from_millis(50),
            ..Default::default()
        })
}

/// Probes `cache` (a `get` every 10 ms) until its breaker is closed again; bounded (5 s).
async fn until_breaker_closed(cache: &Cache) {
    let started = Instant::now();
    while cache.stats().breaker != cache_layer::BreakerState::Closed {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "breaker never closed"
        );
        let _ = cache.get::<u32>("probe").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn tagged(tags: &[&str]) -> Policy {
    Policy::ttl(Duration::from_secs(60)).tags(tags.iter().copied())
}

/// Polls `cache.get(key)` until `done` holds; returns how long that took. Bounded.
async fn until_get(
    cache: &Cache,
    key: &str,
    bound: Duration,
    done: impl Fn(&Option<u32>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let value = cache.get::<u32>(key).await.ok().flatten();
        if done(&value) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "{key}: condition not reached within {bound:?} (last value {value:?})"
        );
        tokio::task::yield_now().await;
    }
}

/// Polls a synchronous condition (bounded).
async fn until(bound: Duration, what: &str, cond: impl Fn() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Warms `cache`'s L1 with `key` (and the process's knowledge of the key's tags). A fill within
/// the clock error bound (a millisecond or two) after an invalidation of one of its tags is not
/// trusted, so this reloads until the value is served from the cache (bounded).
async fn warm(cache: &Cache, key: &str, policy: &Policy, value: u32) {
    let started = Instant::now();
    loop {
        let _: u32 = cache
            .get_or_fetch(key, policy, move || async move { value })
            .await;
        let served: u32 = cache
            .get_or_fetch(key, policy, move || async move { value + 1 })
            .await;
        if served == value {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{key} never cached"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_deletes_writes_and_namespace_bumps_reach_the_other_instance() {
    let server = RedisServer::start();
    let (a, b) = (instance(&server, "shop"), instance(&server, "shop"));
    let bound = Duration::from_secs(2);
    let product = tagged(&["product:1"]);

    // B serves from its L1 without touching Redis.
    warm(&b, "p", &product, 1).await;
    let _ = a.get::<u32>("warmup").await.unwrap();
    assert!(a.bus_connected() && b.bus_connected());
    server.reset_stats();
    for _ in 0..10 {
        assert_eq!(b.get::<u32>("p").await.unwrap(), Some(1));
    }
    assert_eq!(
        server.cache_command_calls(),
        vec![],
        "L1 hits make no Redis calls"
    );

    // Tag invalidation.
    a.invalidate_tag("product:1").await.unwrap();
    let tag_delay = until_get(&b, "p", bound, |v| v.is_none()).await;

    // Delete.
    warm(&b, "d", &tagged(&[]), 2).await;
    a.delete("d").await.unwrap();
    let delete_delay = until_get(&b, "d", bound, |v| v.is_none()).await;

    // Write-through: B's L1 copy goes, B reads A's value.
    warm(&b, "s", &tagged(&[]), 3).await;
    a.set("s", &30u32, &tagged(&[])).await.unwrap();
    let set_delay = until_get(&b, "s", bound, |v| *v == Some(30)).await;

    // Namespace bump.
    warm(&b, "n", &tagged(&[]), 4).await;
    let key_before = b.redis_key("n");
    a.invalidate_namespace().await.unwrap();
    let namespace_delay = until_get(&b, "n", bound, |v| v.is_none()).await;
    assert_ne!(b.redis_key("n"), key_before, "B follows the new version");
    let reloaded: u32 = b.get_or_fetch("n", &tagged(&[]), || async { 40 }).await;
    assert_eq!(reloaded, 40);

    println!(
        "bus propagation (A returns -> B stops serving): tag {tag_delay:?}, delete \
         {delete_delay:?}, set {set_delay:?}, namespace {namespace_delay:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_delay_is_milliseconds() {
    let server = RedisServer::start();
    let (a, b) = (instance(&server, "lat"), instance(&server, "lat"));
    let _ = a.get::<u32>("warmup").await.unwrap();
    let mut delays = Vec::new();
    for i in 0..50 {
        let tag = format!("t:{i}");
        let policy = tagged(&[&tag]);
        warm(&b, "k", &policy, i).await;
        a.invalidate_tag(&tag).await.unwrap();
        delays.push(until_get(&b, "k", Duration::from_secs(2), |v| v.is_none()).await);
        b.delete("k").await.unwrap();
    }
    delays.sort();
    let (p50, p99, max) = (delays[25], delays[49 * 99 / 100], delays[49]);
    println!("bus propagation over 50 tag invalidations: p50 {p50:?}, p99 {p99:?}, max {max:?}");
    assert!(p50 < Duration::from_millis(500), "{p50:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_resubscribes_after_a_redis_restart_and_l1_starts_over() {
    let server = RedisServer::start();
    let (a, b) = (instance(&server, "restart"), instance(&server, "restart"));
    warm(&b, "before", &tagged(&[]), 1).await;
    let _ = a.get::<u32>("warmup").await.unwrap();
    assert!(a.bus_connected() && b.bus_connected());

    let restarted = {
        let server = std::sync::Arc::new(server);
        support::on_server(&server, RedisServer::restart).await;
        server
    };
    // Both subscribers notice the dead connection and subscribe again (bounded poll).
    until(Duration::from_secs(10), "both buses resubscribed", || {
        a.bus_connected() && b.bus_connected()
    })
    .await;
    // The restart lost Redis' data and any message sent meanwhile: L1 was cleared.
    assert_eq!(b.get::<u32>("before").await.unwrap(), None);

    // Invalidation propagates over the new subscription.
    let policy = tagged(&["product:9"]);
    warm(&b, "after", &policy, 2).await;
    a.invalidate_tag("product:9").await.unwrap();
    until_get(&b, "after", Duration::from_secs(2), |v| v.is_none()).await;
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_bus_is_down_l1_copies_live_only_the_fallback_ttl() {
    let server = RedisServer::start();
    let fallback = Duration::from_millis(300);
    let b = server
        .cache_builder("down")
        .local(100)
        .bus_fallback_ttl(fallback)
        .build()
        .unwrap();
    warm(&b, "k", &tagged(&["t"]), 7).await;
    assert!(b.bus_connected());
    let killed_at = Instant::now();
    let server = std::sync::Arc::new(server);
    support::on_server(&server, RedisServer::kill).await;
    until(Duration::from_secs(5), "bus noticed the outage", || {
        !b.bus_connected()
    })
    .await;
    // Redis is gone and nobody can tell B about invalidations: its L1 copy stops being served
    // once the fallback TTL has passed.
    let gone = until_get(&b, "k", Duration::from_secs(5), |v| v.is_none()).await;
    let since_kill = killed_at.elapsed();
    assert!(
        since_kill < fallback + Duration::from_secs(2),
        "L1 served {since_kill:?} after the bus went down ({gone:?} of polling)"
    );
    // Read-through keeps working (from the source) while Redis is down. Within the fallback TTL a
    // read-through call may still answer with the L1 copy (stale-if-error: `get` above already
    // refuses it once the tag times are no longer trusted); past it, only the source answers.
    loop {
        let v: u32 = b.get_or_fetch("k", &tagged(&["t"]), || async { 8 }).await;
        if v == 8 {
            break;
        }
        assert_eq!(v, 7, "only the old copy or the source");
        assert!(
            killed_at.elapsed() < fallback + Duration::from_secs(2),
            "L1 copy still served {:?} after the bus went down",
            killed_at.elapsed()
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn explicit_writes_publish_fills_do_not() {
    let server = RedisServer::start();
    let cache = instance(&server, "pub");
    let _ = cache.get::<u32>("warmup").await.unwrap();
    server.reset_stats();
    let _: u32 = cache
        .get_or_fetch("k", &tagged(&["t"]), || async { 1 })
        .await;
    assert_eq!(
        server.command_calls("publish"),
        0,
        "a fill publishes nothing"
    );
    cache.set("k", &2u32, &tagged(&["t"])).await.unwrap();
    assert_eq!(server.command_calls("publish"), 1, "set");
    cache.delete("k").await.unwrap();
    assert_eq!(server.command_calls("publish"), 2, "delete");
    cache.invalidate_tags(["t", "u"]).await.unwrap();
    assert_eq!(
        server.command_calls("publish"),
        3,
        "one message for several tags"
    );
    cache.invalidate_namespace().await.unwrap();
    assert_eq!(server.command_calls("publish"), 4, "namespace");

    // The in-memory store has no bus; invalidation is local and immediate.
    let memory = Cache::in_memory();
    memory.set("k", &1u32, &tagged(&["t"])).await.unwrap();
    memory.invalidate_tag("t").await.unwrap();
    assert!(!memory.bus_connected());
    assert_eq!(memory.get::<u32>("k").await.unwrap(), None);
}

/// `build()` works outside a runtime; the subscriber starts with the first operation, and if its
/// runtime goes away, the next operation (in another runtime) starts a new one.
#[test]
fn the_bus_starts_lazily_and_survives_its_runtime() {
    let server = RedisServer::start();
    let cache = instance(&server, "lazy");
    let other = instance(&server, "lazy");
    assert!(
        !cache.bus_connected(),
        "nothing runs before the first operation"
    );
    for round in 0..2u32 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let policy = tagged(&["lazy"]);
            warm(&cache, "k", &policy, round).await;
            assert!(cache.bus_connected(), "round {round}");
            let _ = other.get::<u32>("warmup").await.unwrap();
            other.invalidate_tag("lazy").await.unwrap();
            until_get(&cache, "k", Duration::from_secs(2), |v| v.is_none()).await;
        });
        drop(runtime);
        assert!(
            !cache.bus_connected(),
            "the subscriber ended with its runtime"
        );
    }
}

/// When the breaker closes again, Redis was skipped for a while (invalidations may have been
/// missed even though the bus connection survived): the L1 tier starts over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_is_cleared_when_the_breaker_closes() {
    let server = std::sync::Arc::new(RedisServer::start());
    let cache = quick_breaker(&server, "breaker")
        .local(100)
        .build()
        .unwrap();
    warm(&cache, "k", &tagged(&[]), 1).await;
    // A hung Redis opens the breaker (the pub/sub connection itself stays up).
    support::on_server(&server, RedisServer::pause).await;
    assert!(cache.get::<u32>("other").await.is_err());
    assert_eq!(cache.stats().breaker, cache_layer::BreakerState::Open);
    support::on_server(&server, RedisServer::resume).await;
    // The first operation after the cooldown probes Redis and closes the breaker.
    until_breaker_closed(&cache).await;
    support::on_server(&server, RedisServer::reset_stats).await;
    assert_eq!(cache.get::<u32>("k").await.unwrap(), Some(1));
    assert_eq!(
        server.command_calls("get"),
        1,
        "the L1 copy was dropped: the read went to Redis"
    );
}

/// An invalidation Redis could not take (hung here) is honoured locally at once and replayed when
/// the breaker closes, so the other instances follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_redis_missed_are_replayed_when_it_is_back() {
    let server = std::sync::Arc::new(RedisServer::start());
    let a = quick_breaker(&server, "replay").build().unwrap();
    let b = instance(&server, "replay");
    let policy = tagged(&["t"]);
    warm(&b, "k", &policy, 1).await;
    let _ = a.get::<u32>("k").await.unwrap();

    support::on_server(&server, RedisServer::pause).await;
    let result = a.invalidate_tag("t").await;
    assert!(result.is_err(), "the caller learns Redis did not take it");
    support::on_server(&server, RedisServer::resume).await;
    assert_eq!(
        a.get::<u32>("k").await.unwrap_or(None),
        None,
        "A honours it at once"
    );

    // The breaker closes with the next operation after its cooldown; the replay follows.
    until_breaker_closed(&a).await;
    until_get(&b, "k", Duration::from_secs(5), |v| v.is_none()).await;
}

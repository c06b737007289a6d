//! Tag, key and namespace invalidation: semantics on both stores, the read/invalidate race,
//! steady-state command counts for tagged entries, write-through, and a randomized concurrent
//! test with two independent `Cache` instances on one Redis.

mod support;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use cache_layer::{Cache, Policy, Stampede};
use support::{redis_server::MISS_AND_FILL, shared_redis_url, unique_prefix, RedisServer};
use tokio::sync::{oneshot, Notify};

fn redis_cache(namespace: &str) -> Cache {
    Cache::builder()
        .redis(shared_redis_url())
        .namespace(namespace)
        .build()
        .expect("valid configuration")
}

/// The same scenarios on Redis and on the embedded store, with and without L1.
fn caches(test: &str) -> Vec<(&'static str, Cache)> {
    vec![
        ("redis", redis_cache(&unique_prefix(test))),
        (
            "redis+l1",
            Cache::builder()
                .redis(shared_redis_url())
                .namespace(unique_prefix(test))
                .local(1_000)
                .build()
                .expect("valid configuration"),
        ),
        ("memory", Cache::in_memory()),
        (
            "memory+l1",
            Cache::builder().local(1_000).build().expect("valid"),
        ),
    ]
}

fn tagged(tags: &[&str]) -> Policy {
    Policy::ttl(Duration::from_secs(60)).tags(tags.iter().copied())
}

#[tokio::test]
async fn invalidate_tag_drops_exactly_the_tagged_entries() {
    for (store, cache) in caches("inv_tag") {
        cache
            .set("a", &1u32, &tagged(&["product:1", "catalog"]))
            .await
            .unwrap();
        cache
            .set("b", &2u32, &tagged(&["product:2", "catalog"]))
            .await
            .unwrap();
        cache.set("c", &3u32, &tagged(&[])).await.unwrap();
        cache.invalidate_tag("product:1").await.unwrap();
        assert_eq!(cache.get::<u32>("a").await.unwrap(), None, "{store}");
        assert_eq!(cache.get::<u32>("b").await.unwrap(), Some(2), "{store}");
        cache.invalidate_tags(["catalog", "unused"]).await.unwrap();
        assert_eq!(cache.get::<u32>("b").await.unwrap(), None, "{store}");
        assert_eq!(
            cache.get::<u32>("c").await.unwrap(),
            Some(3),
            "{store}: untagged"
        );
        // Entries loaded after the invalidation are cached again.
        reloads_until_cached(&cache, "a", &tagged(&["product:1"]), 10).await;
    }
}

/// Read-through until `key` is served from the cache. Fills that land within the clock error
/// bound (a millisecond or two) after an invalidation are conservatively not trusted, so the first
/// reload right after one may not be cached; this polls that condition, bounded.
async fn reloads_until_cached(cache: &Cache, key: &str, policy: &Policy, value: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let loaded: u32 = cache
            .get_or_fetch(key, policy, move || async move { value })
            .await;
        assert_eq!(loaded, value);
        if cache.get::<u32>(key).await.unwrap() == Some(value) {
            break;
        }
        assert!(Instant::now() < deadline, "{key} was never cached again");
        tokio::task::yield_now().await;
    }
    let cached: u32 = cache.get_or_fetch(key, policy, || async { 999 }).await;
    assert_eq!(cached, value, "served from the cache, not loaded");
}

#[tokio::test]
async fn delete_and_namespace_invalidation() {
    for (store, cache) in caches("inv_ns") {
        let policy = tagged(&[]);
        cache.set("a", &1u32, &policy).await.unwrap();
        cache.set("b", &2u32, &policy).await.unwrap();
        assert!(cache.delete("a").await.unwrap(), "{store}");
        assert!(!cache.delete("a").await.unwrap(), "{store}");
        assert_eq!(cache.get::<u32>("a").await.unwrap(), None, "{store}");
        let before = cache.redis_key("b");
        cache.invalidate_namespace().await.unwrap();
        assert_eq!(cache.get::<u32>("b").await.unwrap(), None, "{store}");
        let after = cache.redis_key("b");
        assert_ne!(before, after, "{store}: the version is folded into the key");
        assert!(
            after.starts_with(&format!("{}:{{b}}", cache.namespace())),
            "{after}"
        );
        reloads_until_cached(&cache, "b", &policy, 20).await;
    }
}

#[tokio::test]
async fn namespace_bump_leaves_old_entries_to_expire_and_keeps_keys_spread() {
    let cache = redis_cache(&unique_prefix("inv_ns_keys"));
    let policy = tagged(&[]);
    cache.set("k", &1u8, &policy).await.unwrap();
    let old_key = cache.redis_key("k");
    cache.invalidate_namespace().await.unwrap();
    let client = redis::Client::open(shared_redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&old_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        pttl > 0,
        "the old entry is left to expire on its own ({pttl})"
    );
    let version: u64 = redis::cmd("GET")
        .arg(format!("{}:__ver", cache.namespace()))
        .query_async(&mut conn)
        .await
        .unwrap();
    // A monotonic epoch (created above every epoch that could have existed before), folded into
    // every key.
    assert!(
        cache.redis_key("k").ends_with(&format!(":v{version}")),
        "{} vs {version}",
        cache.redis_key("k")
    );
    assert_ne!(old_key, cache.redis_key("k"));
    // One hash tag per entry (never per namespace): entries spread over cluster slots.
    for key in ["k", "other"] {
        let redis_key = cache.redis_key(key);
        assert!(redis_key.starts_with(cache.namespace()), "{redis_key}");
        assert!(redis_key.contains(&format!("{{{key}}}")), "{redis_key}");
    }
}

/// A load that started before an invalidation and finishes after it must not be served to anyone
/// who arrives after the invalidation returned — for every stampede mode (`None` does not go
/// through single-flight, so only the entry stamp protects it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_an_invalidation_is_never_served_afterwards() {
    for stampede in [Stampede::Coalesce, Stampede::None, Stampede::Lock] {
        for (store, cache) in caches("inv_race") {
            let policy = tagged(&["product:7"]).stampede(stampede);
            let db = Arc::new(AtomicU64::new(1));
            let (started_tx, started_rx) = oneshot::channel();
            let release = Arc::new(Notify::new());
            let slow = {
                let (cache, policy, db, release) =
                    (cache.clone(), policy.clone(), db.clone(), release.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_fetch("p:7", &policy, move || async move {
                            let read = db.load(Ordering::SeqCst);
                            let _ = started_tx.send(());
                            release.notified().await;
                            read
                        })
                        .await
                })
            };
            started_rx.await.unwrap();
            // The write: the database changes, then the cache is invalidated.
            db.store(2, Ordering::SeqCst);
            cache.invalidate_tag("product:7").await.unwrap();
            release.notify_one();
            assert_eq!(
                slow.await.unwrap(),
                1,
                "the racing caller gets what it loaded"
            );
            let label = format!("{store} {stampede:?}");
            assert_eq!(cache.get::<u64>("p:7").await.unwrap(), None, "{label}");
            let fresh: u64 = cache
                .get_or_fetch("p:7", &policy, {
                    let db = db.clone();
                    move || async move { db.load(Ordering::SeqCst) }
                })
                .await;
            assert_eq!(fresh, 2, "{label}: the old value was not resurrected");
        }
    }
}

#[tokio::test]
async fn expire_tag_serves_stale_within_grace_and_refreshes() {
    for (store, cache) in caches("inv_expire") {
        let graced = tagged(&["menu"]).stale(Duration::from_secs(30));
        let strict = tagged(&["menu"]);
        cache
            .set("graced", &"soup".to_string(), &graced)
            .await
            .unwrap();
        cache
            .set("strict", &"bread".to_string(), &strict)
            .await
            .unwrap();
        cache.expire_tag("menu").await.unwrap();
        assert_eq!(
            cache.get::<String>("graced").await.unwrap(),
            None,
            "{store}: not fresh"
        );
        let refreshed = Arc::new(Notify::new());
        let served: String = cache
            .get_or_fetch("graced", &graced, {
                let refreshed = refreshed.clone();
                move || async move {
                    refreshed.notify_one();
                    "salad".to_string()
                }
            })
            .await;
        assert_eq!(served, "soup", "{store}: stale served under grace");
        tokio::time::timeout(Duration::from_secs(5), refreshed.notified())
            .await
            .expect("the stale read started a refresh");
        // Refreshes land; readers get the new value (bounded poll of a condition). A refresh
        // that started within the clock error bound of the expiry counts as expired too, so the
        // next stale read refreshes once more.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let served: String = cache
                .get_or_fetch("graced", &graced, || async { "salad".to_string() })
                .await;
            assert!(served == "soup" || served == "salad", "{store}: {served}");
            let fresh = cache.get::<String>("graced").await.unwrap();
            if fresh.as_deref() == Some("salad") {
                break;
            }
            assert!(Instant::now() < deadline, "{store}: refresh never landed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let reloaded: String = cache
            .get_or_fetch("strict", &strict, || async { "rye".to_string() })
            .await;
        assert_eq!(reloaded, "rye", "{store}: without grace, expired is a miss");
    }
}

#[tokio::test]
async fn tagged_hits_are_one_get_in_steady_state_and_fills_never_publish() {
    let server = RedisServer::start();
    let cache = server.cache_builder("count").build().unwrap();
    let policy = tagged(&["product:1", "catalog", "brand:9"]);
    let _ = cache.get::<u8>("warmup").await.unwrap();
    // The first miss with new tags reads their records along with the entry (one pipelined
    // round trip) and creates the missing ones (once per tag, ever).
    let v: u32 = cache.get_or_fetch("p:0", &policy, || async { 0 }).await;
    assert_eq!(v, 0);
    server.reset_stats();

    let v: u32 = cache.get_or_fetch("p:1", &policy, || async { 1 }).await;
    assert_eq!(v, 1);
    // Two round trips: the GET that missed, and the conditional fill (the load saw no key, so the
    // condition is `SET NX`; no script).
    server.assert_cache_commands(
        &MISS_AND_FILL,
        "a tagged miss + fill is one GET and one conditional fill, no PUBLISH",
    );
    server.reset_stats();
    for _ in 0..20 {
        let v: u32 = cache.get_or_fetch("p:1", &policy, || async { 0 }).await;
        assert_eq!(v, 1);
    }
    server.assert_cache_commands(&[("get", 20)], "a warm tagged hit is exactly one GET");

    // An invalidation is one script on the tag key (its GET/SET/TIME run inside the script) and
    // one PUBLISH; nothing enumerates entries.
    server.reset_stats();
    cache.invalidate_tag("catalog").await.unwrap();
    let calls: HashMap<String, u64> = server.cache_command_calls().into_iter().collect();
    assert_eq!(calls.get("publish"), Some(&1), "{calls:?}");
    assert!(calls.get("evalsha").is_some_and(|&n| n <= 2), "{calls:?}");
    assert!(
        !calls
            .keys()
            .any(|c| c == "keys" || c == "scan" || c == "smembers"),
        "{calls:?}"
    );
    // After the reload, hits are one GET again: the new tag time is known locally.
    reloads_until_cached(&cache, "p:1", &policy, 2).await;
    server.reset_stats();
    for _ in 0..20 {
        let v: u32 = cache.get_or_fetch("p:1", &policy, || async { 0 }).await;
        assert_eq!(v, 2);
    }
    assert_eq!(server.cache_command_calls(), vec![("get".to_string(), 20)]);
}

#[tokio::test]
async fn tagged_local_hits_make_no_redis_calls() {
    let server = RedisServer::start();
    let cache = server.cache_builder("l1tags").local(100).build().unwrap();
    let policy = tagged(&["product:1"]);
    let _: u32 = cache.get_or_fetch("p", &policy, || async { 1 }).await;
    cache.set("q", &2u32, &policy).await.unwrap();
    // An L1 copy is only served once the process knows its tags' times: the first read of an
    // entry with a new tag goes to Redis once (entry + tag times), then L1 serves it.
    let _: u32 = cache.get_or_fetch("p", &policy, || async { 0 }).await;
    server.reset_stats();
    for _ in 0..50 {
        let v: u32 = cache.get_or_fetch("p", &policy, || async { 0 }).await;
        assert_eq!(v, 1);
        assert_eq!(cache.get::<u32>("q").await.unwrap(), Some(2));
    }
    assert_eq!(
        server.cache_command_calls(),
        vec![],
        "L1 hits touch no Redis"
    );
    assert!(cache.stats().local_hits >= 50, "{:?}", cache.stats());
}

/// Write-through: when the write fails, the key is removed so nobody keeps the old value.
#[tokio::test]
async fn a_failed_write_through_removes_the_old_entry() {
    let server = RedisServer::start();
    let cache = server.cache_builder("wt").local(100).build().unwrap();
    let policy = tagged(&[]);
    cache.set("price", &1000u32, &policy).await.unwrap();
    assert_eq!(cache.get::<u32>("price").await.unwrap(), Some(1000));
    // Redis refuses writes (OOM under noeviction) but still serves reads and deletes.
    let _: () = server.query(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("noeviction"),
    );
    let _: () = server.query(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1"));
    let written = cache.set("price", &1100u32, &policy).await;
    assert!(
        written.is_err(),
        "the failed write is reported: {written:?}"
    );
    let old: Option<Vec<u8>> = server.query(redis::cmd("GET").arg(cache.redis_key("price")));
    let reader = server.cache_builder("wt").build().unwrap();
    assert_eq!(
        reader.get::<u32>("price").await.unwrap(),
        None,
        "the old entry was deleted (held: {old:?})"
    );
    assert_eq!(
        cache.get::<u32>("price").await.unwrap(),
        None,
        "not in L1 either"
    );
    let _: () = server.query(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0"));
    let v: u32 = cache
        .get_or_fetch("price", &policy, || async { 1100 })
        .await;
    assert_eq!(v, 1100);
}

#[tokio::test]
async fn namespaces_with_the_bookkeeping_separator_are_rejected() {
    let err = Cache::builder()
        .namespace("shop:__tag")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains(":__"), "{err}");
}

// ----- randomized: writers invalidate, readers on two instances check what they see ----------

/// A completed invalidation: when it returned, through which instance, and the database version
/// it covered.
struct Completed {
    at: Instant,
    via: usize,
    item: usize,
    version: u64,
}

const ITEMS: usize = 6;
/// How long another instance may keep serving a value after an invalidation returned (the bus
/// delay bound asserted here; the measured delay is printed and is milliseconds).
const CROSS_INSTANCE_BOUND: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_invalidation_never_serves_data_older_than_a_completed_invalidation() {
    use rand::RngExt;

    let namespace = unique_prefix("inv_random");
    let instances: Vec<Cache> = (0..2)
        .map(|_| {
            Cache::builder()
                .redis(shared_redis_url())
                .namespace(namespace.clone())
                .local(1_000)
                .build()
                .unwrap()
        })
        .collect();
    for cache in &instances {
        let _ = cache.get::<u8>("warmup").await.unwrap();
        assert!(cache.bus_connected());
    }
    let db: Arc<Vec<AtomicU64>> = Arc::new((0..ITEMS).map(|_| AtomicU64::new(0)).collect());
    let log: Arc<Mutex<Vec<Completed>>> = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let loads = Arc::new(AtomicUsize::new(0));
    let worst_cross_lag = Arc::new(Mutex::new(Duration::ZERO));

    let mut writers = Vec::new();
    for _ in 0..2 {
        let (instances, db, log) = (instances.clone(), db.clone(), log.clone());
        writers.push(tokio::spawn(async move {
            for _ in 0..150 {
                let (item, via, pause) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(0..ITEMS),
                        rng.random_range(0..2),
                        rng.random_range(0..3),
                    )
                };
                let version = db[item].fetch_add(1, Ordering::SeqCst) + 1;
                instances[via]
                    .invalidate_tag(&format!("item:{item}"))
                    .await
                    .unwrap();
                log.lock().unwrap().push(Completed {
                    at: Instant::now(),
                    via,
                    item,
                    version,
                });
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }));
    }
    let mut readers = Vec::new();
    for reader in 0..8 {
        let me = reader % 2;
        let cache = instances[me].clone();
        let (db, log, done, reads, loads, worst) = (
            db.clone(),
            log.clone(),
            done.clone(),
            reads.clone(),
            loads.clone(),
            worst_cross_lag.clone(),
        );
        readers.push(tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let (item, stampede, delay_us) = {
                    let mut rng = rand::rng();
                    let stampede = if rng.random_bool(0.5) {
                        Stampede::Coalesce
                    } else {
                        Stampede::None
                    };
                    (
                        rng.random_range(0..ITEMS),
                        stampede,
                        rng.random_range(0..2_000u64),
                    )
                };
                let policy = tagged(&[&format!("item:{item}")]).stampede(stampede);
                let started = Instant::now();
                let (db, loads) = (db.clone(), loads.clone());
                let seen: u64 = cache
                    .get_or_fetch(&format!("item:{item}"), &policy, move || async move {
                        loads.fetch_add(1, Ordering::Relaxed);
                        let read = db[item].load(Ordering::SeqCst);
                        // Finish later, so loads straddle invalidations.
                        tokio::time::sleep(Duration::from_micros(delay_us)).await;
                        read
                    })
                    .await;
                reads.fetch_add(1, Ordering::Relaxed);
                // An L1 hit completes without ever yielding; let the bus and writers run.
                tokio::task::yield_now().await;
                let log = log.lock().unwrap();
                for c in log
                    .iter()
                    .filter(|c| c.item == item && c.version > seen && c.at < started)
                {
                    let lag = started - c.at;
                    assert!(
                        c.via != me && lag < CROSS_INSTANCE_BOUND,
                        "instance {me} read item {item} version {seen} although the invalidation \
                         of version {} completed {lag:?} before the read started (via instance {})",
                        c.version,
                        c.via
                    );
                    let mut worst = worst.lock().unwrap();
                    *worst = (*worst).max(lag);
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }
    let reads = reads.load(Ordering::Relaxed);
    let loads = loads.load(Ordering::Relaxed);
    println!(
        "randomized invalidation: {reads} reads, {loads} loads, 300 invalidations, worst \
         cross-instance staleness observed {:?}",
        worst_cross_lag.lock().unwrap()
    );
    assert!(reads > 300, "{reads}");
    assert!(
        loads < reads,
        "the cache served hits too ({loads} loads / {reads} reads)"
    );
}

//! Operations checks against private servers: `Cache::ping` (readiness), the memory-policy check
//! (`Stats::memory_policy`, WARN at startup), and Lua scripts surviving a server restart (the
//! script cache is empty afterwards: `NOSCRIPT` is answered by loading the script again).

mod support;

use std::time::Duration;

use cache_layer::{BreakerConfig, Cache, Policy, Stampede};
use support::{unique_prefix, RedisServer};

fn cache_on(server: &RedisServer) -> Cache {
    server
        .cache_builder(unique_prefix("health"))
        .breaker(BreakerConfig {
            cooldown: Duration::from_millis(100),
            ..Default::default()
        })
        .build()
        .expect("valid configuration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reports_whether_redis_answers() {
    let server = RedisServer::start();
    let cache = cache_on(&server);
    cache.ping().await.expect("up");
    assert!(
        server.command_calls("ping") >= 1,
        "a PING reached the server"
    );

    tokio::task::block_in_place(|| server.pause());
    let started = std::time::Instant::now();
    let err = cache.ping().await.expect_err("hung server");
    assert!(matches!(err, cache_layer::Error::Timeout(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the op timeout"
    );
    tokio::task::block_in_place(|| server.resume());

    tokio::task::block_in_place(|| server.kill());
    assert!(cache.ping().await.is_err(), "dead server");
    tokio::task::block_in_place(|| server.restart());
    let mut back = cache.ping().await;
    for _ in 0..250 {
        if back.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        back = cache.ping().await;
    }
    back.expect("ping succeeds again once Redis is back");
}

/// The policy the cache read, once it read one (after the bus subscribed).
async fn policy_read_at_startup(server: &RedisServer) -> cache_layer::MemoryPolicy {
    let cache = cache_on(server);
    // The first operation starts the bus; once subscribed, the cache reads INFO memory.
    let _: u32 = cache
        .get_or_fetch("k", &Policy::ttl(Duration::from_secs(60)), || async { 1 })
        .await;
    for _ in 0..250 {
        if let Some(policy) = cache.stats().memory_policy {
            return policy;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("memory policy never read: {:?}", cache.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weakening_memory_policies_are_reported() {
    let cases: [(&[&str], &str, Option<&str>); 4] = [
        (
            &["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"],
            "noeviction",
            Some("every fill fails"),
        ),
        (
            &["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"],
            "allkeys-lru",
            Some("namespace"),
        ),
        (
            &["--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"],
            "volatile-lru",
            Some("tag"),
        ),
        (
            &["--maxmemory", "64mb", "--maxmemory-policy", "volatile-ttl"],
            "volatile-ttl",
            None,
        ),
    ];
    for (args, name, warning) in cases {
        let server = RedisServer::start_with(args);
        let policy = policy_read_at_startup(&server).await;
        assert_eq!(policy.policy, name);
        assert_eq!(policy.maxmemory, 64 << 20);
        match (warning, policy.warning) {
            (Some(expected), Some(actual)) => {
                assert!(actual.contains(expected), "{name}: {actual}")
            }
            (None, None) => {}
            (expected, actual) => panic!("{name}: expected {expected:?}, got {actual:?}"),
        }
    }
    // The default of a self-hosted Redis: no limit, nothing fails, nothing is evicted.
    let server = RedisServer::start();
    assert_eq!(policy_read_at_startup(&server).await.warning, None);
}

/// A restarted Redis has an empty script cache: the next script call gets `NOSCRIPT` and loads
/// the script again, transparently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_work_after_a_restart_emptied_the_script_cache() {
    let server = RedisServer::start();
    let cache = cache_on(&server);
    let tagged = Policy::ttl(Duration::from_secs(60)).tags(["t"]);
    cache.set("a", &1u32, &tagged).await.expect("set");
    cache
        .invalidate_tag("t")
        .await
        .expect("invalidate (loads the script)");
    assert_eq!(cache.get::<u32>("a").await.expect("get"), None);

    tokio::task::block_in_place(|| server.restart());
    server.reset_stats();
    let scripts: Vec<bool> = server.query(redis::cmd("SCRIPT").arg("EXISTS").arg("0"));
    assert_eq!(scripts, vec![false]);

    // The first calls after the restart may find the pooled connections dead; retried until the
    // cache reconnected (bounded), then the script call itself must succeed.
    let mut invalidated = cache.invalidate_tag("t").await;
    for _ in 0..100 {
        if invalidated.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        invalidated = cache.invalidate_tag("t").await;
    }
    invalidated.expect("invalidate_tag after the restart");
    assert!(
        server.command_calls("script|load") >= 1,
        "the script was loaded again after NOSCRIPT: {:?}",
        server.cache_command_calls()
    );
    // The lock's compare-and-delete release script, too: a Stampede::Lock fill releases its lock.
    let locked = Policy::ttl(Duration::from_secs(60)).stampede(Stampede::Lock);
    let v: u32 = cache.get_or_fetch("b", &locked, || async { 2 }).await;
    assert_eq!(v, 2);
    let lock_key = format!("{}:lock", cache.redis_key("b"));
    let exists: u64 = server.query(redis::cmd("EXISTS").arg(&lock_key));
    assert_eq!(exists, 0, "lock released by its script");
    assert_eq!(cache.get::<u32>("b").await.expect("get"), Some(2));
}

//! ACL users end to end: a private server with a user made from exactly the README's
//! `ACL SETUSER` line (keys `~<ns>:*`, channels `&<ns>:*`, only the commands the cache uses).
//! The read-through / lock / tags / counters suites run as that user, and the server's `ACL LOG`
//! records no denial. Without `+info` the cache still works; only the memory-policy check is
//! skipped.

mod suites;
mod support;

use std::time::Duration;

use cache_layer::{Cache, Policy};
use support::acl::{
    acl_denials, create_limited_user, readme_acl_rules, LIMITED_PASSWORD, LIMITED_USER,
};
use support::{unique_prefix, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suites_run_as_a_user_limited_to_the_namespace() {
    let server = RedisServer::start();
    // One namespace prefix for the whole test; each suite's caches share a namespace below it.
    let base = unique_prefix("acl");
    let url = create_limited_user(&server, &base);
    let _: () = server.query(redis::cmd("ACL").arg("LOG").arg("RESET"));
    let builder = Cache::builder().redis(url.as_str());
    let instances =
        |test: &str, count: usize| suites::build(&builder, &format!("{base}:{test}"), count);
    suites::all(&instances).await;

    // Namespace invalidation, expiry, the bus and the memory-policy check too.
    let cache = instances("more", 1).remove(0);
    let policy = Policy::ttl(Duration::from_secs(60)).tags(["t"]);
    cache.set("k", &1u32, &policy).await.expect("set");
    cache.expire_tag("t").await.expect("expire_tag");
    cache
        .invalidate_namespace()
        .await
        .expect("invalidate_namespace");
    assert_eq!(cache.get::<u32>("k").await.expect("get"), None);
    cache.ping().await.expect("ping");
    assert!(
        cache.stats().memory_policy.is_some(),
        "+info lets the cache read maxmemory-policy"
    );
    let connected = support::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        cache.bus_connected()
    });
    assert!(connected, "the bus subscribed on the namespace's channel");

    let denials = acl_denials(&server);
    assert!(
        denials.is_empty(),
        "the README's ACL line covers everything the cache does: {denials:#?}"
    );
    // The user really is limited: another namespace is refused.
    let outside = Cache::builder()
        .redis(url.as_str())
        .namespace("someone-else")
        .build()
        .expect("valid configuration");
    let err = outside
        .set("k", &1u32, &Policy::ttl(Duration::from_secs(60)))
        .await
        .expect_err("outside the user's keys");
    assert!(err.to_string().to_uppercase().contains("NOPERM"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_info_works_and_only_skips_the_memory_policy_check() {
    let server = RedisServer::start();
    let namespace = unique_prefix("acl-noinfo");
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER");
    for word in readme_acl_rules(&namespace) {
        if word != "+info" {
            cmd.arg(word);
        }
    }
    let _: () = server.query(&cmd);
    let cache = Cache::builder()
        .redis(format!(
            "redis://{LIMITED_USER}:{LIMITED_PASSWORD}@127.0.0.1:{}",
            server.port()
        ))
        .namespace(namespace.as_str())
        .build()
        .expect("valid configuration");
    let policy = Policy::ttl(Duration::from_secs(60));
    for _ in 0..2 {
        let v: u32 = cache.get_or_fetch("k", &policy, || async { 7 }).await;
        assert_eq!(v, 7);
    }
    cache.ping().await.expect("PING is allowed");
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.errors),
        (1, 1, 0),
        "{stats:?}"
    );
    assert_eq!(stats.memory_policy, None, "INFO denied: policy unknown");
    assert_eq!(
        stats.breaker,
        cache_layer::BreakerState::Closed,
        "a denied INFO is not a Redis failure"
    );
}

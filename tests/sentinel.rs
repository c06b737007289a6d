//! Redis Sentinel end to end: a private group (one master, one replica, three
//! `redis-server --sentinel` processes; `support::SentinelGroup`).
//!
//! - the backend suites run through `redis_sentinel(..)`;
//! - the master is SIGKILLed under load: every call is answered with the right value (the
//!   loader's while Redis is unavailable), hits resume on the promoted replica, and the
//!   invalidation bus and the stampede lock work there.

mod suites;
mod support;

use std::time::{Duration, Instant};

use cache_layer::{BreakerConfig, Cache, Policy};
use support::load::{hits_resume, ReadLoad};
use support::sentinel::SENTINEL_READY_TIMEOUT;
use support::{unique_prefix, SentinelGroup, MASTER_NAME};

fn instances(group: &SentinelGroup, namespace: &str, count: usize, local: bool) -> Vec<Cache> {
    let builder = Cache::builder()
        .redis_sentinel(group.sentinel_urls(), MASTER_NAME)
        .breaker(BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_millis(300),
            ..Default::default()
        });
    let builder = if local { builder.local(1_000) } else { builder };
    suites::build(&builder, namespace, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suites_through_sentinel() {
    let group = SentinelGroup::start();
    let instances = |test: &str, count| instances(&group, &unique_prefix(test), count, false);
    suites::all(&instances).await;
    // The writes went to the master (a replica would have refused them with READONLY, and the
    // suites check that no operation failed).
    assert!(group.master().command_calls("set") > 0);
}

/// Polls `cond` every 20 ms until it holds, for at most `timeout`.
async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_under_load_fails_over_to_the_replica() {
    let group = SentinelGroup::start();
    let namespace = unique_prefix("sentinel-failover");
    let cache = instances(&group, &namespace, 1, false).remove(0);
    let policy = Policy::ttl(Duration::from_secs(300));
    for i in 0..50u32 {
        cache
            .set(&format!("k:{i}"), &i, &policy)
            .await
            .expect("set");
    }
    group.wait_for_replication();
    // Two more instances, built before the failover, with L1 tiers kept coherent by the bus;
    // the first operation starts an instance's bus.
    let others = instances(&group, &namespace, 2, true);
    let (writer, reader) = (&others[0], &others[1]);
    let _: u32 = reader.get_or_fetch("bus:1", &policy, || async { 1 }).await;
    assert_eq!(writer.get::<u32>("bus:1").await.expect("get"), Some(1));
    assert!(
        eventually(SENTINEL_READY_TIMEOUT, || writer.bus_connected()
            && reader.bus_connected())
        .await,
        "both buses subscribed on the master"
    );

    let load = ReadLoad::start(&cache, &policy, 20, 50);
    load.answer(500).await;
    let old = group.kill_master();
    let promoted = tokio::task::block_in_place(|| group.wait_for_failover(old));
    let answered_at_failover = load.answered();

    // Hits resume on the promoted replica: a full round over the keys written before the kill
    // without a miss or an error.
    let recovered_by = Instant::now() + SENTINEL_READY_TIMEOUT;
    let recovered = hits_resume(&cache, &policy, 50, recovered_by).await;
    assert!(
        recovered.is_ok(),
        "no hits on the promoted replica {promoted} after killing {old}: {recovered:?}"
    );
    let promoted_node = group.node(promoted);
    assert!(
        promoted_node.command_calls("get") > 0,
        "the reads go to the promoted replica"
    );
    // Load kept running through the failover.
    let until = load.answered() + 200;
    assert!(
        eventually(Duration::from_secs(10), || load.answered() >= until).await,
        "readers kept being answered"
    );
    for worst in load.stop().await {
        assert!(
            worst < Duration::from_secs(3),
            "a call took {worst:?} during the failover"
        );
    }
    assert!(answered_at_failover > 500);

    // The bus follows: the instances built before the failover resubscribe on the promoted
    // master, and the reader's L1 copy is replaced by the writer's write.
    assert!(
        eventually(SENTINEL_READY_TIMEOUT, || writer.bus_connected()
            && reader.bus_connected())
        .await,
        "both buses resubscribed on the promoted master"
    );
    let clients: String = promoted_node.query(redis::cmd("CLIENT").arg("LIST"));
    assert!(
        clients
            .lines()
            .filter(|c| c.contains("cmd=subscribe") || c.contains("sub=1"))
            .count()
            >= 2,
        "the subscriptions are on the promoted master: {clients}"
    );
    // A key the reader holds in L1 (a resubscription empties L1, so fill it afterwards): with
    // the bus up the copy is trusted, so only a bus message can replace it.
    let _: u32 = reader.get_or_fetch("bus:2", &policy, || async { 1 }).await;
    let l1_before = reader.stats().local_hits;
    let _: u32 = reader.get_or_fetch("bus:2", &policy, || async { 1 }).await;
    assert_eq!(reader.stats().local_hits, l1_before + 1, "an L1 hit");
    // The writer was idle through the failover: its first operation may find its pooled
    // connections dead and its breaker open; a set is safe to retry.
    let mut written = writer.set("bus:2", &2u32, &policy).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while written.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        written = writer.set("bus:2", &2u32, &policy).await;
    }
    written.expect("set on the promoted master");
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        seen = reader.get_or_fetch("bus:2", &policy, || async { 0 }).await;
        if seen == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 2, "the reader's L1 copy was replaced over the bus");

    // The stampede lock follows: the same two instances, 100 callers each on a cold key, one
    // load; the waiters are woken through the lock's pub/sub signal on the promoted master.
    let lock_instances = |_: &str, count: usize| others[..count].to_vec();
    suites::lock_across_instances(&lock_instances).await;
}

#[test]
fn sentinel_configuration_errors_are_clear() {
    let err = Cache::builder()
        .redis_sentinel(Vec::<String>::new(), MASTER_NAME)
        .build()
        .expect_err("no sentinels");
    assert!(err.to_string().contains("sentinel"), "{err}");
    let err = Cache::builder()
        .redis_sentinel(["redis://127.0.0.1:26379"], "")
        .build()
        .expect_err("no master name");
    assert!(err.to_string().contains("master"), "{err}");
    let err = Cache::builder()
        .redis("redis://127.0.0.1:6379")
        .redis_sentinel(["redis://127.0.0.1:26379"], MASTER_NAME)
        .build()
        .expect_err("two deployments");
    assert!(err.to_string().contains("choose one"), "{err}");
}

/// Sentinel over TLS: `rediss://` sentinel URLs, the master reached over TLS (the sentinels
/// report its TLS port), the private CA through `tls_root_ca`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls() {
    let tls = support::TlsFiles::generate();
    let group = SentinelGroup::start_tls(&tls);
    let builder = suites::cold_tls_timeouts(
        Cache::builder()
            .redis_sentinel(group.sentinel_tls_urls(), MASTER_NAME)
            .tls_root_ca(tls.ca_pem()),
    );
    let instances = |test: &str, count: usize| suites::build(&builder, &unique_prefix(test), count);
    suites::read_through(&instances).await;
    suites::lock_across_instances(&instances).await;
    let master = group.master();
    let tls_port = master.tls_port().expect("tls port");
    let clients: String = master.query(redis::cmd("CLIENT").arg("LIST"));
    assert!(
        clients
            .lines()
            .any(|c| c.contains(&format!("laddr=127.0.0.1:{tls_port} "))),
        "the cache reached the master on its TLS port: {clients}"
    );
}

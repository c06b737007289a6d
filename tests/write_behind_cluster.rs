//! Write-behind counters on a real local Redis Cluster: every script of a counter set stays in one
//! slot (a cross-slot script would fail with CROSSSLOT), and counter sets spread over the masters.

mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use cache_layer::{Batch, Cache};
use support::{unique_prefix, RedisCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_flush_exactly_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let cache = Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace(unique_prefix("wb_cluster"))
        .build()
        .expect("valid configuration");
    let names: Vec<String> = (0..12).map(|i| format!("set{i}")).collect();
    let totals: Arc<Mutex<HashMap<(String, String), i64>>> = Arc::default();

    let mut flushers = Vec::new();
    for name in &names {
        let counters = cache.counters(name);
        let totals = totals.clone();
        flushers.push(counters.flush_every_with_id(
            Duration::from_millis(20),
            move |batch: Batch| {
                let mut totals = totals.lock().unwrap();
                for (id, delta) in batch.iter() {
                    *totals
                        .entry((batch.counters().to_owned(), id.clone()))
                        .or_default() += delta;
                }
                async { Ok::<_, String>(()) }
            },
        ));
    }
    let tasks: Vec<_> = (0..48)
        .map(|t| {
            let counters = cache.counters(&names[t % names.len()]);
            tokio::spawn(async move {
                for i in 0..500 {
                    counters
                        .incr(&format!("id{}", i % 10), 1)
                        .await
                        .expect("incr");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for flusher in flushers {
        flusher.shutdown().await.expect("final flush");
    }

    let totals = totals.lock().unwrap();
    for name in &names {
        for i in 0..10 {
            // 4 tasks per set, 50 increments of each id per task.
            assert_eq!(
                totals[&(name.clone(), format!("id{i}"))],
                200,
                "{name} id{i}"
            );
        }
    }
    // The live hashes of the sets live on more than one master.
    let mut masters_used = std::collections::HashSet::new();
    for name in &names {
        let key = cache.counters(name).redis_key().to_owned();
        let slot: u16 = cluster.nodes()[0].query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key));
        let owner = cluster
            .cluster_nodes()
            .into_iter()
            .find(|n| n.is_master() && n.slots.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot)))
            .map(|n| n.port);
        masters_used.insert(owner);
    }
    assert!(
        masters_used.len() > 1,
        "counter sets spread over masters: {masters_used:?}"
    );
    // No replicas: no push or flush waited for one.
    for node in cluster.nodes() {
        assert_eq!(node.command_calls("wait"), 0, "node {}", node.port());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_counters_wait_for_the_replica_of_their_slots_master() {
    let cluster = RedisCluster::start(3, 1);
    let cache = Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace(unique_prefix("wb_cluster_replicas"))
        // A cold cluster connection plus a connection of its own to the master on a loaded
        // 2-core machine: more than the default 250 ms.
        .op_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1))
        .build()
        .expect("valid configuration");
    let views = cache.counters("views");
    let key = views.redis_key().to_owned();
    let slot: u16 = cluster.nodes()[0].query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key));
    let nodes = cluster.cluster_nodes();
    let owner = nodes
        .iter()
        .find(|n| n.is_master() && n.slots.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot)))
        .expect("a master serves the slot");
    let replica = nodes
        .iter()
        .find(|n| n.master_id.as_deref() == Some(owner.id.as_str()))
        .expect("the master has a replica");
    let (master, replica) = (cluster.node(owner.port), cluster.node(replica.port));
    master.reset_stats();

    for _ in 0..3 {
        views
            .incr("a", 2)
            .await
            .expect("acknowledged by the replica");
    }
    // WAIT returned on the master: its replica has applied the pushes.
    let mut on_replica = replica.connection();
    let _: () = redis::cmd("READONLY").query(&mut on_replica).unwrap();
    let stored: i64 = redis::cmd("HGET")
        .arg(&key)
        .arg("a")
        .query(&mut on_replica)
        .unwrap();
    assert_eq!(stored, 6);
    assert!(
        master.command_calls("wait") >= 3,
        "{:?}",
        master.cache_command_calls()
    );

    let totals: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let sink_totals = totals.clone();
    let report = views
        .flush_now(move |batch: Vec<(String, i64)>| {
            let mut totals = sink_totals.lock().unwrap();
            for (id, delta) in batch {
                *totals.entry(id).or_default() += delta;
            }
            async { Ok::<_, String>(()) }
        })
        .await
        .expect("flush");
    assert_eq!(report.batches, 1);
    assert_eq!(
        *totals.lock().unwrap(),
        HashMap::from([("a".to_owned(), 6)])
    );
    assert_eq!(views.stats().unreplicated, 0, "{:?}", views.stats());
}

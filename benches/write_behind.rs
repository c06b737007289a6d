//! Write-behind counters vs raw pipelined HINCRBY, measured in the same run on a private
//! redis-server (loopback, no persistence unless `WB_BENCH_AOF=1`).
//!
//! ```text
//! cargo bench --bench write_behind            # N = 1,000,000 increments per variant
//! WB_BENCH_N=200000 cargo bench --bench write_behind
//! ```
//!
//! Variants (same N increments over the same ids):
//! * raw: `HINCRBY` commands in pipelines of 1,000 on one multiplexed connection, 4 pipelines in
//!   flight — the best a client can do when it already holds its increments;
//! * raw (one per task): 1,000 tasks each sending its own `HINCRBY` and awaiting the reply — what
//!   naive per-request code does;
//! * `Counters::incr`: 1,000 tasks each awaiting `incr` (acknowledged once in Redis);
//! * `Counters::incr_nowait`: one task buffering increments, then `sync()`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cache_layer::{Cache, Counters};
use support::RedisServer;

const TASKS: usize = 1_000;
const IDS: usize = 1_000;
const PIPELINE: usize = 1_000;
const PIPELINES_IN_FLIGHT: usize = 4;

fn ids() -> Arc<Vec<String>> {
    Arc::new((0..IDS).map(|i| format!("product:{i}")).collect())
}

async fn total_in(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    let all: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("HGETALL");
    all.values().sum()
}

async fn raw_pipelined(client: &redis::Client, n: usize) -> Duration {
    let key = "bench:raw";
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let ids = ids();
    let started = Instant::now();
    let per_worker = n / PIPELINES_IN_FLIGHT;
    let workers: Vec<_> = (0..PIPELINES_IN_FLIGHT)
        .map(|w| {
            let (mut conn, ids) = (conn.clone(), ids.clone());
            tokio::spawn(async move {
                let mut sent = 0;
                while sent < per_worker {
                    let mut pipe = redis::pipe();
                    for i in sent..(sent + PIPELINE).min(per_worker) {
                        pipe.cmd("HINCRBY")
                            .arg(key)
                            .arg(&ids[(w + i * 7) % IDS])
                            .arg(1)
                            .ignore();
                    }
                    sent += PIPELINE;
                    let () = pipe.query_async(&mut conn).await.expect("pipeline");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let took = started.elapsed();
    let mut conn = conn;
    assert_eq!(
        total_in(&mut conn, key).await,
        (per_worker * PIPELINES_IN_FLIGHT) as i64
    );
    took
}

async fn raw_one_per_task(client: &redis::Client, n: usize) -> Duration {
    let key = "bench:raw1";
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let ids = ids();
    let per_task = n / TASKS;
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (mut conn, ids) = (conn.clone(), ids.clone());
            tokio::spawn(async move {
                for i in 0..per_task {
                    let _: i64 = redis::cmd("HINCRBY")
                        .arg(key)
                        .arg(&ids[(t + i * 7) % IDS])
                        .arg(1)
                        .query_async(&mut conn)
                        .await
                        .expect("HINCRBY");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let took = started.elapsed();
    let mut conn = conn;
    assert_eq!(total_in(&mut conn, key).await, (per_task * TASKS) as i64);
    took
}

async fn counters_incr(views: &Counters, n: usize) -> Duration {
    let ids = ids();
    let per_task = n / TASKS;
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (views, ids) = (views.clone(), ids.clone());
            tokio::spawn(async move {
                for i in 0..per_task {
                    views.incr(&ids[(t + i * 7) % IDS], 1).await.expect("incr");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    started.elapsed()
}

async fn counters_nowait(views: &Counters, n: usize) -> Duration {
    let ids = ids();
    let started = Instant::now();
    for i in 0..n {
        views
            .incr_nowait(&ids[(i * 7) % IDS], 1)
            .expect("incr_nowait");
        if i % 4096 == 0 {
            tokio::task::yield_now().await; // let the pusher run on a busy runtime
        }
    }
    views.sync().await.expect("sync");
    started.elapsed()
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it: then
    // a short smoke run checks that every variant works and counts exactly.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("WB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 20_000 } else { 1_000_000 });
    let aof = std::env::var("WB_BENCH_AOF").is_ok_and(|v| v == "1");
    let server = if aof {
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    } else {
        RedisServer::start()
    };
    let client = server.client();
    let cache = Cache::builder()
        .redis(server.url())
        .namespace("bench")
        .build()
        .expect("cache");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");

    println!(
        "write-behind counters: {n} increments over {IDS} ids, loopback redis-server{}",
        if aof { " (appendfsync always)" } else { "" }
    );
    let raw = raw_pipelined(&client, n).await;
    println!(
        "  raw HINCRBY, pipelines of {PIPELINE} x{PIPELINES_IN_FLIGHT}: {:>10.0} incr/s",
        rate(n, raw)
    );
    let raw1 = raw_one_per_task(&client, n).await;
    println!(
        "  raw HINCRBY, {TASKS} tasks awaiting each: {:>10.0} incr/s  ({:.2}x raw pipelined)",
        rate(n, raw1),
        raw.as_secs_f64() / raw1.as_secs_f64()
    );

    let linger = std::env::var("WB_BENCH_LINGER_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_micros);
    let config = match linger {
        Some(linger) => cache_layer::CountersConfig::default().linger(linger),
        None => cache_layer::CountersConfig::default(),
    };
    println!("  (linger {:?})", config.linger);
    let views = cache.counters_with("incr", config.clone());
    let took = counters_incr(&views, n).await;
    let pushes = views.stats().pushes;
    assert_eq!(
        total_in(&mut conn, views.redis_key()).await,
        (n / TASKS * TASKS) as i64
    );
    println!("  Counters::incr, {TASKS} tasks awaiting each: {:>10.0} incr/s  ({:.2}x raw pipelined; {pushes} pushes)",
        rate(n, took), raw.as_secs_f64() / took.as_secs_f64());

    let views = cache.counters_with("nowait", config);
    let took = counters_nowait(&views, n).await;
    let pushes = views.stats().pushes;
    assert_eq!(total_in(&mut conn, views.redis_key()).await, n as i64);
    println!("  Counters::incr_nowait, one task + sync: {:>10.0} incr/s  ({:.2}x raw pipelined; {pushes} pushes)",
        rate(n, took), raw.as_secs_f64() / took.as_secs_f64());
}

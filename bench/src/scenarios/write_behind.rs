//! Write-behind counters: `Counters::incr` / `incr_nowait` vs raw `HINCRBY`, same increments over
//! the same ids, with the Redis commands each variant sends per 1,000 increments.
//!
//! Variants:
//! * raw pipelined: `HINCRBY` in pipelines of 1,000 on one multiplexed connection, 4 pipelines in
//!   flight: the best a client can do when it already holds its increments;
//! * raw, one per task: 1,000 tasks each sending its own `HINCRBY` and awaiting the reply: what
//!   per-request code does;
//! * `Counters::incr`: 1,000 tasks each awaiting `incr` (acknowledged once applied in Redis);
//! * `Counters::incr_nowait`: one task buffering increments, then `sync()`;
//! * no Redis at all: 1,000 tasks each handing its increment to one collector task and awaiting
//!   its acknowledgement (a oneshot), answered as soon as the collector has it: the cost of an
//!   awaited acknowledgement per increment on this runtime, the ceiling of any awaited `incr`.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use cache_layer::{Cache, Counters};
use redis::aio::MultiplexedConnection;

use crate::{redis_server::PrivateRedis, Mode, Settings};

const TASKS: usize = 1_000;
const IDS: usize = 1_000;
const PIPELINE: usize = 1_000;
const PIPELINES_IN_FLIGHT: usize = 4;

fn ids() -> Arc<Vec<String>> {
    Arc::new((0..IDS).map(|i| format!("product:{i}")).collect())
}

async fn total_in(conn: &mut MultiplexedConnection, key: &str) -> Result<i64, String> {
    let all: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(|err| format!("HGETALL {key}: {err}"))?;
    Ok(all.values().sum())
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>) -> Result<(), String> {
    for task in tasks {
        task.await.map_err(|err| err.to_string())??;
    }
    Ok(())
}

pub(crate) async fn raw_pipelined(
    conn: &MultiplexedConnection,
    key: &str,
    n: usize,
) -> Result<(), String> {
    let ids = ids();
    let per_worker = n / PIPELINES_IN_FLIGHT;
    let workers = (0..PIPELINES_IN_FLIGHT)
        .map(|w| {
            let (mut conn, ids, key) = (conn.clone(), ids.clone(), key.to_string());
            tokio::spawn(async move {
                let mut sent = 0;
                while sent < per_worker {
                    let mut pipe = redis::pipe();
                    for i in sent..(sent + PIPELINE).min(per_worker) {
                        pipe.cmd("HINCRBY")
                            .arg(&key)
                            .arg(&ids[(w + i * 7) % IDS])
                            .arg(1)
                            .ignore();
                    }
                    sent += PIPELINE;
                    let () = pipe
                        .query_async(&mut conn)
                        .await
                        .map_err(|err| format!("pipeline: {err}"))?;
                }
                Ok(())
            })
        })
        .collect();
    join_all(workers).await
}

async fn raw_one_per_task(conn: &MultiplexedConnection, key: &str, n: usize) -> Result<(), String> {
    let ids = ids();
    let per_task = n / TASKS;
    let tasks = (0..TASKS)
        .map(|t| {
            let (mut conn, ids, key) = (conn.clone(), ids.clone(), key.to_string());
            tokio::spawn(async move {
                for i in 0..per_task {
                    let _: i64 = redis::cmd("HINCRBY")
                        .arg(&key)
                        .arg(&ids[(t + i * 7) % IDS])
                        .arg(1)
                        .query_async(&mut conn)
                        .await
                        .map_err(|err| format!("HINCRBY: {err}"))?;
                }
                Ok(())
            })
        })
        .collect();
    join_all(tasks).await
}

pub(crate) async fn counters_incr(counters: &Counters, n: usize) -> Result<(), String> {
    let ids = ids();
    let per_task = n / TASKS;
    let tasks = (0..TASKS)
        .map(|t| {
            let (counters, ids) = (counters.clone(), ids.clone());
            tokio::spawn(async move {
                for i in 0..per_task {
                    counters
                        .incr(&ids[(t + i * 7) % IDS], 1)
                        .await
                        .map_err(|err| format!("incr: {err}"))?;
                }
                Ok(())
            })
        })
        .collect();
    join_all(tasks).await
}

async fn counters_nowait(counters: &Counters, n: usize) -> Result<(), String> {
    let ids = ids();
    for i in 0..n {
        counters
            .incr_nowait(&ids[(i * 7) % IDS], 1)
            .map_err(|err| format!("incr_nowait: {err}"))?;
        if i % 4096 == 0 {
            tokio::task::yield_now().await; // let the pusher run on a busy runtime
        }
    }
    counters.sync().await.map_err(|err| format!("sync: {err}"))
}

/// 1,000 tasks each sending its increment to one collector task and awaiting the collector's
/// acknowledgement; no Redis. Returns the total the collector counted.
pub(crate) async fn awaited_acks_only(n: usize) -> Result<i64, String> {
    use tokio::sync::{mpsc, oneshot};
    let ids = ids();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, oneshot::Sender<()>)>();
    let collector = tokio::spawn(async move {
        let mut counts = vec![0i64; IDS];
        let mut batch = Vec::with_capacity(TASKS);
        while rx.recv_many(&mut batch, TASKS).await > 0 {
            for (id, ack) in batch.drain(..) {
                counts[id] += 1;
                let _ = ack.send(());
            }
        }
        counts.iter().sum::<i64>()
    });
    let per_task = n / TASKS;
    let tasks = (0..TASKS)
        .map(|t| {
            let (tx, ids) = (tx.clone(), ids.clone());
            tokio::spawn(async move {
                for i in 0..per_task {
                    let id = (t + i * 7) % ids.len();
                    let (ack, acked) = oneshot::channel();
                    tx.send((id, ack))
                        .map_err(|_| "collector gone".to_string())?;
                    acked.await.map_err(|_| "no acknowledgement".to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    drop(tx);
    join_all(tasks).await?;
    collector.await.map_err(|err| err.to_string())
}

/// One variant's result.
struct Row {
    name: &'static str,
    rate: f64,
    /// Redis' CPU time over the run's wall time (1.0: one core busy all along).
    redis_busy: Option<f64>,
    commands: String,
}

pub async fn run(settings: &Settings, server: Option<&PrivateRedis>) -> Result<(), String> {
    let n = match settings.mode {
        Mode::Full => 1_000_000,
        Mode::Quick => 200_000,
        Mode::Smoke => 20_000,
    };
    let run_id = std::process::id();
    let cache = Cache::builder()
        .redis(settings.redis_url.as_str())
        .namespace(format!("bench-wb-{run_id}"))
        .build()
        .map_err(|err| format!("cannot build the cache: {err}"))?;
    let mut conn = redis::Client::open(settings.redis_url.as_str())
        .map_err(|err| format!("bad redis url: {err}"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|err| format!("redis unreachable: {err}"))?;
    let incr = cache.counters("incr");
    let nowait = cache.counters("nowait");
    // The counters' own connections and scripts exist before anything is counted.
    incr.incr("warm-up", 1)
        .await
        .map_err(|err| err.to_string())?;
    nowait
        .incr("warm-up", 1)
        .await
        .map_err(|err| err.to_string())?;

    let mut rows = Vec::new();
    for name in [
        "raw HINCRBY, pipelines of 1,000 x4",
        "raw HINCRBY, 1,000 tasks awaiting each",
        "Counters::incr, 1,000 tasks awaiting each",
        "Counters::incr_nowait, one task + sync()",
        "no Redis: 1,000 tasks awaiting an in-process ack",
    ] {
        if let Some(server) = server {
            server.reset_stats();
        }
        let cpu_before = server.and_then(PrivateRedis::cpu_seconds);
        let started = Instant::now();
        let (expected_key, expected) = match rows.len() {
            0 => {
                let key = format!("bench-wb-raw-{run_id}");
                raw_pipelined(&conn, &key, n).await?;
                (key, n / PIPELINES_IN_FLIGHT * PIPELINES_IN_FLIGHT)
            }
            1 => {
                let key = format!("bench-wb-raw1-{run_id}");
                raw_one_per_task(&conn, &key, n).await?;
                (key, n / TASKS * TASKS)
            }
            2 => {
                counters_incr(&incr, n).await?;
                (incr.redis_key().to_string(), n / TASKS * TASKS + 1)
            }
            3 => {
                counters_nowait(&nowait, n).await?;
                (nowait.redis_key().to_string(), n + 1)
            }
            _ => {
                let counted = awaited_acks_only(n).await?;
                let expected = n / TASKS * TASKS;
                if counted != expected as i64 {
                    return Err(format!("{name}: counted {counted}, expected {expected}"));
                }
                (String::new(), expected)
            }
        };
        let took = started.elapsed().max(Duration::from_nanos(1));
        // How much of the run Redis was busy: a variant at 100% is bound by the server.
        let redis_busy = match (cpu_before, server.and_then(PrivateRedis::cpu_seconds)) {
            (Some(before), Some(after)) => Some((after - before) / took.as_secs_f64()),
            _ => None,
        };
        let commands = match server {
            Some(server) => server
                .command_calls()
                .iter()
                .map(|(cmd, calls)| {
                    format!(
                        "{} {:.1}",
                        cmd.to_uppercase(),
                        *calls as f64 * 1000.0 / n as f64
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
            None => "(not counted)".into(),
        };
        // (The in-process row checked its own count and has no key.)
        if !expected_key.is_empty() {
            let total = total_in(&mut conn, &expected_key).await?;
            if total != expected as i64 {
                return Err(format!("{name}: Redis holds {total}, expected {expected}"));
            }
        }
        rows.push(Row {
            name,
            rate: n as f64 / took.as_secs_f64(),
            redis_busy,
            commands,
        });
    }

    println!("\n## Write-behind counters, {n} increments over {IDS} ids\n");
    println!(
        "| {:<48} | {:>11} | {:>9} | {:>10} | {:<44} |",
        "variant", "incr/s", "vs raw", "Redis busy", "Redis commands per 1,000 increments"
    );
    println!(
        "|{:-<50}|{:->12}:|{:->10}:|{:->11}:|{:-<46}|",
        "", "", "", "", ""
    );
    let base = rows.first().map_or(1.0, |r| r.rate);
    for row in &rows {
        let busy = row
            .redis_busy
            .map_or("-".to_string(), |b| format!("{:.0}%", b * 100.0));
        println!(
            "| {:<48} | {:>11.0} | {:>8.2}x | {:>10} | {:<44} |",
            row.name,
            row.rate,
            row.rate / base,
            busy,
            row.commands
        );
    }
    let stats = incr.stats();
    println!(
        "\nCounters::incr: {} pushes for {} increments ({} resent in order after arriving \
         before the push ahead of them)",
        stats.pushes,
        n / TASKS * TASKS,
        stats.out_of_order
    );
    Ok(())
}

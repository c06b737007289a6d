//! End-to-end write-behind counters: exact totals under concurrency, sink failures, aborted
//! flushers, crashed processes, Redis outages and restarts (private servers where Redis is killed;
//! the shared server with unique namespaces otherwise).

mod support;

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use cache_layer::{Batch, BreakerConfig, Cache, Counters, CountersConfig, Error};
use support::{shared_redis_url, unique_prefix, RedisServer};
use tokio::sync::mpsc;

type SinkFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// The test's "database": applies each batch id once (the dedupe a real sink does in the same
/// transaction as the counts) and checks that a redelivered batch is identical to the first.
#[derive(Default)]
struct Db {
    state: Mutex<DbState>,
}

#[derive(Default)]
struct DbState {
    totals: HashMap<String, i64>,
    applied: HashMap<String, Vec<(String, i64)>>,
    redelivered: u64,
}

impl Db {
    /// Applies `batch` unless its id was applied before; returns whether it was fresh.
    fn apply(&self, batch: &Batch) -> bool {
        let mut db = self.state.lock().unwrap();
        if let Some(first) = db.applied.get(batch.id()) {
            assert_eq!(
                first.as_slice(),
                batch.entries(),
                "redelivered batch {} differs",
                batch.id()
            );
            db.redelivered += 1;
            return false;
        }
        db.applied
            .insert(batch.id().to_owned(), batch.entries().to_vec());
        for (id, delta) in batch.iter() {
            *db.totals.entry(id.clone()).or_default() += delta;
        }
        true
    }

    fn totals(&self) -> HashMap<String, i64> {
        self.state.lock().unwrap().totals.clone()
    }

    fn redelivered(&self) -> u64 {
        self.state.lock().unwrap().redelivered
    }

    fn batches(&self) -> usize {
        self.state.lock().unwrap().applied.len()
    }
}

/// A sink that applies every batch.
fn reliable_sink(db: &Arc<Db>) -> impl FnMut(Batch) -> SinkFuture + Send + 'static {
    let db = db.clone();
    move |batch| {
        db.apply(&batch);
        Box::pin(async { Ok(()) })
    }
}

/// The expected totals of [`hammer`].
fn expected(tasks: usize, per_task: usize, ids: usize) -> HashMap<String, i64> {
    let mut totals = vec![0i64; ids];
    for t in 0..tasks {
        for i in 0..per_task {
            let (id, by) = op(t, i, ids);
            totals[id] += by;
        }
    }
    totals
        .into_iter()
        .enumerate()
        .map(|(id, total)| (item(id), total))
        .collect()
}

fn item(id: usize) -> String {
    format!("item:{id}")
}

/// Increment number `i` of task `task`: (id index, delta).
fn op(task: usize, i: usize, ids: usize) -> (usize, i64) {
    ((task * 7 + i) % ids, 1 + (i % 3) as i64)
}

/// `tasks` tasks, each making `per_task` increments in turn, spread over the given handles (one
/// per simulated process): every fourth is awaited with `incr` (which also acknowledges the
/// task's earlier ones), the others go through `incr_nowait` — the two ways a hot path counts.
/// `done` counts acknowledged increments.
async fn hammer(
    handles: &[Counters],
    tasks: usize,
    per_task: usize,
    ids: usize,
    done: Arc<AtomicU64>,
) {
    let names: Arc<Vec<String>> = Arc::new((0..ids).map(item).collect());
    let mut joins = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let (counters, names, done) = (
            handles[t % handles.len()].clone(),
            names.clone(),
            done.clone(),
        );
        joins.push(tokio::spawn(async move {
            let mut unacknowledged = 0;
            for i in 0..per_task {
                let (id, by) = op(t, i, ids);
                unacknowledged += 1;
                if i % 4 == 3 || i + 1 == per_task {
                    counters
                        .incr(&names[id], by)
                        .await
                        .expect("increment accepted");
                    done.fetch_add(std::mem::take(&mut unacknowledged), Ordering::Relaxed);
                } else {
                    counters
                        .incr_nowait(&names[id], by)
                        .expect("increment accepted");
                }
            }
        }));
    }
    for join in joins {
        join.await.expect("increment task");
    }
}

/// On the shared server, per-writer sequence keys expire soon after the test (default: 7 days).
const SHARED_WRITER_TTL: Duration = Duration::from_secs(120);

fn shared_views(cache: &Cache) -> Counters {
    cache.counters_with(
        "views",
        CountersConfig::default().writer_ttl(SHARED_WRITER_TTL),
    )
}

fn redis_cache(url: &str, namespace: &str) -> Cache {
    Cache::builder()
        .redis(url)
        .namespace(namespace)
        .build()
        .expect("valid configuration")
}

/// On `server` (namespace `wb`), with a breaker that probes again after 100 ms.
fn quick_recovery(server: &RedisServer) -> Cache {
    server
        .cache_builder("wb")
        .breaker(BreakerConfig {
            cooldown: Duration::from_millis(100),
            ..BreakerConfig::default()
        })
        .build()
        .unwrap()
}

const TASKS: usize = 1_000;
const PER_TASK: usize = 1_000;
const IDS: usize = 500;
const FLUSH_EVERY: Duration = Duration::from_millis(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_increments_from_two_processes_flush_exactly_once() {
    let namespace = unique_prefix("wb_million");
    // Two caches on one namespace: two processes sharing the counter set, each with a flusher.
    let (a, b) = (
        redis_cache(&shared_redis_url(), &namespace),
        redis_cache(&shared_redis_url(), &namespace),
    );
    let handles = [shared_views(&a), shared_views(&b)];
    let db = Arc::new(Db::default());
    let flushers = [
        handles[0].flush_every_with_id(FLUSH_EVERY, reliable_sink(&db)),
        handles[1].flush_every_with_id(FLUSH_EVERY, reliable_sink(&db)),
    ];
    let started = Instant::now();
    hammer(&handles, TASKS, PER_TASK, IDS, Arc::default()).await;
    let took = started.elapsed();
    let [fa, fb] = flushers;
    let (ra, rb) = (fa.shutdown().await.unwrap(), fb.shutdown().await.unwrap());

    assert_eq!(
        db.totals(),
        expected(TASKS, PER_TASK, IDS),
        "sink totals equal the increments"
    );
    assert_eq!(db.redelivered(), 0, "no batch was delivered twice");
    assert_eq!((ra.batches + rb.batches) as usize, db.batches());
    let pushes = handles[0].stats().pushes + handles[1].stats().pushes;
    assert!(
        pushes < 100_000,
        "{pushes} pushes for 1,000,000 increments: they must be batched"
    );
    eprintln!(
        "1M increments in {took:?} with {pushes} pushes, {} batches",
        db.batches()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_randomly_failing_sink_still_gets_exact_totals() {
    let cache = redis_cache(&shared_redis_url(), &unique_prefix("wb_failing_sink"));
    let views = shared_views(&cache);
    let db = Arc::new(Db::default());
    let (failed_before, failed_after) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sink = {
        let (db, before, after) = (db.clone(), failed_before.clone(), failed_after.clone());
        move |batch: Batch| -> SinkFuture {
            let roll = rand::random::<f64>();
            if roll < 0.3 {
                // The database is down: nothing applied.
                before.fetch_add(1, Ordering::Relaxed);
                return Box::pin(async { Err("db down".to_owned()) });
            }
            db.apply(&batch);
            if roll < 0.4 {
                // Applied, but the acknowledgement was lost (commit timeout): must be redelivered.
                after.fetch_add(1, Ordering::Relaxed);
                return Box::pin(async { Err("commit outcome unknown".to_owned()) });
            }
            Box::pin(async { Ok(()) })
        }
    };
    let flusher = views.flush_every_with_id(FLUSH_EVERY, sink);
    hammer(
        std::slice::from_ref(&views),
        TASKS,
        PER_TASK,
        IDS,
        Arc::default(),
    )
    .await;
    // The final flush may itself hit a failure; the batch is kept, so retry until one succeeds.
    let mut last = flusher.shutdown().await.map(|_| ());
    let mut retry_sink = reliable_sink(&db);
    for _ in 0..3 {
        if last.is_ok() {
            break;
        }
        last = views.flush_now_with_id(&mut retry_sink).await.map(|_| ());
    }
    last.expect("a flush with a working sink succeeds");

    assert_eq!(db.totals(), expected(TASKS, PER_TASK, IDS));
    let (before, after) = (
        failed_before.load(Ordering::Relaxed),
        failed_after.load(Ordering::Relaxed),
    );
    assert!(before + after > 0, "the sink failed at least once");
    assert_eq!(views.stats().sink_failures, before + after);
    assert!(
        db.redelivered() >= after,
        "every lost acknowledgement led to a redelivery"
    );
    eprintln!(
        "sink failures: {before} before / {after} after applying; {} redeliveries",
        db.redelivered()
    );
}

/// What the controllable sink does with the next batch.
const PASS: u8 = 0;
const HANG_BEFORE_APPLY: u8 = 1;
const HANG_AFTER_APPLY: u8 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_the_flusher_mid_flush_and_restarting_it_loses_nothing() {
    let cache = redis_cache(&shared_redis_url(), &unique_prefix("wb_abort"));
    let views = shared_views(&cache);
    let db = Arc::new(Db::default());
    let mode = Arc::new(AtomicU8::new(PASS));
    let (hung_tx, mut hung_rx) = mpsc::unbounded_channel::<String>();
    let sink = {
        let (db, mode) = (db.clone(), mode.clone());
        move || {
            let (db, mode, hung_tx) = (db.clone(), mode.clone(), hung_tx.clone());
            move |batch: Batch| -> SinkFuture {
                let hang = mode.swap(PASS, Ordering::SeqCst);
                if hang != HANG_BEFORE_APPLY {
                    db.apply(&batch);
                }
                if hang == PASS {
                    return Box::pin(async { Ok(()) });
                }
                let _ = hung_tx.send(batch.id().to_owned());
                Box::pin(std::future::pending())
            }
        }
    };

    let done = Arc::new(AtomicU64::new(0));
    let workload = {
        let (views, done) = (views.clone(), done.clone());
        tokio::spawn(async move { hammer(&[views], TASKS, PER_TASK, IDS, done).await })
    };
    let mut flusher = views.flush_every_with_id(FLUSH_EVERY, sink());
    let mut hung_batches = Vec::new();
    for round in 0..6 {
        mode.store(
            if round % 2 == 0 {
                HANG_AFTER_APPLY
            } else {
                HANG_BEFORE_APPLY
            },
            Ordering::SeqCst,
        );
        let hung = hung_rx.recv().await.expect("the sink hangs in a batch");
        // Abort mid-flush (the sink is stuck inside the batch), then restart.
        flusher.abort();
        hung_batches.push(hung);
        flusher = views.flush_every_with_id(FLUSH_EVERY, sink());
    }
    workload.await.unwrap();
    assert_eq!(done.load(Ordering::Relaxed), (TASKS * PER_TASK) as u64);
    flusher.shutdown().await.unwrap();

    assert_eq!(db.totals(), expected(TASKS, PER_TASK, IDS));
    let applied = db
        .state
        .lock()
        .unwrap()
        .applied
        .keys()
        .cloned()
        .collect::<std::collections::HashSet<_>>();
    for id in &hung_batches {
        assert!(
            applied.contains(id),
            "batch {id} that hung was delivered by the restarted flusher"
        );
    }
    assert!(
        db.redelivered() >= 3,
        "batches applied before the abort were redelivered (same id)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_processes_batch_is_flushed_first_once_its_lease_expires() {
    let namespace = unique_prefix("wb_crash");
    let lease = Duration::from_millis(300);
    let config = CountersConfig::default()
        .lease(lease)
        .writer_ttl(SHARED_WRITER_TTL);
    let db = Arc::new(Db::default());

    // Process A seals a batch, its sink hangs, and the process dies.
    let a = redis_cache(&shared_redis_url(), &namespace);
    let views_a = a.counters_with("views", config.clone());
    views_a.incr("old", 5).await.unwrap();
    let (hung_tx, mut hung_rx) = mpsc::unbounded_channel::<String>();
    let flusher = views_a.flush_every_with_id(
        Duration::from_secs(3600),
        move |batch: Batch| -> SinkFuture {
            let _ = hung_tx.send(batch.id().to_owned());
            Box::pin(std::future::pending())
        },
    );
    let leftover = hung_rx.recv().await.unwrap();
    flusher.abort();
    drop((views_a, a));

    // Process B: new increments, and a flush while A's lease is still valid skips A's batch.
    let b = redis_cache(&shared_redis_url(), &namespace);
    let views_b = b.counters_with("views", config);
    views_b.incr("new", 7).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let (db, order) = (db.clone(), order.clone());
        move |batch: Batch| {
            order.lock().unwrap().push(batch.id().to_owned());
            db.apply(&batch);
            async { Ok::<_, String>(()) }
        }
    };
    let mut sink = sink;
    views_b.flush_now_with_id(&mut sink).await.unwrap();
    assert_eq!(
        db.totals(),
        HashMap::from([("new".to_owned(), 7)]),
        "A's batch is leased to A"
    );

    // Waiting out the lease is the behaviour under test.
    tokio::time::sleep(lease + Duration::from_millis(50)).await;
    views_b.incr("new", 1).await.unwrap();
    views_b.flush_now_with_id(&mut sink).await.unwrap();
    let order = order.lock().unwrap().clone();
    assert_eq!(order.len(), 3);
    assert_eq!(order[1], leftover, "the leftover batch goes first");
    assert_eq!(
        db.totals(),
        HashMap::from([("old".to_owned(), 5), ("new".to_owned(), 8)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incr_returns_once_the_increment_is_in_redis_and_shares_round_trips() {
    let server = RedisServer::start();
    let cache = redis_cache(&server.url(), "wb");
    let views = cache.counters("views");
    views.incr("a", 2).await.unwrap();
    let stored: i64 = server.query(redis::cmd("HGET").arg(views.redis_key()).arg("a"));
    assert_eq!(stored, 2, "in Redis when incr returns");

    server.reset_stats();
    let joins: Vec<_> = (0..1_000)
        .map(|i| {
            let views = views.clone();
            tokio::spawn(async move { views.incr(&format!("k{}", i % 10), 1).await })
        })
        .collect();
    for join in joins {
        join.await.unwrap().unwrap();
    }
    let scripts = server.command_calls("evalsha") + server.command_calls("eval");
    assert!(
        scripts <= 20,
        "1,000 concurrent increments took {scripts} pushes"
    );
    let live: HashMap<String, i64> = server.query(redis::cmd("HGETALL").arg(views.redis_key()));
    assert_eq!(live.values().sum::<i64>(), 1_002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_increments_are_buffered_bounded_and_pushed_on_return() {
    let server = RedisServer::start();
    let cache = quick_recovery(&server);
    let views = cache.counters_with(
        "views",
        CountersConfig::default()
            .max_buffered(100)
            .retry(Duration::from_millis(10), Duration::from_millis(100)),
    );
    views.incr("warmup", 1).await.unwrap();
    server.kill();

    for i in 0..100 {
        views
            .incr(&format!("id{i}"), 1)
            .await
            .expect("buffered while redis is down");
    }
    let overflow = views.incr("one-too-many", 1).await;
    assert!(
        matches!(overflow, Err(Error::CounterOverflow { capacity: 100, .. })),
        "{overflow:?}"
    );
    views
        .incr("id0", 41)
        .await
        .expect("an id already buffered always fits");
    let stats = views.stats();
    assert_eq!(stats.overflows, 1);
    // 100 ids, plus id0 once more if it was in the push being retried.
    assert!((100..=101).contains(&stats.buffered), "{stats:?}");
    assert!(stats.push_failures > 0);
    assert!(
        views.sync().await.is_err(),
        "sync reports that redis is unavailable"
    );

    let server = Arc::new(server);
    support::on_server(&server, RedisServer::restart).await;
    // The pusher retries on its own; sync() retries until the breaker lets it through.
    let deadline = Instant::now() + Duration::from_secs(10);
    while views.sync().await.is_err() {
        assert!(Instant::now() < deadline, "buffer never pushed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(views.stats().buffered, 0);
    let db = Arc::new(Db::default());
    views.flush_now_with_id(reliable_sink(&db)).await.unwrap();
    let mut want: HashMap<String, i64> = (0..100).map(|i| (format!("id{i}"), 1)).collect();
    want.insert("id0".to_owned(), 42);
    // "warmup" was in a Redis without persistence: the restart lost it (Redis did, not us).
    assert_eq!(db.totals(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_with_aof_during_a_million_increments_loses_and_duplicates_nothing() {
    let server = Arc::new(RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]));
    let cache = quick_recovery(&server);
    let views = cache.counters_with(
        "views",
        CountersConfig::default().retry(Duration::from_millis(10), Duration::from_millis(100)),
    );
    let db = Arc::new(Db::default());
    let flusher = views.flush_every_with_id(FLUSH_EVERY, reliable_sink(&db));
    let done = Arc::new(AtomicU64::new(0));
    let workload = {
        let (views, done) = (views.clone(), done.clone());
        tokio::spawn(async move { hammer(&[views], TASKS, PER_TASK, IDS, done).await })
    };
    let total = (TASKS * PER_TASK) as u64;
    for fraction in [3, 2] {
        // Restart once a third and once half... of the increments are in.
        let at = total / fraction;
        while done.load(Ordering::Relaxed) < at {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        support::on_server(&server, RedisServer::restart).await;
    }
    workload.await.unwrap();
    // Redis is back; the final flush may still meet the breaker's cooldown: retry briefly.
    let mut result = flusher.shutdown().await.map(|_| ());
    let deadline = Instant::now() + Duration::from_secs(10);
    while result.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        result = views
            .flush_now_with_id(reliable_sink(&db))
            .await
            .map(|_| ());
    }
    result.unwrap();

    assert_eq!(
        db.totals(),
        expected(TASKS, PER_TASK, IDS),
        "no increment lost or counted twice"
    );
    let stats = views.stats();
    assert!(
        stats.push_failures > 0,
        "pushes were in flight or refused during the restarts"
    );
    eprintln!(
        "restarts: {stats:?}, {} redelivered batches",
        db.redelivered()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_reply_is_lost_is_not_counted_twice() {
    let server = Arc::new(RedisServer::start());
    let cache = server
        .cache_builder("wb")
        .op_timeout(Duration::from_millis(100))
        .breaker(BreakerConfig {
            cooldown: Duration::from_millis(50),
            ..BreakerConfig::default()
        })
        .build()
        .unwrap();
    let views = cache.counters_with(
        "views",
        CountersConfig::default()
            .linger(Duration::ZERO)
            .retry(Duration::from_millis(10), Duration::from_millis(50)),
    );
    views.incr("a", 1).await.unwrap(); // connection and script in place

    // Redis stops answering: the push is sent, times out, and its outcome is unknown.
    support::on_server(&server, RedisServer::pause).await;
    views
        .incr("a", 10)
        .await
        .expect("buffered: redis did not answer");
    assert!(views.stats().push_failures > 0);
    // Redis wakes up and runs the push it had received (its reply goes nowhere); the client
    // resends the same push, which is acknowledged without being applied again.
    support::on_server(&server, RedisServer::resume).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while views.sync().await.is_err() {
        assert!(Instant::now() < deadline, "buffer never pushed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored: i64 = server.query(redis::cmd("HGET").arg(views.redis_key()).arg("a"));
    assert_eq!(stored, 11, "the push landed exactly once");
    assert!(views.stats().replayed >= 1, "{:?}", views.stats());
}

/// Two pushes of one counter set are in flight at a time: while the first is on its way (held by
/// a proxy), the increments behind it go out too, and both apply exactly once. (The second may
/// reach Redis first on another connection: refused and resent after the first, see the
/// write-behind unit tests; here it queues behind the first on the same connection.)
#[tokio::test]
async fn a_second_push_goes_out_while_the_first_is_in_flight_and_both_apply_once() {
    let server = RedisServer::start();
    let proxy = support::Proxy::start(server.addr()).await;
    let cache = Cache::builder()
        .redis(proxy.url())
        .namespace("wb-pipelined")
        .op_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let views = cache.counters_with("views", CountersConfig::default().linger(Duration::ZERO));
    views.incr("warm", 1).await.unwrap(); // connection and script in place
    let evalsha_calls = || {
        server
            .cache_command_calls()
            .into_iter()
            .find_map(|(command, calls)| (command == "evalsha").then_some(calls))
            .unwrap_or(0)
    };
    // Neither the proxy's byte counts nor Redis's command statistics send a signal: polled,
    // with a deadline.
    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let before = (evalsha_calls(), views.stats().pushes);
    proxy.hold_next(b"EVALSHA");
    let incr = |id: &'static str| {
        let views = views.clone();
        tokio::spawn(async move { views.incr(id, 1).await })
    };
    let first = incr("a");
    wait_for("the first push to be held", || proxy.holding()).await;
    let second = incr("b");
    wait_for(
        "the second push, sent before the first is acknowledged",
        || proxy.held_with_marker() >= 2 || evalsha_calls() > before.0,
    )
    .await;
    assert!(!first.is_finished() && !second.is_finished());
    proxy.release();
    first.await.unwrap().expect("first increment");
    second.await.unwrap().expect("second increment");
    let stored =
        |id: &str| -> i64 { server.query(redis::cmd("HGET").arg(views.redis_key()).arg(id)) };
    assert_eq!((stored("a"), stored("b")), (1, 1), "each applied once");
    assert_eq!(views.stats().pushes, before.1 + 2, "{:?}", views.stats());
}

#[tokio::test]
async fn in_memory_counters_follow_the_same_protocol() {
    let cache = Cache::in_memory();
    let views = cache.counters("views");
    views.incr("a", 1).await.unwrap();
    cache.counters("views").incr("a", 2).await.unwrap();
    let err = views
        .flush_now(|_batch: Vec<(String, i64)>| async { Err::<(), _>("db down") })
        .await;
    assert!(matches!(err, Err(Error::Sink(_))), "{err:?}");
    let db = Arc::new(Db::default());
    let report = views.flush_now_with_id(reliable_sink(&db)).await.unwrap();
    assert_eq!((report.batches, report.entries), (1, 1));
    assert_eq!(db.totals(), HashMap::from([("a".to_owned(), 3)]));
    let empty = views.flush_now_with_id(reliable_sink(&db)).await.unwrap();
    assert_eq!(empty.batches, 0);
}

// ----- replicas and overflow ----------------------------------------------------------------------

/// The op timeout of [`cache_on`]: a replica acknowledgement is waited for `OP_TIMEOUT / 3`
/// (generous: a replica on a loaded 2-core machine may need tens of milliseconds to answer).
const OP_TIMEOUT: Duration = Duration::from_millis(900);

/// A cache on `server` with [`OP_TIMEOUT`] and a short breaker cooldown.
fn cache_on(server: &RedisServer) -> Cache {
    server
        .cache_builder("wb")
        .op_timeout(OP_TIMEOUT)
        .breaker(BreakerConfig {
            cooldown: Duration::from_millis(50),
            ..BreakerConfig::default()
        })
        .build()
        .unwrap()
}

/// Pushes what is buffered until Redis (and a replica) acknowledge it; bounded.
async fn sync_within(views: &Counters, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match views.sync().await {
            Ok(()) => return,
            Err(err) => assert!(Instant::now() < deadline, "buffer never pushed: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_replica_incr_returns_once_the_replica_has_the_increment() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary, &[]);
    let cache = cache_on(&primary);
    let views = cache.counters("views");
    primary.reset_stats();

    views
        .incr("a", 2)
        .await
        .expect("acknowledged by the replica");
    views
        .incr("a", 3)
        .await
        .expect("acknowledged by the replica");
    // WAIT returned: the replica has applied the push (it acknowledges the offset it applied).
    let on_replica: i64 = replica.query(redis::cmd("HGET").arg(views.redis_key()).arg("a"));
    assert_eq!(on_replica, 5);
    assert!(
        primary.command_calls("wait") >= 2,
        "each awaited push waited for the replica: {:?}",
        primary.cache_command_calls()
    );

    let db = Arc::new(Db::default());
    let report = views.flush_now_with_id(reliable_sink(&db)).await.unwrap();
    assert_eq!(report.batches, 1);
    assert_eq!(db.totals(), HashMap::from([("a".to_owned(), 5)]));
    let stats = views.stats();
    assert_eq!((stats.unreplicated, stats.rejected), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replica_makes_incr_and_flush_report_it_and_nothing_is_lost_or_doubled() {
    let primary = RedisServer::start();
    let replica = Arc::new(RedisServer::start_replica_of(&primary, &[]));
    let cache = cache_on(&primary);
    let views = cache.counters_with(
        "views",
        CountersConfig::default().retry(Duration::from_millis(10), Duration::from_millis(50)),
    );
    views.incr("a", 1).await.expect("replica up");

    support::on_server(&replica, RedisServer::pause).await;
    let err = views
        .incr("a", 10)
        .await
        .expect_err("no replica acknowledges");
    assert!(
        matches!(err, Error::NotReplicated { timeout } if timeout == OP_TIMEOUT / 3),
        "{err:?}"
    );
    // While no replica acknowledges, awaited increments are buffered and told at once.
    let err = views.incr("b", 5).await.expect_err("still unacknowledged");
    assert!(matches!(err, Error::NotReplicated { .. }), "{err:?}");
    assert!(views.stats().buffered >= 2, "{:?}", views.stats());

    // A flush does not hand the sink a batch no replica has (a failover would count it twice).
    let db = Arc::new(Db::default());
    let flushed = views.flush_now_with_id(reliable_sink(&db)).await;
    assert!(
        matches!(flushed, Err(Error::NotReplicated { .. })),
        "{flushed:?}"
    );
    assert_eq!(db.batches(), 0, "nothing delivered");
    let unreplicated = views.stats().unreplicated;
    assert!(unreplicated >= 2, "push and seal counted: {unreplicated}");

    support::on_server(&replica, RedisServer::resume).await;
    sync_within(&views, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(err) = views.flush_now_with_id(reliable_sink(&db)).await {
        assert!(Instant::now() < deadline, "never flushed: {err}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        db.totals(),
        HashMap::from([("a".to_owned(), 11), ("b".to_owned(), 5)]),
        "every increment exactly once"
    );
    let stats = views.stats();
    assert_eq!(stats.buffered, 0, "{stats:?}");
    assert!(
        stats.replayed >= 1,
        "the unacknowledged push was resent, not applied twice: {stats:?}"
    );
    views
        .incr("a", 1)
        .await
        .expect("the replica acknowledges again");
}

// One thread: both increments are buffered before the pusher runs, so they share one push.
#[tokio::test]
async fn an_increment_that_would_overflow_is_rejected_by_name_and_the_rest_of_its_push_applies() {
    let server = RedisServer::start();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let cache = Cache::builder()
        .name("overflow")
        .redis(server.url())
        .namespace("wb")
        .build()
        .unwrap();
    let views = metrics::with_local_recorder(&recorder, || cache.counters("views"));
    let max = i64::MAX.to_string();
    server.cli(&["HSET", views.redis_key(), "big", &max]);

    let (big, small) = tokio::join!(views.incr("big", 1), views.incr("small", 3));
    match big {
        Err(Error::CounterRejected { counters, rejected }) => {
            assert_eq!(counters, "views");
            assert_eq!(rejected, vec![("big".to_owned(), 1)]);
        }
        other => panic!("expected CounterRejected, got {other:?}"),
    }
    small.expect("the other counter of the push applies");
    assert_eq!(views.stats().pushes, 1, "one push carried both");
    let stored: HashMap<String, String> =
        server.query(redis::cmd("HGETALL").arg(views.redis_key()));
    assert_eq!(stored["big"], max, "not incremented");
    assert_eq!(stored["small"], "3");
    assert_eq!(views.stats().rejected, 1);
    let rendered = metrics.render();
    assert!(
        rendered
            .lines()
            .any(|line| line.starts_with("cache_counter_rejected_total")
                && line.contains("counters=\"views\"")
                && line.ends_with(" 1")),
        "{rendered}"
    );
    // Reported, not retried: later increments of other ids are unaffected.
    views.incr("small", 1).await.unwrap();
    assert_eq!(views.stats().rejected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replicas_no_wait_is_sent() {
    let server = RedisServer::start();
    let cache = cache_on(&server);
    let views = cache.counters("views");
    server.reset_stats();
    for i in 0..20 {
        views.incr(&format!("k{}", i % 3), 1).await.unwrap();
    }
    let db = Arc::new(Db::default());
    views.flush_now_with_id(reliable_sink(&db)).await.unwrap();
    assert_eq!(db.totals().values().sum::<i64>(), 20);
    let commandstats = server.info("commandstats");
    assert!(
        !commandstats.contains("cmdstat_wait"),
        "no WAIT without replicas: {commandstats}"
    );
    assert_eq!(views.stats().unreplicated, 0);
}

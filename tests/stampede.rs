//! Stampede protection end to end: cross-process locking with real worker processes, and hot keys
//! under continuous load with stale-while-revalidate and early refresh, on real Redis.

mod support;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use cache_layer::{Cache, Policy, Stampede};
use support::{shared_redis_url, unique_prefix};

/// One worker process of `stampede-worker`, its stdin (go signal) and a feed of its stdout lines.
struct Worker {
    child: Child,
    stdin: ChildStdin,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `count` workers on one key and waits until each has printed READY.
/// Returns the workers and a channel of `(worker index, line)`.
fn start_workers(
    count: usize,
    namespace: &str,
    callers: usize,
    source_ms: u64,
    mode: &str,
    lock_wait_ms: u64,
) -> (Vec<Worker>, mpsc::Receiver<(usize, String)>) {
    let (tx, rx) = mpsc::channel();
    let mut workers = Vec::new();
    for index in 0..count {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stampede-worker"))
            .args([
                shared_redis_url(),
                namespace.to_string(),
                "cold-key".to_string(),
                callers.to_string(),
                source_ms.to_string(),
                mode.to_string(),
                lock_wait_ms.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn stampede-worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take().expect("piped stdin");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((index, line)).is_err() {
                    break;
                }
            }
        });
        workers.push(Worker { child, stdin });
    }
    let mut ready = 0;
    while ready < count {
        let (_, line) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("worker READY");
        if line == "READY" {
            ready += 1;
        }
    }
    (workers, rx)
}

fn go(workers: &mut [Worker]) {
    for worker in workers.iter_mut() {
        worker.stdin.write_all(b"go\n").expect("send go");
        worker.stdin.flush().expect("flush go");
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct WorkerResult {
    loads: usize,
    ok: usize,
    max_ms: u64,
}

fn parse_result(line: &str) -> Option<WorkerResult> {
    let rest = line.strip_prefix("RESULT ")?;
    let mut result = WorkerResult::default();
    for field in rest.split(' ') {
        let (name, value) = field.split_once('=')?;
        let value: u64 = value.parse().ok()?;
        match name {
            "loads" => result.loads = value as usize,
            "ok" => result.ok = value as usize,
            "max_ms" => result.max_ms = value,
            _ => return None,
        }
    }
    Some(result)
}

/// Collects RESULT lines from the workers in `expected`, within `timeout`.
fn collect_results(
    rx: &mpsc::Receiver<(usize, String)>,
    expected: &[usize],
    timeout: Duration,
) -> Vec<(usize, WorkerResult)> {
    let deadline = Instant::now() + timeout;
    let mut results = Vec::new();
    while results.len() < expected.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let (index, line) = rx
            .recv_timeout(left)
            .expect("all workers report within the timeout");
        if let Some(result) = parse_result(&line) {
            if expected.contains(&index) {
                results.push((index, result));
            }
        }
    }
    results
}

#[test]
fn four_processes_a_thousand_callers_one_source_call_with_lock() {
    let namespace = unique_prefix("xproc_lock");
    let (mut workers, rx) = start_workers(4, &namespace, 250, 200, "lock", 5_000);
    go(&mut workers);
    let results = collect_results(&rx, &[0, 1, 2, 3], Duration::from_secs(30));
    let loads: usize = results.iter().map(|(_, r)| r.loads).sum();
    let ok: usize = results.iter().map(|(_, r)| r.ok).sum();
    assert_eq!(ok, 1000, "every caller got the value: {results:?}");
    assert_eq!(
        loads, 1,
        "the source ran exactly once across 4 processes: {results:?}"
    );
}

#[test]
fn without_the_lock_each_process_loads_once() {
    // The control experiment: in-process single-flight alone gives one load per process.
    let namespace = unique_prefix("xproc_coalesce");
    let (mut workers, rx) = start_workers(4, &namespace, 250, 200, "coalesce", 5_000);
    go(&mut workers);
    let results = collect_results(&rx, &[0, 1, 2, 3], Duration::from_secs(30));
    let loads: usize = results.iter().map(|(_, r)| r.loads).sum();
    assert_eq!(results.iter().map(|(_, r)| r.ok).sum::<usize>(), 1000);
    assert!(
        loads > 1 && loads <= 4,
        "one load per process at most: {results:?}"
    );
}

#[test]
fn a_killed_lock_holder_costs_the_others_at_most_one_wait() {
    let (source_ms, lock_wait_ms) = (1_000, 1_500);
    let namespace = unique_prefix("xproc_killed");
    let (mut workers, rx) = start_workers(4, &namespace, 250, source_ms, "lock", lock_wait_ms);
    go(&mut workers);
    // The first process whose source starts holds the lock: kill it mid-load.
    let holder = loop {
        let (index, line) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("someone loads");
        if line == "LOADING" {
            break index;
        }
    };
    let killed_at = Instant::now();
    workers[holder].child.kill().expect("kill the lock holder");
    let _ = workers[holder].child.wait();
    let others: Vec<usize> = (0..4).filter(|i| *i != holder).collect();
    let results = collect_results(&rx, &others, Duration::from_secs(30));
    let finished_after = killed_at.elapsed();
    assert_eq!(
        results.iter().map(|(_, r)| r.ok).sum::<usize>(),
        750,
        "{results:?}"
    );
    // Bound: one lock wait (the lock TTL of a cold key equals it) + one source call + margin.
    let bound = Duration::from_millis(lock_wait_ms + source_ms + 2_000);
    assert!(
        finished_after < bound,
        "took {finished_after:?}, bound {bound:?}: {results:?}"
    );
    for (_, r) in &results {
        assert!(r.max_ms < bound.as_millis() as u64, "{results:?}");
    }
}

/// Runs `tasks` readers of one hot key for `duration` and returns (source calls, misses after
/// warm-up, stale hits after warm-up).
async fn hot_key(policy: Policy, tasks: usize, duration: Duration) -> (usize, u64, u64) {
    let cache = Cache::builder()
        .redis(shared_redis_url())
        .namespace(unique_prefix("hot_key"))
        // A slow GET on a busy 2-core machine must not look like an outage here.
        .op_timeout(Duration::from_secs(2))
        .build()
        .expect("valid configuration");
    let source_calls = Arc::new(AtomicUsize::new(0));
    let loader = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Instant::now().elapsed().as_nanos() as u64
        }
    };
    // Warm-up: the one cold miss.
    let _: u64 = cache
        .get_or_fetch("hot", &policy, loader(source_calls.clone()))
        .await;
    let before = cache.stats();
    let deadline = Instant::now() + duration;
    let readers = (0..tasks).map(|_| {
        let (cache, policy, calls) = (cache.clone(), policy.clone(), source_calls.clone());
        tokio::spawn(async move {
            while Instant::now() < deadline {
                let _: u64 = cache
                    .get_or_fetch("hot", &policy, loader(calls.clone()))
                    .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    });
    for reader in futures_util::future::join_all(readers).await {
        reader.expect("reader task");
    }
    let after = cache.stats();
    (
        source_calls.load(Ordering::SeqCst),
        after.misses - before.misses,
        after.stale_hits - before.stale_hits,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_keeps_a_hot_key_warm_without_blocking() {
    let ttl = Duration::from_millis(500);
    let policy = Policy::ttl(ttl).stale(Duration::from_secs(30));
    let run = Duration::from_millis(3_500);
    let (calls, misses, stale_hits) = hot_key(policy, 8, run).await;
    let periods = (run.as_millis() / ttl.as_millis()) as usize;
    assert_eq!(misses, 0, "no caller waited on a load after warm-up");
    assert!(stale_hits > 0, "stale values were served while refreshing");
    assert!(
        calls >= periods / 2 && calls <= periods + 2,
        "about one source call per TTL period: {calls} calls in {periods} periods"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refresh_keeps_a_hot_key_warm_without_blocking() {
    let ttl = Duration::from_millis(1_000);
    let policy = Policy::ttl(ttl).stampede(Stampede::Early);
    let run = Duration::from_millis(4_000);
    let (calls, misses, stale_hits) = hot_key(policy, 8, run).await;
    let periods = (run.as_millis() / ttl.as_millis()) as usize;
    assert_eq!(
        misses, 0,
        "the value was always refreshed before it expired"
    );
    assert_eq!(stale_hits, 0, "no grace period configured, none used");
    assert!(
        calls >= periods / 2 && calls <= periods * 2 + 1,
        "about one source call per TTL period: {calls} calls in {periods} periods"
    );
}

/// Sets `key` to `value` and lets its TTL pass, leaving a stale (grace) entry.
async fn stale_entry(cache: &Cache, policy: &Policy, key: &str, value: &str) {
    cache
        .set(key, &value.to_string(), policy)
        .await
        .expect("set");
    let fresh_for = policy.ttl_duration();
    // Waiting out the TTL is the point: the entry must become stale.
    tokio::time::sleep(fresh_for + Duration::from_millis(30)).await;
}

fn caches(test: &str) -> Vec<(&'static str, Cache)> {
    let redis = Cache::builder()
        .redis(shared_redis_url())
        .namespace(unique_prefix(test))
        .build()
        .expect("valid configuration");
    vec![("redis", redis), ("memory", Cache::in_memory())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_is_served_at_once_and_refreshed_in_the_background() {
    for (store, cache) in caches("swr") {
        let policy = Policy::ttl(Duration::from_millis(100)).stale(Duration::from_secs(30));
        stale_entry(&cache, &policy, "k", "old").await;
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let v: String = cache
            .get_or_fetch("k", &policy, move || async move {
                let _ = release_rx.await;
                "new".to_string()
            })
            .await;
        assert_eq!(
            v, "old",
            "{store}: answered with the stale value while the source is busy"
        );
        release_tx.send(()).expect("refresh is waiting");
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.get::<String>("k").await.unwrap().as_deref() != Some("new") {
            assert!(Instant::now() < deadline, "{store}: refresh never landed");
            tokio::task::yield_now().await;
        }
        assert_eq!(cache.stats().refreshes, 1, "{store}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_and_refresh_failures_are_throttled() {
    for (store, cache) in caches("stale_if_error") {
        let policy = Policy::ttl(Duration::from_millis(100)).stale(Duration::from_secs(30));
        stale_entry(&cache, &policy, "k", "old").await;
        let attempts = Arc::new(AtomicUsize::new(0));
        for _ in 0..20 {
            let attempts = attempts.clone();
            let v: Result<String, &str> = cache
                .try_get_or_fetch("k", &policy, move || async move {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    Err("database down")
                })
                .await;
            assert_eq!(v.as_deref(), Ok("old"), "{store}: stale beats the error");
            tokio::task::yield_now().await;
        }
        // The first failed refresh holds further attempts off for a while.
        let deadline = Instant::now() + Duration::from_secs(2);
        while cache.stats().load_errors < 1 {
            assert!(Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "{store}: refresh failures are throttled"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_load_timeout_answers_stale_and_lets_the_load_finish() {
    for (store, cache) in caches("soft_timeout") {
        let policy = Policy::ttl(Duration::from_millis(100))
            .stale(Duration::from_secs(30))
            .load_timeout(Duration::from_millis(50));
        stale_entry(&cache, &policy, "slow", "old").await;
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let v: String = cache
            .get_or_fetch("slow", &policy, move || async move {
                let _ = release_rx.await;
                "new".to_string()
            })
            .await;
        assert_eq!(
            v, "old",
            "{store}: past the soft timeout the stale value answers"
        );
        release_tx
            .send(())
            .expect("load still running after the timeout");
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.get::<String>("slow").await.unwrap().as_deref() != Some("new") {
            assert!(
                Instant::now() < deadline,
                "{store}: the load never finished"
            );
            tokio::task::yield_now().await;
        }

        // A quick source within the soft timeout answers fresh.
        stale_entry(&cache, &policy, "quick", "old").await;
        let v: String = cache
            .get_or_fetch("quick", &policy, || async { "new".to_string() })
            .await;
        assert_eq!(
            v, "new",
            "{store}: within the soft timeout the fresh value answers"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrowing_loaders_refresh_in_the_caller_others_get_stale() {
    for (store, cache) in caches("scoped_stale") {
        let policy = Policy::ttl(Duration::from_millis(100)).stale(Duration::from_secs(30));
        stale_entry(&cache, &policy, "k", "old").await;
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let refresher = {
            let (cache, policy) = (cache.clone(), policy.clone());
            tokio::spawn(async move {
                cache
                    .get_or_fetch_scoped("k", &policy, || async move {
                        let _ = release_rx.await;
                        "new".to_string()
                    })
                    .await
            })
        };
        while cache.stats().refreshes < 1 {
            tokio::task::yield_now().await;
        }
        let other: String = cache
            .get_or_fetch_scoped("k", &policy, || async { "x".to_string() })
            .await;
        assert_eq!(
            other, "old",
            "{store}: other callers get the stale value at once"
        );
        release_tx.send(()).expect("refresher waiting");
        assert_eq!(
            refresher.await.unwrap(),
            "new",
            "{store}: the triggering caller refreshed"
        );
    }
}

//! Fault injection against real Redis. Every test starts its own `redis-server` (never the shared
//! one), runs [`TASKS`] concurrent read-through callers against it, injects one fault and asserts:
//!
//! - no call fails or returns a wrong value: Redis trouble never reaches `get_or_fetch` callers;
//! - every call is answered within [`BOUND`] (op timeout + source time + a generous margin for a
//!   small, shared machine), including while Redis is hung;
//! - after the fault is removed the cache recovers: the breaker closes and Redis serves hits again.
//!
//! Direct operations (`get`/`set`) are checked to report each fault with a message that names it.
//!
//! The tests run one at a time ([`run`]): they measure latency, and running several 200-task loads
//! at once on two cores would measure the machine instead. Each prints one summary line
//! (`cargo test --test faults -- --nocapture` to see them).

mod support;

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use cache_layer::{
    cached, BreakerConfig, BreakerState, Cache, CacheLayer, Policy, Stampede, Stats,
};
use support::{on_server, random_u64, RedisServer};

/// The cache's per-operation timeout.
const OP_TIMEOUT: Duration = Duration::from_millis(100);
/// How long the breaker stays open before probing.
const COOLDOWN: Duration = Duration::from_millis(300);
/// How long the source (the "database") takes per load.
const SOURCE_TIME: Duration = Duration::from_millis(5);
/// Every call must be answered within this: a miss is at most GET + load + SET, i.e.
/// 2 × 100 ms + 5 ms, and a coalesced follower adds one GET; the rest is scheduling margin.
const BOUND: Duration = Duration::from_secs(1);
/// A call this slow is reported as hung (and abandoned, so a broken build cannot hang the test).
const HANG: Duration = Duration::from_secs(5);
/// Concurrent callers.
const TASKS: usize = 200;
/// Distinct keys the callers read.
const KEYS: u64 = 100;
/// Pause between two calls of one caller (keeps 200 callers from saturating two cores).
const THINK: Duration = Duration::from_millis(2);
/// How long a fault lasts under load.
const FAULT_TIME: Duration = Duration::from_millis(1500);
/// Upper limit for recovery after the fault is removed (recovery itself takes about a cooldown).
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);
/// L2 hits that prove Redis is serving again.
const HITS_FOR_RECOVERY: u64 = 200;

type Value = (u64, String);

fn value_of(k: u64) -> Value {
    (k, format!("value of item {k}"))
}

fn key(k: u64) -> String {
    format!("item:{k}")
}

fn policy() -> Policy {
    Policy::ttl(Duration::from_secs(60))
}

fn builder(url: &str) -> cache_layer::CacheBuilder {
    Cache::builder()
        .redis(url)
        .namespace(format!("faults-{:08x}", random_u64() as u32))
        .op_timeout(OP_TIMEOUT)
        .checkout_timeout(OP_TIMEOUT)
        .connect_timeout(OP_TIMEOUT)
}

/// The cache under load.
fn cache(url: &str) -> Cache {
    with_breaker(builder(url))
}

/// `builder` with the breaker of the cache under load.
fn with_breaker(builder: cache_layer::CacheBuilder) -> Cache {
    builder
        .breaker(BreakerConfig {
            failure_threshold: 5,
            cooldown: COOLDOWN,
            ..Default::default()
        })
        .build()
        .expect("valid configuration")
}

/// A cache whose breaker never opens, so direct operations show the raw failure.
fn unprotected_cache(url: &str) -> Cache {
    builder(url)
        .breaker(BreakerConfig {
            failure_threshold: u32::MAX,
            window: Duration::ZERO,
            ..Default::default()
        })
        .build()
        .expect("valid configuration")
}

/// Runs one test on its own 2-worker runtime, one test at a time.
fn run(test: impl Future<Output = ()>) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _serial = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(test);
}

/// Runs a blocking harness call (kill, restart, redis-cli, ...) off the runtime's workers, so the
/// load keeps running while it waits.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
}

/// `redis-cli` on `server`, off the runtime's workers.
async fn cli(server: &Arc<RedisServer>, args: &[&str]) -> String {
    let (server, args) = (
        server.clone(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    blocking(move || server.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())).await
}

// ---------------------------------------------------------------------------------------------
// Load generator
// ---------------------------------------------------------------------------------------------

/// [`TASKS`] callers doing `try_get_or_fetch` on random keys until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<CallerReport>>,
    source_calls: Arc<AtomicU64>,
}

#[derive(Default)]
struct CallerReport {
    latencies_us: Vec<u32>,
    failures: Vec<String>,
}

/// What the callers saw.
struct Report {
    calls: usize,
    failures: Vec<String>,
    over_bound: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Load {
    /// Every key read with [`policy`].
    fn start(cache: &Cache) -> Load {
        Load::start_with(cache, |_| policy())
    }

    /// Key `k` read with `policy_for(k)`.
    fn start_with(cache: &Cache, policy_for: fn(u64) -> Policy) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let source_calls = Arc::new(AtomicU64::new(0));
        let tasks = (0..TASKS)
            .map(|task| {
                let (cache, stop, source_calls) =
                    (cache.clone(), stop.clone(), source_calls.clone());
                tokio::spawn(async move {
                    let mut report = CallerReport::default();
                    let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ (task as u64 + 1);
                    while !stop.load(Ordering::Relaxed) {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let k = rng % KEYS;
                        let source_calls = source_calls.clone();
                        let loader = move || async move {
                            source_calls.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(SOURCE_TIME).await;
                            Ok::<Value, String>(value_of(k))
                        };
                        let started = Instant::now();
                        let (key, policy) = (key(k), policy_for(k));
                        let call = cache.try_get_or_fetch(&key, &policy, loader);
                        let outcome = tokio::time::timeout(HANG, call).await;
                        let took = started.elapsed();
                        report
                            .latencies_us
                            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                        let failure = match outcome {
                            Err(_) => Some(format!("call for {key} hung for {HANG:?}")),
                            Ok(Err(err)) => Some(format!("call for {key} failed: {err}")),
                            Ok(Ok(v)) if v != value_of(k) => {
                                Some(format!("call for {key} returned {v:?}"))
                            }
                            Ok(Ok(_)) => None,
                        };
                        if let Some(failure) = failure {
                            if report.failures.len() < 5 {
                                report.failures.push(failure);
                            }
                        }
                        tokio::time::sleep(THINK).await;
                    }
                    report
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            source_calls,
        }
    }

    /// Stops the callers, checks what they saw ([`Report::assert_ok`]) and prints the summary.
    async fn finish(self, scenario: &str, recovered_in: Duration, cache: &Cache) {
        let report = self.stop().await;
        report.assert_ok(scenario);
        summary(scenario, &report, recovered_in, &cache.stats());
    }

    fn source_calls(&self) -> u64 {
        self.source_calls.load(Ordering::Relaxed)
    }

    async fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut latencies = Vec::new();
        let mut failures = Vec::new();
        for task in self.tasks {
            let report = task
                .await
                .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
            latencies.extend(report.latencies_us);
            failures.extend(report.failures);
        }
        latencies.sort_unstable();
        let at = |q: f64| {
            let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
            Duration::from_micros(latencies.get(i).copied().unwrap_or(0).into())
        };
        let bound_us = u32::try_from(BOUND.as_micros()).unwrap_or(u32::MAX);
        Report {
            calls: latencies.len(),
            over_bound: latencies.iter().filter(|&&us| us > bound_us).count(),
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
            failures,
        }
    }
}

impl Report {
    /// Zero failed calls, every call within [`BOUND`], and enough calls to mean something.
    fn assert_ok(&self, scenario: &str) {
        assert!(
            self.failures.is_empty(),
            "{scenario}: calls failed: {:#?}",
            self.failures
        );
        assert_eq!(
            self.over_bound, 0,
            "{scenario}: {} of {} calls took longer than {BOUND:?} (max {:?})",
            self.over_bound, self.calls, self.max
        );
        assert!(
            self.calls >= 2 * TASKS,
            "{scenario}: only {} calls were made",
            self.calls
        );
    }
}

/// Redis-served hits (not L1).
fn l2_hits(stats: &Stats) -> u64 {
    stats.hits - stats.local_hits
}

/// Waits (bounded) until the breaker is closed and Redis served [`HITS_FOR_RECOVERY`] more hits;
/// returns how long that took.
async fn recovery(cache: &Cache, scenario: &str) -> Duration {
    let started = Instant::now();
    let before = l2_hits(&cache.stats());
    loop {
        let stats = cache.stats();
        if stats.breaker == BreakerState::Closed && l2_hits(&stats) >= before + HITS_FOR_RECOVERY {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < RECOVERY_LIMIT,
            "{scenario}: no recovery within {RECOVERY_LIMIT:?}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`cache`] on `server` under [`Load::start`], warmed up.
async fn under_load(scenario: &str, server: &RedisServer) -> (Cache, Load) {
    let cache = cache(&server.url());
    let load = Load::start(&cache);
    warmed_up(&cache, scenario).await;
    (cache, load)
}

/// Waits (bounded) until the load is served from Redis (before injecting a fault).
async fn warmed_up(cache: &Cache, scenario: &str) {
    recovery(cache, &format!("{scenario} (warm-up)")).await;
}

/// After recovery, with the data still in Redis, the source is not called any more (calls that
/// missed during the outage get 100 ms to finish first).
async fn assert_no_more_loads(cache: &Cache, scenario: &str) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = cache.stats();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = cache.stats();
    assert_eq!(
        after.loads, before.loads,
        "{scenario}: loads while every key is in Redis: {before:?} -> {after:?}"
    );
}

/// A direct `get` on a cache without breaker protection: the error and how long it took.
async fn direct_get_error(url: &str) -> (String, Duration) {
    let cache = unprotected_cache(url);
    let started = Instant::now();
    let result = cache.get::<Value>(&key(0)).await;
    let took = started.elapsed();
    match result {
        Err(err) => (err.to_string(), took),
        Ok(v) => panic!("expected an error from a direct get, got Ok({v:?})"),
    }
}

/// The summary line of one scenario (see the file docs).
fn summary(scenario: &str, report: &Report, recovered_in: Duration, stats: &Stats) {
    eprintln!(
        "faults[{scenario}]: {} calls, 0 failed, latency p50 {:?} p99 {:?} max {:?} (bound {BOUND:?}); \
         recovered in {recovered_in:?}; loads {} redis errors {} breaker transitions {}",
        report.calls,
        report.p50,
        report.p99,
        report.max,
        stats.loads,
        stats.errors,
        stats.breaker_transitions
    );
}

/// During an outage the breaker opened and the source answered.
fn assert_fell_back(
    scenario: &str,
    before: &Stats,
    during: &Stats,
    source_before: u64,
    load: &Load,
) {
    assert!(
        during.breaker_transitions > before.breaker_transitions,
        "{scenario}: the breaker never opened: {during:?}"
    );
    assert!(
        load.source_calls() > source_before,
        "{scenario}: the source was never called during the outage"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL, then a restart with no data
// ---------------------------------------------------------------------------------------------

#[test]
fn sigkill_then_restart_empty() {
    run(async {
        let scenario = "sigkill+restart-empty";
        let server = Arc::new(RedisServer::start());
        let (cache, load) = under_load(scenario, &server).await;
        let (before, source_before) = (cache.stats(), load.source_calls());

        on_server(&server, RedisServer::kill).await;
        tokio::time::sleep(FAULT_TIME).await;
        let during = cache.stats();
        assert_fell_back(scenario, &before, &during, source_before, &load);
        // Open, or half-open while a probe finds out it still is.
        assert_ne!(during.breaker, BreakerState::Closed, "{during:?}");
        // Open: a miss at once. Half-open: this call may be the probe, which fails with the
        // connection error and reopens the breaker; the next call is then a miss.
        let read = match cache.get::<Value>(&key(1)).await {
            Err(cache_layer::Error::Redis(_) | cache_layer::Error::Timeout(_)) => {
                cache.get::<Value>(&key(1)).await
            }
            read => read,
        };
        assert_eq!(read.expect("breaker open: a miss"), None);
        let (err, took) = direct_get_error(&server.url()).await;
        assert!(err.contains("could not connect to redis"), "{err}");
        assert!(
            took < OP_TIMEOUT,
            "a refused connection fails fast, took {took:?}"
        );

        on_server(&server, RedisServer::restart).await;
        let recovered_in = recovery(&cache, scenario).await;
        load.finish(scenario, recovered_in, &cache).await;
    });
}

// ---------------------------------------------------------------------------------------------
// 2. SIGSTOP then SIGCONT: the hang
// ---------------------------------------------------------------------------------------------

#[test]
fn sigstop_then_sigcont() {
    run(async {
        let scenario = "sigstop+sigcont";
        let server = Arc::new(RedisServer::start());
        let (cache, load) = under_load(scenario, &server).await;
        let (before, source_before) = (cache.stats(), load.source_calls());

        on_server(&server, RedisServer::pause).await;
        tokio::time::sleep(FAULT_TIME).await;
        let during = cache.stats();
        assert_fell_back(scenario, &before, &during, source_before, &load);
        // A hung server, and a new connection to it (the kernel accepts, nobody answers the
        // handshake): bounded by the op timeout either way.
        let (err, took) = direct_get_error(&server.url()).await;
        assert!(err.contains("did not answer within"), "{err}");
        assert!(took < BOUND, "took {took:?}");

        on_server(&server, RedisServer::resume).await;
        let recovered_in = recovery(&cache, scenario).await;
        // The data survived the pause: once Redis is back, nothing is loaded again.
        assert_no_more_loads(&cache, scenario).await;
        load.finish(scenario, recovered_in, &cache).await;
    });
}

// ---------------------------------------------------------------------------------------------
// 3. Restart on the same port (data saved, so it survives)
// ---------------------------------------------------------------------------------------------

#[test]
fn restart_on_the_same_port() {
    run(async {
        let scenario = "restart-same-port";
        let server = Arc::new(RedisServer::start());
        let (cache, load) = under_load(scenario, &server).await;

        cli(&server, &["SAVE"]).await;
        on_server(&server, RedisServer::restart).await;
        let recovered_in = recovery(&cache, scenario).await;
        // Reconnected to the restarted server, which loaded its data: no more source calls.
        assert_no_more_loads(&cache, scenario).await;
        load.finish(scenario, recovered_in, &cache).await;
    });
}

// ---------------------------------------------------------------------------------------------
// 4. Out of memory: maxmemory with noeviction rejects writes; reads keep hitting
// ---------------------------------------------------------------------------------------------

#[test]
fn out_of_memory_rejects_writes_and_reads_keep_hitting() {
    run(async {
        let scenario = "oom-noeviction";
        let server = Arc::new(RedisServer::start_with(&[
            "--maxmemory-policy",
            "noeviction",
        ]));
        let (cache, load) = under_load(scenario, &server).await;
        let connections_before: u64 = info_stat(&server, "total_connections_received").await;

        cli(&server, &["CONFIG", "SET", "maxmemory", "1"]).await;
        // Half the keys disappear: their callers miss, load, and fail to store.
        for k in KEYS / 2..KEYS {
            cli(&server, &["DEL", &cache.redis_key(&key(k))]).await;
        }
        let before = cache.stats();
        tokio::time::sleep(FAULT_TIME).await;
        let during = cache.stats();
        assert!(during.errors > before.errors, "writes failed: {during:?}");
        assert!(
            l2_hits(&during) > l2_hits(&before) + HITS_FOR_RECOVERY,
            "reads kept hitting: {during:?}"
        );
        assert_eq!(
            during.breaker_transitions, before.breaker_transitions,
            "OOM is not an outage: the breaker stays closed"
        );
        let err = unprotected_cache(&server.url())
            .set(&key(KEYS + 1), &value_of(KEYS + 1), &policy())
            .await
            .expect_err("a write is rejected");
        assert!(err.to_string().contains("redis is out of memory"), "{err}");

        cli(&server, &["CONFIG", "SET", "maxmemory", "0"]).await;
        let recovered_in = recovery(&cache, scenario).await;
        // Refilled: every key is stored again.
        for k in 0..KEYS {
            let stored = wait_for(Duration::from_secs(5), || async {
                cache.get::<Value>(&key(k)).await.ok().flatten() == Some(value_of(k))
            })
            .await;
            assert!(stored, "{} was never stored again", key(k));
        }
        load.finish(scenario, recovered_in, &cache).await;
        let connections_after: u64 = info_stat(&server, "total_connections_received").await;
        // OOM replies do not retire connections (the cli calls above account for the rest).
        assert!(
            connections_after - connections_before <= KEYS / 2 + 10,
            "connections churned: {connections_before} -> {connections_after}"
        );
    });
}

async fn info_stat(server: &Arc<RedisServer>, field: &str) -> u64 {
    let s = server.clone();
    let field = field.to_owned();
    blocking(move || s.info_field("stats", &field))
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("INFO stats has no numeric field"))
}

/// Polls an async condition every 10 ms until it holds or `timeout` passes.
async fn wait_for<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Authentication: no password, wrong password
// ---------------------------------------------------------------------------------------------

/// A server that requires `password` (set before any client connects: the harness' own start-up
/// check cannot authenticate, so `--requirepass` on the command line is not an option).
fn server_with_password(password: &str) -> Arc<RedisServer> {
    let server = Arc::new(RedisServer::start());
    server.cli(&["CONFIG", "SET", "requirepass", password]);
    server
}

/// Load against a server the cache cannot authenticate to, from the start; then `fix` it.
async fn auth_scenario(scenario: &str, server: &Arc<RedisServer>, cache_url: &str, fix: &[&str]) {
    let cache = cache(cache_url);
    let load = Load::start(&cache);
    tokio::time::sleep(FAULT_TIME).await;
    let during = cache.stats();
    assert!(
        during.breaker_transitions > 0,
        "{scenario}: the breaker opened: {during:?}"
    );
    assert_eq!(l2_hits(&during), 0, "{scenario}: nothing can be read");
    assert!(load.source_calls() > 0, "{scenario}: the source answered");
    let (err, took) = direct_get_error(cache_url).await;
    assert!(
        err.contains("redis authentication failed"),
        "{scenario}: {err}"
    );
    assert!(took < OP_TIMEOUT, "{scenario}: fails fast, took {took:?}");

    let mut args = vec!["-a", "secret", "--no-auth-warning"];
    args.extend_from_slice(fix);
    cli(server, &args).await;
    let recovered_in = recovery(&cache, scenario).await;
    load.finish(scenario, recovered_in, &cache).await;
}

#[test]
fn no_password_is_noauth() {
    run(async {
        let server = server_with_password("secret");
        let url = server.url();
        // The operator drops the password requirement.
        auth_scenario(
            "noauth",
            &server,
            &url,
            &["CONFIG", "SET", "requirepass", ""],
        )
        .await;
    });
}

#[test]
fn wrong_password_fails_authentication() {
    run(async {
        let server = server_with_password("secret");
        let url = format!("redis://:wrong@{}", server.addr());
        // The operator rolls the server's password to the one the application has.
        auth_scenario(
            "wrong-password",
            &server,
            &url,
            &["CONFIG", "SET", "requirepass", "wrong"],
        )
        .await;
    });
}

// ---------------------------------------------------------------------------------------------
// 6. CLIENT KILL of our connections
// ---------------------------------------------------------------------------------------------

/// Ids of the normal clients connected to `server`, except the `redis-cli` asking.
async fn client_ids(server: &Arc<RedisServer>) -> Vec<u64> {
    cli(server, &["CLIENT", "LIST", "TYPE", "normal"])
        .await
        .lines()
        .filter(|line| !line.contains("cmd=client|list"))
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("id="))
                .and_then(|id| id.parse().ok())
        })
        .collect()
}

#[test]
fn client_kill_replaces_connections() {
    run(client_kill_scenario("client-kill", 1));
}

/// With `pool_size(3)` the cache talks on three connections of its own; killing them all
/// (repeatedly) gets each replaced, and nobody notices either.
#[test]
fn client_kill_replaces_every_connection_of_a_larger_pool() {
    run(client_kill_scenario("client-kill-pool-3", 3));
}

async fn client_kill_scenario(scenario: &str, pool_size: u32) {
    let server = Arc::new(RedisServer::start());
    let cache = with_breaker(builder(&server.url()).pool_size(pool_size));
    let load = Load::start(&cache);
    warmed_up(&cache, scenario).await;
    let before = client_ids(&server).await;
    assert_eq!(
        before.len(),
        pool_size as usize,
        "{scenario}: the cache's normal connections are its pool: {before:?}"
    );

    for _ in 0..5 {
        cli(&server, &["CLIENT", "KILL", "TYPE", "normal"]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let recovered_in = recovery(&cache, scenario).await;
    let after = client_ids(&server).await;
    load.finish(scenario, recovered_in, &cache).await;
    assert_eq!(
        after.len(),
        pool_size as usize,
        "{scenario}: reconnected: {after:?}"
    );
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "{scenario}: every killed connection was replaced: before {before:?}, after {after:?}"
    );
    // A dropped connection is retried on another one: nobody noticed, not even the breaker.
    let stats = cache.stats();
    assert_eq!(
        (stats.errors, stats.breaker_transitions),
        (0, 0),
        "{scenario}: {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. A slow Redis: DEBUG SLEEP, and a busy Lua script
// ---------------------------------------------------------------------------------------------

#[test]
fn debug_sleep_longer_than_the_op_timeout() {
    run(async {
        let scenario = "debug-sleep";
        let server = Arc::new(RedisServer::start_with(&["--enable-debug-command", "yes"]));
        let (cache, load) = under_load(scenario, &server).await;
        let (before, source_before) = (cache.stats(), load.source_calls());

        // The server is blocked for 2 s; `redis-cli` returns when it is done.
        let sleeper = {
            let s = server.clone();
            tokio::task::spawn_blocking(move || s.cli(&["DEBUG", "SLEEP", "2"]))
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (err, took) = direct_get_error(&server.url()).await;
        assert!(err.contains("did not answer within"), "{err}");
        assert!(took < BOUND, "took {took:?}");
        sleeper.await.expect("DEBUG SLEEP");
        let during = cache.stats();
        assert_fell_back(scenario, &before, &during, source_before, &load);

        let recovered_in = recovery(&cache, scenario).await;
        load.finish(scenario, recovered_in, &cache).await;
    });
}

#[test]
fn busy_lua_script() {
    run(async {
        let scenario = "busy-script";
        let server = Arc::new(RedisServer::start_with(&["--busy-reply-threshold", "50"]));
        let (cache, load) = under_load(scenario, &server).await;
        let (before, source_before) = (cache.stats(), load.source_calls());

        // A script that never ends on its own; other clients get BUSY after 50 ms.
        let script = {
            let s = server.clone();
            tokio::task::spawn_blocking(move || {
                let mut conn = s.client().get_connection().expect("connect");
                conn.set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("read timeout");
                redis::cmd("EVAL")
                    .arg("while true do end")
                    .arg(0)
                    .query::<()>(&mut conn)
                    .expect_err("the script is killed")
            })
        };
        tokio::time::sleep(FAULT_TIME).await;
        let during = cache.stats();
        assert_fell_back(scenario, &before, &during, source_before, &load);
        let (err, took) = direct_get_error(&server.url()).await;
        assert!(err.contains("redis is busy running a script"), "{err}");
        assert!(took < BOUND, "took {took:?}");

        cli(&server, &["SCRIPT", "KILL"]).await;
        script.await.expect("script client");
        let recovered_in = recovery(&cache, scenario).await;
        load.finish(scenario, recovered_in, &cache).await;
    });
}

// ---------------------------------------------------------------------------------------------
// 8. Garbage written under our keys by another client
// ---------------------------------------------------------------------------------------------

#[test]
fn garbage_under_our_keys_is_replaced() {
    run(async {
        let scenario = "garbage";
        let server = Arc::new(RedisServer::start());
        let (cache, load) = under_load(scenario, &server).await;
        let before = cache.stats();

        let mut conn = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("vandal connection");
        // A well-formed entry holding another type (another application's value).
        let other = self::cache(&server.url());
        other
            .set("foreign", &"a string, not an item".to_string(), &policy())
            .await
            .expect("set foreign entry");
        let foreign: Vec<u8> = redis::cmd("GET")
            .arg(other.redis_key("foreign"))
            .query_async(&mut conn)
            .await
            .expect("GET foreign entry");
        let started = Instant::now();
        let mut written = 0u64;
        while started.elapsed() < FAULT_TIME {
            let target = cache.redis_key(&key(written % KEYS));
            let garbage: Vec<u8> = match written % 5 {
                0 => Vec::new(),
                1 => b"not an envelope".to_vec(),
                2 => (0..64).map(|_| random_u64() as u8).collect(),
                3 => foreign[..foreign.len() / 2].to_vec(),
                _ => foreign.clone(),
            };
            let _: () = redis::cmd("SET")
                .arg(&target)
                .arg(garbage)
                .query_async(&mut conn)
                .await
                .expect("SET garbage");
            if written.is_multiple_of(7) {
                // Not even a string: GET answers WRONGTYPE.
                let _: () = redis::pipe()
                    .atomic()
                    .del(&target)
                    .hset(&target, "f", "v")
                    .query_async(&mut conn)
                    .await
                    .expect("DEL + HSET");
            }
            written += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let during = cache.stats();
        assert!(
            during.corrupt > before.corrupt,
            "garbage was read: {during:?}"
        );
        assert_eq!(
            during.breaker_transitions, before.breaker_transitions,
            "garbage is not an outage"
        );

        let recovered_in = recovery(&cache, scenario).await;
        // Every key holds a valid entry again (the callers replaced the garbage).
        for k in 0..KEYS {
            let replaced = wait_for(Duration::from_secs(5), || async {
                cache.get::<Value>(&key(k)).await.ok().flatten() == Some(value_of(k))
            })
            .await;
            assert!(replaced, "{} still holds garbage", key(k));
        }
        load.finish(scenario, recovered_in, &cache).await;
    });
}

// ---------------------------------------------------------------------------------------------
// Every stampede mode and the grace period, through a hang and an outage
// ---------------------------------------------------------------------------------------------

/// A quarter of the keys each: coalesced, distributed lock, short TTL with a grace period (stale
/// values served while Redis is away), early recomputation with a short TTL.
fn mixed_policy(k: u64) -> Policy {
    match k % 4 {
        0 => policy(),
        1 => policy().stampede(Stampede::Lock),
        2 => Policy::ttl(Duration::from_millis(300)).stale(Duration::from_secs(30)),
        _ => Policy::ttl(Duration::from_secs(1)).stampede(Stampede::Early),
    }
}

#[test]
fn every_stampede_mode_through_a_hang_and_an_outage() {
    run(async {
        let scenario = "mixed-policies";
        let server = Arc::new(RedisServer::start());
        let cache = cache(&server.url());
        let load = Load::start_with(&cache, mixed_policy);
        warmed_up(&cache, scenario).await;

        let (before, source_before) = (cache.stats(), load.source_calls());
        on_server(&server, RedisServer::pause).await;
        tokio::time::sleep(FAULT_TIME).await;
        assert_fell_back(scenario, &before, &cache.stats(), source_before, &load);
        on_server(&server, RedisServer::resume).await;
        let after_hang = recovery(&cache, scenario).await;

        let (before, source_before) = (cache.stats(), load.source_calls());
        on_server(&server, RedisServer::kill).await;
        tokio::time::sleep(FAULT_TIME).await;
        assert_fell_back(scenario, &before, &cache.stats(), source_before, &load);
        on_server(&server, RedisServer::restart).await;
        let after_outage = recovery(&cache, scenario).await;

        load.finish(scenario, after_hang.max(after_outage), &cache)
            .await;
    });
}

// ---------------------------------------------------------------------------------------------
// One breaker for every front door: HTTP layer, #[cached] fns, read-through and direct calls
// ---------------------------------------------------------------------------------------------

#[cached(cache = cache, skip = [cache], ttl = 60)]
async fn price_of(cache: &Cache, id: u64) -> u64 {
    tokio::time::sleep(SOURCE_TIME).await;
    id * 100
}

async fn product_page(axum::extract::Path(id): axum::extract::Path<u64>) -> String {
    format!("product page {id}")
}

/// GET `/products/{id}` through the layer: (status, body, `Cache-Status`, how long it took).
async fn http_get(router: &axum::Router, id: u64) -> (u16, String, String, Duration) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = axum::http::Request::get(format!("/products/{id}"))
        .header("host", "shop.test")
        .body(axum::body::Body::empty())
        .expect("request");
    let started = Instant::now();
    let response = router
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|never| match never {});
    let status = response.status().as_u16();
    let cache_status = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    (status, body, cache_status, started.elapsed())
}

#[test]
fn one_breaker_for_every_front_door() {
    run(async {
        let server = Arc::new(RedisServer::start());
        let cooldown = Duration::from_secs(1);
        let cache = builder(&server.url())
            .breaker(BreakerConfig {
                failure_threshold: 3,
                cooldown,
                ..Default::default()
            })
            .build()
            .expect("valid configuration");
        let router = axum::Router::new()
            .route("/products/{id}", axum::routing::get(product_page))
            .layer(CacheLayer::new(cache.clone()).ttl(Duration::from_secs(60)));

        // Every door fills and hits through Redis.
        http_get(&router, 1).await;
        let (_, _, status, _) = http_get(&router, 1).await;
        assert!(status.starts_with("cache-layer; hit"), "{status}");
        assert_eq!(price_of(&cache, 1).await, 100);
        let loads = cache.stats().loads;
        assert_eq!(price_of(&cache, 1).await, 100);
        assert_eq!(cache.stats().loads, loads, "a #[cached] hit");

        // Redis hangs. HTTP requests trip the breaker; each is still answered by the origin.
        on_server(&server, RedisServer::pause).await;
        for id in 100.. {
            let (status, body, _, took) = http_get(&router, id).await;
            assert_eq!((status, body), (200, format!("product page {id}")));
            assert!(took < BOUND, "took {took:?}");
            if cache.stats().breaker == BreakerState::Open {
                break;
            }
            assert!(id < 120, "the breaker never opened: {:?}", cache.stats());
        }

        // Now no door touches Redis (no operation is even attempted, so none fails) and nobody
        // waits for the hung server.
        let errors = cache.stats().errors;
        let started = Instant::now();
        assert_eq!(price_of(&cache, 2).await, 200);
        let v = cache
            .get_or_fetch(&key(3), &policy(), || async { value_of(3) })
            .await;
        assert_eq!(v, value_of(3));
        assert_eq!(cache.get::<Value>(&key(3)).await.expect("a miss"), None);
        cache
            .set(&key(4), &value_of(4), &policy())
            .await
            .expect("a no-op");
        let (status, body, cache_status, _) = http_get(&router, 1).await;
        assert_eq!((status, body.as_str()), (200, "product page 1"));
        assert!(!cache_status.contains("hit"), "{cache_status}");
        let took = started.elapsed();
        let stats = cache.stats();
        assert_eq!(stats.breaker, BreakerState::Open, "{stats:?}");
        assert_eq!(stats.errors, errors, "Redis was skipped: {stats:?}");
        // Each would wait at least OP_TIMEOUT if it tried the hung server.
        assert!(
            took < 3 * OP_TIMEOUT,
            "five calls through an open breaker took {took:?}"
        );

        // Redis is back: after the cooldown one probe closes the breaker for every door.
        on_server(&server, RedisServer::resume).await;
        let closed = wait_for(cooldown * 5, || async {
            let _ = price_of(&cache, 5).await;
            cache.stats().breaker == BreakerState::Closed
        })
        .await;
        assert!(closed, "{:?}", cache.stats());
        let (_, _, status, _) = http_get(&router, 1).await;
        assert!(
            status.starts_with("cache-layer; hit"),
            "the HTTP entry survived: {status}"
        );
        let loads = cache.stats().loads;
        assert_eq!(price_of(&cache, 1).await, 100);
        assert_eq!(cache.stats().loads, loads, "the #[cached] entry survived");
        eprintln!("faults[front-doors]: breaker opened by HTTP requests, skipped by every door in {took:?}, closed after resume");
    });
}

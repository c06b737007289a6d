//! Randomized chaos: several cache instances (each with its own pool, L1 tier and bus) read
//! through a fake database while writers update it and then invalidate (tag, group tag, `delete`,
//! `set`, namespace), and a fault injector pauses, kills and restarts the private redis-server,
//! deletes random bookkeeping keys and entries, and kills the pub/sub connections.
//!
//! The checker: every database write bumps the row's version; after the writer's invalidation is
//! acknowledged (`Ok`), no read that began afterwards may return an older version — in the
//! writer's instance at once, in the others once the bus had its documented delay
//! ([`OTHER_INSTANCE_GRACE`]: the bus fallback TTL plus scheduling margin).
//!
//! Bounded: runs [`DEFAULT_SECS`] seconds (`CHAOS_SECS` overrides), then prints the operations,
//! the faults injected (by kind) and the violations, and asserts there were none — and that the
//! run did enough to mean something: a minimum of reads and acknowledged writes (of every kind)
//! per second, and every kind of fault injected (they come in shuffled rounds of all kinds).
//! `cargo test --test chaos -- --nocapture` shows the report.

mod support;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use cache_layer::{BreakerConfig, Cache, Policy, Stampede};
use support::{random_u64, RedisServer};

const DEFAULT_SECS: u64 = 20;
const INSTANCES: usize = 3;
const READERS_PER_INSTANCE: usize = 3;
const WRITERS: usize = 2;
const KEYS: u64 = 24;
const GROUPS: u64 = 4;
const NAMESPACE: &str = "chaos";
const BUS_FALLBACK: Duration = Duration::from_millis(500);
/// How long after an acknowledged invalidation another instance may still serve the old value
/// (bus delay; the bus fallback TTL when messages are lost) plus scheduling margin.
const OTHER_INSTANCE_GRACE: Duration = Duration::from_millis(1_500);
/// What a run must have done at least, per second, not to pass vacuously (this machine does
/// about 1,400 reads and 80 acknowledged writes per second).
const MIN_READS_PER_SEC: u64 = 50;
const MIN_ACKNOWLEDGED_WRITES_PER_SEC: u64 = 5;
/// Every write kind the writers use.
const WRITE_KINDS: [&str; 5] = [
    "invalidate_tag(item)",
    "invalidate_tag(group)",
    "delete",
    "set",
    "invalidate_namespace",
];

fn key(k: u64) -> String {
    format!("item:{k}")
}

fn policy(k: u64) -> Policy {
    let mode = match k % 4 {
        0 => Stampede::None,
        1 => Stampede::Coalesce,
        2 => Stampede::Lock,
        _ => Stampede::Early,
    };
    Policy::ttl(Duration::from_secs(30))
        .tags([format!("item:{k}"), format!("group:{}", k % GROUPS)])
        .stampede(mode)
        .lock_wait(Duration::from_millis(500))
}

/// A small xorshift generator (no shared RNG state between tasks).
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Rng(random_u64() | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An acknowledged invalidation: from `at` on, `version` (or newer) is the least a read may see.
#[derive(Clone, Copy)]
struct Ack {
    at: Instant,
    instance: usize,
    version: u64,
    kind: &'static str,
}

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    read_errors: AtomicU64,
    writes: AtomicU64,
    writes_acknowledged: AtomicU64,
    writes_refused: AtomicU64,
    lagged_other_instance: AtomicU64,
    acknowledged_by_kind: Mutex<BTreeMap<&'static str, u64>>,
}

struct World {
    db: Vec<AtomicU64>,
    acks: Vec<Mutex<Vec<Ack>>>,
    write_locks: Vec<tokio::sync::Mutex<()>>,
    counts: Counts,
    violations: Mutex<Vec<String>>,
    faults: Mutex<BTreeMap<Fault, u64>>,
    /// When each fault ended, for the violation reports.
    fault_log: Mutex<Vec<(Instant, &'static str)>>,
    stop: AtomicBool,
}

impl World {
    fn new() -> Self {
        World {
            db: (0..KEYS).map(|_| AtomicU64::new(1)).collect(),
            acks: (0..KEYS).map(|_| Mutex::new(Vec::new())).collect(),
            write_locks: (0..KEYS).map(|_| tokio::sync::Mutex::new(())).collect(),
            counts: Counts::default(),
            violations: Mutex::new(Vec::new()),
            faults: Mutex::new(BTreeMap::new()),
            fault_log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        }
    }

    /// The least version a read of `k` by `instance` that began at `started` may return.
    fn floor(&self, k: u64, instance: usize, started: Instant) -> (u64, u64, Option<Ack>) {
        let acks = self.acks[k as usize].lock().unwrap();
        let (mut strict, mut lenient, mut binding) = (0, 0, None);
        for ack in acks.iter() {
            if ack.at <= started {
                strict = strict.max(ack.version);
                if (ack.instance == instance || ack.at + OTHER_INSTANCE_GRACE <= started)
                    && ack.version > lenient
                {
                    lenient = ack.version;
                    binding = Some(*ack);
                }
            }
        }
        (lenient, strict, binding)
    }

    fn fault(&self, fault: Fault) {
        *self.faults.lock().unwrap().entry(fault).or_default() += 1;
        self.fault_log
            .lock()
            .unwrap()
            .push((Instant::now(), fault.name()));
    }

    /// The faults that ended within `window` before `at`, newest first.
    fn faults_before(&self, at: Instant, window: Duration) -> String {
        let log = self.fault_log.lock().unwrap();
        let recent: Vec<String> = log
            .iter()
            .rev()
            .filter(|(when, _)| *when <= at && at.duration_since(*when) <= window)
            .map(|(when, name)| {
                format!("{name} {} ms before", at.duration_since(*when).as_millis())
            })
            .collect();
        if recent.is_empty() {
            "none".into()
        } else {
            recent.join(", ")
        }
    }
}

async fn reader(world: Arc<World>, cache: Cache, instance: usize) {
    let mut rng = Rng::new();
    while !world.stop.load(Ordering::Relaxed) {
        let k = rng.below(KEYS);
        let started = Instant::now();
        let db = world.clone();
        let loader =
            move || async move { Ok::<u64, String>(db.db[k as usize].load(Ordering::SeqCst)) };
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            cache.try_get_or_fetch(&key(k), &policy(k), loader),
        )
        .await;
        world.counts.reads.fetch_add(1, Ordering::Relaxed);
        let version = match read {
            Ok(Ok(version)) => version,
            Ok(Err(err)) => {
                world.counts.read_errors.fetch_add(1, Ordering::Relaxed);
                world
                    .violations
                    .lock()
                    .unwrap()
                    .push(format!("read of {} failed: {err}", key(k)));
                continue;
            }
            Err(_) => {
                world
                    .violations
                    .lock()
                    .unwrap()
                    .push(format!("read of {} hung for 10 s", key(k)));
                continue;
            }
        };
        let (lenient, strict, binding) = world.floor(k, instance, started);
        if version < lenient {
            let ack = binding.expect("a binding acknowledgement");
            world.violations.lock().unwrap().push(format!(
                "instance {instance} read {} = v{version} after v{lenient}'s {} by instance {} \
                 was acknowledged {} ms before the read began (faults within 3 s before the \
                 acknowledgement: {})",
                key(k),
                ack.kind,
                ack.instance,
                started.duration_since(ack.at).as_millis(),
                world.faults_before(ack.at, Duration::from_secs(3)),
            ));
        } else if version < strict {
            world
                .counts
                .lagged_other_instance
                .fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn writer(world: Arc<World>, caches: Arc<Vec<Cache>>) {
    let mut rng = Rng::new();
    while !world.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(5 + rng.below(20))).await;
        let k = rng.below(KEYS);
        let instance = rng.below(INSTANCES as u64) as usize;
        let cache = &caches[instance];
        let _row = world.write_locks[k as usize].lock().await;
        let version = world.db[k as usize].fetch_add(1, Ordering::SeqCst) + 1;
        world.counts.writes.fetch_add(1, Ordering::Relaxed);
        let (kind, result) = match rng.below(20) {
            0..=5 => (
                "invalidate_tag(item)",
                cache.invalidate_tag(&format!("item:{k}")).await,
            ),
            6..=8 => (
                "invalidate_tag(group)",
                cache.invalidate_tag(&format!("group:{}", k % GROUPS)).await,
            ),
            9..=12 => ("delete", cache.delete(&key(k)).await.map(|_| ())),
            13..=18 => ("set", cache.set(&key(k), &version, &policy(k)).await),
            _ => ("invalidate_namespace", cache.invalidate_namespace().await),
        };
        match result {
            Ok(()) => {
                world
                    .counts
                    .writes_acknowledged
                    .fetch_add(1, Ordering::Relaxed);
                *world
                    .counts
                    .acknowledged_by_kind
                    .lock()
                    .unwrap()
                    .entry(kind)
                    .or_default() += 1;
                world.acks[k as usize].lock().unwrap().push(Ack {
                    at: Instant::now(),
                    instance,
                    version,
                    kind,
                });
            }
            Err(_) => {
                world.counts.writes_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Runs a blocking harness call off the runtime's workers.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
}

fn bookkeeping_keys(server: &RedisServer) -> Vec<String> {
    let mut conn = server.connection();
    redis::cmd("KEYS")
        .arg(format!("{NAMESPACE}:__*"))
        .query(&mut conn)
        .unwrap_or_default()
}

/// A fault the injector can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// `SIGSTOP`, 150–850 ms, `SIGCONT`.
    Pause,
    /// `SIGKILL`, 75–425 ms down, restarted empty (no persistence).
    KillAndRestartEmpty,
    /// Every first, second or third bookkeeping key (tag records, the namespace epoch) deleted.
    DeleteBookkeeping,
    /// Five random keys deleted (entries, tombstones, bookkeeping).
    EvictRandomKeys,
    /// `CLIENT KILL TYPE pubsub`: every bus subscription dropped.
    KillPubsub,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::Pause,
        Fault::KillAndRestartEmpty,
        Fault::DeleteBookkeeping,
        Fault::EvictRandomKeys,
        Fault::KillPubsub,
    ];

    /// One round: every kind, in random order, as often as the mix that found the engine's
    /// violations (pauses 2, kill 1, bookkeeping 3, random keys 1, pub/sub kills 3 in 10).
    fn round(rng: &mut Rng) -> Vec<Fault> {
        let mut round = vec![
            Fault::Pause,
            Fault::Pause,
            Fault::KillAndRestartEmpty,
            Fault::DeleteBookkeeping,
            Fault::DeleteBookkeeping,
            Fault::DeleteBookkeeping,
            Fault::EvictRandomKeys,
            Fault::KillPubsub,
            Fault::KillPubsub,
            Fault::KillPubsub,
        ];
        for i in (1..round.len()).rev() {
            round.swap(i, rng.below(i as u64 + 1) as usize);
        }
        round
    }

    fn name(self) -> &'static str {
        match self {
            Fault::Pause => "pause (SIGSTOP/SIGCONT)",
            Fault::KillAndRestartEmpty => "kill and restart empty",
            Fault::DeleteBookkeeping => "delete bookkeeping keys",
            Fault::EvictRandomKeys => "evict random keys",
            Fault::KillPubsub => "CLIENT KILL TYPE pubsub",
        }
    }

    /// Injects it (blocking: run off the runtime's workers).
    fn inject(self, server: &RedisServer, pause_ms: u64, fraction: u64) {
        match self {
            Fault::Pause => {
                server.pause();
                std::thread::sleep(Duration::from_millis(pause_ms));
                server.resume();
            }
            Fault::KillAndRestartEmpty => {
                server.kill();
                std::thread::sleep(Duration::from_millis(pause_ms / 2));
                server.restart();
            }
            Fault::DeleteBookkeeping => {
                let keys = bookkeeping_keys(server);
                let mut conn = server.connection();
                for (i, key) in keys.iter().enumerate() {
                    if (i as u64).is_multiple_of(fraction) {
                        let _: redis::RedisResult<i64> =
                            redis::cmd("DEL").arg(key).query(&mut conn);
                    }
                }
            }
            Fault::EvictRandomKeys => {
                let mut conn = server.connection();
                for _ in 0..5 {
                    let random: Option<String> =
                        redis::cmd("RANDOMKEY").query(&mut conn).unwrap_or(None);
                    if let Some(key) = random {
                        let _: redis::RedisResult<i64> =
                            redis::cmd("DEL").arg(key).query(&mut conn);
                    }
                }
            }
            Fault::KillPubsub => {
                let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query(&mut server.connection());
            }
        }
    }
}

async fn injector(world: Arc<World>, server: Arc<RedisServer>) {
    let mut rng = Rng::new();
    let mut schedule = Vec::new();
    while !world.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(600))).await;
        if world.stop.load(Ordering::Relaxed) {
            break;
        }
        if schedule.is_empty() {
            schedule = Fault::round(&mut rng);
        }
        let Some(fault) = schedule.pop() else {
            continue;
        };
        let server = server.clone();
        let (pause_ms, fraction) = (150 + rng.below(700), 1 + rng.below(3));
        blocking(move || fault.inject(&server, pause_ms, fraction)).await;
        world.fault(fault);
    }
}

#[test]
fn chaos_never_serves_data_older_than_an_acknowledged_invalidation() {
    let secs = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECS);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let server = Arc::new(RedisServer::start());
        let world = Arc::new(World::new());
        let caches: Arc<Vec<Cache>> = Arc::new(
            (0..INSTANCES)
                .map(|i| {
                    Cache::builder()
                        .redis(server.url())
                        .namespace(NAMESPACE)
                        .name(format!("chaos-{i}"))
                        .local(1_000)
                        .op_timeout(Duration::from_millis(100))
                        .connect_timeout(Duration::from_millis(200))
                        .bus_fallback_ttl(BUS_FALLBACK)
                        .breaker(BreakerConfig {
                            failure_threshold: 3,
                            cooldown: Duration::from_millis(200),
                            ..Default::default()
                        })
                        .build()
                        .unwrap()
                })
                .collect(),
        );
        let mut tasks = Vec::new();
        for (instance, cache) in caches.iter().enumerate() {
            for _ in 0..READERS_PER_INSTANCE {
                tasks.push(tokio::spawn(reader(world.clone(), cache.clone(), instance)));
            }
        }
        for _ in 0..WRITERS {
            tasks.push(tokio::spawn(writer(world.clone(), caches.clone())));
        }
        tasks.push(tokio::spawn(injector(world.clone(), server.clone())));
        tokio::time::sleep(Duration::from_secs(secs)).await;
        world.stop.store(true, Ordering::SeqCst);
        for task in tasks {
            task.await.unwrap();
        }

        let counts = &world.counts;
        let faults = world.faults.lock().unwrap().clone();
        let violations = world.violations.lock().unwrap().clone();
        let reads = counts.reads.load(Ordering::Relaxed);
        let acknowledged = counts.writes_acknowledged.load(Ordering::Relaxed);
        let by_kind = counts.acknowledged_by_kind.lock().unwrap().clone();
        println!(
            "chaos ({secs} s, {INSTANCES} instances with L1): {reads} reads ({} failed), {} writes \
             ({acknowledged} acknowledged: {by_kind:?}; {} refused with an error), {} \
             cross-instance reads within the bus grace of {OTHER_INSTANCE_GRACE:?} served an \
             older value",
            counts.read_errors.load(Ordering::Relaxed),
            counts.writes.load(Ordering::Relaxed),
            counts.writes_refused.load(Ordering::Relaxed),
            counts.lagged_other_instance.load(Ordering::Relaxed),
        );
        let named: BTreeMap<&str, u64> = faults.iter().map(|(f, n)| (f.name(), *n)).collect();
        println!(
            "faults injected: {} ({named:?})",
            faults.values().sum::<u64>()
        );
        println!("violations: {}", violations.len());
        let mut distinct: Vec<&String> = violations.iter().collect();
        distinct.dedup_by(|a, b| {
            a.split(" was acknowledged").next() == b.split(" was acknowledged").next()
        });
        for violation in distinct.iter().take(25) {
            println!("  {violation}");
        }

        // Not vacuous: enough reads and writes of every kind, and every kind of fault.
        assert!(
            reads >= MIN_READS_PER_SEC * secs,
            "only {reads} reads in {secs} s"
        );
        assert!(
            acknowledged >= MIN_ACKNOWLEDGED_WRITES_PER_SEC * secs,
            "only {acknowledged} acknowledged writes in {secs} s"
        );
        for kind in WRITE_KINDS {
            assert!(
                by_kind.get(kind).copied().unwrap_or(0) > 0,
                "no {kind} was acknowledged"
            );
        }
        // A round takes about 8 s.
        let rounds = (secs / 20).max(1);
        for fault in Fault::ALL {
            let injected = faults.get(&fault).copied().unwrap_or(0);
            assert!(
                injected >= rounds,
                "{} injected {injected} times, expected at least {rounds}",
                fault.name()
            );
        }
        assert_eq!(
            violations.len(),
            0,
            "reads older than an acknowledged invalidation"
        );
    });
}

//! A read load for the failover tests: callers of `get_or_fetch` on keys written before the
//! failure, and the check that hits resume afterwards.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cache_layer::{Cache, Policy, Stats};
use tokio::task::JoinHandle;

/// `tasks` tasks, each calling `get_or_fetch` of `k:<i % keys>` (the loader returns `i % keys`, so
/// every call must be answered with that value, from the store or not) every 2 ms until
/// [`ReadLoad::stop`], each keeping its slowest call.
pub struct ReadLoad {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    readers: Vec<JoinHandle<Duration>>,
}

impl ReadLoad {
    /// Starts the readers, task `t` at key `t`.
    pub fn start(cache: &Cache, policy: &Policy, tasks: u32, keys: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let readers = (0..tasks)
            .map(|task| {
                let (cache, policy, stop, answered) = (
                    cache.clone(),
                    policy.clone(),
                    stop.clone(),
                    answered.clone(),
                );
                tokio::spawn(async move {
                    let mut worst = Duration::ZERO;
                    let mut i = task;
                    while !stop.load(Ordering::Relaxed) {
                        let key = i % keys;
                        let started = Instant::now();
                        let v: u32 = cache
                            .get_or_fetch(&format!("k:{key}"), &policy, move || async move { key })
                            .await;
                        assert_eq!(v, key, "every call answered with the right value");
                        worst = worst.max(started.elapsed());
                        answered.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    worst
                })
            })
            .collect();
        ReadLoad {
            stop,
            answered,
            readers,
        }
    }

    /// How many calls have been answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }

    /// Returns once `more` calls beyond those answered now have been answered.
    pub async fn answer(&self, more: usize) {
        let until = self.answered() + more;
        while self.answered() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the readers; the slowest call of each (panics if a reader did).
    pub async fn stop(self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        let mut worst = Vec::with_capacity(self.readers.len());
        for reader in self.readers {
            worst.push(reader.await.expect("no reader failed"));
        }
        worst
    }
}

/// Rounds of `get_or_fetch` over `k:0` .. `k:<keys - 1>` (100 ms apart) until one has neither a
/// miss nor an error (`Ok`), or one ends after `deadline` (`Err`: the stats after it).
pub async fn hits_resume(
    cache: &Cache,
    policy: &Policy,
    keys: u32,
    deadline: Instant,
) -> Result<(), Stats> {
    loop {
        let before = cache.stats();
        for i in 0..keys {
            let _: u32 = cache
                .get_or_fetch(&format!("k:{i}"), policy, move || async move { i })
                .await;
        }
        let after = cache.stats();
        if after.misses == before.misses && after.errors == before.errors {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(after);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

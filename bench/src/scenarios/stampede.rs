//! Stampede: a hot key with a short TTL, read continuously by 4 cache instances (as if 4 service
//! processes) x 16 callers, in front of a slow source with 8 connections. Reports origin calls and
//! caller latency per protection mode, against the same load without a cache.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use cache_layer::{Cache, Policy, Stampede};
use tokio::sync::Semaphore;

use crate::{report::fmt_duration, report::measure, Mode, Settings};

const INSTANCES: usize = 4;
const CALLERS_PER_INSTANCE: usize = 16;
const SOURCE_TIME: Duration = Duration::from_millis(50);
const TTL: Duration = Duration::from_millis(500);

/// The slow source: a bounded pool and a fixed query time.
struct Source {
    pool: Semaphore,
    calls: AtomicU64,
}

impl Source {
    async fn load(&self) -> u64 {
        let _conn = self.pool.acquire().await.ok();
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(SOURCE_TIME).await;
        n
    }
}

pub async fn run(settings: &Settings) -> Result<(), String> {
    // Several TTL periods per mode, whatever the row duration of the other sections.
    let duration = match settings.mode {
        Mode::Full => Duration::from_secs(3),
        Mode::Quick => Duration::from_secs(2),
        Mode::Smoke => Duration::from_millis(1200),
    };
    println!("\n## Stampede: one hot key, TTL {}, source {} (8 connections), {INSTANCES} instances x {CALLERS_PER_INSTANCE} callers, {}\n",
        fmt_duration(TTL), fmt_duration(SOURCE_TIME), fmt_duration(duration));
    println!(
        "| {:<24} | {:>12} | {:>10} | {:>9} | {:>9} | {:>14} |",
        "mode", "origin calls", "calls/s", "p50", "p99", "origin vs none"
    );
    println!(
        "|{:-<26}|{:->14}|{:->12}|{:->11}|{:->11}|{:->16}|",
        "", "", "", "", "", ""
    );
    let modes: [(&str, Option<Policy>); 6] = [
        ("uncached", None),
        (
            "Stampede::None",
            Some(Policy::ttl(TTL).stampede(Stampede::None)),
        ),
        ("Coalesce (default)", Some(Policy::ttl(TTL))),
        ("Lock", Some(Policy::ttl(TTL).stampede(Stampede::Lock))),
        (
            "Early (XFetch)",
            Some(Policy::ttl(TTL).stampede(Stampede::Early)),
        ),
        (
            "stale(10s) (SWR)",
            Some(Policy::ttl(TTL).stale(Duration::from_secs(10))),
        ),
    ];
    let mut baseline_calls = None;
    for (name, policy) in modes {
        let source = Arc::new(Source {
            pool: Semaphore::new(8),
            calls: AtomicU64::new(0),
        });
        let namespace = format!("bench-stampede-{}-{}", std::process::id(), name.len());
        let caches: Vec<Cache> = (0..INSTANCES)
            .filter_map(|_| {
                Cache::builder()
                    .redis(settings.redis_url.as_str())
                    .namespace(namespace.as_str())
                    .build()
                    .ok()
            })
            .collect();
        if caches.len() != INSTANCES {
            return Err("cannot build the caches".into());
        }
        let caches = Arc::new(caches);
        let (s, p) = (source.clone(), policy.clone());
        let m = measure(INSTANCES * CALLERS_PER_INSTANCE, duration, move |i| {
            let (s, p, caches) = (s.clone(), p.clone(), caches.clone());
            async move {
                match &p {
                    None => {
                        s.load().await;
                    }
                    Some(policy) => {
                        let cache = &caches[(i as usize / 1_000_003) % INSTANCES];
                        let _: u64 = cache
                            .get_or_fetch("hot", policy, move || async move { s.load().await })
                            .await;
                    }
                }
                // A client's think time between requests.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        let calls = source.calls.load(Ordering::Relaxed);
        let none_calls = *baseline_calls.get_or_insert(calls.max(1));
        println!(
            "| {:<24} | {:>12} | {:>10.0} | {:>9} | {:>9} | {:>13.3}x |",
            name,
            calls,
            m.ops_per_sec,
            fmt_duration(m.p50),
            fmt_duration(m.p99),
            calls as f64 / none_calls as f64
        );
        if policy.is_some() && calls >= none_calls {
            return Err(format!(
                "stampede: {name} made {calls} source calls, no fewer than uncached ({none_calls})"
            ));
        }
    }
    Ok(())
}

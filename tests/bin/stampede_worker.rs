//! A worker process for the cross-process stampede tests (`tests/stampede.rs`).
//!
//! Usage: `stampede-worker <redis-url> <namespace> <key> <callers> <source-ms> <mode> <lock-wait-ms>`
//!
//! It builds a cache, prints `READY`, waits for a line on stdin (the go signal, so every worker
//! fires at once), then runs `<callers>` concurrent `get_or_fetch` calls on `<key>`. The source
//! prints `LOADING` when it starts (so a test can kill the lock holder), sleeps `<source-ms>`, and
//! counts its calls. At the end the worker prints one line:
//! `RESULT loads=<n> ok=<n> max_ms=<n>`.

use std::{
    io::{BufRead, Write},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cache_layer::{Cache, Policy, Stampede};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 8 {
        eprintln!("usage: stampede-worker <redis-url> <namespace> <key> <callers> <source-ms> <none|coalesce|lock> <lock-wait-ms>");
        std::process::exit(2);
    }
    let parse = |i: usize| -> u64 {
        args[i].parse().unwrap_or_else(|_| {
            eprintln!("argument {i} must be a number, got {:?}", args[i]);
            std::process::exit(2)
        })
    };
    let (callers, source_ms, lock_wait_ms) = (parse(4) as usize, parse(5), parse(7));
    let stampede = match args[6].as_str() {
        "none" => Stampede::None,
        "coalesce" => Stampede::Coalesce,
        "lock" => Stampede::Lock,
        other => {
            eprintln!("unknown mode {other:?}");
            std::process::exit(2)
        }
    };
    let cache = match Cache::builder()
        .redis(args[1].as_str())
        .namespace(args[2].as_str())
        .build()
    {
        Ok(cache) => cache,
        Err(err) => {
            eprintln!("cannot build cache: {err}");
            std::process::exit(2)
        }
    };
    let policy = Policy::ttl(Duration::from_secs(60))
        .stampede(stampede)
        .lock_wait(Duration::from_millis(lock_wait_ms));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start runtime: {err}");
            std::process::exit(2)
        }
    };
    runtime.block_on(async move {
        // Warm the connection pool so the measured calls don't pay for connecting.
        let _ = cache.get::<u8>("warm-up").await;
        println!("READY");
        let _ = std::io::stdout().flush();
        let mut go = String::new();
        let _ = std::io::stdin().lock().read_line(&mut go);

        let loads = Arc::new(AtomicUsize::new(0));
        let key = args[3].clone();
        let calls = (0..callers).map(|_| {
            let (cache, policy, loads, key) =
                (cache.clone(), policy.clone(), loads.clone(), key.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let value: String = cache
                    .get_or_fetch(&key, &policy, move || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        println!("LOADING");
                        let _ = std::io::stdout().flush();
                        tokio::time::sleep(Duration::from_millis(source_ms)).await;
                        "value".to_string()
                    })
                    .await;
                (value == "value", started.elapsed())
            })
        });
        let results = futures_util::future::join_all(calls).await;
        let ok = results
            .iter()
            .filter(|r| matches!(r, Ok((true, _))))
            .count();
        let max_ms = results
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|(_, took)| took.as_millis()))
            .max()
            .unwrap_or(0);
        println!(
            "RESULT loads={} ok={ok} max_ms={max_ms}",
            loads.load(Ordering::SeqCst)
        );
    });
}

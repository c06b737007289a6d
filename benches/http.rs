//! HTTP layer throughput: requests/s through `CacheLayer` on a hit vs the same handler returning a
//! static body without the layer, in the same run, over loopback.
//!
//! ```text
//! cargo bench --bench http                         # Redis at $REDIS_URL or 127.0.0.1:6379
//! BENCH_SECS=2 BENCH_ROUNDS=3 BENCH_CONNS=32 cargo bench --bench http
//! ```
//!
//! Each configuration is an axum server on 127.0.0.1 with one route; the client (same process,
//! same runtime) keeps `BENCH_CONNS` HTTP/1.1 keep-alive connections busy with GETs over 100 URLs,
//! all primed, so every request through the layer is a hit. Configurations run interleaved for
//! `BENCH_ROUNDS` rounds of `BENCH_SECS` each and the median round is reported, so background load
//! on the machine hits all of them alike. Bounded: rounds × configs × secs (default 3 × 4 × 2 s).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{extract::Path, routing::get, Router};
use bytes::Bytes;
use cache_layer::{Cache, CacheLayer};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const URLS: usize = 100;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The handler: a ~1 KiB static-ish body (what a small JSON API returns).
async fn item(Path(id): Path<u32>) -> String {
    let mut body = format!("{{\"id\":{id},\"name\":\"item {id}\",\"description\":\"");
    body.push_str(&"x".repeat(1000));
    body.push_str("\"}");
    body
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

struct Config {
    name: &'static str,
    addr: SocketAddr,
    cache: Option<Cache>,
}

/// Runs `conns` keep-alive connections against `addr` for `secs`; returns (requests, latencies µs).
async fn load(addr: SocketAddr, conns: usize, secs: u64) -> (u64, Vec<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (stop, total) = (stop.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).ok();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let request = hyper::Request::get(format!("/items/{}", i % URLS))
                    .header("host", "bench.local")
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let started = Instant::now();
                sender.ready().await.expect("connection ready");
                let response = sender.send_request(request).await.expect("response");
                let body = response.into_body().collect().await.expect("body");
                assert!(body.to_bytes().len() > 1000);
                latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                total.fetch_add(1, Ordering::Relaxed);
                i += conns;
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    (total.load(Ordering::Relaxed), latencies)
}

/// Requests every URL once, in order, on one connection.
async fn prime(addr: SocketAddr) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    for i in 0..URLS {
        let request = hyper::Request::get(format!("/items/{i}"))
            .header("host", "bench.local")
            .body(Empty::<Bytes>::new())
            .expect("request");
        sender.ready().await.expect("connection ready");
        let response = sender.send_request(request).await.expect("response");
        response.into_body().collect().await.expect("body");
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it:
    // then a short smoke run checks that every configuration works (and only hits).
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (secs, rounds, conns) = if smoke {
        (1, 1, 4)
    } else {
        (
            env("BENCH_SECS", 2),
            env("BENCH_ROUNDS", 3) as usize,
            env("BENCH_CONNS", 32) as usize,
        )
    };
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let namespace = |what: &str| format!("bench-http-{what}-{}", std::process::id());
    let route = || Router::new().route("/items/{id}", get(item));

    let redis_cache = Cache::builder()
        .redis(&redis)
        .namespace(namespace("redis"))
        .build()
        .expect("cache");
    let l1_cache = Cache::builder()
        .redis(&redis)
        .namespace(namespace("l1"))
        .local(10_000)
        .build()
        .expect("cache");
    let memory_cache = Cache::in_memory();
    let ttl = Duration::from_secs(600);
    let configs = vec![
        Config {
            name: "no layer (static body)",
            addr: serve(route()).await,
            cache: None,
        },
        Config {
            name: "CacheLayer hit, Redis",
            addr: serve(route().layer(CacheLayer::new(redis_cache.clone()).ttl(ttl))).await,
            cache: Some(redis_cache),
        },
        Config {
            name: "CacheLayer hit, Redis + L1",
            addr: serve(route().layer(CacheLayer::new(l1_cache.clone()).ttl(ttl))).await,
            cache: Some(l1_cache),
        },
        Config {
            name: "CacheLayer hit, in-memory store",
            addr: serve(route().layer(CacheLayer::new(memory_cache.clone()).ttl(ttl))).await,
            cache: Some(memory_cache),
        },
    ];

    // Prime every URL, then warm connections and allocators.
    for config in &configs {
        prime(config.addr).await;
        if !smoke {
            let _ = load(config.addr, conns, 1).await;
        }
        if let Some(cache) = &config.cache {
            let stats = cache.stats();
            assert_eq!(stats.loads, URLS as u64, "{}: {stats:?}", config.name);
        }
    }

    let mut results: Vec<Vec<(f64, Vec<u32>)>> = vec![Vec::new(); configs.len()];
    for _ in 0..rounds {
        for (i, config) in configs.iter().enumerate() {
            let before = config.cache.as_ref().map(Cache::stats);
            let (requests, mut latencies) = load(config.addr, conns, secs).await;
            if let (Some(cache), Some(before)) = (&config.cache, before) {
                let loads = cache.stats().loads - before.loads;
                assert_eq!(
                    loads, 0,
                    "{}: every measured request must be a hit",
                    config.name
                );
            }
            latencies.sort_unstable();
            results[i].push((requests as f64 / secs as f64, latencies));
        }
    }

    println!(
        "\nHTTP layer throughput: {conns} keep-alive connections, {URLS} URLs, ~1 KiB bodies, \
         median of {rounds} interleaved rounds x {secs} s (loopback, same process)\n"
    );
    println!("| configuration                   |    req/s | vs no layer | p50 µs | p99 µs |");
    println!("|---------------------------------|---------:|------------:|-------:|-------:|");
    let mut baseline = None;
    for (config, rounds) in configs.iter().zip(results.iter_mut()) {
        rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (rps, latencies) = &rounds[rounds.len() / 2];
        let base = *baseline.get_or_insert(*rps);
        println!(
            "| {:<31} | {:>8.0} | {:>10.2}x | {:>6} | {:>6} |",
            config.name,
            rps,
            rps / base,
            percentile(latencies, 0.50),
            percentile(latencies, 0.99),
        );
    }
}

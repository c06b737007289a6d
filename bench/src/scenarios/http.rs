//! HTTP: requests/s through `CacheLayer` on a hit vs the same axum handler without the layer.
//!
//! Each configuration is an axum server on 127.0.0.1 with one route (`/items/{id}`, ~1 KiB
//! body); the load generator (hyper client, same process) keeps [`CONNECTIONS`] HTTP/1.1
//! keep-alive connections busy with GETs over [`URLS`] URLs, all primed, so every measured request
//! through the layer is a hit (checked: no load runs while measuring).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{extract::Path, routing::get, Router};
use bytes::Bytes;
use cache_layer::{Cache, CacheLayer};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{
    redis_server::PrivateRedis,
    report::{print_commands_per_op, Comparison, Measurement},
    Settings,
};

const URLS: usize = 100;
const CONNECTIONS: usize = 32;

/// The handler: a ~1 KiB body (what a small JSON API returns), formatted per request.
async fn item(Path(id): Path<u32>) -> String {
    let mut body = format!("{{\"id\":{id},\"name\":\"item {id}\",\"description\":\"");
    body.push_str(&"x".repeat(1000));
    body.push_str("\"}");
    body
}

async fn serve(router: Router) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|err| format!("cannot bind loopback: {err}"))?;
    let addr = listener.local_addr().map_err(|err| err.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|err| format!("connect {addr}: {err}"))?;
    stream.set_nodelay(true).map_err(|err| err.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| format!("handshake: {err}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// GET `/items/{id}`; the body length.
async fn request(sender: &mut SendRequest<Empty<Bytes>>, id: usize) -> Result<usize, String> {
    let request = hyper::Request::get(format!("/items/{id}"))
        .header("host", "bench.local")
        .body(Empty::<Bytes>::new())
        .map_err(|err| err.to_string())?;
    sender.ready().await.map_err(|err| err.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| err.to_string())?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| err.to_string())?;
    Ok(body.to_bytes().len())
}

/// Keeps [`CONNECTIONS`] keep-alive connections busy for `duration`.
async fn load(addr: SocketAddr, duration: Duration) -> Result<Measurement, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let mut sender = connect(addr).await?;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 14);
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let len = request(&mut sender, i % URLS).await?;
                if len <= 1000 {
                    return Err(format!("short body: {len} bytes"));
                }
                latencies.push(started.elapsed());
                i += CONNECTIONS;
            }
            Ok::<_, String>(latencies)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.map_err(|err| err.to_string())??);
    }
    Ok(Measurement::from_latencies(latencies, started.elapsed()))
}

struct Setup {
    name: &'static str,
    addr: SocketAddr,
    cache: Option<Cache>,
}

pub async fn run(settings: &Settings, server: Option<&PrivateRedis>) -> Result<(), String> {
    let run_id = std::process::id();
    let redis_cache = |namespace: &str, local: bool| {
        let builder = Cache::builder()
            .redis(settings.redis_url.as_str())
            .namespace(format!("bench-http-{namespace}-{run_id}"));
        let builder = if local {
            builder.local(10_000)
        } else {
            builder
        };
        builder
            .build()
            .map_err(|err| format!("cannot build the cache: {err}"))
    };
    let route = || Router::new().route("/items/{id}", get(item));
    let ttl = Duration::from_secs(600);
    let redis = redis_cache("redis", false)?;
    let l1 = redis_cache("l1", true)?;
    let memory = Cache::in_memory();
    let setups = vec![
        Setup {
            name: "no layer (handler formats the body)",
            addr: serve(route()).await?,
            cache: None,
        },
        Setup {
            name: "CacheLayer hit, Redis",
            addr: serve(route().layer(CacheLayer::new(redis.clone()).ttl(ttl))).await?,
            cache: Some(redis.clone()),
        },
        Setup {
            name: "CacheLayer hit, Redis + L1",
            addr: serve(route().layer(CacheLayer::new(l1.clone()).ttl(ttl))).await?,
            cache: Some(l1),
        },
        Setup {
            name: "CacheLayer hit, in-memory store",
            addr: serve(route().layer(CacheLayer::new(memory.clone()).ttl(ttl))).await?,
            cache: Some(memory),
        },
    ];
    // Prime every URL once per setup.
    for setup in &setups {
        let mut sender = connect(setup.addr).await?;
        for id in 0..URLS {
            request(&mut sender, id).await?;
        }
        if let Some(cache) = &setup.cache {
            let loads = cache.stats().loads;
            if loads != URLS as u64 {
                return Err(format!("{}: {loads} loads priming {URLS} URLs", setup.name));
            }
        }
    }
    let mut table = Comparison::new(
        format!("HTTP hit, {CONNECTIONS} keep-alive connections, {URLS} URLs, ~1 KiB bodies"),
        "no layer",
    );
    for _ in 0..settings.rounds {
        for setup in &setups {
            table.record(setup.name, load(setup.addr, settings.duration).await?);
        }
    }
    table.print();
    for setup in &setups {
        if let Some(cache) = &setup.cache {
            let loads = cache.stats().loads;
            if loads != URLS as u64 {
                return Err(format!(
                    "{}: {} loads while measuring; every request must be a hit",
                    setup.name,
                    loads - URLS as u64
                ));
            }
        }
    }
    if let Some(server) = server {
        server.reset_stats();
        let before = redis.stats().hits;
        load(setups[1].addr, settings.duration).await?;
        print_commands_per_op(
            "CacheLayer hit (Redis)",
            Some(server),
            redis.stats().hits - before,
        );
    }
    Ok(())
}

//! HTTP: requests/s through `CacheLayer` on a hit vs the same axum router without the layer.
//!
//! Each configuration is an axum server on 127.0.0.1 with one route (`/items/{id}`, a ~2 KiB JSON
//! page), served by **one worker** (a current-thread runtime on a thread of its own, so the
//! server's CPU per request is what the rows compare); the load generator (hyper client, the
//! main runtime) keeps [`CONNECTIONS`] HTTP/1.1 keep-alive connections busy with GETs over
//! [`URLS`] URLs, all primed, so every measured request through the layer is a hit (checked: no
//! load runs while measuring). The baseline is the handler itself, serializing the page with
//! serde_json per request; a second row without a layer answers a prebuilt body (the floor of
//! the server's own cost).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{extract::Path, http::header, response::IntoResponse, routing::get, Router};
use bytes::Bytes;
use cache_layer::{Cache, CacheLayer};
use http_body_util::Empty;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;

use super::page;
use crate::{
    redis_server::PrivateRedis,
    report::{print_commands_per_op, Comparison, Measurement},
    Settings,
};

const URLS: usize = 100;
const CONNECTIONS: usize = 32;
/// The page size the section is about (checked on every response).
const PAGE_BYTES: std::ops::Range<usize> = 1800..2400;

#[derive(Serialize)]
struct Review {
    author: String,
    rating: u8,
    text: String,
}

/// The JSON page: a product with its five newest reviews, ~2 KiB.
#[derive(Serialize)]
pub struct JsonPage {
    product: super::Page,
    related: Vec<u64>,
    reviews: Vec<Review>,
}

pub fn json_page(id: u64) -> JsonPage {
    JsonPage {
        product: page(id),
        related: (1..=10).map(|n| id * 10 + n).collect(),
        reviews: (0..5)
            .map(|n| Review {
                author: format!("customer {}", id * 7 + n),
                rating: (3 + n % 3) as u8,
                text: "Does what it says; arrived on time. ".repeat(4),
            })
            .collect(),
    }
}

/// The handler: serializes the page per request (what a JSON API does).
pub async fn item(Path(id): Path<u64>) -> impl IntoResponse {
    let body = serde_json::to_vec(&json_page(id)).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// The route answering each page from a body serialized beforehand: the server's floor.
pub fn prebuilt_route() -> Router {
    let prebuilt: Arc<Vec<Bytes>> = Arc::new(
        (0..URLS as u64)
            .map(|id| Bytes::from(serde_json::to_vec(&json_page(id)).unwrap_or_default()))
            .collect(),
    );
    Router::new().route(
        "/items/{id}",
        get(move |Path(id): Path<usize>| {
            let body = prebuilt.get(id).cloned().unwrap_or_default();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    )
}

/// The route answering each page with one raw redis-rs `GET` of its body, stored beforehand
/// under `{prefix}:{id}` ([`prime_redis_route`]): what a hand-written cache-aside hit costs
/// without any cache bookkeeping, the floor of the "CacheLayer hit, Redis" row. The connection is
/// made by the first request, so its driver runs on the server's worker, as the cache's does.
pub fn redis_route(url: String, prefix: String) -> Router {
    let conn = Arc::new(tokio::sync::OnceCell::<redis::aio::MultiplexedConnection>::new());
    let url: Arc<str> = url.into();
    Router::new().route(
        "/items/{id}",
        get(move |Path(id): Path<usize>| {
            let (conn, url, key) = (conn.clone(), url.clone(), format!("{prefix}:{id}"));
            async move {
                let conn = conn
                    .get_or_try_init(|| async {
                        redis::Client::open(&*url)?
                            .get_multiplexed_async_connection()
                            .await
                    })
                    .await;
                let body: Option<Vec<u8>> = match conn {
                    Ok(conn) => redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut conn.clone())
                        .await
                        .unwrap_or_default(),
                    Err(_) => None,
                };
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    body.unwrap_or_default(),
                )
            }
        }),
    )
}

/// Stores every page's JSON body under `{prefix}:{id}` for [`redis_route`].
pub(crate) async fn prime_redis_route(url: &str, prefix: &str) -> Result<(), String> {
    let mut conn = redis::Client::open(url)
        .map_err(|err| format!("bad redis url: {err}"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|err| format!("redis unreachable at {url}: {err}"))?;
    for id in 0..URLS as u64 {
        let body = serde_json::to_vec(&json_page(id)).map_err(|err| err.to_string())?;
        let () = redis::cmd("SET")
            .arg(format!("{prefix}:{id}"))
            .arg(body)
            .query_async(&mut conn)
            .await
            .map_err(|err| format!("cannot prime the raw pages: {err}"))?;
    }
    Ok(())
}

/// Serves `router` from one worker: a current-thread runtime on a thread of its own.
async fn serve(router: Router) -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|err| format!("cannot bind loopback: {err}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|err| err.to_string())?;
    let addr = listener.local_addr().map_err(|err| err.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the server runtime: {err}"))?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            if let Ok(listener) = TcpListener::from_std(listener) {
                let _ = axum::serve(listener, router).await;
            }
        })
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
    let request = super::item_request(id, Empty::<Bytes>::new())?;
    sender.ready().await.map_err(|err| err.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| err.to_string())?;
    super::body_len(response).await
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
                if !PAGE_BYTES.contains(&len) {
                    return Err(format!("a {len}-byte body, not the ~2 KiB page"));
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
    let raw_prefix = format!("bench-http-raw-{run_id}");
    prime_redis_route(&settings.redis_url, &raw_prefix).await?;
    let setups = vec![
        Setup {
            name: "no layer, handler serializes the page",
            addr: serve(route()).await?,
            cache: None,
        },
        Setup {
            name: "no layer, prebuilt body (server floor)",
            addr: serve(prebuilt_route()).await?,
            cache: None,
        },
        Setup {
            name: "no layer, raw redis-rs GET of the body",
            addr: serve(redis_route(settings.redis_url.clone(), raw_prefix)).await?,
            cache: None,
        },
        Setup {
            name: "CacheLayer hit, in-memory store",
            addr: serve(route().layer(CacheLayer::new(memory.clone()).ttl(ttl))).await?,
            cache: Some(memory),
        },
        Setup {
            name: "CacheLayer hit, Redis + L1",
            addr: serve(route().layer(CacheLayer::new(l1.clone()).ttl(ttl))).await?,
            cache: Some(l1),
        },
        Setup {
            name: "CacheLayer hit, Redis",
            addr: serve(route().layer(CacheLayer::new(redis.clone()).ttl(ttl))).await?,
            cache: Some(redis.clone()),
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
        format!("HTTP hit, 1 server worker, {CONNECTIONS} keep-alive connections, {URLS} URLs, ~2 KiB JSON"),
        "handler",
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
        let layer_on_redis = setups.last().ok_or("no setups")?;
        load(layer_on_redis.addr, settings.duration).await?;
        print_commands_per_op(
            "CacheLayer hit (Redis)",
            Some(server),
            redis.stats().hits - before,
        );
    }
    Ok(())
}

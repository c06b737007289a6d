//! A product API behind `CacheLayer`, with `#[cached]` data access and an authenticated purge
//! endpoint.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 PURGE_TOKEN=secret cargo run --example axum_app
//! curl -i localhost:3000/products/1            # ~300 ms, Cache-Status: cache-layer; fwd=miss; stored
//! curl -i localhost:3000/products/1            # ~0 ms,   Cache-Status: cache-layer; hit; ttl=59, Age
//! curl -i -X PUT localhost:3000/products/1/price/2500    # write + invalidate tag product:1
//! curl -i -X POST -H 'authorization: Bearer secret' localhost:3000/purge/catalog
//!
//! cargo run --example axum_app -- --check      # runs the walkthrough above against itself, exits
//! ```
//!
//! Without `REDIS_URL` the embedded in-memory store is used. Two cache tiers cooperate here:
//! `#[cached]` caches the database reads (`product:{id}` entries), `CacheLayer` caches whole HTTP
//! responses. Both carry the tag `product:{id}`, so one `#[invalidate]` on the write drops both.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post, put},
    Json, Router,
};
use cache_layer::{cached, http::CacheTags, invalidate, Cache, CacheLayer, Stampede};
use serde::{Deserialize, Serialize};

// ---- data access (the slow part) ------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NotFound;

/// The "database": a map behind a slow query.
static DB: LazyLock<Mutex<HashMap<u64, Product>>> = LazyLock::new(|| {
    let products = (1..=100).map(|id| {
        let product = Product {
            id,
            name: format!("product {id}"),
            price_cents: 1000 + id,
        };
        (id, product)
    });
    Mutex::new(products.collect())
});

const QUERY_TIME: Duration = Duration::from_millis(300);

fn db() -> std::sync::MutexGuard<'static, HashMap<u64, Product>> {
    DB.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-through cached: one query per product per 5 minutes across the fleet (`lock`).
#[cached(ttl = 300, key = "product:{id}", tags = ["product:{id}", "catalog"], stampede = "lock")]
async fn load_product(id: u64) -> Result<Product, NotFound> {
    tokio::time::sleep(QUERY_TIME).await;
    db().get(&id).cloned().ok_or(NotFound)
}

#[cached(ttl = 60, key = "products:all", tags = ["catalog"])]
async fn list_products() -> Vec<Product> {
    tokio::time::sleep(QUERY_TIME).await;
    let mut all: Vec<Product> = db().values().cloned().collect();
    all.sort_by_key(|p| p.id);
    all
}

/// Writes, then invalidates every entry tagged `product:{id}`: the `#[cached]` read above and
/// the HTTP responses the layer stored for this product.
#[invalidate(tags = ["product:{id}"])]
async fn update_price(id: u64, price_cents: u64) -> Result<(), NotFound> {
    let mut db = db();
    let product = db.get_mut(&id).ok_or(NotFound)?;
    product.price_cents = price_cents;
    Ok(())
}

// ---- HTTP -----------------------------------------------------------------------------------

#[derive(Clone)]
struct AppState {
    cache: Cache,
    purge_token: String,
}

async fn get_product(Path(id): Path<u64>) -> impl IntoResponse {
    match load_product(id).await {
        // The tag header becomes the entry's tag (and is stripped from the client response).
        Ok(product) => ([("cache-tag", format!("product:{id}"))], Json(product)).into_response(),
        Err(NotFound) => (StatusCode::NOT_FOUND, "no such product").into_response(),
    }
}

async fn get_products() -> impl IntoResponse {
    // Tags may also be attached as a response extension.
    (
        axum::Extension(CacheTags::new(["catalog"])),
        Json(list_products().await),
    )
}

async fn set_price(Path((id, price)): Path<(u64, u64)>) -> impl IntoResponse {
    match update_price(id, price).await {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(NotFound) => StatusCode::NOT_FOUND,
    }
}

/// `POST /purge/{tag}` with `Authorization: Bearer <PURGE_TOKEN>`.
async fn purge(
    State(state): State<AppState>,
    Path(tag): Path<String>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.as_bytes(), state.purge_token.as_bytes()) {
        return (StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    match state.cache.invalidate_tag(&tag).await {
        Ok(()) => (StatusCode::OK, format!("purged {tag}")).into_response(),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, err.to_string()).into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn app(cache: Cache, purge_token: String) -> Router {
    let cached = Router::new()
        .route("/products", get(get_products))
        .route("/products/{id}", get(get_product))
        .layer(
            CacheLayer::new(cache.clone())
                .ttl(Duration::from_secs(60))
                .stale(Duration::from_secs(30))
                .stampede(Stampede::Lock),
        );
    Router::new()
        .merge(cached)
        .route("/products/{id}/price/{cents}", put(set_price))
        .route("/purge/{tag}", post(purge))
        .with_state(AppState { cache, purge_token })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let check = std::env::args().any(|a| a == "--check");
    // The walkthrough uses a namespace of its own, so a previous run's entries are not hits.
    let namespace = if check {
        format!("axum-demo-check-{}", std::process::id())
    } else {
        "axum-demo".to_string()
    };
    let mut builder = Cache::builder().namespace(namespace).local(10_000);
    if let Ok(url) = std::env::var("REDIS_URL") {
        builder = builder.redis(url);
    }
    let cache = builder.build()?;
    cache_layer::install(cache.clone());
    let token = std::env::var("PURGE_TOKEN").unwrap_or_else(|_| "change-me".to_string());
    let addr = if check {
        "127.0.0.1:0".to_string()
    } else {
        format!(
            "127.0.0.1:{}",
            std::env::var("PORT").unwrap_or_else(|_| "3000".into())
        )
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let server = axum::serve(listener, app(cache.clone(), token.clone()));
    if !check {
        println!("listening on http://{addr}");
        server.await?;
        return Ok(());
    }
    tokio::spawn(async move { server.await });
    walkthrough(addr, &token).await
}

/// `--check`: the README walkthrough as requests against the running app.
async fn walkthrough(addr: SocketAddr, token: &str) -> Result<(), Box<dyn std::error::Error>> {
    let show = |what: &str, r: &Reply| {
        println!(
            "{what:<40} {} {:>6.1} ms  cache-status: {:<36} age: {}",
            r.status,
            r.elapsed.as_secs_f64() * 1000.0,
            r.header("cache-status"),
            r.header("age"),
        )
    };
    let first = send(addr, "GET", "/products/7", None).await?;
    show("GET /products/7 (cold)", &first);
    let second = send(addr, "GET", "/products/7", None).await?;
    show("GET /products/7 (warm)", &second);
    assert!(second.header("cache-status").contains("hit"));
    let etag = second.header("etag").to_string();
    let revalidated = send(addr, "GET", "/products/7", Some(("if-none-match", &etag))).await?;
    show("GET /products/7 If-None-Match", &revalidated);
    assert_eq!(revalidated.status, 304);
    let write = send(addr, "PUT", "/products/7/price/2500", None).await?;
    show("PUT /products/7/price/2500", &write);
    let after = send(addr, "GET", "/products/7", None).await?;
    show("GET /products/7 (after write)", &after);
    assert!(after.body.contains("2500"), "{}", after.body);
    let denied = send(addr, "POST", "/purge/catalog", None).await?;
    show("POST /purge/catalog (no token)", &denied);
    assert_eq!(denied.status, 401);
    let list = send(addr, "GET", "/products", None).await?;
    show("GET /products (cold)", &list);
    let bearer = format!("Bearer {token}");
    let purged = send(
        addr,
        "POST",
        "/purge/catalog",
        Some(("authorization", &bearer)),
    )
    .await?;
    show("POST /purge/catalog (token)", &purged);
    assert_eq!(purged.status, 200);
    let relisted = send(addr, "GET", "/products", None).await?;
    show("GET /products (after purge)", &relisted);
    assert!(relisted.header("cache-status").contains("fwd=miss"));
    println!("ok");
    Ok(())
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: String,
    elapsed: Duration,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    header: Option<(&str, &str)>,
) -> Result<Reply, Box<dyn std::error::Error>> {
    use http_body_util::BodyExt;
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let response = sender
        .send_request(request.body(http_body_util::Empty::<bytes::Bytes>::new())?)
        .await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        elapsed: started.elapsed(),
    })
}

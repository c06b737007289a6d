//! End-to-end behaviour of `CacheLayer`: real axum (and plain hyper) servers over real TCP, a raw
//! hyper client (so paths reach the server exactly as written: `..`, `%2F`), real Redis (the
//! shared server with a unique namespace per test; a private server where Redis is killed).

mod support;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing, Extension, Router,
};
use bytes::Bytes;
use cache_layer::{http::CacheTags, Cache, CacheLayer};
use futures_util::stream;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::{
    http::{get, send},
    redis_cache, shared_redis_url, unique_prefix, RedisServer,
};
use tokio::{
    net::TcpListener,
    sync::{Notify, Semaphore},
};

// ---- origin ---------------------------------------------------------------------------------

/// The origin application behind the layer: behaviour chosen by path, every call counted.
#[derive(Clone)]
struct Origin {
    calls: Arc<Mutex<HashMap<String, usize>>>,
    /// `/flaky` answers 500 while set.
    failing: Arc<AtomicBool>,
    /// `/slow` waits for this before answering.
    gate: Arc<Notify>,
    /// `/stream-big`: the last chunk waits for this.
    stream_gate: Arc<Notify>,
    /// `/gated-cookie` takes one permit per call.
    permits: Arc<Semaphore>,
}

impl Default for Origin {
    fn default() -> Self {
        Origin {
            calls: Default::default(),
            failing: Default::default(),
            gate: Default::default(),
            stream_gate: Default::default(),
            permits: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Origin {
    fn calls(&self, path: &str) -> usize {
        self.calls.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A "lax framework" view of a path: decoded `%2F`/`%2e`, `..` resolved, extension dropped —
/// what makes web cache deception possible when a cache keys differently from the origin.
fn lax_page(path: &str) -> String {
    let decoded = path
        .replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%2e", ".")
        .replace("%2E", ".");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let page = segments.join("/");
    let page = page.split('.').next().unwrap_or("").to_string();
    page.strip_suffix("/x").unwrap_or(&page).to_string()
}

async fn handler(State(origin): State<Origin>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    *origin
        .calls
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default() += 1;
    let headers = request.headers().clone();
    let user = header(&headers, "cookie")
        .strip_prefix("session=")
        .map(str::to_owned)
        .or_else(|| {
            header(&headers, "authorization")
                .strip_prefix("Bearer ")
                .map(str::to_owned)
        });
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "plain" => format!("plain {path}?{query} {}", request.method()).into_response(),
        "cookie" => ([("set-cookie", "session=new")], "with cookie").into_response(),
        "private" => ([("cache-control", "private, max-age=60")], "private").into_response(),
        "nostore" => ([("cache-control", "no-store")], "no-store").into_response(),
        "nocache" => ([("cache-control", "no-cache")], "no-cache").into_response(),
        "maxage" => ([("cache-control", "public, max-age=5")], "short").into_response(),
        "etagged" => ([("etag", "\"v1\"")], "origin etag").into_response(),
        "vary-lang" => (
            [("vary", "Accept-Language")],
            format!("lang={}", header(&headers, "accept-language")),
        )
            .into_response(),
        "lang" => format!("lang={}", header(&headers, "accept-language")).into_response(),
        "links" => {
            let host = match header(&headers, "x-forwarded-host") {
                "" => header(&headers, "host").to_string(),
                forwarded => forwarded.to_string(),
            };
            format!(
                "<a href=\"https://{host}/cart\">cart</a> {}",
                header(&headers, "x-original-url")
            )
            .into_response()
        }
        "tagged" => {
            let id = path.rsplit('/').next().unwrap_or("0");
            (
                [("cache-tag", format!("product:{id}, catalog"))],
                format!("product {id}"),
            )
                .into_response()
        }
        "ext-tagged" => {
            (Extension(CacheTags::new(["ext-tag"])), "extension tagged").into_response()
        }
        "missing" => (StatusCode::NOT_FOUND, "not found").into_response(),
        "flaky" => {
            if origin.failing.load(Ordering::SeqCst) {
                (StatusCode::INTERNAL_SERVER_ERROR, "origin down").into_response()
            } else {
                format!("flaky ok {}", origin.calls(&path)).into_response()
            }
        }
        "gated-cookie" => {
            if let Ok(permit) = origin.permits.acquire().await {
                permit.forget();
            }
            ([("set-cookie", "s=1")], "gated").into_response()
        }
        "slow" => {
            origin.gate.notified().await;
            "slow value".into_response()
        }
        "big" => {
            // 3 MiB in 64 KiB chunks, streamed.
            let chunks = (0..48u8).map(|i| Ok::<_, Infallible>(Bytes::from(vec![i; 64 * 1024])));
            Body::from_stream(stream::iter(chunks)).into_response()
        }
        "stream-big" => {
            // 256 KiB, then a final chunk only once the test has seen the start arrive.
            let gate = origin.stream_gate.clone();
            let head = stream::iter(
                (0..4u8).map(|i| Ok::<_, Infallible>(Bytes::from(vec![i; 64 * 1024]))),
            );
            let tail = stream::once(async move {
                gate.notified().await;
                Ok::<_, Infallible>(Bytes::from_static(b"END"))
            });
            Body::from_stream(futures_util::StreamExt::chain(head, tail)).into_response()
        }
        _ => {
            // Account pages: personal when logged in.
            let page = lax_page(&path);
            match (page.as_str(), user) {
                ("account", Some(user)) => format!("account of {user}").into_response(),
                ("account", None) => "please log in".into_response(),
                _ => format!("page {page} for {path}").into_response(),
            }
        }
    }
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

/// An app with the layer applied to every route.
async fn app(layer: CacheLayer) -> (SocketAddr, Origin) {
    let state = Origin::default();
    let router = Router::new()
        .route("/{*path}", routing::get(handler))
        .layer(layer)
        .with_state(state.clone());
    (serve(router).await, state)
}

// ---- tests ----------------------------------------------------------------------------------

#[tokio::test]
async fn miss_then_hit_with_cache_status_age_and_etag() {
    let (addr, origin) =
        app(CacheLayer::new(redis_cache("http_hit")).ttl(Duration::from_secs(60))).await;
    let miss = get(addr, "/plain/1").await;
    assert_eq!(miss.status, StatusCode::OK);
    assert_eq!(miss.cache_status(), "cache-layer; fwd=miss; stored");
    assert!(miss.header("age").is_empty(), "no Age on a miss");
    let etag = miss.header("etag").to_string();
    assert!(etag.starts_with("\"cl-") && etag.ends_with('"'), "{etag}");
    assert_eq!(miss.header("content-length"), miss.body.len().to_string());

    let hit = get(addr, "/plain/1").await;
    assert_eq!(hit.text(), miss.text());
    let ttl: i64 = hit
        .cache_status()
        .strip_prefix("cache-layer; hit; ttl=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((58..=60).contains(&ttl), "{}", hit.cache_status());
    let age: u64 = hit.header("age").parse().unwrap();
    assert!(age <= 2);
    assert_eq!(hit.header("etag"), etag, "same ETag on miss and hit");
    assert_eq!(origin.calls("/plain/1"), 1);

    // The origin's own ETag is kept.
    assert_eq!(get(addr, "/etagged").await.header("etag"), "\"v1\"");
    assert_eq!(get(addr, "/etagged").await.header("etag"), "\"v1\"");
}

#[tokio::test]
async fn origin_max_age_sets_the_ttl() {
    let (addr, _) =
        app(CacheLayer::new(redis_cache("http_maxage")).ttl(Duration::from_secs(600))).await;
    get(addr, "/maxage").await;
    let hit = get(addr, "/maxage").await;
    let ttl: i64 = hit
        .cache_status()
        .strip_prefix("cache-layer; hit; ttl=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((3..=5).contains(&ttl), "{}", hit.cache_status());
}

#[tokio::test]
async fn query_order_does_not_split_entries_but_values_do() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("http_query"))).await;
    let first = get(addr, "/plain/q?a=1&b=2").await;
    let reordered = get(addr, "/plain/q?b=2&a=1").await;
    assert!(reordered.is_hit(), "{}", reordered.cache_status());
    assert_eq!(reordered.text(), first.text());
    let other = get(addr, "/plain/q?a=1&b=3").await;
    assert_eq!(other.cache_status(), "cache-layer; fwd=miss; stored");
    assert_eq!(origin.calls("/plain/q"), 2);
}

#[tokio::test]
async fn configured_vary_headers_key_the_entry() {
    let layer = CacheLayer::new(redis_cache("http_vary")).vary(["Accept-Language"]);
    let (addr, origin) = app(layer).await;
    let en = send(addr, "GET", "/lang", &[("accept-language", "en")]).await;
    let de = send(addr, "GET", "/lang", &[("accept-language", "de")]).await;
    assert_eq!((en.text(), de.text()), ("lang=en", "lang=de"));
    let en2 = send(addr, "GET", "/lang", &[("accept-language", "en")]).await;
    let de2 = send(addr, "GET", "/lang", &[("accept-language", "de")]).await;
    assert!(en2.is_hit() && de2.is_hit());
    assert_eq!((en2.text(), de2.text()), ("lang=en", "lang=de"));
    assert_eq!(origin.calls("/lang"), 2);
}

#[tokio::test]
async fn origin_vary_is_learned_and_never_mixes_variants() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("http_vary_learn"))).await;
    // The first response varies on a header the key lacks: stored under a key with it, and
    // from now on the header is part of this URL's key.
    let first = send(addr, "GET", "/vary-lang", &[("accept-language", "en")]).await;
    assert_eq!(first.cache_status(), "cache-layer; fwd=miss; stored");
    assert_eq!(first.text(), "lang=en");
    let de = send(addr, "GET", "/vary-lang", &[("accept-language", "de")]).await;
    assert_eq!(de.cache_status(), "cache-layer; fwd=miss; stored");
    let en = send(addr, "GET", "/vary-lang", &[("accept-language", "en")]).await;
    assert_eq!(en.text(), "lang=en");
    assert!(en.is_hit(), "{}", en.cache_status());
    let de2 = send(addr, "GET", "/vary-lang", &[("accept-language", "de")]).await;
    assert!(de2.is_hit());
    assert_eq!(de2.text(), "lang=de");
    assert_eq!(origin.calls("/vary-lang"), 2);
}

#[tokio::test]
async fn credentialed_requests_bypass_by_default() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("http_auth"))).await;
    for headers in [
        [("authorization", "Bearer alice")],
        [("cookie", "session=alice")],
    ] {
        for _ in 0..2 {
            let reply = send(addr, "GET", "/account", &headers).await;
            assert_eq!(reply.cache_status(), "cache-layer; fwd=bypass");
            assert_eq!(reply.text(), "account of alice");
        }
    }
    assert_eq!(origin.calls("/account"), 4);
}

#[tokio::test]
async fn uncacheable_responses_are_never_stored() {
    let cache = redis_cache("http_uncacheable");
    let (addr, origin) = app(CacheLayer::new(cache.clone())).await;
    for (path, detail) in [
        ("/cookie", "set-cookie"),
        ("/private", "cache-control"),
        ("/nostore", "cache-control"),
        ("/nocache", "cache-control"),
        ("/missing", "status"),
    ] {
        for _ in 0..2 {
            let reply = get(addr, path).await;
            assert_eq!(
                reply.cache_status(),
                format!("cache-layer; fwd=miss; detail={detail}")
            );
        }
        assert_eq!(origin.calls(path), 2, "{path}");
    }
    // The Set-Cookie reaches its own caller.
    assert_eq!(
        get(addr, "/cookie").await.header("set-cookie"),
        "session=new"
    );
    // Uncacheable is not a failure: these loads succeeded.
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.load_errors), (11, 0), "{stats:?}");
}

#[tokio::test]
async fn configured_statuses_are_cached_but_never_5xx() {
    let cache = redis_cache("http_statuses");
    let layer = CacheLayer::new(cache.clone()).statuses([200, 404, 500]);
    let (addr, origin) = app(layer).await;
    assert_eq!(get(addr, "/missing").await.status, StatusCode::NOT_FOUND);
    let again = get(addr, "/missing").await;
    assert!(again.is_hit() && again.status == StatusCode::NOT_FOUND);
    origin.failing.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let reply = get(addr, "/flaky").await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.cache_status(), "cache-layer; fwd=miss; detail=status");
    }
    assert_eq!(origin.calls("/flaky"), 2);
    // Origin errors count as failed loads.
    assert_eq!(cache.stats().load_errors, 2);
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("http_head"))).await;
    let full = get(addr, "/plain/h").await;
    let head = send(addr, "HEAD", "/plain/h", &[]).await;
    assert!(head.is_hit(), "{}", head.cache_status());
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), full.body.len().to_string());
    assert_eq!(head.header("etag"), full.header("etag"));
    // A HEAD miss fills the GET entry.
    let head_first = send(addr, "HEAD", "/plain/h2", &[]).await;
    assert_eq!(head_first.cache_status(), "cache-layer; fwd=miss; stored");
    assert!(head_first.body.is_empty());
    let get_after = get(addr, "/plain/h2").await;
    assert!(get_after.is_hit());
    assert_eq!(get_after.text(), "plain /plain/h2? GET");
    assert_eq!(
        head_first.header("content-length"),
        get_after.body.len().to_string()
    );
    assert_eq!(origin.calls("/plain/h2"), 1);
}

#[tokio::test]
async fn if_none_match_gets_304() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("http_304"))).await;
    // Cold key with a matching validator: stored, then answered 304.
    let first = get(addr, "/plain/e").await;
    let etag = first.header("etag").to_string();
    let not_modified = send(addr, "GET", "/plain/e", &[("if-none-match", &etag)]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), etag);
    assert!(not_modified.is_hit());
    let weak = format!("\"other\", W/{etag}");
    assert_eq!(
        send(addr, "GET", "/plain/e", &[("if-none-match", &weak)])
            .await
            .status,
        304
    );
    let changed = send(addr, "GET", "/plain/e", &[("if-none-match", "\"old\"")]).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.text(), first.text());
    // On a miss the origin is asked for the full response (so it can be stored), then 304.
    let cold = send(addr, "GET", "/etagged", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(cold.status, StatusCode::NOT_MODIFIED);
    assert_eq!(cold.cache_status(), "cache-layer; fwd=miss; stored");
    assert_eq!(origin.calls("/plain/e"), 1);
}

#[tokio::test]
async fn oversized_bodies_stream_through_intact_and_uncached() {
    let layer = CacheLayer::new(redis_cache("http_big")).max_body_bytes(100 * 1024);
    let (addr, origin) = app(layer).await;
    let expected: Vec<u8> = (0..48u8).flat_map(|i| vec![i; 64 * 1024]).collect();
    for _ in 0..2 {
        let reply = get(addr, "/big").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.cache_status(),
            "cache-layer; fwd=miss; detail=too-large"
        );
        assert_eq!(reply.body.len(), expected.len());
        assert!(reply.body == expected, "body intact");
    }
    assert_eq!(origin.calls("/big"), 2);
}

#[tokio::test]
async fn oversized_bodies_are_streamed_not_buffered() {
    let layer = CacheLayer::new(redis_cache("http_stream")).max_body_bytes(64 * 1024);
    let (addr, origin) = app(layer).await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get("/stream-big")
        .header("host", "shop.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("headers arrive before the origin finished its body")
        .unwrap();
    assert_eq!(
        response.headers()["cache-status"],
        "cache-layer; fwd=miss; detail=too-large"
    );
    let mut body = response.into_body();
    let mut received = Vec::new();
    // More than the limit arrives while the origin is still blocked on its last chunk.
    while received.len() < 200 * 1024 {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("data streams before the body is complete")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    origin.stream_gate.notify_one();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received.extend_from_slice(&data);
        }
    }
    assert_eq!(received.len(), 256 * 1024 + 3);
    assert!(received.ends_with(b"END"));
}

#[tokio::test]
async fn concurrent_cold_requests_make_one_origin_call() {
    let cache = redis_cache("http_coalesce");
    let (addr, origin) = app(CacheLayer::new(cache.clone())).await;
    let requests: Vec<_> = (0..20).map(|_| tokio::spawn(get(addr, "/slow"))).collect();
    // Every request has missed (and so joined the one flight, whose origin call is blocked).
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.stats().misses < 20 {
        assert!(
            Instant::now() < deadline,
            "requests did not arrive: {:?}",
            cache.stats()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    origin.gate.notify_one();
    let mut statuses = Vec::new();
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.text(), "slow value");
        statuses.push(reply.cache_status().to_string());
    }
    assert_eq!(origin.calls("/slow"), 1);
    statuses.sort();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| *s == "cache-layer; fwd=miss; stored")
            .count(),
        1
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| *s == "cache-layer; fwd=miss; collapsed")
            .count(),
        19
    );
}

/// Polls `cond` (bounded) while requests are in flight.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn uncacheable_urls_do_not_queue_behind_each_other() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("http_hit_for_miss"))).await;
    // The first response shows the URL is not cacheable...
    let first = tokio::spawn(get(addr, "/gated-cookie"));
    eventually("first call", || origin.calls("/gated-cookie") == 1).await;
    origin.permits.add_permits(1);
    assert_eq!(
        first.await.unwrap().cache_status(),
        "cache-layer; fwd=miss; detail=set-cookie"
    );
    // ...so concurrent requests for it all reach the origin at once (no single-flight queue).
    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(get(addr, "/gated-cookie")))
        .collect();
    eventually("all five at the origin together", || {
        origin.calls("/gated-cookie") == 6
    })
    .await;
    origin.permits.add_permits(5);
    for request in requests {
        assert_eq!(request.await.unwrap().header("set-cookie"), "s=1");
    }
}

#[tokio::test]
async fn redis_down_still_serves_from_the_handler() {
    let server = RedisServer::start();
    let cache = server
        .cache_builder(unique_prefix("http_down"))
        .build()
        .unwrap();
    let (addr, origin) = app(CacheLayer::new(cache)).await;
    get(addr, "/plain/d").await;
    assert!(get(addr, "/plain/d").await.is_hit());
    server.kill();
    for i in 0..10 {
        let reply = get(addr, &format!("/plain/d{i}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), format!("plain /plain/d{i}? GET"));
        assert_eq!(reply.cache_status(), "cache-layer; fwd=miss");
    }
    assert_eq!(origin.calls("/plain/d3"), 1);
}

#[tokio::test]
async fn tags_from_headers_and_extensions_purge_entries() {
    let cache = redis_cache("http_tags");
    let (addr, origin) = app(CacheLayer::new(cache.clone())).await;
    let miss = get(addr, "/tagged/7").await;
    assert!(
        miss.header("cache-tag").is_empty(),
        "tag headers are stripped"
    );
    assert!(get(addr, "/tagged/7").await.is_hit());
    assert!(get(addr, "/tagged/8")
        .await
        .cache_status()
        .contains("stored"));
    cache.invalidate_tag("product:7").await.unwrap();
    assert_eq!(
        get(addr, "/tagged/7").await.cache_status(),
        "cache-layer; fwd=miss; stored"
    );
    assert!(
        get(addr, "/tagged/8").await.is_hit(),
        "other tags untouched"
    );
    cache.invalidate_tag("catalog").await.unwrap();
    assert!(!get(addr, "/tagged/8").await.is_hit());
    assert_eq!(origin.calls("/tagged/7"), 2);

    get(addr, "/ext-tagged").await;
    assert!(get(addr, "/ext-tagged").await.is_hit());
    cache.invalidate_tag("ext-tag").await.unwrap();
    assert!(!get(addr, "/ext-tagged").await.is_hit());
}

#[tokio::test]
async fn stale_while_revalidate_and_stale_if_error() {
    let layer = CacheLayer::new(redis_cache("http_stale"))
        .ttl(Duration::from_millis(300))
        .stale(Duration::from_secs(30));
    let (addr, origin) = app(layer).await;
    assert_eq!(get(addr, "/flaky").await.text(), "flaky ok 1");
    // Waiting out the TTL is the behaviour under test.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.failing.store(true, Ordering::SeqCst);
    let stale = get(addr, "/flaky").await;
    assert_eq!(stale.status, StatusCode::OK, "stale-if-error hides the 500");
    assert_eq!(stale.text(), "flaky ok 1");
    assert!(
        stale.cache_status().starts_with("cache-layer; hit; ttl=-"),
        "{}",
        stale.cache_status()
    );
    assert!(!stale.header("age").is_empty());
    // The failing refresh ran (in the background) and stored nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.calls("/flaky") < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    origin.failing.store(false, Ordering::SeqCst);
    // Once the origin recovers a refresh lands (failed refreshes are retried after ~1 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = get(addr, "/flaky").await;
        assert_eq!(reply.status, StatusCode::OK);
        if reply.is_hit() {
            assert_ne!(reply.text(), "flaky ok 1");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never refreshed: {}",
            reply.cache_status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn respect_request_no_cache_is_opt_in() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("http_nocache_off"))).await;
    get(addr, "/plain/n").await;
    let reply = send(addr, "GET", "/plain/n", &[("cache-control", "no-cache")]).await;
    assert!(
        reply.is_hit(),
        "clients cannot force origin loads by default"
    );
    assert_eq!(origin.calls("/plain/n"), 1);

    let layer = CacheLayer::new(redis_cache("http_nocache_on")).respect_request_no_cache(true);
    let (addr, origin) = app(layer).await;
    get(addr, "/plain/n").await;
    let reply = send(addr, "GET", "/plain/n", &[("cache-control", "no-cache")]).await;
    assert_eq!(reply.cache_status(), "cache-layer; fwd=request; stored");
    assert_eq!(origin.calls("/plain/n"), 2);
}

#[tokio::test]
async fn key_fn_and_methods() {
    let layer = CacheLayer::new(redis_cache("http_keyfn")).key_fn(|req| {
        let id = req.uri.path().strip_prefix("/plain/k/")?;
        Some(format!("item:{id}"))
    });
    let (addr, origin) = app(layer).await;
    let first = get(addr, "/plain/k/1?utm=a").await;
    let second = get(addr, "/plain/k/1?utm=b").await;
    assert!(second.is_hit());
    assert_eq!(second.text(), first.text());
    assert_eq!(
        get(addr, "/plain/other").await.cache_status(),
        "cache-layer; fwd=bypass"
    );
    assert_eq!(
        get(addr, "/plain/other").await.cache_status(),
        "cache-layer; fwd=bypass"
    );
    assert_eq!(origin.calls("/plain/other"), 2);

    // GET only: HEAD bypasses; POST is never cacheable.
    let layer = CacheLayer::new(redis_cache("http_methods")).methods([axum::http::Method::GET]);
    let (addr, _) = app(layer).await;
    assert_eq!(
        send(addr, "HEAD", "/plain/m", &[]).await.cache_status(),
        "cache-layer; fwd=bypass"
    );
    let layer = CacheLayer::new(redis_cache("http_methods_post"))
        .methods([axum::http::Method::GET, axum::http::Method::POST]);
    let state = Origin::default();
    let router = Router::new()
        .route("/{*path}", routing::get(handler).post(handler))
        .layer(layer)
        .with_state(state.clone());
    let addr = serve(router).await;
    for _ in 0..2 {
        assert_eq!(
            send(addr, "POST", "/plain/p", &[]).await.cache_status(),
            "cache-layer; fwd=bypass"
        );
    }
}

#[tokio::test]
async fn local_tier_hits_without_redis_round_trips() {
    let cache = Cache::builder()
        .redis(shared_redis_url())
        .namespace(unique_prefix("http_l1"))
        .local(1000)
        .build()
        .unwrap();
    let (addr, _) = app(CacheLayer::new(cache.clone())).await;
    get(addr, "/plain/l1").await;
    for _ in 0..3 {
        assert!(get(addr, "/plain/l1").await.is_hit());
    }
    assert_eq!(cache.stats().local_hits, 3);
}

#[tokio::test]
async fn route_layer_and_plain_hyper() {
    // route_layer: only the matched route is cached; fallbacks are untouched.
    let state = Origin::default();
    let router = Router::new()
        .route("/plain/{x}", routing::get(handler))
        .route_layer(CacheLayer::new(redis_cache("http_route_layer")))
        .fallback(|| async { "fallback" })
        .with_state(state.clone());
    let addr = serve(router).await;
    get(addr, "/plain/r").await;
    assert!(get(addr, "/plain/r").await.is_hit());
    assert!(get(addr, "/nowhere").await.cache_status().is_empty());

    // Plain hyper with a tower service_fn behind the layer.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = tower::ServiceBuilder::new()
        .layer(CacheLayer::new(redis_cache("http_hyper")))
        .service(tower::service_fn(
            move |_req: hyper::Request<hyper::body::Incoming>| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    let response = hyper::Response::new(http_body_util::Full::new(
                        Bytes::from_static(b"from hyper"),
                    ));
                    Ok::<_, Infallible>(response)
                }
            },
        ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    assert_eq!(
        get(addr, "/x").await.cache_status(),
        "cache-layer; fwd=miss; stored"
    );
    let hit = get(addr, "/x").await;
    assert!(hit.is_hit());
    assert_eq!(hit.text(), "from hyper");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// ---- security ---------------------------------------------------------------------------------

#[tokio::test]
async fn logged_in_responses_never_reach_anonymous_users() {
    for allow in [false, true] {
        let layer = CacheLayer::new(redis_cache("http_sec_auth")).cache_authorized(allow);
        let (addr, _) = app(layer).await;
        for path in ["/account", "/account.css", "/account/x.css"] {
            for creds in [
                ("cookie", "session=alice"),
                ("authorization", "Bearer alice"),
            ] {
                let alice = send(addr, "GET", path, &[creds]).await;
                assert_eq!(alice.text(), "account of alice", "{path}");
            }
            for _ in 0..2 {
                let anonymous = get(addr, path).await;
                assert_eq!(anonymous.text(), "please log in", "allow={allow} {path}");
            }
        }
    }
}

#[tokio::test]
async fn path_confusion_never_maps_to_another_pages_entry() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("http_sec_paths"))).await;
    // Store the real pages.
    let account = get(addr, "/account").await;
    assert_eq!(account.text(), "please log in");
    let file = get(addr, "/files/a/b").await;
    assert!(get(addr, "/files/a/b").await.is_hit());
    // A logged-in victim lured to confusing URLs: nothing of theirs is stored.
    let confusing = [
        "/account.css",
        "/account/x.css",
        "/static/../account",
        "/static/%2e%2e/account",
        "/static/..%2Faccount",
        "/files/a%2Fb",
        "/files/a%2fb",
        "//account",
    ];
    for path in confusing {
        let victim = send(addr, "GET", path, &[("cookie", "session=victim")]).await;
        assert_eq!(victim.cache_status(), "cache-layer; fwd=bypass", "{path}");
    }
    // Anonymous requests for them: never another page's entry, never the victim's page.
    for path in confusing {
        let reply = get(addr, path).await;
        assert_eq!(
            reply.cache_status(),
            "cache-layer; fwd=miss; stored",
            "{path}"
        );
        assert!(!reply.text().contains("victim"), "{path}: {}", reply.text());
        assert_eq!(origin.calls(path), 2, "{path}");
    }
    assert_ne!(get(addr, "/files/a%2Fb").await.text(), file.text());
    // And the real pages still hold their own entries.
    assert_eq!(get(addr, "/account").await.text(), "please log in");
    assert_eq!(origin.calls("/account"), 1);
}

#[tokio::test]
async fn unkeyed_header_poisoning_cannot_change_a_stored_entry() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("http_sec_poison"))).await;
    // The attacker goes first, on a cold key.
    for (name, value) in [
        ("x-forwarded-host", "evil.example"),
        ("x-original-url", "/admin"),
        ("forwarded", "host=evil.example"),
    ] {
        let attack = send(addr, "GET", "/links", &[(name, value)]).await;
        assert_eq!(attack.status, StatusCode::OK);
    }
    assert!(send(
        addr,
        "GET",
        "/links",
        &[("x-forwarded-host", "evil.example")]
    )
    .await
    .is_hit());
    for _ in 0..2 {
        let victim = get(addr, "/links").await;
        assert_eq!(
            victim.text(),
            "<a href=\"https://shop.test/cart\">cart</a> "
        );
    }
    // The Host header is keyed as well.
    let other_host = send(addr, "GET", "/links", &[("host", "evil.example")]).await;
    assert!(other_host.text().contains("evil.example"));
    assert!(!get(addr, "/links").await.text().contains("evil"));
    assert_eq!(origin.calls("/links"), 5);
}

#[tokio::test]
async fn fat_get_bodies_cannot_poison_entries() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("http_sec_fat_get"))).await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get("/plain/fat")
        .header("host", "shop.test")
        .body(http_body_util::Full::new(Bytes::from_static(
            b"callback=evil",
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(
        response.headers()["cache-status"],
        "cache-layer; fwd=bypass"
    );
    assert_eq!(
        get(addr, "/plain/fat").await.cache_status(),
        "cache-layer; fwd=miss; stored"
    );
    assert_eq!(origin.calls("/plain/fat"), 2);
}

#[tokio::test]
async fn tag_headers_never_reach_clients_even_when_bypassing() {
    let (addr, _) = app(CacheLayer::new(redis_cache("http_strip"))).await;
    let bypass = send(addr, "GET", "/tagged/1", &[("cookie", "a=b")]).await;
    assert_eq!(bypass.cache_status(), "cache-layer; fwd=bypass");
    assert!(bypass.header("cache-tag").is_empty());
}

//! `CacheLayer` as an RFC 9111 cache, and the poisoning findings of its review: a real axum
//! router over real TCP (HTTP/1.1 and HTTP/2), a scripted origin that records every request it
//! gets, the shared Redis with a unique namespace per test.

mod support;

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, StatusCode},
    response::Response,
    Router,
};
use bytes::Bytes;
use cache_layer::{Cache, CacheLayer};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    http::{get, send, send_h2},
    redis_cache, shared_redis_url, unique_prefix,
};
use tokio::net::TcpListener;

// ---- scripted origin ------------------------------------------------------------------------

/// One scripted origin response.
#[derive(Clone)]
struct Canned {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn canned(status: u16, headers: &[(&str, &str)], body: &str) -> Canned {
    Canned {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: body.to_string(),
    }
}

/// What the origin saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// The origin: answers each path with its scripted responses in order (the last one repeats);
/// `{host}`, `{auth}` and `{lang}` in a body are replaced by the request's headers.
#[derive(Clone, Default)]
struct Origin {
    script: Arc<Mutex<HashMap<String, VecDeque<Canned>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Origin {
    fn script(&self, path: &str, responses: Vec<Canned>) {
        self.script
            .lock()
            .unwrap()
            .insert(path.to_string(), responses.into());
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|s| s.path == path).cloned().collect()
    }

    fn calls(&self, path: &str) -> usize {
        self.seen(path).len()
    }
}

async fn origin_handler(State(origin): State<Origin>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    origin.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        headers: parts.headers.clone(),
        body,
    });
    let next = {
        let mut script = origin.script.lock().unwrap();
        match script.get_mut(&path) {
            Some(queue) if queue.len() > 1 => queue.pop_front(),
            Some(queue) => queue.front().cloned(),
            None => None,
        }
    };
    let canned = next.unwrap_or_else(|| canned(200, &[("cache-control", "max-age=60")], "ok"));
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    // The host the application sees: `Host`, else the HTTP/2 `:authority`.
    let host = match header("host") {
        host if !host.is_empty() => host,
        _ => parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    };
    let body = canned
        .body
        .replace("{host}", &host)
        .replace("{auth}", &header("authorization"))
        .replace("{lang}", &header("accept-language"));
    let mut response = Response::builder().status(canned.status);
    for (name, value) in &canned.headers {
        response = response.header(name, value);
    }
    response.body(Body::from(body)).unwrap()
}

fn router(layer: CacheLayer, origin: &Origin) -> Router {
    Router::new()
        .fallback(origin_handler)
        .layer(layer)
        .with_state(origin.clone())
}

/// Serves `router` over HTTP/1.1 and, on the same port, HTTP/2 with prior knowledge (h2c).
async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn app(layer: CacheLayer) -> (SocketAddr, Origin) {
    let origin = Origin::default();
    (serve(router(layer, &origin)).await, origin)
}

// ---- helpers -------------------------------------------------------------------------------

/// Polls `check` until it holds (a refresh that runs in the background has no other signal).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- conformance ----------------------------------------------------------------------------

#[tokio::test]
async fn stale_entries_are_revalidated_and_the_304_merged() {
    let (addr, origin) = app(CacheLayer::shared(redis_cache("rfc_revalidate"))).await;
    origin.script(
        "/doc",
        vec![
            canned(
                200,
                &[
                    ("cache-control", "max-age=1"),
                    ("etag", "\"v1\""),
                    ("x-version", "a"),
                ],
                "document",
            ),
            canned(
                304,
                &[
                    ("cache-control", "max-age=60"),
                    ("etag", "\"v1\""),
                    ("x-version", "b"),
                ],
                "",
            ),
        ],
    );
    let miss = get(addr, "/doc").await;
    assert_eq!(miss.cache_status(), "cache-layer; fwd=miss; stored");
    // Waiting out the freshness lifetime is the behaviour under test.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let revalidated = get(addr, "/doc").await;
    assert_eq!(
        revalidated.cache_status(),
        "cache-layer; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(revalidated.text(), "document");
    assert_eq!(
        revalidated.header("x-version"),
        "b",
        "304 headers replace stored ones"
    );
    assert_eq!(revalidated.header("etag"), "\"v1\"");
    let seen = origin.seen("/doc");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers["if-none-match"], "\"v1\"");
    // Freshened for 60 s: a hit, with the merged headers.
    let hit = get(addr, "/doc").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.header("x-version"), "b");
    assert_eq!(hit.text(), "document");
    assert_eq!(origin.calls("/doc"), 2);
    // The client's own conditional is answered from the entry.
    let not_modified = send(addr, "GET", "/doc", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(origin.calls("/doc"), 2);
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale() {
    let layer = CacheLayer::new(redis_cache("rfc_must_revalidate")).stale(Duration::from_secs(30));
    let (addr, origin) = app(layer).await;
    for (path, cc) in [
        ("/strict", "max-age=1, must-revalidate"),
        ("/proxy", "max-age=1, proxy-revalidate"),
        ("/shared", "s-maxage=1"),
        ("/lenient", "max-age=1"),
    ] {
        origin.script(
            path,
            vec![
                canned(200, &[("cache-control", cc)], "v1"),
                canned(503, &[], "down"),
            ],
        );
        assert_eq!(get(addr, path).await.text(), "v1");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for path in ["/strict", "/proxy", "/shared"] {
        let reply = get(addr, path).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(reply.text(), "down");
    }
    // Without the directives, the grace period serves the stale copy (labelled a hit, ttl < 0).
    let lenient = get(addr, "/lenient").await;
    assert_eq!(lenient.text(), "v1");
    assert!(
        lenient
            .cache_status()
            .starts_with("cache-layer; hit; ttl=-"),
        "{}",
        lenient.cache_status()
    );
}

#[tokio::test]
async fn origin_stale_while_revalidate_and_stale_if_error_are_honoured() {
    let (addr, origin) = app(CacheLayer::shared(redis_cache("rfc_swr"))).await;
    origin.script(
        "/swr",
        vec![
            canned(
                200,
                &[("cache-control", "max-age=1, stale-while-revalidate=60")],
                "one",
            ),
            canned(200, &[("cache-control", "max-age=60")], "two"),
        ],
    );
    origin.script(
        "/sie",
        vec![
            canned(
                200,
                &[("cache-control", "max-age=1, stale-if-error=60")],
                "kept",
            ),
            canned(500, &[], "error"),
        ],
    );
    get(addr, "/swr").await;
    get(addr, "/sie").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = get(addr, "/swr").await;
    assert_eq!(stale.text(), "one", "answered at once from the stale entry");
    assert!(stale.cache_status().starts_with("cache-layer; hit; ttl=-"));
    eventually("the background revalidation", || async {
        get(addr, "/swr").await.text() == "two"
    })
    .await;
    assert_eq!(origin.calls("/swr"), 2, "one background refresh");
    let error = get(addr, "/sie").await;
    assert_eq!(error.status, StatusCode::OK);
    assert_eq!(error.text(), "kept");
}

#[tokio::test]
async fn a_refresh_that_comes_back_uncacheable_ends_the_stale_entry() {
    let layer =
        CacheLayer::new(redis_cache("rfc_uncacheable_refresh")).stale(Duration::from_secs(30));
    let (addr, origin) = app(layer).await;
    origin.script(
        "/page",
        vec![
            canned(200, &[("cache-control", "max-age=1")], "public page"),
            canned(200, &[("cache-control", "no-store")], "now private"),
        ],
    );
    get(addr, "/page").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Stale-while-revalidate answers once; the refresh sees no-store and removes the entry.
    assert_eq!(get(addr, "/page").await.text(), "public page");
    eventually("the stale entry to go", || async {
        get(addr, "/page").await.text() == "now private"
    })
    .await;
    let after = get(addr, "/page").await;
    assert_eq!(after.text(), "now private");
    assert!(
        !after.cache_status().contains("hit"),
        "{}",
        after.cache_status()
    );
}

#[tokio::test]
async fn vary_is_stored_with_the_entry_and_matched_on_reuse_across_instances() {
    // Two instances (two caches, two layers) on one Redis namespace, as two pods would be.
    let namespace = unique_prefix("rfc_vary_instances");
    let cache = || {
        Cache::builder()
            .redis(shared_redis_url())
            .namespace(namespace.clone())
            .build()
            .unwrap()
    };
    let origin = Origin::default();
    origin.script(
        "/greeting",
        vec![canned(
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
            "hello in {lang}",
        )],
    );
    let a = serve(router(CacheLayer::new(cache()), &origin)).await;
    let b = serve(router(CacheLayer::new(cache()), &origin)).await;
    let lang = |l: &'static str| [("accept-language", l)];
    let en = send(a, "GET", "/greeting", &lang("en")).await;
    assert_eq!(en.text(), "hello in en");
    assert_eq!(en.cache_status(), "cache-layer; fwd=miss; stored");
    // Instance B has learned nothing: it must not hand the English page to a German client.
    let de = send(b, "GET", "/greeting", &lang("de")).await;
    assert_eq!(de.text(), "hello in de");
    assert!(!de.cache_status().contains("hit"));
    // Each variant is reused by the other instance for the matching client only.
    let en_b = send(b, "GET", "/greeting", &lang("en")).await;
    assert_eq!(en_b.text(), "hello in en");
    assert!(en_b.is_hit(), "{}", en_b.cache_status());
    let de_a = send(a, "GET", "/greeting", &lang("de")).await;
    assert_eq!(de_a.text(), "hello in de");
    assert!(de_a.is_hit(), "{}", de_a.cache_status());
    // Values are compared after normalising whitespace; absent differs from empty.
    let spaced = send(a, "GET", "/greeting", &lang(" en ")).await;
    assert_eq!(spaced.text(), "hello in en");
    let none = get(a, "/greeting").await;
    assert_eq!(none.text(), "hello in ");
    assert_eq!(origin.calls("/greeting"), 3);
}

#[tokio::test]
async fn targeted_cache_control_overrides_cache_control() {
    let (addr, origin) = app(CacheLayer::shared(redis_cache("rfc_targeted"))).await;
    origin.script(
        "/cdn",
        vec![canned(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
            ],
            "cdn",
        )],
    );
    origin.script(
        "/cdn-no-store",
        vec![canned(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "no-store"),
            ],
            "x",
        )],
    );
    origin.script(
        "/surrogate",
        vec![canned(
            200,
            &[
                ("cache-control", "no-store"),
                ("surrogate-control", "max-age=60;cache-layer"),
            ],
            "surrogate",
        )],
    );
    for path in ["/cdn", "/cdn-no-store", "/surrogate"] {
        get(addr, path).await;
    }
    assert!(get(addr, "/cdn").await.is_hit());
    assert!(!get(addr, "/cdn-no-store")
        .await
        .cache_status()
        .contains("hit"));
    let surrogate = get(addr, "/surrogate").await;
    assert!(surrogate.is_hit());
    assert_eq!(
        surrogate.header("surrogate-control"),
        "",
        "removed before the client"
    );
    assert_eq!(
        origin.seen("/surrogate")[0].headers["surrogate-capability"],
        "cache-layer=\"Surrogate/1.0\""
    );
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_target_and_same_origin_locations() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("rfc_invalidate"))).await;
    let ok = || canned(200, &[("cache-control", "max-age=60")], "ok");
    origin.script(
        "/orders",
        vec![
            ok(),
            canned(
                201,
                &[
                    ("location", "/orders/7"),
                    ("content-location", "/orders?new"),
                ],
                "created",
            ),
            ok(),
        ],
    );
    let elsewhere = [("host", "elsewhere.test")];
    send(addr, "GET", "/orders/7", &elsewhere).await;
    for path in ["/cart", "/orders", "/orders/7"] {
        get(addr, path).await;
        assert!(get(addr, path).await.is_hit(), "{path}");
    }
    let posted = send(addr, "POST", "/cart", &[]).await;
    assert_eq!(posted.status, StatusCode::OK);
    assert_eq!(origin.seen("/cart").last().unwrap().method, "POST");
    assert_eq!(
        get(addr, "/cart").await.cache_status(),
        "cache-layer; fwd=miss; stored"
    );
    // POST /orders → 201 with Location /orders/7: the target and the location are invalidated.
    assert_eq!(
        send(addr, "POST", "/orders", &[]).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        get(addr, "/orders").await.cache_status(),
        "cache-layer; fwd=miss; stored"
    );
    assert_eq!(
        get(addr, "/orders/7").await.cache_status(),
        "cache-layer; fwd=miss; stored"
    );
    // A Location on another origin invalidates nothing there.
    origin.script(
        "/cart",
        vec![canned(
            200,
            &[("location", "http://elsewhere.test/orders/7")],
            "moved",
        )],
    );
    send(addr, "POST", "/cart", &[]).await;
    assert!(send(addr, "GET", "/orders/7", &elsewhere).await.is_hit());
    // A failed unsafe request invalidates nothing.
    origin.script("/orders/7", vec![canned(500, &[], "failed")]);
    assert!(send(addr, "DELETE", "/orders/7", &[])
        .await
        .status
        .is_server_error());
    assert!(get(addr, "/orders/7").await.is_hit());
}

#[tokio::test]
async fn request_no_store_is_neither_stored_nor_answered_from_the_cache() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("rfc_req_no_store"))).await;
    let first = send(addr, "GET", "/a", &[("cache-control", "no-store")]).await;
    assert_eq!(first.cache_status(), "cache-layer; fwd=bypass");
    assert_eq!(
        get(addr, "/a").await.cache_status(),
        "cache-layer; fwd=miss; stored"
    );
    assert_eq!(origin.calls("/a"), 2);
}

#[tokio::test]
async fn only_if_cached_never_reaches_the_origin() {
    let (addr, origin) = app(CacheLayer::shared(redis_cache("rfc_only_if_cached"))).await;
    let only = [("cache-control", "only-if-cached")];
    let cold = send(addr, "GET", "/cold", &only).await;
    assert_eq!(cold.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin.calls("/cold"), 0);
    get(addr, "/cold").await;
    let warm = send(addr, "GET", "/cold", &only).await;
    assert_eq!(warm.status, StatusCode::OK);
    assert!(warm.is_hit(), "{}", warm.cache_status());
    assert_eq!(origin.calls("/cold"), 1);
}

#[tokio::test]
async fn age_is_forwarded_and_grows_and_inner_cache_status_is_not_replayed() {
    let (addr, origin) = app(CacheLayer::shared(redis_cache("rfc_age"))).await;
    origin.script(
        "/aged",
        vec![canned(
            200,
            &[
                ("cache-control", "max-age=600"),
                ("age", "30"),
                ("cache-status", "inner; hit"),
            ],
            "aged",
        )],
    );
    let miss = get(addr, "/aged").await;
    assert_eq!(
        miss.header("age"),
        "30",
        "the origin's Age reaches the client"
    );
    let hit = get(addr, "/aged").await;
    let age: u64 = hit.header("age").parse().unwrap();
    assert!((30..=32).contains(&age), "{age}");
    let ttl: i64 = hit
        .cache_status()
        .strip_prefix("cache-layer; hit; ttl=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((567..=570).contains(&ttl), "600 s minus the age: {ttl}");
    assert_eq!(
        hit.cache_status(),
        format!("cache-layer; hit; ttl={ttl}"),
        "the inner cache's member described the first fetch, not this hit"
    );
    assert_eq!(origin.calls("/aged"), 1);
}

#[tokio::test]
async fn shared_layers_store_non_200_and_heuristic_responses_as_the_rfc_allows() {
    let (addr, origin) = app(CacheLayer::shared(redis_cache("rfc_statuses"))).await;
    origin.script(
        "/gone",
        vec![canned(
            404,
            &[("cache-control", "max-age=60")],
            "no such page",
        )],
    );
    origin.script(
        "/moved",
        vec![canned(
            301,
            &[
                ("location", "/new"),
                ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ],
            "",
        )],
    );
    origin.script("/plain", vec![canned(200, &[], "no freshness")]);
    for path in ["/gone", "/moved", "/plain"] {
        get(addr, path).await;
    }
    assert!(get(addr, "/gone").await.is_hit());
    assert!(
        get(addr, "/moved").await.is_hit(),
        "heuristic freshness from Last-Modified"
    );
    assert!(
        !get(addr, "/plain").await.cache_status().contains("hit"),
        "ttl(0): nothing to go on"
    );
    // The axum default keeps its configured statuses and TTL.
    let (addr, origin) = app(CacheLayer::new(redis_cache("rfc_statuses_default"))).await;
    origin.script(
        "/gone",
        vec![canned(
            404,
            &[("cache-control", "max-age=60")],
            "no such page",
        )],
    );
    origin.script("/plain", vec![canned(200, &[], "no freshness")]);
    get(addr, "/gone").await;
    get(addr, "/plain").await;
    assert!(!get(addr, "/gone").await.cache_status().contains("hit"));
    assert!(get(addr, "/plain").await.is_hit());
    assert_eq!(origin.calls("/plain"), 1);
}

#[tokio::test]
async fn the_l1_tier_is_bounded_by_bytes_for_http_entries() {
    let cache = Cache::builder()
        .redis(shared_redis_url())
        .namespace(unique_prefix("rfc_l1_bytes"))
        .local(10_000)
        .local_max_bytes(1024 * 1024)
        .build()
        .unwrap();
    let (addr, origin) = app(CacheLayer::new(cache.clone())).await;
    let big = "x".repeat(256 * 1024);
    for i in 0..8 {
        origin.script(
            &format!("/big/{i}"),
            vec![canned(200, &[("cache-control", "max-age=60")], &big)],
        );
    }
    for i in 0..8 {
        assert_eq!(get(addr, &format!("/big/{i}")).await.body.len(), big.len());
    }
    // 8 x 256 KiB cannot fit in 1 MiB: entries are pushed out by size (moka evicts during its
    // maintenance, which reads and writes drive).
    eventually("size evictions", || async {
        get(addr, "/big/0").await;
        cache.stats().l1_evictions >= 4
    })
    .await;
    // Every response still comes back whole, from L1 or Redis, never from the origin.
    for i in 0..8 {
        let reply = get(addr, &format!("/big/{i}")).await;
        assert!(reply.is_hit());
        assert_eq!(reply.body.len(), big.len());
    }
    for i in 0..8 {
        assert_eq!(origin.calls(&format!("/big/{i}")), 1);
    }
}

// ---- poisoning ------------------------------------------------------------------------------

#[tokio::test]
async fn a_target_authority_that_differs_from_host_is_never_cached() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("sec_host"))).await;
    origin.script(
        "/home",
        vec![canned(
            200,
            &[("cache-control", "max-age=60")],
            "links to {host}",
        )],
    );
    // Absolute-form target for the victim's host, Host header for the attacker's.
    let attack = send(
        addr,
        "GET",
        "http://shop.test/home",
        &[("host", "evil.example")],
    )
    .await;
    assert_eq!(attack.cache_status(), "cache-layer; fwd=bypass");
    let victim = get(addr, "/home").await;
    assert_eq!(victim.text(), "links to shop.test");
    // HTTP/2: :authority for the victim, a host header for the attacker.
    let h2_attack = send_h2(
        addr,
        "http://shop.test/home",
        &[("host", "evil.example")],
        None,
    )
    .await;
    assert_eq!(h2_attack.cache_status(), "cache-layer; fwd=bypass");
    let h2 = send_h2(addr, "http://shop.test/home", &[], None).await;
    assert_eq!(h2.text(), "links to shop.test");
    assert_eq!(h2.cache_status(), "cache-layer; fwd=miss; stored");
    assert!(send_h2(addr, "http://shop.test/home", &[], None)
        .await
        .is_hit());
    // Matching authority and Host are cacheable; the scheme is part of the key.
    let https = send_h2(addr, "https://shop.test/home", &[], None).await;
    assert_eq!(https.cache_status(), "cache-layer; fwd=miss; stored");
    for _ in 0..2 {
        assert_eq!(get(addr, "/home").await.text(), "links to shop.test");
    }
    assert_eq!(origin.calls("/home"), 5);
}

#[tokio::test]
async fn more_forwarding_headers_are_keyed() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("sec_forwarding"))).await;
    origin.script(
        "/page",
        vec![canned(200, &[("cache-control", "max-age=60")], "page")],
    );
    get(addr, "/page").await;
    for (name, value) in [
        ("x-forwarded-ssl", "on"),
        ("front-end-https", "on"),
        ("x-original-host", "evil.example"),
        ("x-http-host-override", "evil.example"),
        ("x-forwarded-uri", "/admin"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
    ] {
        let reply = send(addr, "GET", "/page", &[(name, value)]).await;
        assert_eq!(
            reply.cache_status(),
            "cache-layer; fwd=miss; stored",
            "{name}"
        );
    }
    assert!(get(addr, "/page").await.is_hit());
    assert_eq!(origin.calls("/page"), 8);
}

#[tokio::test]
async fn authorized_requests_share_only_what_the_origin_marks_shareable() {
    let layer = CacheLayer::new(redis_cache("sec_authorized")).cache_authorized(true);
    let (addr, origin) = app(layer).await;
    origin.script(
        "/me",
        vec![canned(
            200,
            &[("cache-control", "max-age=60")],
            "profile of {auth}",
        )],
    );
    origin.script(
        "/news",
        vec![canned(
            200,
            &[("cache-control", "public, max-age=60")],
            "news",
        )],
    );
    let alice = send(addr, "GET", "/me", &[("authorization", "Bearer alice")]).await;
    assert_eq!(alice.text(), "profile of Bearer alice");
    assert_eq!(
        alice.cache_status(),
        "cache-layer; fwd=miss; detail=authorization"
    );
    let bob = send(addr, "GET", "/me", &[("authorization", "Bearer bob")]).await;
    assert_eq!(bob.text(), "profile of Bearer bob", "RFC 9111 3.5");
    send(addr, "GET", "/news", &[("authorization", "Bearer alice")]).await;
    let shared = send(addr, "GET", "/news", &[("authorization", "Bearer bob")]).await;
    assert!(shared.is_hit(), "public: shareable");
    assert_eq!(origin.calls("/me"), 2);
}

#[tokio::test]
async fn http2_request_bodies_without_content_length_bypass() {
    let (addr, origin) = app(CacheLayer::new(redis_cache("sec_h2_body"))).await;
    origin.script(
        "/search",
        vec![canned(200, &[("cache-control", "max-age=60")], "results")],
    );
    let fat = send_h2(addr, "http://shop.test/search", &[], Some("q=poison")).await;
    assert_eq!(fat.cache_status(), "cache-layer; fwd=bypass");
    let seen = origin.seen("/search");
    assert_eq!(seen[0].body, "q=poison");
    assert!(!seen[0].headers.contains_key("content-length"));
    let clean = send_h2(addr, "http://shop.test/search", &[], None).await;
    assert_eq!(clean.cache_status(), "cache-layer; fwd=miss; stored");
}

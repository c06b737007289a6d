//! Scrapes the Prometheus example's `/metrics` over real TCP and checks the cache counters move as
//! requests are served (miss, then hits), with the labels documented in the README.

#[path = "../examples/prometheus.rs"]
mod example;
mod support;

use cache_layer::Cache;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP/1.1 GET over a fresh TCP connection; returns the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The value of the sample whose name and labels contain every fragment in `parts`.
fn sample(metrics: &str, parts: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| parts.iter().all(|part| line.contains(part)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_reports_cache_activity() {
    let recorder = example::install_recorder().expect("first recorder in this process");
    let cache = Cache::builder()
        .name("products")
        .redis(support::shared_redis_url())
        .namespace(support::unique_prefix("prometheus"))
        .track_hot_keys(3)
        .build()
        .expect("valid configuration");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
        listener,
        example::app(cache.clone(), recorder),
    )));

    for _ in 0..5 {
        let body = get(addr, "/products/7").await;
        assert!(body.contains("\"id\":7"), "{body}");
    }
    let _ = get(addr, "/products/8").await;
    let metrics = get(addr, "/metrics").await;

    let hits = sample(
        &metrics,
        &[
            "cache_hits_total{",
            "cache=\"products\"",
            "door=\"direct\"",
            "tier=\"l2\"",
        ],
    );
    let misses = sample(
        &metrics,
        &[
            "cache_misses_total{",
            "cache=\"products\"",
            "door=\"direct\"",
        ],
    );
    let loads = sample(
        &metrics,
        &[
            "cache_loads_total{",
            "cache=\"products\"",
            "door=\"direct\"",
            "outcome=\"ok\"",
        ],
    );
    let redis_ok = sample(
        &metrics,
        &[
            "cache_redis_ops_total{",
            "cache=\"products\"",
            "outcome=\"ok\"",
        ],
    );
    assert_eq!((hits, misses, loads), (4.0, 2.0, 2.0), "{metrics}");
    // 6 entry reads (the tag records ride along with the misses' GETs) + 2 conditional fills,
    // + bookkeeping, once per namespace or tag and then kept current by the invalidation bus:
    // the namespace epoch (read and created, then announced: 2 operations) and the records of
    // the new tags `product:7` and `product:8` (created: 1 each).
    assert_eq!(
        redis_ok, 12.0,
        "6 GETs + 2 fills + 4 bookkeeping operations: {metrics}"
    );
    assert!(
        metrics.contains("cache_load_seconds"),
        "load latency histogram: {metrics}"
    );
    assert!(
        metrics.contains("cache_value_bytes"),
        "value size histogram: {metrics}"
    );
    assert!(
        metrics.contains("cache_breaker_state{cache=\"products\"} 0"),
        "{metrics}"
    );
    assert!(!metrics.contains("product:7"), "keys are never labels");

    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (4, 2));
    server.abort();
}

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
    // Histograms with buckets (what the Grafana dashboard's p50/p99 panels read).
    assert!(
        metrics.contains("cache_load_seconds_bucket{"),
        "load latency histogram: {metrics}"
    );
    assert!(
        metrics.contains("cache_redis_op_seconds_bucket{"),
        "Redis latency histogram: {metrics}"
    );
    assert!(
        metrics.contains("cache_value_bytes_bucket{"),
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

/// The metric names a Grafana expression reads: `cache_*` identifiers, without the `_bucket` /
/// `_sum` / `_count` series suffixes of a histogram.
fn dashboard_metrics(dashboard: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let mut exprs = Vec::new();
    collect_exprs(dashboard, &mut exprs);
    let mut names = std::collections::BTreeSet::new();
    for expr in exprs {
        let bytes = expr.as_bytes();
        let mut i = 0;
        while let Some(start) = expr[i..].find("cache_").map(|at| at + i) {
            let end = expr[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |len| start + len);
            let preceded_by_ident =
                start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            if !preceded_by_ident {
                let name = &expr[start..end];
                let base = name
                    .strip_suffix("_bucket")
                    .or_else(|| name.strip_suffix("_sum"))
                    .or_else(|| name.strip_suffix("_count"))
                    .unwrap_or(name);
                names.insert(base.to_owned());
            }
            i = end;
        }
    }
    names
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value {
                    serde_json::Value::String(s) if key == "expr" || key == "definition" => {
                        out.push(s.clone())
                    }
                    other => collect_exprs(other, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The Grafana dashboard next to the example reads only metrics the README documents, reads all
/// of them, and its latency panels find the histogram buckets the example configures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_reads_the_documented_metrics() {
    let text = include_str!("../examples/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
    assert_eq!(dashboard["uid"], "cache-layer");
    let used = dashboard_metrics(&dashboard);
    let readme = include_str!("../README.md");
    let documented: std::collections::BTreeSet<String> = readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `cache_"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(name, _)| format!("cache_{name}"))
        .collect();
    assert!(
        documented.len() >= 20,
        "README metric table: {documented:?}"
    );
    let undocumented: Vec<_> = used.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "dashboard reads undocumented metrics {undocumented:?}"
    );
    let unused: Vec<_> = documented.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "documented metrics without a panel: {unused:?}"
    );
    for histogram in [
        "cache_load_seconds",
        "cache_redis_op_seconds",
        "cache_value_bytes",
    ] {
        assert!(
            text.contains(&format!("{histogram}_bucket")),
            "{histogram} panel reads buckets"
        );
    }
}

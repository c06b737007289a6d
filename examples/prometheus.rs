//! Cache metrics for Prometheus: an axum service whose product endpoint is cached, and a
//! `/metrics` endpoint rendered by `metrics-exporter-prometheus`.
//!
//! ```text
//! cargo run --example prometheus                        # embedded store; REDIS_URL for Redis
//! curl localhost:3000/products/7; curl localhost:3000/metrics
//! ```
//!
//! Install the recorder before building the cache: the cache registers its metric handles once,
//! when it is built. The latency and size metrics are exported as Prometheus histograms (buckets
//! below), which the Grafana dashboard next to this file (`grafana-dashboard.json`, import it in
//! Grafana and pick the Prometheus data source) turns into p50/p99 across instances.

use std::time::Duration;

use axum::{extract::Path, extract::State, routing::get, Json, Router};
use cache_layer::{Cache, Policy};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};

/// What the product endpoint returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Product {
    pub id: u64,
    pub name: String,
}

#[derive(Clone)]
struct AppState {
    cache: Cache,
    metrics: PrometheusHandle,
}

/// The service: `GET /products/{id}` (cached for 60 s) and `GET /metrics`.
pub fn app(cache: Cache, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/products/{id}", get(product))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { cache, metrics })
}

async fn product(State(state): State<AppState>, Path(id): Path<u64>) -> Json<Product> {
    let policy = Policy::ttl(Duration::from_secs(60)).tags([format!("product:{id}")]);
    let product = state
        .cache
        .get_or_fetch(&format!("product:{id}"), &policy, move || async move {
            // The database query this cache saves.
            tokio::time::sleep(Duration::from_millis(20)).await;
            Product {
                id,
                name: format!("Product {id}"),
            }
        })
        .await;
    Json(product)
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

/// Buckets of the `cache_*_seconds` histograms: from an L1-speed 100 µs to a 10 s source call.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets of `cache_value_bytes`: 64 B to 4 MiB.
const BYTES_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    let error = |e| format!("cannot install the Prometheus recorder: {e}");
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(error)?
        .set_buckets_for_metric(Matcher::Full("cache_value_bytes".into()), BYTES_BUCKETS)
        .map_err(error)?
        .install_recorder()
        .map_err(error)
}

#[allow(dead_code)] // `tests/prometheus.rs` includes this file for `app` and `install_recorder`.
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let metrics = install_recorder()?;
    let mut builder = Cache::builder()
        .name("products")
        .namespace("prometheus-example");
    if let Ok(url) = std::env::var("REDIS_URL") {
        builder = builder.redis(url);
    }
    let cache = builder.build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "listening on http://{}  (try /products/7 and /metrics)",
        listener.local_addr()?
    );
    axum::serve(listener, app(cache, metrics)).await?;
    Ok(())
}

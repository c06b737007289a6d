//! Cache metrics for Prometheus: an axum service whose product endpoint is cached, and a
//! `/metrics` endpoint rendered by `metrics-exporter-prometheus`.
//!
//! ```text
//! cargo run --example prometheus                        # embedded store; REDIS_URL for Redis
//! curl localhost:3000/products/7; curl localhost:3000/metrics
//! ```
//!
//! Install the recorder before building the cache: the cache registers its metric handles once,
//! when it is built.

use std::time::Duration;

use axum::{extract::Path, extract::State, routing::get, Json, Router};
use cache_layer::{Cache, Policy};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))
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

//! The seed article's product page, before and after cache-layer.
//!
//! A simulated database (a 32-connection pool, ~50 ms per product query) serves a catalog whose
//! popularity is skewed like real traffic (a few products get most views). 64 concurrent clients
//! request product pages, first straight from the database, then through `Cache::get_or_fetch`.
//!
//! ```text
//! cargo run --release --example demo                                   # embedded in-memory store
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example demo   # real Redis
//! ```

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cache_layer::{Cache, Policy};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

const PRODUCTS: u64 = 2_000;
const CLIENTS: usize = 64;
const REQUESTS_PER_CLIENT: usize = 40;
const QUERY_TIME: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProductPage {
    id: u64,
    name: String,
    brand: String,
    category: String,
    price_cents: u64,
    rating: f32,
    review_count: u32,
}

/// A stand-in for PostgreSQL: a bounded connection pool and a slow aggregate query.
struct Database {
    pool: Semaphore,
    queries: AtomicU64,
}

impl Database {
    async fn product_page(&self, id: u64) -> ProductPage {
        let _connection = self.pool.acquire().await.expect("the pool is never closed");
        self.queries.fetch_add(1, Ordering::Relaxed);
        // The join over products, brands, categories and reviews.
        tokio::time::sleep(QUERY_TIME + Duration::from_millis(id % 7)).await;
        ProductPage {
            id,
            name: format!("Product {id}"),
            brand: format!("Brand {}", id % 40),
            category: format!("Category {}", id % 12),
            price_cents: 999 + id * 13 % 50_000,
            rating: 3.0 + (id % 20) as f32 / 10.0,
            review_count: (id * 37 % 900) as u32,
        }
    }
}

/// A product id with a skewed popularity: 80% of views go to 5% of the catalog.
fn pick_product(rng: &mut impl rand::RngExt) -> u64 {
    if rng.random_bool(0.8) {
        rng.random_range(0..PRODUCTS / 20)
    } else {
        rng.random_range(0..PRODUCTS)
    }
}

struct Run {
    label: &'static str,
    latencies: Vec<Duration>,
    elapsed: Duration,
    queries: u64,
    hit_ratio: Option<f64>,
}

impl Run {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    }
}

async fn run(label: &'static str, db: Arc<Database>, cache: Option<Cache>) -> Run {
    let queries_before = db.queries.load(Ordering::Relaxed);
    let policy = Policy::ttl(Duration::from_secs(300)).jitter(0.1);
    let started = Instant::now();
    let clients = (0..CLIENTS).map(|_| {
        let (db, cache, policy) = (db.clone(), cache.clone(), policy.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
            let mut latencies = Vec::with_capacity(REQUESTS_PER_CLIENT);
            for _ in 0..REQUESTS_PER_CLIENT {
                let id = pick_product(&mut rng);
                let request = Instant::now();
                let page = match &cache {
                    None => db.product_page(id).await,
                    Some(cache) => {
                        let db = db.clone();
                        cache
                            .get_or_fetch(&format!("product:{id}"), &policy, move || async move {
                                db.product_page(id).await
                            })
                            .await
                    }
                };
                assert_eq!(page.id, id);
                latencies.push(request.elapsed());
            }
            latencies
        })
    });
    let mut latencies = Vec::new();
    for client in futures_util::future::join_all(clients).await {
        latencies.extend(client.expect("client task"));
    }
    Run {
        label,
        latencies,
        elapsed: started.elapsed(),
        queries: db.queries.load(Ordering::Relaxed) - queries_before,
        hit_ratio: cache.map(|c| c.stats().hit_ratio()),
    }
}

#[tokio::main]
async fn main() -> Result<(), cache_layer::Error> {
    let redis_url = std::env::var("REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty());
    let namespace = format!("demo-{}", std::process::id());
    let mut builder = Cache::builder().namespace(namespace);
    let backend = match &redis_url {
        Some(url) => {
            builder = builder.redis(url.as_str());
            format!("Redis at {url}")
        }
        None => "embedded in-memory store (set REDIS_URL to use Redis)".to_string(),
    };
    let cache = builder.build()?;
    let db = Arc::new(Database {
        pool: Semaphore::new(32),
        queries: AtomicU64::new(0),
    });

    println!("cache-layer demo: {CLIENTS} clients x {REQUESTS_PER_CLIENT} product-page requests,");
    println!("{PRODUCTS} products (80% of views on 5% of them), ~{QUERY_TIME:?} per query, 32 DB connections");
    println!("cache: {backend}\n");

    let before = run("no cache", db.clone(), None).await;
    let after = run("cache-layer", db.clone(), Some(cache.clone())).await;

    println!(
        "{:<12} {:>10} {:>10} {:>12} {:>12} {:>12} {:>10}",
        "", "p50", "p99", "origin q/s", "queries/req", "requests/s", "hit ratio"
    );
    for r in [&before, &after] {
        let secs = r.elapsed.as_secs_f64();
        println!(
            "{:<12} {:>10.1?} {:>10.1?} {:>12.0} {:>12.2} {:>12.0} {:>10}",
            r.label,
            r.percentile(0.50),
            r.percentile(0.99),
            r.queries as f64 / secs,
            r.queries as f64 / r.latencies.len() as f64,
            r.latencies.len() as f64 / secs,
            r.hit_ratio
                .map_or("-".to_string(), |h| format!("{:.1}%", h * 100.0)),
        );
    }
    println!(
        "\np50 {:.0}x lower, {:.1}x the throughput.",
        before.percentile(0.50).as_secs_f64() / after.percentile(0.50).as_secs_f64().max(1e-9),
        (after.latencies.len() as f64 / after.elapsed.as_secs_f64())
            / (before.latencies.len() as f64 / before.elapsed.as_secs_f64()),
    );
    println!(
        "Database queries: {} without the cache, {} with it. Stats: {:?}",
        before.queries,
        after.queries,
        cache.stats()
    );
    Ok(())
}

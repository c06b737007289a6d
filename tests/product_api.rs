//! The product API example (`examples/product_api/`) at a small scale against the real PostgreSQL
//! and the shared Redis: 2k products seeded into a schema of its own, a short load per setup with
//! PUTs in it, every response checked against the PUTs acknowledged before it was sent, the
//! table printed. Skipped (with a message) when PostgreSQL is not reachable.

#[path = "../examples/product_api/main.rs"]
mod example;
mod support;

use std::{sync::Arc, time::Duration};

use example::{
    bench::{self, Row, Setup},
    db::{Db, Scale, DEFAULT_DATABASE_URL},
    load::LoadConfig,
};
use sqlx::postgres::PgConnectOptions;

/// `Some(url)` when something accepts TCP connections at the URL's host and port.
async fn reachable_postgres() -> Option<String> {
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
    let options: PgConnectOptions = match url.parse() {
        Ok(options) => options,
        Err(error) => panic!("DATABASE_URL {url:?} does not parse: {error}"),
    };
    let address = format!("{}:{}", options.get_host(), options.get_port());
    let connect = tokio::net::TcpStream::connect(address.clone());
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(_)) => Some(url),
        Ok(Err(error)) => {
            eprintln!("SKIPPED product_api: PostgreSQL is not reachable at {address}: {error}");
            None
        }
        Err(_) => {
            eprintln!("SKIPPED product_api: PostgreSQL at {address} did not answer within 2 s");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_api_before_and_after_with_puts() {
    let Some(url) = reachable_postgres().await else {
        return;
    };
    let schema = format!(
        "cache_layer_test_{}_{:08x}",
        std::process::id(),
        support::random_u64() as u32
    );
    let db = Arc::new(
        Db::connect(&url, &schema, 8)
            .await
            .unwrap_or_else(|error| panic!("PostgreSQL at {url} is reachable but: {error}")),
    );
    let scale = Scale::small(2_000);
    let outcome = run(db.clone(), scale).await;
    // Clean up before judging, so a failure leaves nothing behind.
    let dropped = db.drop_schema().await;
    let rows = outcome.unwrap_or_else(|error| panic!("load run failed: {error}"));
    dropped.unwrap_or_else(|error| panic!("could not drop schema {schema}: {error}"));

    println!("{}", bench::table(&rows));
    example::report(&rows);

    for row in &rows {
        let label = row.setup.label();
        for load in [&row.warmup, &row.load] {
            assert_eq!(
                load.errors, 0,
                "{label}: failed requests: {:?}",
                load.problems
            );
            assert_eq!(
                load.stale, 0,
                "{label}: stale responses: {:?}",
                load.problems
            );
        }
        // ~5% of ~1000 requests: dozens of PUTs, each product re-read after its phase.
        assert!(
            row.warmup.puts + row.load.puts > 0,
            "{label}: the load made PUTs"
        );
        assert!(
            row.warmup.verified_after + row.load.verified_after > 0,
            "{label}: written products were re-read after the load"
        );
        assert!(!row.load.get_latencies.is_empty(), "{label}: GETs measured");
    }
    let [uncached, cached, cached_l1, http] = &rows[..] else {
        panic!("one row per setup: {rows:?}");
    };
    // Uncached: two statements per GET (details + category top), one per PUT, nothing else.
    assert_eq!(
        uncached.db_queries,
        2 * uncached.load.get_latencies.len() as u64 + uncached.load.puts,
        "{uncached:?}"
    );
    assert_eq!(uncached.hit_ratio, None);
    for row in [cached, cached_l1, http] {
        assert!(
            row.queries_per_request() < uncached.queries_per_request() / 2.0,
            "{}: the cache answers most requests: {row:?}",
            row.setup.label()
        );
        assert!(row.hit_ratio.unwrap_or(0.0) > 0.5, "{row:?}");
    }
    assert_eq!(cached.l1_ratio, Some(0.0), "no L1 configured");
    assert!(cached_l1.l1_ratio.unwrap_or(0.0) > 0.3, "{cached_l1:?}");
    assert_eq!(cached_l1.http_hit_ratio(), None);
    assert!(
        http.http_hit_ratio().unwrap_or(0.0) > 0.3,
        "CacheLayer answers GETs: {http:?}"
    );
}

async fn run(db: Arc<Db>, scale: Scale) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    db.ensure_seeded(scale).await?;
    let config = LoadConfig {
        clients: 16,
        // Bounded by requests (enough to warm the 100 popular products), capped in time.
        warmup: Duration::from_secs(2),
        warmup_requests: 500,
        duration: Duration::from_millis(1000),
        max_requests: 20_000,
        put_ratio: 0.05,
        products: scale.products,
    };
    let namespace = support::unique_prefix("product_api");
    let mut rows = Vec::new();
    for setup in Setup::ALL {
        let redis = support::shared_redis_url();
        rows.push(bench::run_setup(db.clone(), setup, &redis, &namespace, &config).await?);
    }
    Ok(rows)
}

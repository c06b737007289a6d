//! The seed article's product API on a real PostgreSQL, before and after cache-layer.
//!
//! An axum service over PostgreSQL (sqlx): `GET /products/{id}` serves the product page (the
//! product joined with its brand and category, its review count, average rating, rating histogram
//! and newest reviews, plus the best-rated products of its category); `PUT /products/{id}` updates
//! the product and invalidates every cached value showing it, by tag. The data-access fns are
//! `#[cached]` (Redis, optionally with the L1 tier) and `CacheLayer` caches whole responses of the
//! read route; both use one `Cache` and the same tags (`product:{id}`, `category:{id}`).
//!
//! On first run the schema `cache_layer_demo` is created and filled with the article's catalog:
//! 100k products, 500k reviews (skewed: popular products have hundreds), 1000 categories, 400
//! brands (~20 s, once).
//!
//! ```text
//! cargo run --release --example product_api -- --load   # the before/after table
//! cargo run --release --example product_api             # serve on 127.0.0.1:3000
//! curl localhost:3000/products/42
//! curl -X PUT localhost:3000/products/42 -H 'content-type: application/json' \
//!      -d '{"name":"Espresso machine","price_cents":34900,"stock":12}'
//! ```
//!
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1/test`), `REDIS_URL` (default
//! `redis://127.0.0.1:6379`). Load options: `--warmup N` seconds of unmeasured traffic per setup
//! (default 10), `--seconds N` measured per setup (default 10), `--clients N` (default 32),
//! `--products N` (default 100000; other sizes get their own schema).
// `tests/product_api.rs` includes this file as a module; each side uses a different subset.
#![allow(dead_code)]

pub mod app;
pub mod bench;
pub mod catalog;
pub mod db;
pub mod load;

use std::{error::Error, sync::Arc, time::Duration};

use cache_layer::{Cache, CacheLayer};

use self::{
    bench::Setup,
    catalog::Catalog,
    db::{Db, Scale},
    load::LoadConfig,
};

struct Options {
    load: bool,
    seconds: u64,
    warmup: u64,
    clients: usize,
    products: i64,
    addr: String,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        load: false,
        seconds: 10,
        warmup: 10,
        clients: 32,
        products: Scale::SEED_ARTICLE.products,
        addr: "127.0.0.1:3000".to_string(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--load" => options.load = true,
            "--seconds" => options.seconds = parse(&value("--seconds")?)?,
            "--warmup" => options.warmup = parse(&value("--warmup")?)?,
            "--clients" => options.clients = parse(&value("--clients")?)?,
            "--products" => options.products = parse(&value("--products")?)?,
            "--addr" => options.addr = value("--addr")?,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; use --load [--warmup N] [--seconds N] \
                     [--clients N] [--products N] or --addr HOST:PORT"
                ))
            }
        }
    }
    if options.products < 20 || options.clients == 0 || options.seconds == 0 {
        return Err("--products must be >= 20, --clients and --seconds >= 1".to_string());
    }
    Ok(options)
}

fn parse<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a valid number"))
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let options = parse_args()?;
    let database_url = env_or("DATABASE_URL", db::DEFAULT_DATABASE_URL);
    let redis_url = env_or("REDIS_URL", "redis://127.0.0.1:6379");
    let scale = Scale {
        products: options.products,
        reviews: options.products * 5,
    };
    let schema = if scale == Scale::SEED_ARTICLE {
        db::DEFAULT_SCHEMA.to_string()
    } else {
        format!("{}_{}", db::DEFAULT_SCHEMA, scale.products)
    };

    let db = Arc::new(Db::connect(&database_url, &schema, 16).await?);
    println!(
        "PostgreSQL schema {schema}: {} products, {} reviews, {} categories, {} brands",
        scale.products,
        scale.reviews,
        scale.categories(),
        scale.brands()
    );
    if let Some(took) = db.ensure_seeded(scale).await? {
        println!("seeded in {:.1} s", took.as_secs_f64());
    }

    if !options.load {
        let cache = Cache::builder()
            .name("product_api")
            .redis(redis_url.as_str())
            .namespace("product-api")
            .local(50_000)
            .build()?;
        let http_cache = CacheLayer::new(cache.clone()).ttl(Duration::from_secs(600));
        let catalog = Arc::new(Catalog::cached(db, cache));
        let listener = tokio::net::TcpListener::bind(&options.addr).await?;
        println!(
            "listening on http://{}  (GET/PUT /products/{{id}}, ids 1..={})",
            listener.local_addr()?,
            scale.products
        );
        axum::serve(listener, app::router(catalog, Some(http_cache))).await?;
        return Ok(());
    }

    let config = LoadConfig {
        clients: options.clients,
        warmup: Duration::from_secs(options.warmup),
        warmup_requests: 5_000_000,
        duration: Duration::from_secs(options.seconds),
        max_requests: 5_000_000,
        put_ratio: 0.01,
        products: scale.products,
    };
    println!(
        "load: {} keep-alive clients over loopback; per setup {} s of warm-up, then {} s \
         measured; 80% of requests on 5% of the products, 1% PUTs; cache: Redis at {redis_url}\n",
        config.clients, options.warmup, options.seconds
    );
    let namespace = format!("product-api-load:{}", std::process::id());
    let mut rows = Vec::new();
    for setup in Setup::ALL {
        let row = bench::run_setup(db.clone(), setup, &redis_url, &namespace, &config).await?;
        for problem in row.warmup.problems.iter().chain(&row.load.problems) {
            println!("  {}: {problem}", setup.label());
        }
        rows.push(row);
    }
    println!("{}", bench::table(&rows));
    report(&rows);
    Ok(())
}

/// The summary under the table: speed-up, database load, and the correctness check.
pub fn report(rows: &[bench::Row]) {
    let Some(before) = rows.first() else { return };
    for after in &rows[1..] {
        println!(
            "{}: p50 {:.1}x lower, {:.1}x the GETs/s, {:.1}x fewer database queries per request",
            after.setup.label(),
            before.load.percentile(0.5).as_secs_f64()
                / after.load.percentile(0.5).as_secs_f64().max(1e-9),
            after.gets_per_sec() / before.gets_per_sec().max(1e-9),
            before.queries_per_request() / after.queries_per_request().max(1e-9),
        );
    }
    let (puts, stale, errors, verified) = rows
        .iter()
        .flat_map(|row| [&row.warmup, &row.load])
        .fold((0, 0, 0, 0), |acc, load| {
            (
                acc.0 + load.puts,
                acc.1 + load.stale,
                acc.2 + load.errors,
                acc.3 + load.verified_after,
            )
        });
    println!(
        "correctness: {puts} PUTs during the load (warm-ups included); {stale} responses showed data older than a PUT \
         acknowledged before they were requested; {verified} written products re-read after \
         the load, each showing its last PUT; {errors} failed requests"
    );
}

//! The before/after measurement: one load run per setup, each against a fresh server (and a fresh,
//! cold cache namespace), then the seed article's table.

use std::{error::Error, fmt::Write as _, future::IntoFuture, sync::Arc, time::Duration};

use cache_layer::Cache;

use super::{
    app,
    catalog::Catalog,
    db::Db,
    load::{self, LoadConfig, LoadResult},
};

/// A way to serve the product page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Every request queries PostgreSQL.
    Uncached,
    /// `#[cached]` data-access fns on Redis.
    Cached,
    /// `#[cached]` on Redis with the in-process L1 tier.
    CachedL1,
}

impl Setup {
    /// Every setup, in table order.
    pub const ALL: [Setup; 3] = [Setup::Uncached, Setup::Cached, Setup::CachedL1];

    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            Setup::Uncached => "PostgreSQL only",
            Setup::Cached => "#[cached], Redis",
            Setup::CachedL1 => "#[cached], Redis + L1",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Setup::Uncached => "uncached",
            Setup::Cached => "cached",
            Setup::CachedL1 => "cached-l1",
        }
    }
}

/// One row of the table.
#[derive(Debug)]
pub struct Row {
    pub setup: Setup,
    pub load: LoadResult,
    /// The unmeasured warm-up (its PUTs and responses are checked all the same).
    pub warmup: LoadResult,
    /// SQL statements the service sent during the run.
    pub db_queries: u64,
    /// The cache's hit ratio over the measured run (`None` without a cache).
    pub hit_ratio: Option<f64>,
    /// The share of lookups answered by the L1 tier.
    pub l1_ratio: Option<f64>,
}

impl Row {
    /// GET requests per second.
    pub fn gets_per_sec(&self) -> f64 {
        self.load.get_latencies.len() as f64 / self.load.elapsed.as_secs_f64().max(1e-9)
    }

    /// Database statements per second.
    pub fn queries_per_sec(&self) -> f64 {
        self.db_queries as f64 / self.load.elapsed.as_secs_f64().max(1e-9)
    }

    /// Database statements per request (GET or PUT).
    pub fn queries_per_request(&self) -> f64 {
        let requests = self.load.get_latencies.len() as u64 + self.load.puts;
        self.db_queries as f64 / requests.max(1) as f64
    }
}

/// Serves the catalog on a loopback port and runs the load against it.
pub async fn run_setup(
    db: Arc<Db>,
    setup: Setup,
    redis_url: &str,
    namespace_prefix: &str,
    config: &LoadConfig,
) -> Result<Row, Box<dyn Error>> {
    let namespace = format!("{namespace_prefix}:{}", setup.slug());
    let catalog = Arc::new(match setup {
        Setup::Uncached => Catalog::uncached(db.clone()),
        Setup::Cached | Setup::CachedL1 => {
            let mut builder = Cache::builder()
                .name("product_api")
                .redis(redis_url)
                .namespace(namespace.clone());
            if setup == Setup::CachedL1 {
                builder = builder.local(50_000);
            }
            Catalog::cached(db.clone(), builder.build()?)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app::router(catalog.clone()))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );

    let warmup = if config.warmup.is_zero() || config.warmup_requests == 0 {
        LoadResult::default()
    } else {
        let warmup_config = LoadConfig {
            duration: config.warmup,
            max_requests: config.warmup_requests,
            ..config.clone()
        };
        load::run(addr, &warmup_config).await
    };
    let queries_before = db.queries();
    let stats_before = catalog.cache().stats();
    let load = load::run(addr, config).await;
    let db_queries = db.queries() - queries_before;
    let stats = catalog.cache().stats();
    let hits = (stats.hits + stats.stale_hits) - (stats_before.hits + stats_before.stale_hits);
    let lookups = hits + stats.misses - stats_before.misses;
    let local_hits = stats.local_hits - stats_before.local_hits;
    let ratio = |n: u64| (setup != Setup::Uncached).then(|| n as f64 / lookups.max(1) as f64);
    let (hit_ratio, l1_ratio) = (ratio(hits), ratio(local_hits));

    let _ = stop.send(());
    server.await??;
    if setup != Setup::Uncached {
        delete_namespace(redis_url, &namespace).await?;
    }
    Ok(Row {
        setup,
        load,
        warmup,
        db_queries,
        hit_ratio,
        l1_ratio,
    })
}

/// Removes a run's keys from the shared Redis (`SCAN` + `UNLINK` of this namespace only).
pub async fn delete_namespace(redis_url: &str, namespace: &str) -> Result<(), Box<dyn Error>> {
    let client = redis::Client::open(redis_url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{namespace}:*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut connection)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// The seed article's table, for this machine.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {:<26} | {:>9} | {:>9} | {:>8} | {:>8} | {:>9} | {:>9} | {:>7} | {:>5} | {:>5} |",
        "setup",
        "p50",
        "p99",
        "GET/s",
        "DB q/s",
        "q/request",
        "hit ratio",
        "from L1",
        "PUTs",
        "stale"
    );
    let _ = writeln!(
        out,
        "|{:-<28}|{:->11}|{:->11}|{:->10}|{:->10}|{:->11}|{:->11}|{:->9}|{:->7}|{:->7}|",
        ":", ":", ":", ":", ":", ":", ":", ":", ":", ":"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {:<26} | {:>9} | {:>9} | {:>8.0} | {:>8.0} | {:>9.2} | {:>9} | {:>7} | {:>5} | {:>5} |",
            row.setup.label(),
            millis(row.load.percentile(0.50)),
            millis(row.load.percentile(0.99)),
            row.gets_per_sec(),
            row.queries_per_sec(),
            row.queries_per_request(),
            percent(row.hit_ratio),
            percent(row.l1_ratio),
            row.load.puts,
            row.load.stale,
        );
    }
    out
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

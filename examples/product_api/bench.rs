//! The before/after measurement: one load run per setup, each against a fresh server (and a fresh,
//! cold cache namespace), then the seed article's table.

use std::{error::Error, fmt::Write as _, future::IntoFuture, sync::Arc, time::Duration};

use cache_layer::{Cache, CacheLayer};

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
    /// `CacheLayer` on the read route in front of the `#[cached]` fns, one cache with L1.
    HttpCachedL1,
}

impl Setup {
    /// Every setup, in table order.
    pub const ALL: [Setup; 4] = [
        Setup::Uncached,
        Setup::Cached,
        Setup::CachedL1,
        Setup::HttpCachedL1,
    ];

    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            Setup::Uncached => "PostgreSQL only",
            Setup::Cached => "#[cached], Redis",
            Setup::CachedL1 => "#[cached], Redis + L1",
            Setup::HttpCachedL1 => "CacheLayer + #[cached], L1",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Setup::Uncached => "uncached",
            Setup::Cached => "cached",
            Setup::CachedL1 => "cached-l1",
            Setup::HttpCachedL1 => "http-cached-l1",
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
    /// The share of GETs answered by `CacheLayer` from a stored response (`None` without it).
    pub fn http_hit_ratio(&self) -> Option<f64> {
        (self.setup == Setup::HttpCachedL1)
            .then(|| self.load.http_hits as f64 / self.load.get_latencies.len().max(1) as f64)
    }
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
        Setup::Cached | Setup::CachedL1 | Setup::HttpCachedL1 => {
            let mut builder = Cache::builder()
                .name("product_api")
                .redis(redis_url)
                .namespace(namespace.clone());
            if setup != Setup::Cached {
                builder = builder.local(50_000);
            }
            Catalog::cached(db.clone(), builder.build()?)
        }
    });
    let http_cache = (setup == Setup::HttpCachedL1)
        .then(|| CacheLayer::new(catalog.cache().clone()).ttl(Duration::from_secs(600)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app::router(catalog.clone(), http_cache))
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
        let (mut warmup, writes) = load::run(addr, &warmup_config).await;
        load::verify_writes(addr, &writes, &mut warmup).await;
        warmup
    };
    let queries_before = db.queries();
    let stats_before = catalog.cache().stats();
    let (mut load, writes) = load::run(addr, config).await;
    let db_queries = db.queries() - queries_before;
    let stats = catalog.cache().stats();
    load::verify_writes(addr, &writes, &mut load).await;
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

/// The seed article's table, for this machine (Markdown).
pub fn table(rows: &[Row]) -> String {
    let header = [
        "setup",
        "p50",
        "p99",
        "GET/s",
        "DB q/s",
        "q/request",
        "hit ratio",
        "from L1",
        "HTTP hits",
        "PUTs",
        "stale",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.setup.label().to_string(),
                millis(row.load.percentile(0.50)),
                millis(row.load.percentile(0.99)),
                format!("{:.0}", row.gets_per_sec()),
                format!("{:.0}", row.queries_per_sec()),
                format!("{:.2}", row.queries_per_request()),
                percent(row.hit_ratio),
                percent(row.l1_ratio),
                percent(row.http_hit_ratio()),
                row.load.puts.to_string(),
                row.load.stale.to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = header
        .iter()
        .enumerate()
        .map(|(i, title)| {
            cells
                .iter()
                .map(|row| row[i].len())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: &[String]| {
        let mut text = String::from("|");
        for (i, (value, width)) in values.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(text, " {value:<width$} |");
            } else {
                let _ = write!(text, " {value:>width$} |");
            }
        }
        text
    };
    let mut out = String::new();
    let titles: Vec<String> = header.iter().map(|t| t.to_string()).collect();
    let _ = writeln!(out, "{}", line(&titles));
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, width)| {
            if i == 0 {
                format!(":{}", "-".repeat(width - 1))
            } else {
                format!("{}:", "-".repeat(width - 1))
            }
        })
        .collect();
    let _ = writeln!(out, "{}", line(&rule));
    for row in &cells {
        let _ = writeln!(out, "{}", line(row));
    }
    out
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

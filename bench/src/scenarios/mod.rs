//! Benchmark scenarios, one module per BENCHMARKS.md section.

pub mod cluster;
pub mod hit;
pub mod http;
pub mod local;
pub mod macros;
pub mod miss;
pub mod profile;
pub mod size;
pub mod stampede;
pub mod write_behind;

use std::{fmt::Display, time::Duration};

use axum::body::HttpBody;
use cache_layer::{Cache, Policy};
use http_body_util::BodyExt;
use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};

use crate::report::{measure, Comparison, Measurement};

/// The cached value: a product page of about 900 bytes of MessagePack (under the 1 KiB
/// compression threshold, like a typical small cached object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub id: u64,
    pub name: String,
    pub brand: String,
    pub category: String,
    pub price_cents: u64,
    pub rating: f32,
    pub description: String,
    pub tags: Vec<String>,
}

/// Page `id`.
pub fn page(id: u64) -> Page {
    Page {
        id,
        name: format!("Product {id}"),
        brand: format!("Brand {}", id % 40),
        category: format!("Category {}", id % 12),
        price_cents: 999 + id % 50_000,
        rating: 4.5,
        description: "A sturdy, well-reviewed product. ".repeat(20),
        tags: (0..12).map(|t| format!("tag-{t}-{}", id % 7)).collect(),
    }
}

/// Number of distinct keys the hit benchmarks spread over.
pub const KEYS: u64 = 1_000;

/// Stores every page in `cache` under `page:<id>` (so that every later `get_or_fetch` is a hit).
pub async fn prime_pages(cache: &Cache, policy: &Policy) -> Result<(), String> {
    for id in 0..KEYS {
        cache
            .set(&format!("page:{id}"), &page(id), policy)
            .await
            .map_err(|err| format!("cannot prime the cache: {err}"))?;
    }
    Ok(())
}

/// Stores every page, rmp-serde encoded, under `raw:page:<id>`: what [`raw_get`] reads.
pub async fn prime_raw<C: ConnectionLike + Send>(conn: &mut C) -> Result<(), String> {
    for id in 0..KEYS {
        let bytes = rmp_serde::to_vec_named(&page(id)).map_err(|err| err.to_string())?;
        let () = redis::cmd("SET")
            .arg(format!("raw:page:{id}"))
            .arg(bytes)
            .query_async(conn)
            .await
            .map_err(|err| format!("cannot prime the raw keys: {err}"))?;
    }
    Ok(())
}

/// The raw rows' operation: `GET raw:page:<i % KEYS>` and its rmp-serde decoding.
pub async fn raw_get<C: ConnectionLike + Send>(conn: &mut C, i: u64) -> Option<Page> {
    let bytes: Option<Vec<u8>> = redis::cmd("GET")
        .arg(format!("raw:page:{}", i % KEYS))
        .query_async(conn)
        .await
        .unwrap_or_default();
    bytes.and_then(|b| rmp_serde::from_slice(&b).ok())
}

/// `concurrency` callers of `get_or_fetch` of page `i % KEYS` on `cache` for `duration`, each
/// call checked to return that page. The callers borrow the cache and the policy (as a handler
/// holding a `&Cache` does): no shared reference count is touched per call.
pub async fn measure_hits(
    cache: &Cache,
    policy: &Policy,
    concurrency: usize,
    duration: Duration,
) -> Measurement {
    let (c, p) = (leak(cache.clone()), leak(policy.clone()));
    measure(concurrency, duration, move |i| async move {
        let id = i % KEYS;
        let v: Page = c
            .get_or_fetch(&format!("page:{id}"), p, move || async move { page(id) })
            .await;
        assert_eq!(v.id, id);
    })
    .await
}

/// `value` for the rest of the run, so that every benchmark task can borrow it without cloning
/// (an `Arc` clone per call would add a contended reference count to the measured operation).
/// A handful of small values per run; they are never freed.
pub fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// The first two rows of a hit table: `raw` ([`raw_get`] on clones of `conn`, each value checked
/// to be there: redis-rs' `query_async` takes `&mut` of its connection, so each call clones it)
/// and `ours` ([`measure_hits`] on `cache`).
pub struct RawVsOurs<'a, C> {
    raw: &'static str,
    ours: &'static str,
    conn: &'a C,
    /// A second raw row: the same `GET` on a connection with a response timeout, as a cache's
    /// connection has (the first raw row has none, and so no timer per request).
    timed: Option<(&'static str, &'a C)>,
    cache: &'a Cache,
    policy: &'a Policy,
}

impl<'a, C> RawVsOurs<'a, C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// The rows named `raw` and `ours`; [`RawVsOurs::prime`] stores what they read.
    pub fn new(
        (raw, ours): (&'static str, &'static str),
        conn: &'a C,
        cache: &'a Cache,
        policy: &'a Policy,
    ) -> Self {
        RawVsOurs {
            raw,
            ours,
            conn,
            timed: None,
            cache,
            policy,
        }
    }

    /// Adds the row `name`: the raw `GET` on `conn`, a connection with a response timeout.
    pub fn with_timed_raw(mut self, name: &'static str, conn: &'a C) -> Self {
        self.timed = Some((name, conn));
        self
    }

    /// Stores every page for both rows ([`prime_pages`], [`prime_raw`]).
    pub async fn prime(&self) -> Result<(), String> {
        prime_pages(self.cache, self.policy).await?;
        prime_raw(&mut self.conn.clone()).await
    }

    /// One round of both rows into `table`, `concurrency` callers for `duration` each.
    pub async fn round(&self, table: &mut Comparison, concurrency: usize, duration: Duration) {
        let raws = std::iter::once((self.raw, self.conn)).chain(self.timed);
        for (name, conn) in raws {
            let conn = conn.clone();
            let m = measure(concurrency, duration, move |i| {
                let mut conn = conn.clone();
                async move {
                    assert!(raw_get(&mut conn, i).await.is_some(), "raw value missing");
                }
            })
            .await;
            table.record(name, m);
        }
        let m = measure_hits(self.cache, self.policy, concurrency, duration).await;
        table.record(self.ours, m);
    }
}

/// `GET /items/{id}` with the benchmark's `Host`.
pub fn item_request<B>(id: impl Display, body: B) -> Result<axum::http::Request<B>, String> {
    axum::http::Request::get(format!("/items/{id}"))
        .header("host", "bench.local")
        .body(body)
        .map_err(|err| err.to_string())
}

/// The length of `response`'s whole body.
pub async fn body_len<B>(response: axum::http::Response<B>) -> Result<usize, String>
where
    B: HttpBody,
    B::Error: Display,
{
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| err.to_string())?;
    Ok(body.to_bytes().len())
}

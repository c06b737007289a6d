//! `bench --ops <operation> <n>`: runs one operation `n` times on one task (a current-thread
//! runtime), after one untimed warm-up call, and prints nothing else: for instruction counts
//! under `valgrind --tool=callgrind`, which are stable on a noisy machine where wall-clock rates
//! are not. Run it for two values of `n`: the difference divided by the difference of `n` is the
//! cost of one operation, without the setup.
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p target/release/bench --ops l1 20000
//! ```

use std::time::Duration;

use cache_layer::{cached, Cache, Policy};

use super::{page, prime_raw, raw_get, Page, KEYS};

/// The operations, by name.
pub const OPERATIONS: [&str; 22] = [
    "http-handler",
    "http-prebuilt",
    "http-raw-redis",
    "http-memory",
    "http-l1",
    "http-redis",
    "moka",
    "l1",
    "l1-format",
    "macro-l1",
    "raw-get",
    "l2",
    "memory",
    "cluster-l2",
    "raw-cluster-get",
    "raw-cluster-get-timed",
    "raw-miss",
    "miss",
    "miss-none",
    "counters",
    "raw-hincrby",
    "acks",
];

/// Redis timeouts of the caches here (under valgrind everything runs ~50x slower).
const SLOW: Duration = Duration::from_secs(10);

#[cached(ttl = 3600, cache = cache, skip = [cache], companions = false)]
async fn cached_page(cache: &Cache, id: u64) -> Page {
    page(id)
}

/// Runs `operation` `n` times.
pub fn run(operation: &str, n: u64) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let policy = Policy::ttl(Duration::from_secs(3600));
    runtime.block_on(async move {
        match operation {
            "moka" => {
                let moka: moka::sync::Cache<String, Page> = moka::sync::Cache::new(10_000);
                let keys: Vec<String> = (0..KEYS).map(|id| format!("page:{id}")).collect();
                for (id, key) in keys.iter().enumerate() {
                    moka.insert(key.clone(), page(id as u64));
                }
                for i in 0..n {
                    let v = moka.get(&keys[(i % KEYS) as usize]);
                    assert!(v.is_some());
                }
            }
            // `l1`: keys built beforehand, as the `moka` operation's are; `l1-format`: the key
            // formatted per call, as the `#[cached]` fn (`macro-l1`) builds its own.
            "l1" | "l1-format" | "macro-l1" => {
                let cache = Cache::builder()
                    .namespace("bench-profile")
                    .local(10_000)
                    .build()
                    .map_err(|err| err.to_string())?;
                for id in 0..KEYS {
                    let _: Page =
                        cache
                            .get_or_fetch(&format!("page:{id}"), &policy, move || async move {
                                page(id)
                            })
                            .await;
                    let _ = cached_page(&cache, id).await;
                }
                let keys: Vec<String> = (0..KEYS).map(|id| format!("page:{id}")).collect();
                for i in 0..n {
                    let id = i % KEYS;
                    let load = move || async move { page(id) };
                    let v: Page = match operation {
                        "l1" => cache.get_or_fetch(&keys[id as usize], &policy, load).await,
                        "l1-format" => {
                            cache
                                .get_or_fetch(&format!("page:{id}"), &policy, load)
                                .await
                        }
                        _ => cached_page(&cache, id).await,
                    };
                    assert_eq!(v.id, id);
                }
                if cache.stats().loads != 2 * KEYS {
                    return Err("an L1 read loaded".into());
                }
            }
            "raw-get" => raw_gets(&mut single_node(&url).await?, n).await?,
            // `n` increments (as the write-behind section makes them): 1,000 tasks awaiting
            // `Counters::incr`, raw pipelined `HINCRBY`s, and the in-process acknowledgements.
            "counters" => {
                let cache = Cache::builder()
                    .redis(url.as_str())
                    .namespace(format!("profile-counters-{}", std::process::id()))
                    .op_timeout(SLOW)
                    .connect_timeout(SLOW)
                    .build()
                    .map_err(|err| err.to_string())?;
                let counters = cache.counters("profile");
                super::write_behind::counters_incr(&counters, n as usize).await?;
            }
            "raw-hincrby" => {
                let key = format!("profile-raw-hincrby-{}", std::process::id());
                super::write_behind::raw_pipelined(&single_node(&url).await?, &key, n as usize)
                    .await?;
            }
            "acks" => {
                super::write_behind::awaited_acks_only(n as usize).await?;
            }
            "raw-miss" => {
                let mut conn = single_node(&url).await?;
                let run = std::process::id();
                for i in 0..n {
                    let key = format!("profile-raw-miss:{run}:{i}");
                    let found: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .map_err(|err| err.to_string())?;
                    assert!(found.is_none());
                    let bytes = rmp_serde::to_vec_named(&page(i)).map_err(|e| e.to_string())?;
                    let () = redis::cmd("SET")
                        .arg(&key)
                        .arg(bytes)
                        .arg("PX")
                        .arg(60_000)
                        .query_async(&mut conn)
                        .await
                        .map_err(|err| err.to_string())?;
                }
            }
            "miss" | "miss-none" => {
                let cache = Cache::builder()
                    .redis(url.as_str())
                    .namespace("bench-profile-miss")
                    .op_timeout(SLOW)
                    .connect_timeout(SLOW)
                    .build()
                    .map_err(|err| err.to_string())?;
                let stampede = if operation == "miss" {
                    cache_layer::Stampede::Coalesce
                } else {
                    cache_layer::Stampede::None
                };
                let policy = Policy::ttl(Duration::from_secs(60)).stampede(stampede);
                let run = std::process::id();
                for i in 0..n {
                    let key = format!("profile-miss:{run}:{i}");
                    let v: Page = cache
                        .get_or_fetch(&key, &policy, move || async move { page(i) })
                        .await;
                    assert_eq!(v.id, i);
                }
                if cache.stats().loads != n {
                    return Err("a miss did not load exactly once".into());
                }
            }
            "raw-cluster-get" | "raw-cluster-get-timed" => {
                let mut builder =
                    redis::cluster::ClusterClientBuilder::new(url.split(',').collect::<Vec<_>>());
                if operation == "raw-cluster-get-timed" {
                    // As the cache's: redis-rs' cluster default has none (its single-node
                    // connections default to 500 ms, so `raw-get` has one already).
                    builder = builder.response_timeout(SLOW);
                }
                let mut conn = builder
                    .build()
                    .map_err(|err| err.to_string())?
                    .get_async_connection()
                    .await
                    .map_err(|err| err.to_string())?;
                raw_gets(&mut conn, n).await?;
            }
            "l2" | "memory" | "cluster-l2" => {
                // Generous timeouts: under valgrind everything runs ~50x slower.
                let builder = Cache::builder()
                    .namespace("bench-profile")
                    .op_timeout(SLOW)
                    .connect_timeout(SLOW);
                let builder = match operation {
                    "l2" => builder.redis(url.as_str()),
                    "cluster-l2" => builder.redis_cluster(url.split(',')),
                    _ => builder,
                };
                let cache = builder.build().map_err(|err| err.to_string())?;
                for id in 0..KEYS {
                    cache
                        .set(&format!("page:{id}"), &page(id), &policy)
                        .await
                        .map_err(|err| err.to_string())?;
                }
                for i in 0..n {
                    let id = i % KEYS;
                    let v: Page =
                        cache
                            .get_or_fetch(&format!("page:{id}"), &policy, move || async move {
                                page(id)
                            })
                            .await;
                    assert_eq!(v.id, id);
                }
                if cache.stats().loads != 0 {
                    return Err("a hit loaded".into());
                }
            }
            "http-handler" | "http-prebuilt" | "http-raw-redis" | "http-memory" | "http-l1"
            | "http-redis" => {
                http_hits(operation, &url, n).await?;
            }
            other => {
                return Err(format!(
                    "unknown operation {other:?}: one of {OPERATIONS:?}"
                ))
            }
        }
        Ok(())
    })
}

/// A multiplexed connection to the server at `url`.
async fn single_node(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    redis::Client::open(url)
        .map_err(|err| err.to_string())?
        .get_multiplexed_async_connection()
        .await
        .map_err(|err| err.to_string())
}

/// Primes the raw keys on `conn`, then `n` raw GETs + decodes, each checked to find its page.
async fn raw_gets<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    n: u64,
) -> Result<(), String> {
    prime_raw(conn).await?;
    for i in 0..n {
        assert!(raw_get(conn, i).await.is_some());
    }
    Ok(())
}

/// `n` GETs through the axum router of the HTTP section, called as a tower service (no TCP, no
/// HTTP parsing: what differs between the rows is the layer's own work).
async fn http_hits(operation: &str, url: &str, n: u64) -> Result<(), String> {
    use axum::{routing::get, Router};
    use cache_layer::CacheLayer;
    use tower::ServiceExt;

    let route = Router::new().route("/items/{id}", get(super::http::item));
    let ttl = Duration::from_secs(600);
    let builder = Cache::builder()
        .namespace(format!("bench-profile-http-{}", std::process::id()))
        .op_timeout(SLOW)
        .connect_timeout(SLOW);
    let (router, cache) = match operation {
        "http-handler" => (route, None),
        "http-prebuilt" => (super::http::prebuilt_route(), None),
        "http-raw-redis" => {
            let prefix = format!("bench-profile-http-raw-{}", std::process::id());
            super::http::prime_redis_route(url, &prefix).await?;
            (super::http::redis_route(url.to_owned(), prefix), None)
        }
        other => {
            let builder = match other {
                "http-memory" => builder,
                "http-l1" => builder.redis(url).local(10_000),
                _ => builder.redis(url),
            };
            let cache = builder.build().map_err(|err| err.to_string())?;
            (
                route.layer(CacheLayer::new(cache.clone()).ttl(ttl)),
                Some(cache),
            )
        }
    };
    let get_one = |id: u64| {
        let router = router.clone();
        async move {
            let request = super::item_request(id, axum::body::Body::empty())?;
            let response = router
                .oneshot(request)
                .await
                .map_err(|err| err.to_string())?;
            super::body_len(response).await
        }
    };
    const URLS: u64 = 100;
    for id in 0..URLS {
        get_one(id).await?;
    }
    for i in 0..n {
        let len = get_one(i % URLS).await?;
        if len < 1000 {
            return Err(format!("a {len}-byte body"));
        }
    }
    if let Some(cache) = cache {
        if cache.stats().loads != URLS {
            return Err(format!("{} loads for {URLS} URLs", cache.stats().loads));
        }
    }
    Ok(())
}

//! A bounded loopback load generator: keep-alive HTTP/1.1 clients (hyper) sending product-page
//! GETs with a skewed popularity and a few PUTs, checking every response against the PUTs that
//! had been acknowledged before it was sent.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{client::conn::http1, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rand::{RngExt, SeedableRng};

use super::{
    app::ProductPage,
    catalog::{ProductUpdate, UpdatedProduct},
};

/// What one load run does.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Concurrent keep-alive connections, each with one request in flight.
    pub clients: usize,
    /// Unmeasured traffic first (same mix, PUTs checked too), so caches are warm: this long or
    /// this many requests, whichever comes first...
    pub warmup: Duration,
    pub warmup_requests: u64,
    /// ...then measure for this long...
    pub duration: Duration,
    /// ...or for this many requests, whichever comes first.
    pub max_requests: u64,
    /// Share of requests that are `PUT`s (to popular products, so they hit cached pages).
    pub put_ratio: f64,
    /// Product ids are `1..=products`; 80% of requests go to the first 5%.
    pub products: i64,
}

/// What one load run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Latency of every successful GET.
    pub get_latencies: Vec<Duration>,
    /// Acknowledged PUTs.
    pub puts: u64,
    /// GET responses marked `Cache-Status: cache-layer; hit` (only with `CacheLayer`).
    pub http_hits: u64,
    /// Wall time of the load (without the final verification).
    pub elapsed: Duration,
    /// Failed requests (transport errors, unexpected statuses, undecodable bodies).
    pub errors: u64,
    /// Responses older than a PUT acknowledged before they were requested.
    pub stale: u64,
    /// The first few errors and stale responses, for the report.
    pub problems: Vec<String>,
    /// Products re-read after the load, each expected to show its last PUT exactly.
    pub verified_after: u64,
}

impl LoadResult {
    /// The `p` quantile (0..=1) of the GET latencies.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.get_latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * p).round().max(0.0) as usize;
        sorted.get(index).copied().unwrap_or_default()
    }

    fn problem(&mut self, what: String) {
        if self.problems.len() < 10 {
            self.problems.push(what);
        }
    }
}

/// An acknowledged PUT: when its response arrived, and what it wrote.
#[derive(Debug, Clone)]
struct Ack {
    at: Instant,
    version: i64,
    name: String,
}

/// Every acknowledged PUT, by product.
#[derive(Default)]
struct Acks(Mutex<HashMap<i64, Vec<Ack>>>);

impl Acks {
    fn record(&self, id: i64, ack: Ack) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(id).or_default().push(ack);
    }

    /// The newest write to `id` acknowledged before `before`: every response to a request sent
    /// after that must show it (or something newer).
    fn required(&self, id: i64, before: Instant) -> Option<Ack> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(&id)?
            .iter()
            .filter(|ack| ack.at < before)
            .max_by_key(|ack| ack.version)
            .cloned()
    }

    /// The last write of every product that was written.
    fn last_writes(&self) -> Vec<(i64, Ack)> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.iter()
            .filter_map(|(id, acks)| {
                let last = acks.iter().max_by_key(|ack| ack.version)?;
                Some((*id, last.clone()))
            })
            .collect()
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    addr: SocketAddr,
    sender: http1::SendRequest<Full<Bytes>>,
}

struct Answer {
    status: StatusCode,
    cache_hit: bool,
    body: Bytes,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Result<Client, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // Ends when the sender is dropped (or the server closes the connection).
        tokio::spawn(connection);
        Ok(Client { addr, sender })
    }

    async fn send(&mut self, method: Method, path: &str, body: Bytes) -> Result<Answer, String> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let cache_hit = response
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("cache-layer; hit"));
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            cache_hit,
            body,
        })
    }
}

/// The PUTs a load run made, for [`verify_writes`].
pub struct Writes(Arc<Acks>);

/// Runs the load against `addr`.
pub async fn run(addr: SocketAddr, config: &LoadConfig) -> (LoadResult, Writes) {
    let acks = Arc::new(Acks::default());
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + config.duration;
    let workers: Vec<_> = (0..config.clients)
        .map(|_| {
            let (acks, issued, config) = (acks.clone(), issued.clone(), config.clone());
            tokio::spawn(async move { worker(addr, &config, deadline, &issued, &acks).await })
        })
        .collect();
    let mut result = LoadResult::default();
    for worker in workers {
        match worker.await {
            Ok(part) => {
                result.get_latencies.extend(part.get_latencies);
                result.puts += part.puts;
                result.http_hits += part.http_hits;
                result.errors += part.errors;
                result.stale += part.stale;
                for problem in part.problems {
                    result.problem(problem);
                }
            }
            Err(panic) => {
                result.errors += 1;
                result.problem(format!("load worker failed: {panic}"));
            }
        }
    }
    result.elapsed = started.elapsed();
    (result, Writes(acks))
}

/// Picks a product: 80% of views go to the first 5% of the catalog.
fn pick(rng: &mut impl RngExt, products: i64) -> i64 {
    let hot = (products / 20).max(1);
    if rng.random_bool(0.8) {
        rng.random_range(1..=hot)
    } else {
        rng.random_range(1..=products)
    }
}

async fn worker(
    addr: SocketAddr,
    config: &LoadConfig,
    deadline: Instant,
    issued: &AtomicU64,
    acks: &Acks,
) -> LoadResult {
    let mut out = LoadResult::default();
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let mut client = match Client::connect(addr).await {
        Ok(client) => client,
        Err(error) => {
            out.errors += 1;
            out.problem(error);
            return out;
        }
    };
    while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < config.max_requests
    {
        let id = pick(&mut rng, config.products);
        let outcome = if rng.random_bool(config.put_ratio) {
            let update = ProductUpdate {
                name: format!("Product {id} (rev {:08x})", rng.random::<u32>()),
                price_cents: rng.random_range(499..150_000),
                stock: rng.random_range(0..500),
            };
            put(&mut client, id, &update, acks, &mut out).await
        } else {
            get(&mut client, id, acks, &mut out).await
        };
        if let Err(error) = outcome {
            out.errors += 1;
            out.problem(error);
            // A broken connection is replaced; a refused one ends this worker.
            match Client::connect(addr).await {
                Ok(fresh) => client = fresh,
                Err(_) => break,
            }
        }
    }
    out
}

async fn put(
    client: &mut Client,
    id: i64,
    update: &ProductUpdate,
    acks: &Acks,
    out: &mut LoadResult,
) -> Result<(), String> {
    let body = serde_json::to_vec(update).map_err(|e| e.to_string())?;
    let answer = client
        .send(Method::PUT, &format!("/products/{id}"), body.into())
        .await?;
    if answer.status != StatusCode::OK {
        return Err(format!("PUT /products/{id}: status {}", answer.status));
    }
    let updated: UpdatedProduct = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("PUT /products/{id}: bad body: {e}"))?;
    if updated.id != id || updated.name != update.name {
        return Err(format!("PUT /products/{id}: answered {updated:?}"));
    }
    acks.record(
        id,
        Ack {
            at: Instant::now(),
            version: updated.version,
            name: updated.name,
        },
    );
    out.puts += 1;
    Ok(())
}

async fn get(
    client: &mut Client,
    id: i64,
    acks: &Acks,
    out: &mut LoadResult,
) -> Result<(), String> {
    let sent = Instant::now();
    let answer = client
        .send(Method::GET, &format!("/products/{id}"), Bytes::new())
        .await?;
    let latency = sent.elapsed();
    if answer.status != StatusCode::OK {
        return Err(format!("GET /products/{id}: status {}", answer.status));
    }
    let page: ProductPage = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("GET /products/{id}: bad body: {e}"))?;
    if page.product.id != id {
        return Err(format!(
            "GET /products/{id}: got product {}",
            page.product.id
        ));
    }
    out.get_latencies.push(latency);
    out.http_hits += u64::from(answer.cache_hit);
    // The product itself, and every product its category box shows.
    let shown = std::iter::once((page.product.id, page.product.version, &page.product.name)).chain(
        page.top_in_category
            .iter()
            .map(|top| (top.id, top.version, &top.name)),
    );
    for (shown_id, version, name) in shown {
        if let Some(ack) = acks.required(shown_id, sent) {
            if version < ack.version || (version == ack.version && *name != ack.name) {
                out.stale += 1;
                out.problem(format!(
                    "GET /products/{id} showed product {shown_id} v{version} {name:?}, \
                     after PUT v{} {:?} was acknowledged",
                    ack.version, ack.name
                ));
            }
        }
    }
    Ok(())
}

/// After the load: every written product must show exactly its last acknowledged write.
pub async fn verify_writes(addr: SocketAddr, writes: &Writes, out: &mut LoadResult) {
    let acks = &writes.0;
    let mut client = match Client::connect(addr).await {
        Ok(client) => client,
        Err(error) => {
            out.errors += 1;
            out.problem(error);
            return;
        }
    };
    for (id, ack) in acks.last_writes() {
        let checked = async {
            let answer = client
                .send(Method::GET, &format!("/products/{id}"), Bytes::new())
                .await?;
            let page: ProductPage = serde_json::from_slice(&answer.body)
                .map_err(|e| format!("GET /products/{id} after the load: {e}"))?;
            Ok::<_, String>(page)
        }
        .await;
        match checked {
            Ok(page) if page.product.version == ack.version && page.product.name == ack.name => {
                out.verified_after += 1;
            }
            Ok(page) => {
                out.stale += 1;
                out.problem(format!(
                    "after the load, product {id} shows v{} {:?}, last PUT was v{} {:?}",
                    page.product.version, page.product.name, ack.version, ack.name
                ));
            }
            Err(error) => {
                out.errors += 1;
                out.problem(error);
            }
        }
    }
}

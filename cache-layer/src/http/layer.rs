//! [`CacheLayer`]: configuration of the HTTP response cache.

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use http::{request, HeaderName, Method, StatusCode};
use tower_layer::Layer;

use super::{
    key::{hash, FORWARDING_HEADERS},
    service::CacheService,
};
use crate::{metrics::Door, Cache, Policy, Stampede};

/// A custom key function (see [`CacheLayer::key_fn`]).
pub(crate) type KeyFn = Arc<dyn Fn(&request::Parts) -> Option<String> + Send + Sync>;

/// Default largest body that is cached (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default TTL when neither the layer nor the origin sets one (60 s).
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// A Tower [`Layer`] that caches whole HTTP responses in a [`Cache`].
///
/// See the [module docs](crate::http) for the rules and headers. Builder methods consume and
/// return the layer:
///
/// ```
/// use std::time::Duration;
/// use cache_layer::{Cache, CacheLayer, Stampede};
///
/// let layer = CacheLayer::new(Cache::in_memory())
///     .ttl(Duration::from_secs(60))                 // when the origin sets no max-age
///     .stale(Duration::from_secs(30))               // stale-while-revalidate / stale-if-error
///     .stampede(Stampede::Lock)
///     .vary(["accept-language"])                    // request headers in every key
///     .max_body_bytes(256 * 1024)
///     .statuses([200, 404]);
/// ```
#[derive(Clone)]
#[must_use]
pub struct CacheLayer {
    pub(crate) cache: Cache,
    pub(crate) config: Arc<Config>,
}

/// Everything a [`CacheService`] needs besides the cache and the inner service.
#[derive(Clone)]
pub(crate) struct Config {
    /// TTL (for responses without freshness), stampede, tags. Its `stale` is always zero: the
    /// layer decides staleness per response (see `grace`).
    pub(crate) policy: Policy,
    /// Configured vary headers plus the forwarding headers; sorted, deduplicated.
    pub(crate) keyed: Arc<[HeaderName]>,
    pub(crate) key_fn: Option<KeyFn>,
    pub(crate) max_body_bytes: usize,
    pub(crate) statuses: Vec<StatusCode>,
    /// Any status RFC 9111 allows is storable (not only `statuses`).
    pub(crate) rfc_statuses: bool,
    /// Responses without `ETag` get one computed from the body.
    pub(crate) synthesize_etag: bool,
    /// Origin requests announce `Surrogate-Capability` (so `Surrogate-Control` can target us).
    pub(crate) surrogate: bool,
    /// Stale grace period (stale-while-revalidate and stale-if-error) for every response.
    pub(crate) grace: Duration,
    pub(crate) cache_authorized: bool,
    pub(crate) respect_request_no_cache: bool,
    pub(crate) methods: Vec<Method>,
    /// Keyed headers per primary key, for URLs whose origin `Vary` named more than `keyed`.
    pub(crate) learned: Arc<Learned>,
    /// Keys whose last response was not cacheable (see [`HitForMiss`]).
    pub(crate) hit_for_miss: Arc<HitForMiss>,
    /// Keys being revalidated in the background (one refresh at a time per key; a failed one
    /// is retried after [`REFRESH_RETRY`]).
    pub(crate) refreshing: Arc<moka::sync::Cache<u64, ()>>,
}

/// How long a background revalidation of a key keeps others from starting.
pub(crate) const REFRESH_RETRY: Duration = Duration::from_secs(1);

/// Byte budget of each in-process map of the layer (learned `Vary` headers, hit-for-miss keys,
/// refreshes): keys are 64-bit hashes, values are weighed, so none grows past this.
pub(crate) const MAP_BUDGET_BYTES: u64 = 1024 * 1024;

/// Keys whose last origin response was not cacheable ("hit-for-miss", as in Varnish): for a while,
/// requests for them skip single-flight and go to the origin at once instead of queueing behind
/// each other's uncacheable responses. They still look the cache up first and store a response
/// that has become cacheable.
pub(crate) struct HitForMiss {
    map: moka::sync::Cache<u64, ()>,
    any: AtomicBool,
}

/// How long a key is remembered as uncacheable.
pub(crate) const HIT_FOR_MISS_TTL: Duration = Duration::from_secs(10);

/// Approximate bytes of one map entry with a 64-bit key (key, value, moka's bookkeeping).
const ENTRY_OVERHEAD: u32 = 64;

impl HitForMiss {
    fn new() -> Self {
        HitForMiss {
            map: moka::sync::Cache::builder()
                .max_capacity(MAP_BUDGET_BYTES)
                .weigher(|_, _| ENTRY_OVERHEAD)
                .time_to_live(HIT_FOR_MISS_TTL)
                .build(),
            any: AtomicBool::new(false),
        }
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.any.load(Ordering::Relaxed) && self.map.contains_key(&hash(key))
    }

    pub(crate) fn insert(&self, key: &str) {
        self.map.insert(hash(key), ());
        self.any.store(true, Ordering::Relaxed);
    }

    pub(crate) fn remove(&self, key: &str) {
        if self.any.load(Ordering::Relaxed) {
            self.map.invalidate(&hash(key));
        }
    }
}

/// Keyed request headers learned from origin `Vary` headers, per primary key (hashed; bounded
/// by bytes). Only an optimisation: it lets each variant have its own entry. Every entry records
/// the `Vary` it was stored with and is matched against the request on every reuse, so an
/// instance that has not learned (or forgot) a URL's `Vary` still never serves another variant.
pub(crate) struct Learned {
    map: moka::sync::Cache<u64, Arc<[HeaderName]>>,
    any: AtomicBool,
}

/// At most this many headers are learned for one URL (beyond it, variants share one entry,
/// still matched on reuse).
const MAX_LEARNED_HEADERS: usize = 16;

impl Learned {
    fn new() -> Self {
        Learned {
            map: moka::sync::Cache::builder()
                .max_capacity(MAP_BUDGET_BYTES)
                .weigher(|_, names: &Arc<[HeaderName]>| {
                    let bytes: usize = names.iter().map(|n| n.as_str().len() + 16).sum();
                    ENTRY_OVERHEAD.saturating_add(u32::try_from(bytes).unwrap_or(u32::MAX))
                })
                .build(),
            any: AtomicBool::new(false),
        }
    }

    /// The keyed headers for `primary`: `configured` plus whatever was learned for it.
    pub(crate) fn keyed(&self, primary: &str, configured: &Arc<[HeaderName]>) -> Arc<[HeaderName]> {
        if !self.any.load(Ordering::Relaxed) {
            return configured.clone();
        }
        self.map
            .get(&hash(primary))
            .unwrap_or_else(|| configured.clone())
    }

    /// The headers to key `primary` on given a response that varies on `names`, remembered for
    /// the next requests; `None` when `keyed` already covers them (or there are too many).
    pub(crate) fn learn(
        &self,
        primary: &str,
        keyed: &[HeaderName],
        names: &[HeaderName],
    ) -> Option<Arc<[HeaderName]>> {
        if names.iter().all(|name| keyed.contains(name)) {
            return None;
        }
        let mut all: Vec<HeaderName> = keyed.iter().chain(names).cloned().collect();
        sort_names(&mut all);
        if all.len() > keyed.len() + MAX_LEARNED_HEADERS {
            return None;
        }
        let all: Arc<[HeaderName]> = all.into();
        self.map.insert(hash(primary), all.clone());
        self.any.store(true, Ordering::Relaxed);
        Some(all)
    }
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("CacheLayer")
            .field("cache", &self.cache)
            .field("policy", &c.policy)
            .field("keyed", &c.keyed)
            .field("key_fn", &c.key_fn.is_some())
            .field("max_body_bytes", &c.max_body_bytes)
            .field("statuses", &c.statuses)
            .field("rfc_statuses", &c.rfc_statuses)
            .field("synthesize_etag", &c.synthesize_etag)
            .field("surrogate", &c.surrogate)
            .field("grace", &c.grace)
            .field("cache_authorized", &c.cache_authorized)
            .field("respect_request_no_cache", &c.respect_request_no_cache)
            .field("methods", &c.methods)
            .finish()
    }
}

fn sort_names(names: &mut Vec<HeaderName>) {
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
}

impl CacheLayer {
    /// A layer caching responses in `cache` with the defaults: GET and HEAD, status 200, TTL
    /// [`DEFAULT_TTL`] unless the origin sends `s-maxage`/`max-age`/`Expires`, bodies up to
    /// [`DEFAULT_MAX_BODY_BYTES`], single-flight misses, requests with credentials bypassed.
    pub fn new(cache: Cache) -> Self {
        let mut keyed = FORWARDING_HEADERS.to_vec();
        sort_names(&mut keyed);
        let mut policy = Policy::ttl(DEFAULT_TTL);
        // Metrics label: door="http".
        policy.door = Door::Http;
        CacheLayer {
            cache,
            config: Arc::new(Config {
                policy,
                keyed: keyed.into(),
                key_fn: None,
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                statuses: vec![StatusCode::OK],
                rfc_statuses: false,
                synthesize_etag: true,
                surrogate: false,
                grace: Duration::ZERO,
                cache_authorized: false,
                respect_request_no_cache: false,
                methods: vec![Method::GET, Method::HEAD],
                learned: Arc::new(Learned::new()),
                hit_for_miss: Arc::new(HitForMiss::new()),
                refreshing: Arc::new(
                    moka::sync::Cache::builder()
                        .max_capacity(MAP_BUDGET_BYTES)
                        .weigher(|_, _| ENTRY_OVERHEAD)
                        .time_to_live(REFRESH_RETRY)
                        .build(),
                ),
            }),
        }
    }

    /// A layer that behaves as a shared HTTP cache (RFC 9111) in front of an origin it does not
    /// control, as a reverse proxy or CDN does (see `examples/reverse_proxy.rs`):
    ///
    /// - only the origin's freshness counts: `Cache-Control` (or `CDN-Cache-Control` /
    ///   `Surrogate-Control`), `Expires`, else a heuristic from `Last-Modified`; the TTL is zero;
    /// - every status RFC 9111 allows is storable (any with explicit freshness; the heuristically
    ///   cacheable ones with `Last-Modified`), not only 200;
    /// - requests' `Cache-Control` is honoured ([`respect_request_no_cache`](Self::respect_request_no_cache));
    /// - no `ETag` is made up for responses that have none;
    /// - origin requests carry `Surrogate-Capability: cache-layer="Surrogate/1.0"`, so that
    ///   `Surrogate-Control: max-age=60;cache-layer` can address this cache.
    ///
    /// Every builder method still applies on top.
    ///
    /// ```
    /// use cache_layer::{Cache, CacheLayer};
    ///
    /// let layer = CacheLayer::shared(Cache::in_memory()).max_body_bytes(8 * 1024 * 1024);
    /// ```
    pub fn shared(cache: Cache) -> Self {
        let mut layer = CacheLayer::new(cache)
            .ttl(Duration::ZERO)
            .respect_request_no_cache(true);
        let config = layer.config();
        config.rfc_statuses = true;
        config.synthesize_etag = false;
        config.surrogate = true;
        layer
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// How long a response stays fresh when the origin does not say (`s-maxage`, `max-age` or
    /// `Expires` win when present).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config().policy.ttl = ttl;
        self
    }

    /// Grace period after expiry: a stale response is served (with `Cache-Status: ...; hit;
    /// ttl=-N`) while one request refreshes it in the background, and while the origin fails (5xx
    /// or an error): stale-while-revalidate and stale-if-error for every response, on top of the
    /// origin's own `stale-while-revalidate` / `stale-if-error`. Never for responses marked
    /// `must-revalidate`, `proxy-revalidate`, `s-maxage` or `no-cache`.
    pub fn stale(mut self, grace: Duration) -> Self {
        self.config().grace = grace;
        self
    }

    /// Stampede protection for misses (default [`Stampede::Coalesce`]: concurrent misses of one key
    /// in this process make one origin request; [`Stampede::Lock`]: one per fleet).
    /// [`Stampede::Early`] acts as `Coalesce` here: HTTP entries are refreshed by revalidation
    /// when they go stale (see [`stale`](Self::stale) for refreshing ahead of clients).
    pub fn stampede(mut self, stampede: Stampede) -> Self {
        let stampede = match stampede {
            Stampede::Early => Stampede::Coalesce,
            other => other,
        };
        let config = self.config();
        config.policy = config.policy.clone().stampede(stampede);
        self
    }

    /// Tags recorded on every response this layer stores (in addition to the response's own
    /// `Cache-Tag` / `Surrogate-Key` / [`CacheTags`](super::CacheTags)).
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let config = self.config();
        config.policy = config.policy.clone().tags(tags);
        self
    }

    /// Request headers that are part of every key (e.g. `accept-language`). Headers an origin
    /// response names in `Vary` are keyed automatically for that URL; this avoids the one
    /// uncached response per URL and process it takes to learn them. Invalid names are ignored.
    pub fn vary<I, N>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: AsRef<str>,
    {
        let config = self.config();
        let mut keyed = config.keyed.to_vec();
        keyed.extend(
            headers
                .into_iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_ref().as_bytes()).ok()),
        );
        sort_names(&mut keyed);
        config.keyed = keyed.into();
        self
    }

    /// Replaces host, path and query in the key by what `key_fn` returns; `None` bypasses the
    /// cache for that request. The method class, the credential class and the keyed headers stay
    /// in the key.
    ///
    /// ```
    /// use cache_layer::{Cache, CacheLayer};
    ///
    /// // One entry per product id, whatever tracking parameters the URL carries.
    /// let layer = CacheLayer::new(Cache::in_memory()).key_fn(|req| {
    ///     let id = req.uri.path().strip_prefix("/products/")?;
    ///     Some(format!("product:{id}"))
    /// });
    /// ```
    pub fn key_fn<F>(mut self, key_fn: F) -> Self
    where
        F: Fn(&request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.config().key_fn = Some(Arc::new(key_fn));
        self
    }

    /// Largest body that is cached (default 1 MiB). Larger bodies are streamed to the client
    /// intact and not cached; at most `max` bytes are held in memory while deciding.
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        self.config().max_body_bytes = max;
        self
    }

    /// Response statuses that may be cached (default `[200]`). 5xx, 206 and 304 never are;
    /// invalid codes are ignored.
    pub fn statuses<I>(mut self, statuses: I) -> Self
    where
        I: IntoIterator<Item = u16>,
    {
        self.config().statuses = statuses
            .into_iter()
            .filter_map(|code| StatusCode::from_u16(code).ok())
            .collect();
        self
    }

    /// Whether requests with `Authorization` or `Cookie` may use the cache (default `false`: they
    /// bypass it).
    ///
    /// When enabled, credentialed requests share entries among themselves but never with
    /// anonymous requests. They do share them across users: for per-user content add the
    /// credential header to [`vary`](CacheLayer::vary) (one entry per credential) or send
    /// `Cache-Control: private` from the origin.
    pub fn cache_authorized(mut self, allowed: bool) -> Self {
        self.config().cache_authorized = allowed;
        self
    }

    /// Whether a request's `Cache-Control: no-cache | no-store | max-age=0` (or `Pragma: no-cache`)
    /// sends it to the origin (default `false`: clients cannot force origin load).
    pub fn respect_request_no_cache(mut self, respect: bool) -> Self {
        self.config().respect_request_no_cache = respect;
        self
    }

    /// Request methods that may be cached (default GET and HEAD; HEAD is answered from the GET
    /// entry, so it needs GET too; OPTIONS may be added). Other methods are ignored: their responses
    /// depend on request bodies or side effects, and replaying them is wrong.
    pub fn methods<I>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = Method>,
    {
        self.config().methods = methods
            .into_iter()
            .filter(|m| [Method::GET, Method::HEAD, Method::OPTIONS].contains(m))
            .collect();
        self
    }

    /// The cache this layer stores responses in (e.g. for `invalidate_tag` in a purge handler).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(inner, self.cache.clone(), self.config.clone())
    }
}

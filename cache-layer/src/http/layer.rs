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

use super::{key::FORWARDING_HEADERS, service::CacheService};
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
    pub(crate) policy: Policy,
    /// Configured vary headers plus the forwarding headers; sorted, deduplicated.
    pub(crate) keyed: Arc<[HeaderName]>,
    pub(crate) key_fn: Option<KeyFn>,
    pub(crate) max_body_bytes: usize,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) cache_authorized: bool,
    pub(crate) respect_request_no_cache: bool,
    pub(crate) methods: Vec<Method>,
    /// Keyed headers per primary key, for URLs whose origin `Vary` named more than `keyed`.
    pub(crate) learned: Arc<Learned>,
    /// Keys whose last response was not cacheable (see [`HitForMiss`]).
    pub(crate) hit_for_miss: Arc<HitForMiss>,
}

/// Keys whose last origin response was not cacheable ("hit-for-miss", as in Varnish): for a while,
/// requests for them skip single-flight and go to the origin at once instead of queueing behind
/// each other's uncacheable responses. They still look the cache up first and store a response
/// that has become cacheable.
pub(crate) struct HitForMiss {
    map: moka::sync::Cache<String, ()>,
    any: AtomicBool,
}

/// How long a key is remembered as uncacheable.
pub(crate) const HIT_FOR_MISS_TTL: Duration = Duration::from_secs(10);

impl HitForMiss {
    fn new() -> Self {
        HitForMiss {
            map: moka::sync::Cache::builder()
                .max_capacity(LEARNED_VARY_CAPACITY)
                .time_to_live(HIT_FOR_MISS_TTL)
                .build(),
            any: AtomicBool::new(false),
        }
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.any.load(Ordering::Relaxed) && self.map.contains_key(key)
    }

    pub(crate) fn insert(&self, key: String) {
        self.map.insert(key, ());
        self.any.store(true, Ordering::Relaxed);
    }

    pub(crate) fn remove(&self, key: &str) {
        if self.any.load(Ordering::Relaxed) {
            self.map.invalidate(key);
        }
    }
}

/// Keyed request headers learned from origin `Vary` headers, per primary key (bounded).
pub(crate) struct Learned {
    map: moka::sync::Cache<String, Arc<[HeaderName]>>,
    any: AtomicBool,
}

/// At most this many headers are learned for one URL (beyond it responses are not stored).
const MAX_LEARNED_HEADERS: usize = 16;

impl Learned {
    /// The keyed headers for `primary`: `configured` plus whatever was learned for it.
    pub(crate) fn keyed(&self, primary: &str, configured: &Arc<[HeaderName]>) -> Arc<[HeaderName]> {
        if !self.any.load(Ordering::Relaxed) {
            return configured.clone();
        }
        self.map.get(primary).unwrap_or_else(|| configured.clone())
    }

    /// Records that responses for `primary` vary on `names` as well as on `keyed`.
    pub(crate) fn learn(&self, primary: String, keyed: &[HeaderName], names: &[HeaderName]) {
        let mut all: Vec<HeaderName> = keyed.iter().chain(names).cloned().collect();
        sort_names(&mut all);
        if all.len() > keyed.len() + MAX_LEARNED_HEADERS {
            return;
        }
        self.map.insert(primary, all.into());
        self.any.store(true, Ordering::Relaxed);
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
            .field("cache_authorized", &c.cache_authorized)
            .field("respect_request_no_cache", &c.respect_request_no_cache)
            .field("methods", &c.methods)
            .finish()
    }
}

/// How many URLs' learned `Vary` headers are remembered.
const LEARNED_VARY_CAPACITY: u64 = 10_000;

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
                cache_authorized: false,
                respect_request_no_cache: false,
                methods: vec![Method::GET, Method::HEAD],
                learned: Arc::new(Learned {
                    map: moka::sync::Cache::builder()
                        .max_capacity(LEARNED_VARY_CAPACITY)
                        .build(),
                    any: AtomicBool::new(false),
                }),
                hit_for_miss: Arc::new(HitForMiss::new()),
            }),
        }
    }

    /// A layer that behaves as a shared HTTP cache (RFC 9111) in front of an origin it does not
    /// control, as a reverse proxy or CDN does: only the origin's freshness counts (no default
    /// TTL), and requests' `Cache-Control` is honoured.
    pub fn shared(cache: Cache) -> Self {
        CacheLayer::new(cache)
            .ttl(Duration::ZERO)
            .respect_request_no_cache(true)
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

    /// Grace period after expiry: a stale response is served (with `Cache-Status: ...; fwd=stale`)
    /// while one request refreshes it in the background, and while the origin fails (5xx or an
    /// error): stale-while-revalidate and stale-if-error.
    pub fn stale(mut self, grace: Duration) -> Self {
        let config = self.config();
        config.policy = config.policy.clone().stale(grace);
        self
    }

    /// Stampede protection for misses (default [`Stampede::Coalesce`]: concurrent misses of one key
    /// in this process make one origin request; [`Stampede::Lock`]: one per fleet).
    pub fn stampede(mut self, stampede: Stampede) -> Self {
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

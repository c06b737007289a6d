//! [`CacheService`]: the request flow of the HTTP cache.
//!
//! ```text
//! unsafe method ──► origin ──► 2xx/3xx: delete the target's (and same-origin Location's) entries
//! not cacheable ──► origin (bypass)
//! cacheable ──► engine lookup ── miss ──► single-flight load ──► store ──► fwd=miss
//!                    │ entry, other Vary values ──────────────► origin ──► store ──► fwd=vary-miss
//!                    │ fresh ────────────────────────────────────────────────────► hit
//!                    │ stale, within stale-while-revalidate ──► hit (ttl<0) + background revalidation
//!                    │ stale ──► conditional request ── 304 ──► freshen + store ─► fwd=stale
//!                                       │ 200 ──► replace (or delete if uncacheable)
//!                                       │ 5xx / error, within stale-if-error ──► hit (ttl<0)
//! ```
//!
//! The engine stores entries for as long as they are useful (freshness plus stale windows plus
//! the revalidation window); whether an entry is fresh is decided here, per request, from what
//! the entry records (RFC 9111 §4.2).

use std::{
    borrow::Cow,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use http::{
    header::{self, HeaderName},
    request, response, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use http_body::Body;
use tower_service::Service;

use super::{
    body::{self, Buffered, CacheBody, PassReason},
    directives::SURROGATE_CONTROL,
    entry::{vary_value, CacheStatus, Conditions, Meta, StoredResponse, CACHE_TAG, SURROGATE_KEY},
    future::ResponseFuture,
    key,
    layer::Config,
    policy::{self, Exchange, RequestKind, RequestRules},
    CacheTags,
};
use crate::{
    cache::{Loaded, Origin},
    util::{self, now_ms},
    Cache, Policy, Stampede,
};

/// Caps on tags taken from one response.
const MAX_TAGS: usize = 64;
const MAX_TAG_LEN: usize = 256;

/// `Surrogate-Capability`, sent to the origin by a shared layer (W3C Edge Architecture).
const SURROGATE_CAPABILITY: HeaderName = HeaderName::from_static("surrogate-capability");

/// The service produced by [`CacheLayer`](super::CacheLayer): answers cacheable requests from the
/// cache and calls the inner service `S` on misses and for everything else.
///
/// Generic over the request and response body types; the response body becomes a
/// [`CacheBody`].
#[derive(Clone)]
pub struct CacheService<S> {
    inner: S,
    cache: Cache,
    config: Arc<Config>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("cache", &self.cache)
            .finish()
    }
}

impl<S> CacheService<S> {
    pub(crate) fn new(inner: S, cache: Cache, config: Arc<Config>) -> Self {
        CacheService {
            inner,
            cache,
            config,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The ready inner service for a future; this service keeps a fresh clone (tower's rule for
    /// services that are cloned into their futures).
    fn take_inner(&mut self) -> S
    where
        S: Clone,
    {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

/// Why a load did not produce a storable response.
pub(crate) enum LoadError<E, B: Body> {
    /// The inner service failed.
    Service(E),
    /// A response that is not stored: delivered to its own caller only, intact.
    Pass(Box<Response<CacheBody<B>>>, CacheStatus),
    /// The request had already been handed to another path (cannot happen: the engine calls a
    /// loader at most once, and only when it returns no entry).
    Vanished,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Send,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        // The body itself, not only its headers: an HTTP/2 DATA frame needs no Content-Length.
        let body_empty = body.is_end_stream() || body.size_hint().upper() == Some(0);
        match policy::classify(&self.config, &parts, body_empty) {
            RequestKind::Bypass => {
                return ResponseFuture::bypass(self.inner.call(Request::from_parts(parts, body)))
            }
            RequestKind::Unsafe => {
                let inner = self.take_inner();
                let future = invalidating(
                    self.cache.clone(),
                    self.config.clone(),
                    inner,
                    Request::from_parts(parts, body),
                );
                return ResponseFuture::cached(Box::pin(future));
            }
            RequestKind::Cacheable => {}
        }
        let custom = match &self.config.key_fn {
            Some(key_fn) => match key_fn(&parts) {
                Some(custom) => Some(custom),
                None => {
                    return ResponseFuture::bypass(
                        self.inner.call(Request::from_parts(parts, body)),
                    )
                }
            },
            None => None,
        };
        let credentialed = policy::has_credentials(&parts.headers);
        let primary = key::primary(&parts, credentialed, custom.as_deref());
        let keyed = self.config.learned.keyed(&primary, &self.config.keyed);
        let key = key::full(primary.clone(), &parts.headers, &keyed);
        let inner = self.take_inner();
        let fill = Fill {
            slot: Arc::new(Mutex::new(None)),
            inner,
            parts,
            body,
            config: self.config.clone(),
            primary,
            keyed,
            key,
        };
        ResponseFuture::cached(Box::pin(serve(self.cache.clone(), fill)))
    }
}

/// Where a loader leaves what the engine cannot carry: a response that is not stored (a
/// `Set-Cookie` page, an oversized body), or an entry to be stored under another key than the
/// one looked up (a response whose `Vary` taught the layer new headers). The engine gets a
/// value marked uncacheable (so it stores and shares nothing) and the caller acts on the slot.
type Slot<B> = Arc<Mutex<Option<Deferred<B>>>>;

enum Deferred<B: Body> {
    Pass(Response<CacheBody<B>>, CacheStatus),
    Store(Store),
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    util::lock(slot).take()
}

fn put<T>(slot: &Mutex<Option<T>>, value: T) {
    *util::lock(slot) = Some(value);
}

/// What a request to the origin needs.
struct Fill<S, ReqBody, ResBody: Body> {
    slot: Slot<ResBody>,
    inner: S,
    parts: request::Parts,
    body: ReqBody,
    config: Arc<Config>,
    primary: String,
    keyed: Arc<[HeaderName]>,
    /// The key the entry was looked up under.
    key: String,
}

/// An entry to write with [`Cache::set`], outside the engine's fill.
struct Store {
    key: String,
    entry: StoredResponse,
    keep: Duration,
}

impl Store {
    /// Writes the entry; `true` when it was stored.
    async fn write(&self, cache: &Cache, config: &Config) -> bool {
        let mut policy: Policy = config.policy.clone();
        policy.ttl = self.keep;
        policy.tags.extend(self.entry.meta().tags.iter().cloned());
        match cache.set(&self.key, &self.entry, &policy).await {
            Ok(()) => true,
            Err(err) => {
                tracing::debug!(error = %err, "could not store a response");
                false
            }
        }
    }
}

/// Answers a cacheable request.
async fn serve<S, ReqBody, ResBody>(
    cache: Cache,
    mut fill: Fill<S, ReqBody, ResBody>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Send,
{
    let head = fill.parts.method == Method::HEAD;
    // Conditionals are answered here, from the entry; the origin is asked for the full response
    // so that it can be stored.
    let conditions = Conditions::take(&mut fill.parts.headers);
    if head {
        fill.parts.method = Method::GET;
    }
    if fill.config.surrogate {
        fill.parts.headers.insert(
            SURROGATE_CAPABILITY,
            HeaderValue::from_static("cache-layer=\"Surrogate/1.0\""),
        );
    }
    let config = fill.config.clone();
    let rules = if config.respect_request_no_cache {
        RequestRules::of(&fill.parts.headers)
    } else {
        RequestRules::default()
    };
    let key = fill.key.clone();
    let slot = fill.slot.clone();
    // Recently uncacheable: no queueing behind another request's (uncacheable) load.
    let engine_policy = if config.hit_for_miss.contains(&key) {
        Cow::Owned(config.policy.clone().stampede(Stampede::None))
    } else {
        Cow::Borrowed(&config.policy)
    };
    // The request stays here unless the engine calls the loader (a miss): a hit that turns out
    // stale, or for another variant, takes it back to go to the origin.
    let held = Arc::new(Mutex::new(Some(fill)));
    let for_loader = held.clone();
    let only_if_cached = rules.only_if_cached;
    let fetched = cache
        .fetch(&key, &engine_policy, move || async move {
            if only_if_cached {
                return Err(LoadError::Pass(Box::new(gateway_timeout()), ONLY_IF_CACHED));
            }
            match take(&for_loader) {
                Some(fill) => load(fill).await,
                None => Err(LoadError::Vanished),
            }
        })
        .await;
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(LoadError::Pass(response, status)) => return Ok(pass_through(*response, status, head)),
        Err(LoadError::Service(err)) => return Err(err),
        Err(LoadError::Vanished) => return Ok(internal_error()),
    };
    let entry = fetched.value;
    let respond = |entry: &StoredResponse, status: CacheStatus| {
        let now = now_ms();
        let from_cache = matches!(status, CacheStatus::Hit { .. } | CacheStatus::Stale { .. });
        entry.to_response(head, &conditions, &status, entry.age_ms(now), from_cache)
    };
    match fetched.origin {
        Origin::Loaded => return Ok(respond(&entry, CacheStatus::Miss { stored: true })),
        Origin::LoadedUnstored => {
            return Ok(match take(&slot) {
                Some(Deferred::Pass(response, status)) => pass_through(response, status, head),
                Some(Deferred::Store(store)) => {
                    let stored = store.write(&cache, &config).await;
                    respond(&store.entry, CacheStatus::Miss { stored })
                }
                None => respond(&entry, CacheStatus::Miss { stored: false }),
            })
        }
        Origin::Hit | Origin::L1Hit | Origin::Stale | Origin::Coalesced => {}
    }
    // Always here: the loader is the only other taker, and it runs only when the engine returns
    // no entry (the layer never enables `Stampede::Early`, whose refresh would take it).
    let Some(fill) = take(&held) else {
        return Ok(internal_error());
    };
    if !entry.vary_matches(&fill.parts.headers) {
        if only_if_cached {
            return Ok(pass_through(gateway_timeout(), ONLY_IF_CACHED, head));
        }
        return forward(cache, fill, None, Forward::VaryMiss, head, conditions).await;
    }
    if fetched.origin == Origin::Coalesced {
        return Ok(respond(&entry, CacheStatus::Collapsed));
    }
    if rules.no_cache && !only_if_cached {
        return forward(cache, fill, Some(entry), Forward::Request, head, conditions).await;
    }
    let now = now_ms();
    let fresh_ms = entry.fresh_ms(now);
    let age_ms = entry.age_ms(now);
    let freshness = entry.meta().freshness;
    let acceptable = rules
        .max_age
        .is_none_or(|max| age_ms <= max.saturating_mul(1000))
        && rules.min_fresh.is_none_or(|min| {
            fresh_ms >= i64::try_from(min.saturating_mul(1000)).unwrap_or(i64::MAX)
        });
    if fresh_ms > 0 && acceptable {
        let ttl = CacheStatus::ttl_seconds(fresh_ms);
        // The common hit: the entry was decoded for this request (Redis without L1) or is
        // shared with L1; `into_response` moves what it can instead of copying.
        let status = CacheStatus::Hit { ttl };
        return Ok(entry.into_response(head, &conditions, &status, age_ms, true));
    }
    let stale_ms = u64::try_from(fresh_ms.saturating_neg()).unwrap_or(0);
    let stale = CacheStatus::Stale {
        ttl: CacheStatus::ttl_seconds(fresh_ms),
    };
    if fresh_ms <= 0 && !freshness.must_revalidate {
        if rules
            .max_stale
            .is_some_and(|max| stale_ms <= max.saturating_mul(1000))
        {
            return Ok(respond(&entry, stale));
        }
        if stale_ms <= freshness.swr_ms && rules.max_age.is_none() {
            let refreshing = config.refreshing.entry(key::hash(&key)).or_insert(());
            if refreshing.is_fresh() {
                let background = entry.clone();
                let cache = cache.clone();
                tokio::spawn(async move {
                    let _ = forward(
                        cache,
                        fill,
                        Some(background),
                        Forward::Revalidate,
                        false,
                        Conditions::default(),
                    )
                    .await;
                });
            }
            return Ok(respond(&entry, stale));
        }
    }
    if only_if_cached {
        return Ok(pass_through(gateway_timeout(), ONLY_IF_CACHED, head));
    }
    forward(
        cache,
        fill,
        Some(entry),
        Forward::Revalidate,
        head,
        conditions,
    )
    .await
}

/// `Cache-Status` of the `504` answering `only-if-cached` without a usable entry.
const ONLY_IF_CACHED: CacheStatus = CacheStatus::Uncacheable("only-if-cached");

/// RFC 9111 §5.2.1.7: `only-if-cached` without a stored response that may be used.
fn gateway_timeout<B: Body>() -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    response
}

/// Why a request goes to the origin outside the engine's miss path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forward {
    /// The entry is stale (or the request wants a fresher one): revalidate it.
    Revalidate,
    /// An entry exists for other values of its `Vary` headers.
    VaryMiss,
    /// The request's `no-cache` asks for the origin's answer.
    Request,
}

/// Sends the request to the origin (conditionally when revalidating `stale`), stores what comes
/// back, and answers the client.
async fn forward<S, ReqBody, ResBody>(
    cache: Cache,
    fill: Fill<S, ReqBody, ResBody>,
    stale: Option<StoredResponse>,
    why: Forward,
    head: bool,
    conditions: Conditions,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    let mut fill = fill;
    if let Some(entry) = &stale {
        let (etag, modified) = entry.validators();
        if let Some(etag) = etag {
            fill.parts
                .headers
                .insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = modified {
            fill.parts
                .headers
                .insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
    }
    let served_stale = |entry: &StoredResponse, error: bool| {
        let now = now_ms();
        let f = entry.meta().freshness;
        let stale_ms = u64::try_from(entry.fresh_ms(now).saturating_neg()).unwrap_or(0);
        let window = if error { f.sie_ms } else { f.swr_ms };
        (!f.must_revalidate && stale_ms <= window).then(|| {
            let status = CacheStatus::Stale {
                ttl: CacheStatus::ttl_seconds(entry.fresh_ms(now)),
            };
            entry.to_response(head, &conditions, &status, entry.age_ms(now), true)
        })
    };
    let (request, _slot, called) = fill.call_origin().await;
    let (parts, body, exchange) = match called {
        Ok(response) => response,
        Err(err) => {
            return match stale.as_ref().and_then(|entry| served_stale(entry, true)) {
                Some(response) => Ok(response),
                None => Err(err),
            }
        }
    };
    let (config, key) = (&request.config, request.key.as_str());
    if let Some(entry) = &stale {
        // The conditional named only this entry's validators, so a 304 is about this entry (an
        // `ETag` it carries never replaces the stored one).
        if parts.status == StatusCode::NOT_MODIFIED {
            return Ok(freshen(
                &cache,
                config,
                key,
                entry,
                &parts.headers,
                exchange,
                head,
                &conditions,
            )
            .await);
        }
        if parts.status.is_server_error() {
            if let Some(response) = served_stale(entry, true) {
                return Ok(response);
            }
        }
    }
    let status_code = parts.status.as_u16();
    let stored = |stored| match why {
        Forward::Revalidate => CacheStatus::Revalidated {
            status: status_code,
            stored,
        },
        Forward::VaryMiss => CacheStatus::VaryMiss { stored },
        Forward::Request => CacheStatus::Requested { stored },
    };
    match admit(&request, parts, body, exchange).await {
        Admitted::Entry(store) => {
            let ok = store.write(&cache, config).await;
            let status = stored(ok);
            Ok(store.entry.to_response(
                head,
                &conditions,
                &status,
                store.entry.age_ms(now_ms()),
                false,
            ))
        }
        Admitted::Pass(response, status, failed) => {
            // A refresh that comes back uncacheable ends the stale entry's life (a failure does
            // not: the entry may still serve under stale-if-error later).
            if why != Forward::VaryMiss && stale.is_some() && !failed {
                let _ = cache.delete(key).await;
            }
            Ok(pass_through(response, status, head))
        }
    }
}

/// Freshens `entry` with a `304`'s headers (RFC 9111 §4.3.4), stores it, and answers from it.
#[allow(clippy::too_many_arguments)]
async fn freshen<B: Body>(
    cache: &Cache,
    config: &Config,
    key: &str,
    entry: &StoredResponse,
    not_modified: &HeaderMap,
    exchange: Exchange,
    head: bool,
    conditions: &Conditions,
) -> Response<CacheBody<B>> {
    let merged = entry.merged_headers(not_modified);
    let mut meta = entry.meta().clone();
    meta.received_ms = exchange.response_ms;
    let outcome = policy::storability(config, entry.status(), &merged, false, exchange);
    let (stored, fresh) = match outcome {
        Ok(freshness) => {
            meta.freshness = freshness;
            let fresh = entry.freshened(not_modified, meta);
            let store = Store {
                key: key.to_owned(),
                entry: fresh,
                keep: Duration::from_millis(freshness.keep_ms),
            };
            (store.write(cache, config).await, store.entry)
        }
        Err(_) => {
            // The origin now says the response may not be stored.
            let _ = cache.delete(key).await;
            meta.freshness = Default::default();
            (false, entry.freshened(not_modified, meta))
        }
    };
    let status = CacheStatus::Revalidated {
        status: 304,
        stored,
    };
    fresh.to_response(head, conditions, &status, fresh.age_ms(now_ms()), false)
}

/// What deciding about an origin response needs to know about its request.
struct Sent {
    config: Arc<Config>,
    primary: String,
    keyed: Arc<[HeaderName]>,
    /// The key the request was looked up under.
    key: String,
    headers: HeaderMap,
    authorized: bool,
}

/// An origin response: head, body, and when it was asked for and received.
type Received<B> = (response::Parts, B, Exchange);

impl<S, ReqBody, ResBody> Fill<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    /// Sends the request to the origin.
    async fn call_origin(self) -> (Sent, Slot<ResBody>, Result<Received<ResBody>, S::Error>) {
        let Fill {
            slot,
            mut inner,
            parts,
            body,
            config,
            primary,
            keyed,
            key,
        } = self;
        let sent = Sent {
            config,
            primary,
            keyed,
            key,
            headers: parts.headers.clone(),
            authorized: parts.headers.contains_key(header::AUTHORIZATION),
        };
        let request_ms = now_ms();
        let called = match futures_util::future::poll_fn(|cx| inner.poll_ready(cx)).await {
            Ok(()) => inner.call(Request::from_parts(parts, body)).await,
            Err(err) => Err(err),
        };
        let received = called.map(|response| {
            let (parts, body) = response.into_parts();
            let exchange = Exchange {
                request_ms,
                response_ms: now_ms(),
            };
            (parts, body, exchange)
        });
        (sent, slot, received)
    }
}

/// An origin response, decided.
enum Admitted<B: Body> {
    /// To be stored (under `key`, which differs from the lookup key when `Vary` taught the layer
    /// new headers).
    Entry(Store),
    /// Not stored: to its own caller, intact. `failed`: the origin failed (5xx, body error).
    Pass(Response<CacheBody<B>>, CacheStatus, bool),
}

/// Decides whether an origin response is stored, reads its body when it is, and builds the
/// entry.
async fn admit<B: Body>(
    target: &Sent,
    mut parts: response::Parts,
    body: B,
    exchange: Exchange,
) -> Admitted<B> {
    let config = &*target.config;
    let tags = take_tags(&mut parts.headers, parts.extensions.remove::<CacheTags>());
    let freshness = match policy::storability(
        config,
        parts.status,
        &parts.headers,
        target.authorized,
        exchange,
    ) {
        Ok(freshness) => freshness,
        Err(why) => {
            config.hit_for_miss.insert(&target.key);
            let failed = parts.status.is_server_error();
            let response = Response::from_parts(parts, CacheBody::stream(body));
            return Admitted::Pass(response, CacheStatus::Uncacheable(why.detail()), failed);
        }
    };
    let bytes = match body::buffer(body, config.max_body_bytes).await {
        Buffered::Complete(bytes) => bytes,
        Buffered::Passthrough(body, reason) => {
            let detail = match reason {
                PassReason::TooLarge => {
                    config.hit_for_miss.insert(&target.key);
                    "too-large"
                }
                PassReason::Trailers => "trailers",
                PassReason::BodyError => "body-error",
            };
            let failed = reason == PassReason::BodyError || parts.status.is_server_error();
            let response = Response::from_parts(parts, body);
            return Admitted::Pass(response, CacheStatus::Uncacheable(detail), failed);
        }
    };
    config.hit_for_miss.remove(&target.key);
    let names = policy::vary_names(&parts.headers);
    let key = match config.learned.learn(&target.primary, &target.keyed, &names) {
        Some(keyed) => key::full(target.primary.clone(), &target.headers, &keyed),
        None => target.key.clone(),
    };
    let meta = Meta {
        received_ms: exchange.response_ms,
        freshness,
        vary: names
            .iter()
            .map(|name| (name.as_str().to_owned(), vary_value(&target.headers, name)))
            .collect(),
        tags,
        synthetic_etag: false,
    };
    let entry = StoredResponse::new(
        parts.status,
        &parts.headers,
        bytes,
        meta,
        config.synthesize_etag,
    );
    Admitted::Entry(Store {
        key,
        entry,
        keep: Duration::from_millis(freshness.keep_ms),
    })
}

/// A response that was not stored, to its own caller (without the body for HEAD).
fn pass_through<B: Body>(
    mut response: Response<CacheBody<B>>,
    status: CacheStatus,
    head: bool,
) -> Response<CacheBody<B>> {
    response.headers_mut().remove(SURROGATE_CONTROL);
    status.append_to(response.headers_mut());
    if head {
        response.map(|_| CacheBody::empty())
    } else {
        response
    }
}

fn internal_error<B: Body>() -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

/// Calls the origin for a miss and turns its response into an entry for the engine to store, or
/// leaves it in the slot.
async fn load<S, ReqBody, ResBody>(
    fill: Fill<S, ReqBody, ResBody>,
) -> Result<Loaded<StoredResponse>, LoadError<S::Error, ResBody>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    let (request, slot, called) = fill.call_origin().await;
    let (parts, body, exchange) = called.map_err(LoadError::Service)?;
    match admit(&request, parts, body, exchange).await {
        Admitted::Entry(store) if store.key == request.key => Ok(Loaded {
            value: store.entry,
            ttl: Some(store.keep),
            tags: Vec::new(),
            cacheable: true,
        })
        .map(|mut loaded| {
            loaded.tags = loaded.value.meta().tags.clone();
            loaded
        }),
        Admitted::Entry(store) => {
            let value = store.entry.clone();
            put(&slot, Deferred::Store(store));
            Ok(not_shared(value))
        }
        Admitted::Pass(response, status, true) => Err(LoadError::Pass(Box::new(response), status)),
        Admitted::Pass(response, status, false) => {
            put(&slot, Deferred::Pass(response, status));
            Ok(not_shared(StoredResponse::placeholder()))
        }
    }
}

/// A loader result the engine neither stores nor shares (the caller acts on the slot).
fn not_shared(value: StoredResponse) -> Loaded<StoredResponse> {
    Loaded {
        value,
        ttl: None,
        tags: Vec::new(),
        cacheable: false,
    }
}

/// An unsafe request: passed through; when it succeeds (2xx, 3xx), the entries of its target and
/// of same-origin `Location` / `Content-Location` targets are deleted (RFC 9111 §4.4).
async fn invalidating<S, ReqBody, ResBody>(
    cache: Cache,
    config: Arc<Config>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    let uri = request.uri().clone();
    let headers = request.headers().clone();
    let custom = config.key_fn.as_ref().and_then(|key_fn| {
        let (parts, ()) = {
            let mut builder = Request::builder().method(Method::GET).uri(uri.clone());
            if let Some(h) = builder.headers_mut() {
                *h = headers.clone();
            }
            builder.body(()).ok()?.into_parts()
        };
        key_fn(&parts)
    });
    futures_util::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
    let response = inner.call(request).await?;
    let status = response.status();
    let mut response = response.map(CacheBody::stream);
    strip_tag_headers(response.headers_mut());
    response.headers_mut().remove(SURROGATE_CONTROL);
    if status.is_success() || status.is_redirection() {
        let mut targets = vec![(uri.clone(), custom)];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(location) = response.headers().get(&name) {
                if let Some(target) = same_origin(&uri, &headers, location) {
                    targets.push((target, None));
                }
            }
        }
        for (target, custom) in targets {
            for key in invalidation_keys(&config, &target, &headers, custom.as_deref()) {
                if let Err(err) = cache.delete(&key).await {
                    tracing::debug!(error = %err, "could not invalidate after an unsafe method");
                }
            }
        }
    }
    CacheStatus::Bypass.append_to(response.headers_mut());
    Ok(response)
}

/// The keys a GET of `target` could be stored under for this client: with its request headers
/// and without any, in the anonymous class and (with `cache_authorized`) the credentialed one.
fn invalidation_keys(
    config: &Config,
    target: &Uri,
    headers: &HeaderMap,
    custom: Option<&str>,
) -> Vec<String> {
    let mut keys = Vec::with_capacity(4);
    let none = HeaderMap::new();
    let classes: &[bool] = if config.cache_authorized {
        &[false, true]
    } else {
        &[false]
    };
    for &credentialed in classes {
        let primary = key::primary_for(&Method::GET, target, headers, credentialed, custom);
        let keyed = config.learned.keyed(&primary, &config.keyed);
        for headers in [headers, &none] {
            let key = key::full(primary.clone(), headers, &keyed);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// A `Location` / `Content-Location` value as a target on the request's own origin (RFC 9111
/// §4.4: other origins' entries are never invalidated, so no one can purge them).
fn same_origin(request: &Uri, headers: &HeaderMap, location: &HeaderValue) -> Option<Uri> {
    let location = location.to_str().ok()?.trim();
    let parsed: Uri = location.parse().ok()?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.authority().map(|a| a.as_str()))?;
    let path_and_query = match parsed.authority() {
        Some(authority) => {
            if !authority.as_str().eq_ignore_ascii_case(host) {
                return None;
            }
            parsed.path_and_query()?.as_str().to_owned()
        }
        None if location.starts_with('/') => location.to_owned(),
        None => {
            // Relative to the request's path.
            let base = request.path();
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        }
    };
    let mut builder = Uri::builder();
    if let (Some(scheme), Some(authority)) = (request.scheme(), request.authority()) {
        builder = builder.scheme(scheme.clone()).authority(authority.clone());
    }
    builder.path_and_query(path_and_query).build().ok()
}

/// Removes the tag headers and returns their tags plus those of the [`CacheTags`] extension.
/// `Cache-Tag` is comma-separated, `Surrogate-Key` space-separated; both are accepted either way.
pub(crate) fn take_tags(headers: &mut HeaderMap, extension: Option<CacheTags>) -> Vec<String> {
    let mut tags: Vec<String> = extension.map(|t| t.0).unwrap_or_default();
    for name in [CACHE_TAG, SURROGATE_KEY] {
        if let http::header::Entry::Occupied(entry) = headers.entry(name) {
            for value in entry.remove_entry_mult().1 {
                let Ok(value) = value.to_str() else { continue };
                tags.extend(
                    value
                        .split(|c: char| c == ',' || c.is_ascii_whitespace())
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned),
                );
            }
        }
    }
    tags.retain(|t| !t.is_empty() && t.len() <= MAX_TAG_LEN);
    tags.sort();
    tags.dedup();
    tags.truncate(MAX_TAGS);
    tags
}

/// Strips tag headers from a response that bypassed the cache.
pub(crate) fn strip_tag_headers(headers: &mut HeaderMap) {
    headers.remove(CACHE_TAG);
    headers.remove(SURROGATE_KEY);
}

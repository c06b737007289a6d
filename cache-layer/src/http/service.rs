//! [`CacheService`]: the middleware service.

use std::{
    borrow::Cow,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use http::{
    header::{self, HeaderName},
    request, HeaderMap, Method, Request, Response,
};
use http_body::Body;
use tower_service::Service;

use super::{
    body::{self, Buffered, CacheBody, PassReason},
    entry::{CacheStatus, StoredResponse, CACHE_TAG, SURROGATE_KEY},
    future::ResponseFuture,
    key,
    layer::Config,
    policy::{self, NotStored},
    CacheTags,
};
use crate::{
    cache::{Loaded, Origin},
    util::now_ms,
    Cache, Stampede,
};

/// Caps on tags taken from one response.
const MAX_TAGS: usize = 64;
const MAX_TAG_LEN: usize = 256;

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
}

/// Why a load did not produce a storable response.
pub(crate) enum LoadError<E, B: Body> {
    /// The inner service failed.
    Service(E),
    /// A response that is not stored: delivered to its own caller only, intact.
    Pass(Box<Response<CacheBody<B>>>, CacheStatus),
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
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
        if !policy::request_is_cacheable(&self.config, &parts) {
            return ResponseFuture::bypass(self.inner.call(Request::from_parts(parts, body)));
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
        // The ready service goes to the loader; this service keeps a fresh clone (tower's rule
        // for services that are cloned into their futures).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let request = Fill {
            slot: Arc::new(Mutex::new(None)),
            inner,
            parts,
            body,
            config: self.config.clone(),
            primary,
            keyed,
            key: key.clone(),
        };
        ResponseFuture::cached(Box::pin(serve(self.cache.clone(), key, request)))
    }
}

/// Where a loader leaves a response that is not cacheable but is not a failure either (a
/// `Set-Cookie` page, an oversized body): the engine returns a placeholder marked uncacheable
/// (so the load counts as a success and nothing is stored or shared) and the caller picks the
/// real response up here.
type Slot<B> = Arc<Mutex<Option<(Response<CacheBody<B>>, CacheStatus)>>>;

fn take_slot<B: Body>(slot: &Slot<B>) -> Option<(Response<CacheBody<B>>, CacheStatus)> {
    crate::util::lock(slot).take()
}

/// What a miss needs to call the origin.
struct Fill<S, ReqBody, ResBody: Body> {
    slot: Slot<ResBody>,
    inner: S,
    parts: request::Parts,
    body: ReqBody,
    config: Arc<Config>,
    primary: String,
    keyed: Arc<[HeaderName]>,
    /// The entry's key (for the hit-for-miss memory).
    key: String,
}

/// Answers a cacheable request through the engine.
async fn serve<S, ReqBody, ResBody>(
    cache: Cache,
    key: String,
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
    let if_none_match = fill.parts.headers.remove(header::IF_NONE_MATCH);
    fill.parts.headers.remove(header::IF_MODIFIED_SINCE);
    if head {
        fill.parts.method = Method::GET;
    }
    let config = fill.config.clone();
    let slot = fill.slot.clone();
    // Recently uncacheable: no queueing behind another request's (uncacheable) load.
    let policy = if config.hit_for_miss.contains(&key) {
        Cow::Owned(config.policy.clone().stampede(Stampede::None))
    } else {
        Cow::Borrowed(&config.policy)
    };
    let fetched = cache.fetch(&key, &policy, move || load(fill)).await;
    match fetched {
        Ok(fetched) => {
            if fetched.origin == Origin::LoadedUnstored {
                if let Some((response, status)) = take_slot(&slot) {
                    return Ok(pass_through(response, status, head));
                }
            }
            let now = now_ms();
            let ttl = fetched
                .timing
                .as_ref()
                .map_or(0, |t| CacheStatus::ttl_seconds(t, now));
            let age = fetched
                .timing
                .as_ref()
                .map(|t| now.saturating_sub(t.created_ms));
            let (status, age) = match fetched.origin {
                Origin::L1Hit | Origin::Hit => (CacheStatus::Hit { ttl }, age),
                Origin::Stale => (CacheStatus::Stale { ttl }, age),
                Origin::Coalesced => (CacheStatus::Collapsed, None),
                Origin::Loaded => (CacheStatus::Miss { stored: true }, None),
                Origin::LoadedUnstored => (CacheStatus::Miss { stored: false }, None),
            };
            Ok(fetched
                .value
                .to_response(head, if_none_match.as_ref(), &status, age))
        }
        Err(LoadError::Pass(response, status)) => Ok(pass_through(*response, status, head)),
        Err(LoadError::Service(err)) => Err(err),
    }
}

/// A response that was not stored, to its own caller (without the body for HEAD).
fn pass_through<B: Body>(
    mut response: Response<CacheBody<B>>,
    status: CacheStatus,
    head: bool,
) -> Response<CacheBody<B>> {
    status.append_to(response.headers_mut());
    if head {
        response.map(|_| CacheBody::empty())
    } else {
        response
    }
}

/// Hands an uncacheable response to the caller: as an error when the origin failed (5xx, body
/// error: counted as a failed load, and stale content may stand in for it), else through the
/// slot as a successful, unstored load.
fn uncacheable<E, B: Body>(
    slot: &Slot<B>,
    response: Response<CacheBody<B>>,
    status: CacheStatus,
    failed: bool,
) -> Result<Loaded<StoredResponse>, LoadError<E, B>> {
    if failed {
        return Err(LoadError::Pass(Box::new(response), status));
    }
    *crate::util::lock(slot) = Some((response, status));
    Ok(Loaded {
        value: StoredResponse::placeholder(),
        ttl: None,
        tags: Vec::new(),
        cacheable: false,
    })
}

/// Calls the origin and turns its response into an entry, or passes it through.
async fn load<S, ReqBody, ResBody>(
    fill: Fill<S, ReqBody, ResBody>,
) -> Result<Loaded<StoredResponse>, LoadError<S::Error, ResBody>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    let Fill {
        slot,
        mut inner,
        parts,
        body,
        config,
        primary,
        keyed,
        key,
    } = fill;
    futures_util::future::poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(LoadError::Service)?;
    let response = inner
        .call(Request::from_parts(parts, body))
        .await
        .map_err(LoadError::Service)?;
    let (mut parts, body) = response.into_parts();
    let tags = take_tags(&mut parts.headers, parts.extensions.remove::<CacheTags>());
    let storable = match policy::response_storability(&config, &parts, &keyed) {
        Ok(storable) => storable,
        Err(why) => {
            if let NotStored::VaryUnkeyed(names) = &why {
                config.learned.learn(primary, &keyed, names);
            } else {
                config.hit_for_miss.insert(key);
            }
            let failed = parts.status.is_server_error();
            let response = Response::from_parts(parts, CacheBody::stream(body));
            let status = CacheStatus::Uncacheable(why.detail());
            return uncacheable(&slot, response, status, failed);
        }
    };
    match body::buffer(body, config.max_body_bytes).await {
        Buffered::Complete(bytes) => {
            config.hit_for_miss.remove(&key);
            Ok(Loaded {
                value: StoredResponse::new(&parts, bytes, storable.upstream_age),
                ttl: storable.ttl,
                tags,
                cacheable: true,
            })
        }
        Buffered::Passthrough(body, reason) => {
            let detail = match reason {
                PassReason::TooLarge => {
                    config.hit_for_miss.insert(key);
                    "too-large"
                }
                PassReason::Trailers => "trailers",
                PassReason::BodyError => "body-error",
            };
            let failed = reason == PassReason::BodyError || parts.status.is_server_error();
            let response = Response::from_parts(parts, body);
            uncacheable(&slot, response, CacheStatus::Uncacheable(detail), failed)
        }
    }
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

//! HTTP response caching for any hyper/axum stack: [`CacheLayer`] and [`CacheService`].
//!
//! The layer answers cacheable requests from a [`Cache`](crate::Cache) (Redis, optionally with an
//! L1 tier) and calls the inner service only on a miss: with the engine's single-flight (and
//! optionally [`Stampede::Lock`](crate::Stampede::Lock) across processes), concurrent misses of one
//! URL make one origin request. When Redis is down every request is served by the inner service.
//!
//! # What is cached
//!
//! The layer is an HTTP cache in the sense of RFC 9111, shared by every client of the service.
//! GET (and HEAD, answered from the GET entry) requests without `Authorization`/`Cookie` (unless
//! [`cache_authorized`](CacheLayer::cache_authorized)) and without a body are answered from the
//! cache; responses are stored when their status is configured (default 200, never 5xx) and they
//! carry no `Set-Cookie`, no `private` / `no-store`, no `Vary: *`, and a body of at most
//! [`max_body_bytes`](CacheLayer::max_body_bytes). Everything else is passed through untouched
//! (bodies streamed, never buffered beyond the limit) and never stored. The full rules are in
//! the `policy` module source; the key layout in `key`; the request flow in `service`.
//!
//! - **Freshness** comes from the origin: `CDN-Cache-Control` (RFC 9213) or `Surrogate-Control`
//!   when present, else `Cache-Control` `s-maxage` / `max-age`, else `Expires`, minus the
//!   response's `Age`; without any of them the layer's [`ttl`](CacheLayer::ttl) (a
//!   [`shared`](CacheLayer::shared) layer, whose TTL is zero, uses a heuristic from
//!   `Last-Modified` instead).
//! - **Revalidation**: a stale entry with a validator is revalidated with `If-None-Match` /
//!   `If-Modified-Since`; a `304` freshens it (its headers merged, RFC 9111 §4.3.4), a new
//!   response replaces it, and an uncacheable one deletes it. `no-cache` responses are stored and
//!   revalidated before every use.
//! - **Stale content**: within the origin's `stale-while-revalidate` (or the layer's
//!   [`stale`](CacheLayer::stale) grace) a stale entry is served while one request revalidates it
//!   in the background; within `stale-if-error` (or the grace) it stands in for a failing origin
//!   (5xx or an error). Never for `must-revalidate`, `proxy-revalidate`, `s-maxage` or `no-cache`
//!   responses.
//! - **Vary**: every entry records the request values of the headers its `Vary` names and is only
//!   reused for requests with the same values; the layer also learns, per URL, to key entries on
//!   those headers, so each variant gets its own entry.
//! - **Unsafe methods** (POST, PUT, DELETE, PATCH, ...) pass through; when they succeed they
//!   delete the entries of their target and of same-origin `Location` / `Content-Location`.
//! - **Request directives**: `Cache-Control: no-store` bypasses the cache; with
//!   [`respect_request_no_cache`](CacheLayer::respect_request_no_cache), `no-cache` / `Pragma:
//!   no-cache` refresh the entry from the origin, `max-age`, `min-fresh`, `max-stale` are
//!   obeyed, and `only-if-cached` gets a `504` when no stored response may be used.
//!
//! In [`Cache::stats`](crate::Cache::stats), an uncacheable response is a successful load; a 5xx
//! or an origin error is a failed one.
//!
//! # Keys
//!
//! Method class + scheme (when the target has one) + host (the `Host` the application reads;
//! requests whose target authority differs from `Host` are not cached) + raw path + query
//! (parameters sorted when that is safe) + keyed request headers ([`vary`](CacheLayer::vary),
//! headers named by the origin's `Vary`, and forwarding headers such as `X-Forwarded-Host`),
//! encoded injectively and hashed when long. Paths are never decoded or normalised, so
//! `/account.css`, `/a%2Fb` or `/x/../account` can never be answered with another path's entry.
//!
//! # Response headers
//!
//! - `Cache-Status` (RFC 9211; an inner cache's member is never replayed from the entry):
//!   `cache-layer; hit; ttl=42` (fresh), `cache-layer; hit; ttl=-3` (served stale),
//!   `cache-layer; fwd=miss; stored`, `cache-layer; fwd=stale; fwd-status=304; stored`
//!   (revalidated), `cache-layer; fwd=vary-miss; stored` (an entry exists for other `Vary`
//!   values), `cache-layer; fwd=request; stored` (the request's `no-cache`),
//!   `cache-layer; fwd=bypass` (request not cacheable), `cache-layer; fwd=miss; collapsed`
//!   (answered by a concurrent request's load), `cache-layer; fwd=miss; detail=<why>` (response
//!   not cacheable, e.g. `set-cookie`, `too-large`, `authorization`), `cache-layer; fwd=miss`
//!   (cacheable but could not be stored, e.g. Redis down).
//! - `Age` on every response served from the cache (the origin's age included), and the
//!   origin's own `Age` on misses.
//! - `ETag`: the origin's, or (except for a [`shared`](CacheLayer::shared) layer) a strong one
//!   computed from the body, on the miss as on hits; `If-None-Match` / `If-Modified-Since` are
//!   answered with `304 Not Modified` from the entry.
//! - `Cache-Tag` / `Surrogate-Key` from the origin become the entry's tags (for
//!   [`Cache::invalidate_tag`](crate::Cache::invalidate_tag)) and are removed from the response;
//!   a handler can also attach [`CacheTags`] as a response extension. `Surrogate-Control` is
//!   removed too.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use cache_layer::{Cache, CacheLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::in_memory(); // Cache::builder().redis(url).build()? in production
//! let mut service = ServiceBuilder::new()
//!     .layer(CacheLayer::new(cache.clone()).ttl(Duration::from_secs(60)))
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         let response = Response::builder()
//!             .header("cache-tag", "product:42")
//!             .body(Full::new(Bytes::from_static(b"espresso machine")))?;
//!         Ok::<_, http::Error>(response)
//!     }));
//!
//! let get = || Request::get("http://shop.example/products/42").body(Full::default()).unwrap();
//! let miss = service.ready().await?.call(get()).await?;
//! assert_eq!(miss.headers()["cache-status"], "cache-layer; fwd=miss; stored");
//! assert!(miss.headers().contains_key("etag"));
//! assert!(!miss.headers().contains_key("cache-tag"));
//!
//! let hit = service.ready().await?.call(get()).await?;
//! assert!(hit.headers()["cache-status"].to_str()?.starts_with("cache-layer; hit; ttl="));
//! assert_eq!(hit.into_body().collect().await?.to_bytes(), "espresso machine");
//!
//! // Purge by tag.
//! cache.invalidate_tag("product:42").await?;
//! let again = service.ready().await?.call(get()).await?;
//! assert_eq!(again.headers()["cache-status"], "cache-layer; fwd=miss; stored");
//! # Ok(()) }
//! ```
//!
//! With axum: `Router::new().route(..).layer(CacheLayer::new(cache))` (or `route_layer`); with
//! plain hyper: wrap the service with `hyper_util::service::TowerToHyperService`.

mod body;
mod directives;
mod entry;
mod future;
mod key;
mod layer;
mod policy;
mod service;

pub use self::{
    body::CacheBody,
    future::ResponseFuture,
    layer::{CacheLayer, DEFAULT_MAX_BODY_BYTES, DEFAULT_TTL},
    service::CacheService,
};

/// Tags for the cached response, attached by a handler as a response extension (an alternative
/// to the `Cache-Tag` / `Surrogate-Key` headers). Purge them with
/// [`Cache::invalidate_tag`](crate::Cache::invalidate_tag).
///
/// ```
/// use cache_layer::http::CacheTags;
///
/// let mut response = http::Response::new(());
/// response.extensions_mut().insert(CacheTags::new(["product:42", "catalog"]));
/// // axum: `(Extension(CacheTags::new(["product:42"])), Json(product))`
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheTags(pub Vec<String>);

impl CacheTags {
    /// Tags from anything that yields strings.
    pub fn new<I, T>(tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        CacheTags(tags.into_iter().map(Into::into).collect())
    }
}

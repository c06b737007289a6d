//! HTTP response caching for any hyper/axum stack: [`CacheLayer`] and [`CacheService`].
//!
//! The layer answers cacheable requests from a [`Cache`](crate::Cache) (Redis, optionally with an
//! L1 tier) and calls the inner service only on a miss: with the engine's single-flight (and
//! optionally [`Stampede::Lock`](crate::Stampede::Lock) across processes), concurrent misses of one
//! URL make one origin request. When Redis is down every request is served by the inner service.
//!
//! # What is cached
//!
//! GET (and HEAD, answered from the GET entry) requests without `Authorization`/`Cookie`, whose
//! responses have a configured status (default 200, never 5xx), no `Set-Cookie`, no
//! `Cache-Control: private | no-store | no-cache`, no `Vary: *`, and a body of at most
//! [`max_body_bytes`](CacheLayer::max_body_bytes). The origin's `s-maxage` / `max-age` / `Expires`
//! set the TTL, else the layer's [`ttl`](CacheLayer::ttl). Everything else is passed through
//! untouched (bodies streamed, never buffered beyond the limit) and never stored. In
//! [`Cache::stats`](crate::Cache::stats), an uncacheable response is a successful load; a 5xx or
//! an origin error is a failed one, for which a stale entry (with [`stale`](CacheLayer::stale))
//! is served instead. The full rules
//! are in the `policy` module source; the key layout in `key`.
//!
//! # Keys
//!
//! Method class + host + raw path + query (parameters sorted when that is safe) + keyed request
//! headers ([`vary`](CacheLayer::vary), headers named by the origin's `Vary`, and forwarding
//! headers such as `X-Forwarded-Host`), encoded injectively and hashed when long. Paths are never
//! decoded or normalised, so `/account.css`, `/a%2Fb` or `/x/../account` can never be answered
//! with another path's entry.
//!
//! # Response headers
//!
//! - `Cache-Status` (RFC 9211): `cache-layer; hit; ttl=42`, `cache-layer; fwd=miss; stored`,
//!   `cache-layer; fwd=stale; ttl=-3`, `cache-layer; fwd=bypass` (request not cacheable),
//!   `cache-layer; fwd=miss; collapsed` (answered by a concurrent request's load),
//!   `cache-layer; fwd=miss; detail=<why>` (response not cacheable, e.g. `set-cookie`,
//!   `too-large`), `cache-layer; fwd=miss` (cacheable but could not be stored, e.g. Redis down).
//! - `Age` on hits.
//! - `ETag`: the origin's, or a strong one computed from the body, on the miss as on hits;
//!   `If-None-Match` is answered with `304 Not Modified` from the entry.
//! - `Cache-Tag` / `Surrogate-Key` from the origin become the entry's tags (for
//!   [`Cache::invalidate_tag`](crate::Cache::invalidate_tag)) and are removed from the response;
//!   a handler can also attach [`CacheTags`] as a response extension.
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

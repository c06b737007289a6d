//! Cacheability rules: which requests may be answered from the cache, which responses may be
//! stored, for how long they are fresh (RFC 9111 §4.2), and how long they are kept.
//!
//! Requests (any of these → bypass, straight to the inner service):
//! - the method is not one of the configured methods (default GET and HEAD; HEAD is answered from
//!   the GET entry). Unsafe methods (POST, PUT, DELETE, PATCH and any unknown one) pass through
//!   and, when they succeed, invalidate the target URI and the same-origin `Location` and
//!   `Content-Location` (RFC 9111 §4.4);
//! - `Authorization` or `Cookie` is present, unless [`cache_authorized`] is on;
//! - a request body: `Content-Length` other than 0, `Transfer-Encoding`, or a body that is not
//!   empty (an HTTP/2 DATA frame needs no length header): "fat GET" bodies are not keyed;
//! - the target's authority and the `Host` header differ (an absolute-form target or HTTP/2
//!   `:authority` naming another host than the one the application reads);
//! - `Range`, `If-Match`, `If-Unmodified-Since`, `If-Range` (partial or precondition semantics the
//!   cache does not implement), `Upgrade`, or an `X-HTTP-Method-Override`-style header;
//! - `Cache-Control: no-store` (RFC 9111 §5.2.1.5);
//! - with [`respect_request_no_cache`]: `Cache-Control: no-cache` or `Pragma: no-cache` go to the
//!   origin (conditionally, refreshing the entry), `max-age`, `min-fresh` and `max-stale` are
//!   obeyed, and `only-if-cached` gets a `504` when no stored response may be used.
//!
//! Responses are stored only when all of these hold (else they are passed through untouched):
//! - the status is one of the configured statuses (default 200; never 5xx, 206 or 304), or, for a
//!   [`shared`] layer, any final status the RFC allows: any with explicit freshness, and the
//!   heuristically cacheable ones (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501) with a
//!   `Last-Modified` to compute a heuristic lifetime from;
//! - no `Set-Cookie` (deliberately stricter than the RFC: a session cookie must never be
//!   replayed);
//! - with `must-understand`, a status whose semantics RFC 9110 defines (`no-store` is then
//!   ignored, RFC 9111 §5.2.2.3);
//! - the caching field (`CDN-Cache-Control`, else `Surrogate-Control` aimed at this cache, else
//!   `Cache-Control`) has neither `private` nor `no-store`; `no-cache` responses with a
//!   validator are stored but revalidated before every use;
//! - a request with `Authorization` (with [`cache_authorized`]) only stores responses marked
//!   `public`, `s-maxage` or `must-revalidate` (RFC 9111 §3.5);
//! - `Vary` is not `*`.
//!
//! Freshness: `s-maxage`, else `max-age`, else `Expires` − `Date`, else the layer's
//! [`ttl`](super::CacheLayer::ttl), else (TTL zero) 10% of `Date` − `Last-Modified` (at most a
//! day), minus the response's age (RFC 9111 §4.2.3). An entry is kept past its freshness for the
//! stale windows (`stale-while-revalidate`, `stale-if-error`, the layer's
//! [`stale`](super::CacheLayer::stale) grace) and, when it has a validator, for revalidation;
//! `must-revalidate`, `proxy-revalidate`, `s-maxage` and `no-cache` responses are never served
//! stale.
//!
//! [`cache_authorized`]: super::CacheLayer::cache_authorized
//! [`respect_request_no_cache`]: super::CacheLayer::respect_request_no_cache
//! [`shared`]: super::CacheLayer::shared

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, request, HeaderMap, HeaderName, Method, StatusCode};

use super::{directives::CacheControl, key::has_header, layer::Config};

/// Request headers that ask the origin to act as another method: such requests are not cached.
const METHOD_OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Statuses a cache may give a heuristic lifetime (RFC 9110 §15.1).
const HEURISTIC_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Heuristic lifetime: this fraction of the time since `Last-Modified` ...
const HEURISTIC_FRACTION: u64 = 10;
/// ... and at most this long.
const HEURISTIC_MAX: Duration = Duration::from_secs(24 * 3600);

/// How long past its freshness an entry with a validator is kept for revalidation: its lifetime,
/// within these bounds.
const REVALIDATION_KEEP_MIN: Duration = Duration::from_secs(60);
const REVALIDATION_KEEP_MAX: Duration = Duration::from_secs(24 * 3600);

/// What a request may do with the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// Answered from (and filling) the cache.
    Cacheable,
    /// Passed through; on success it invalidates what it targets (RFC 9111 §4.4).
    Unsafe,
    /// Passed through untouched.
    Bypass,
}

/// Classifies a request. `body_empty` is whether the request body is known to be empty.
pub(crate) fn classify(config: &Config, parts: &request::Parts, body_empty: bool) -> RequestKind {
    let method = &parts.method;
    if !is_safe(method) {
        return RequestKind::Unsafe;
    }
    let allowed = if method == Method::HEAD {
        config.methods.contains(&Method::HEAD) && config.methods.contains(&Method::GET)
    } else {
        config.methods.contains(method)
    };
    if !allowed || !request_is_cacheable(config, parts) || !body_empty {
        return RequestKind::Bypass;
    }
    RequestKind::Cacheable
}

/// GET, HEAD, OPTIONS and TRACE (RFC 9110 §9.2.1).
fn is_safe(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(method)
}

/// Whether a request's headers allow answering it from (and filling) the cache.
pub(crate) fn request_is_cacheable(config: &Config, parts: &request::Parts) -> bool {
    let headers = &parts.headers;
    if !config.cache_authorized && has_credentials(headers) {
        return false;
    }
    if [
        header::RANGE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::UPGRADE,
    ]
    .iter()
    .any(|name| has_header(headers, name))
        || METHOD_OVERRIDES
            .iter()
            .any(|name| has_header(headers, name))
    {
        return false;
    }
    if has_body(headers) || authority_mismatch(parts) {
        return false;
    }
    !CacheControl::parse(headers).no_store
}

/// The target names an authority other than the `Host` header: the key and the application
/// could disagree on the host, so the request is not cached.
fn authority_mismatch(parts: &request::Parts) -> bool {
    let Some(authority) = parts.uri.authority() else {
        return false;
    };
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => false,
        (Some(host), None) => !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes()),
        // Several Host lines: invalid (RFC 9112 §3.2).
        (Some(_), Some(_)) => true,
    }
}

/// A request body announced by headers ("fat GET"): not part of the key, and some frameworks read
/// parameters from it, so a cached response could depend on it (a known cache-poisoning vector).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() != b"0")
}

/// `Authorization` or `Cookie` present.
pub(crate) fn has_credentials(headers: &HeaderMap) -> bool {
    has_header(headers, &header::AUTHORIZATION) || has_header(headers, &header::COOKIE)
}

/// What a request's `Cache-Control` (and `Pragma`) asks of a stored response.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestRules {
    /// `no-cache` (or `Pragma: no-cache` without `Cache-Control`): go to the origin.
    pub(crate) no_cache: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) min_fresh: Option<u64>,
    pub(crate) max_stale: Option<u64>,
    pub(crate) only_if_cached: bool,
}

impl RequestRules {
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let cc = CacheControl::parse(headers);
        let pragma = !headers.contains_key(header::CACHE_CONTROL)
            && headers
                .get_all(header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|d| d.trim().eq_ignore_ascii_case("no-cache"));
        RequestRules {
            no_cache: cc.no_cache || pragma,
            max_age: cc.max_age,
            min_fresh: cc.min_fresh,
            max_stale: cc.max_stale,
            only_if_cached: cc.only_if_cached,
        }
    }
}

/// Why a response is not stored (reported in `Cache-Status` as `detail=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotStored {
    Status,
    SetCookie,
    CacheControl,
    Expired,
    VaryStar,
    Authorization,
}

impl NotStored {
    pub(crate) fn detail(&self) -> &'static str {
        match self {
            NotStored::Status => "status",
            NotStored::SetCookie => "set-cookie",
            NotStored::CacheControl => "cache-control",
            NotStored::Expired => "expired",
            NotStored::VaryStar => "vary",
            NotStored::Authorization => "authorization",
        }
    }
}

/// How a stored response ages and may be reused (computed when it is received or freshened).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Freshness {
    /// Freshness lifetime (RFC 9111 §4.2.1), explicit or heuristic.
    pub(crate) lifetime_ms: u64,
    /// The response's age when it was received (RFC 9111 §4.2.3 `corrected_initial_age`).
    pub(crate) initial_age_ms: u64,
    /// Never served stale (`must-revalidate`, `proxy-revalidate`, `s-maxage`, `no-cache`).
    pub(crate) must_revalidate: bool,
    /// `stale-while-revalidate` / `stale-if-error` windows (the layer's grace included).
    pub(crate) swr_ms: u64,
    pub(crate) sie_ms: u64,
    /// How long the store keeps the entry from now.
    pub(crate) keep_ms: u64,
}

/// Timestamps of one origin exchange (ms since the epoch).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    pub(crate) request_ms: u64,
    pub(crate) response_ms: u64,
}

/// Whether an origin response may be stored, and how it ages. `authorized`: the request carried
/// `Authorization`.
pub(crate) fn storability(
    config: &Config,
    status: StatusCode,
    headers: &HeaderMap,
    authorized: bool,
    exchange: Exchange,
) -> Result<Freshness, NotStored> {
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err(NotStored::Status);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    let cc = CacheControl::for_response(headers);
    // RFC 9111 §5.2.2.3: `must-understand` stores only statuses whose semantics the cache knows,
    // and then overrides `no-store`.
    if cc.must_understand && !understood(status) {
        return Err(NotStored::Status);
    }
    if cc.private || (cc.no_store && !cc.must_understand) {
        return Err(NotStored::CacheControl);
    }
    if authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    if vary_star(headers) {
        return Err(NotStored::VaryStar);
    }
    let explicit = explicit_lifetime(&cc, headers, exchange.response_ms);
    let listed = config.statuses.contains(&status) && !status.is_server_error();
    let heuristic_status = HEURISTIC_STATUSES.contains(&status.as_u16());
    let allowed = listed
        || config.rfc_statuses
            && (explicit.is_some()
                || heuristic_status && (cc.public || headers.contains_key(header::LAST_MODIFIED)));
    if !allowed {
        return Err(NotStored::Status);
    }
    let lifetime = match explicit {
        Some(lifetime) => lifetime,
        None if !config.policy.ttl.is_zero() => config.policy.ttl,
        None if HEURISTIC_STATUSES.contains(&status.as_u16()) => {
            heuristic_lifetime(headers, exchange.response_ms)
        }
        None => Duration::ZERO,
    };
    let lifetime = if cc.no_cache {
        Duration::ZERO
    } else {
        lifetime
    };
    let initial_age_ms = initial_age_ms(headers, exchange);
    let has_validator =
        headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    if cc.no_cache && !has_validator {
        return Err(NotStored::CacheControl);
    }
    let must_revalidate =
        cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some() || cc.no_cache;
    let grace = duration_ms(config.grace);
    let (swr_ms, sie_ms) = if must_revalidate {
        (0, 0)
    } else {
        (
            cc.stale_while_revalidate.map_or(0, secs_ms).max(grace),
            cc.stale_if_error.map_or(0, secs_ms).max(grace),
        )
    };
    let lifetime_ms = duration_ms(lifetime);
    let remaining = lifetime_ms.saturating_sub(initial_age_ms);
    let mut extra = swr_ms.max(sie_ms);
    if has_validator {
        let keep = lifetime.clamp(REVALIDATION_KEEP_MIN, REVALIDATION_KEEP_MAX);
        extra = extra.max(duration_ms(keep));
    }
    let keep_ms = remaining.saturating_add(extra);
    if keep_ms == 0 || (remaining == 0 && !has_validator && extra == 0) {
        return Err(NotStored::Expired);
    }
    Ok(Freshness {
        lifetime_ms,
        initial_age_ms,
        must_revalidate,
        swr_ms,
        sie_ms,
        keep_ms,
    })
}

/// Statuses whose caching semantics RFC 9110 defines (for `must-understand`).
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=205 | 300..=305 | 307 | 308 | 400..=417 | 421..=426 | 428 | 429 | 431 | 451 | 500..=505 | 511
    )
}

fn secs_ms(seconds: u64) -> u64 {
    seconds.saturating_mul(1000)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `s-maxage`, else `max-age`, else `Expires` − `Date` (an invalid `Expires` is already expired).
fn explicit_lifetime(cc: &CacheControl, headers: &HeaderMap, response_ms: u64) -> Option<Duration> {
    if let Some(seconds) = cc.s_maxage.or(cc.max_age) {
        return Some(Duration::from_secs(seconds));
    }
    let expires = headers.get(header::EXPIRES)?;
    let Some(expires) = http_date(expires) else {
        return Some(Duration::ZERO);
    };
    let date = headers
        .get(header::DATE)
        .and_then(http_date)
        .unwrap_or_else(|| UNIX_EPOCH + Duration::from_millis(response_ms));
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// 10% of the time between `Last-Modified` and `Date`, at most [`HEURISTIC_MAX`].
fn heuristic_lifetime(headers: &HeaderMap, response_ms: u64) -> Duration {
    let Some(modified) = headers.get(header::LAST_MODIFIED).and_then(http_date) else {
        return Duration::ZERO;
    };
    let date = headers
        .get(header::DATE)
        .and_then(http_date)
        .unwrap_or_else(|| UNIX_EPOCH + Duration::from_millis(response_ms));
    let since = date.duration_since(modified).unwrap_or(Duration::ZERO);
    (since / HEURISTIC_FRACTION as u32).min(HEURISTIC_MAX)
}

pub(crate) fn http_date(value: &http::HeaderValue) -> Option<SystemTime> {
    value
        .to_str()
        .ok()
        .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
}

fn system_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The `Age` field's value (RFC 9111 §5.1): the first value of the first line; `None` when it is
/// not a non-negative integer (the response is then treated as stale).
fn age_value(headers: &HeaderMap) -> Option<Option<u64>> {
    let Some(line) = headers.get(header::AGE) else {
        return Some(None);
    };
    let first = line
        .as_bytes()
        .split(|&b| b == b',')
        .next()
        .unwrap_or_default();
    let first = std::str::from_utf8(first).ok()?.trim();
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Some(first.parse::<u64>().unwrap_or(u64::MAX / 1000)))
}

/// RFC 9111 §4.2.3: `corrected_initial_age = max(apparent_age, age_value + response_delay)`.
pub(crate) fn initial_age_ms(headers: &HeaderMap, exchange: Exchange) -> u64 {
    let apparent = headers
        .get(header::DATE)
        .and_then(http_date)
        .map_or(0, |date| {
            exchange.response_ms.saturating_sub(system_ms(date))
        });
    let delay = exchange.response_ms.saturating_sub(exchange.request_ms);
    let corrected = match age_value(headers) {
        Some(Some(age)) => age.saturating_mul(1000).saturating_add(delay),
        Some(None) => 0,
        None => u64::MAX / 2,
    };
    apparent.max(corrected)
}

/// `Vary: *` (or a malformed `Vary`): never reusable.
fn vary_star(headers: &HeaderMap) -> bool {
    headers.get_all(header::VARY).iter().any(|value| {
        value.to_str().map_or(true, |v| {
            v.split(',').map(str::trim).any(|name| {
                name == "*"
                    || (!name.is_empty() && HeaderName::from_bytes(name.as_bytes()).is_err())
            })
        })
    })
}

/// The request headers a response's `Vary` names (lowercase, sorted, deduplicated).
pub(crate) fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{http::CacheLayer, Cache};
    use http::{Request, Response};

    fn config() -> Config {
        (*CacheLayer::new(Cache::in_memory()).config).clone()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut builder = Response::builder().status(200);
        for (name, value) in pairs {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0.headers
    }

    fn request(method: &str, uri: &str, pairs: &[(&str, &str)]) -> request::Parts {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in pairs {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    const NOW: Exchange = Exchange {
        request_ms: 1_795_773_600_000,
        response_ms: 1_795_773_600_000,
    };

    fn store(config: &Config, status: u16, pairs: &[(&str, &str)]) -> Result<Freshness, NotStored> {
        let status = StatusCode::from_u16(status).unwrap();
        storability(config, status, &headers(pairs), false, NOW)
    }

    #[test]
    fn requests() {
        let config = config();
        let kind =
            |method, pairs: &[(&str, &str)]| classify(&config, &request(method, "/x", pairs), true);
        assert_eq!(kind("GET", &[]), RequestKind::Cacheable);
        assert_eq!(kind("HEAD", &[]), RequestKind::Cacheable);
        assert_eq!(kind("POST", &[]), RequestKind::Unsafe);
        assert_eq!(kind("OPTIONS", &[]), RequestKind::Bypass);
        assert_eq!(kind("GET", &[("cookie", "s=1")]), RequestKind::Bypass);
        assert_eq!(
            kind("GET", &[("authorization", "Bearer x")]),
            RequestKind::Bypass
        );
        assert_eq!(kind("GET", &[("range", "bytes=0-1")]), RequestKind::Bypass);
        assert_eq!(
            kind("GET", &[("x-http-method-override", "DELETE")]),
            RequestKind::Bypass
        );
        assert_eq!(
            kind("GET", &[("cache-control", "no-store")]),
            RequestKind::Bypass
        );
        // A body without length headers.
        assert_eq!(
            classify(&config, &request("GET", "/x", &[]), false),
            RequestKind::Bypass
        );
        // Absolute-form target for another host than Host.
        let poisoned = request("GET", "http://shop.test/x", &[("host", "evil.example")]);
        assert_eq!(classify(&config, &poisoned, true), RequestKind::Bypass);
        let same = request("GET", "http://shop.test/x", &[("host", "Shop.Test")]);
        assert_eq!(classify(&config, &same, true), RequestKind::Cacheable);
        // no-cache is ignored unless asked for.
        assert_eq!(
            kind("GET", &[("cache-control", "no-cache")]),
            RequestKind::Cacheable
        );
        let mut respecting = config.clone();
        respecting.respect_request_no_cache = true;
        let no_cache = request("GET", "/x", &[("pragma", "no-cache")]);
        assert!(RequestRules::of(&no_cache.headers).no_cache);
        assert_eq!(
            classify(&respecting, &no_cache, true),
            RequestKind::Cacheable
        );
        let mut authorized = config;
        authorized.cache_authorized = true;
        let cookie = request("GET", "/x", &[("cookie", "s=1")]);
        assert_eq!(classify(&authorized, &cookie, true), RequestKind::Cacheable);
    }

    #[test]
    fn responses() {
        let config = config();
        let ok = |pairs: &[(&str, &str)]| store(&config, 200, pairs);
        assert_eq!(ok(&[]).unwrap().lifetime_ms, 60_000, "the layer's TTL");
        assert_eq!(ok(&[("set-cookie", "a=b")]), Err(NotStored::SetCookie));
        assert_eq!(
            ok(&[("cache-control", "private")]),
            Err(NotStored::CacheControl)
        );
        assert_eq!(
            ok(&[("cache-control", "no-store")]),
            Err(NotStored::CacheControl)
        );
        assert_eq!(
            ok(&[("cache-control", "no-cache")]),
            Err(NotStored::CacheControl)
        );
        let no_cache = ok(&[("cache-control", "no-cache"), ("etag", "\"1\"")]).unwrap();
        assert_eq!(no_cache.lifetime_ms, 0);
        assert!(no_cache.must_revalidate);
        assert_eq!(
            ok(&[("cache-control", "max-age=0")]),
            Err(NotStored::Expired)
        );
        let aged = ok(&[("cache-control", "max-age=100, s-maxage=30"), ("age", "10")]).unwrap();
        assert_eq!(aged.lifetime_ms, 30_000);
        assert_eq!(aged.initial_age_ms, 10_000);
        assert!(aged.must_revalidate, "s-maxage implies proxy-revalidate");
        assert_eq!(
            ok(&[("cache-control", "max-age=100"), ("age", "abc")]),
            Err(NotStored::Expired)
        );
        assert_eq!(ok(&[("vary", "*")]), Err(NotStored::VaryStar));
        assert!(ok(&[("vary", "Accept-Language")]).is_ok());
        assert_eq!(
            ok(&[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]),
            Err(NotStored::Expired)
        );
        assert_eq!(ok(&[("expires", "garbage")]), Err(NotStored::Expired));
        let dated = ok(&[
            ("date", "Fri, 27 Nov 2026 10:00:00 GMT"),
            ("expires", "Fri, 27 Nov 2026 10:01:00 GMT"),
        ])
        .unwrap();
        assert_eq!(dated.lifetime_ms, 60_000);
        let swr = ok(&[(
            "cache-control",
            "max-age=1, stale-while-revalidate=9, stale-if-error=20",
        )])
        .unwrap();
        assert_eq!(
            (swr.swr_ms, swr.sie_ms, swr.keep_ms),
            (9_000, 20_000, 21_000)
        );
        assert_eq!(store(&config, 500, &[]), Err(NotStored::Status));
        assert_eq!(store(&config, 404, &[]), Err(NotStored::Status));
        let auth = storability(
            &config,
            StatusCode::OK,
            &headers(&[("cache-control", "max-age=60")]),
            true,
            NOW,
        );
        assert_eq!(auth, Err(NotStored::Authorization));
        let public = storability(
            &config,
            StatusCode::OK,
            &headers(&[("cache-control", "public, max-age=60")]),
            true,
            NOW,
        );
        assert!(public.is_ok());
    }

    #[test]
    fn shared_layers_store_what_the_rfc_allows() {
        let config = (*CacheLayer::shared(Cache::in_memory()).config).clone();
        assert_eq!(
            store(&config, 200, &[]),
            Err(NotStored::Expired),
            "no freshness, no validator"
        );
        assert!(store(&config, 404, &[("cache-control", "max-age=60")]).is_ok());
        assert!(store(&config, 500, &[("cache-control", "max-age=60")]).is_ok());
        assert_eq!(store(&config, 302, &[]), Err(NotStored::Status));
        let unknown = [("cache-control", "max-age=60, must-understand")];
        assert_eq!(store(&config, 599, &unknown), Err(NotStored::Status));
        assert!(store(
            &config,
            200,
            &[("cache-control", "max-age=60, must-understand, no-store")]
        )
        .is_ok());
        let heuristic = store(
            &config,
            200,
            &[
                ("date", "Fri, 27 Nov 2026 10:00:00 GMT"),
                ("last-modified", "Fri, 27 Nov 2026 09:00:00 GMT"),
            ],
        )
        .unwrap();
        assert_eq!(heuristic.lifetime_ms, 360_000, "10% of an hour");
        // A validator keeps a zero-lifetime response for revalidation.
        let validated = store(
            &config,
            200,
            &[("cache-control", "max-age=0"), ("etag", "\"a\"")],
        )
        .unwrap();
        assert_eq!((validated.lifetime_ms, validated.keep_ms), (0, 60_000));
    }
}

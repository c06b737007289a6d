//! Cacheability rules: which requests may be answered from the cache, which responses may be
//! stored, and for how long.
//!
//! Requests (any of these → bypass, straight to the inner service):
//! - the method is not one of the configured methods (default GET and HEAD; HEAD is answered from
//!   the GET entry);
//! - `Authorization` or `Cookie` is present, unless [`cache_authorized`] is on;
//! - a request body (`Content-Length` other than 0, or `Transfer-Encoding`): "fat GET" bodies are
//!   not keyed;
//! - `Range`, `If-Match`, `If-Unmodified-Since`, `If-Range` (partial or precondition semantics the
//!   cache does not implement), `Upgrade`, or an `X-HTTP-Method-Override`-style header;
//! - with [`respect_request_no_cache`]: `Cache-Control: no-cache | no-store | max-age=0` or
//!   `Pragma: no-cache`.
//!
//! Responses are stored only when all of these hold (else they are passed through untouched):
//! - the status is one of the configured statuses (default 200) and not 5xx, 206 or 304;
//! - no `Set-Cookie`, no `Content-Range`;
//! - `Cache-Control` has none of `private`, `no-store`, `no-cache` (qualified forms included);
//!   `s-maxage`, else `max-age`, else `Expires`, gives the TTL (minus the origin's `Age`); a zero
//!   lifetime is not stored. Without any of them the layer's TTL applies;
//! - `Vary` is not `*` and names only request headers that are part of the key (a response that
//!   varies on more teaches the layer to key that URL on those headers too; the next response is
//!   stored).
//!
//! [`cache_authorized`]: super::CacheLayer::cache_authorized
//! [`respect_request_no_cache`]: super::CacheLayer::respect_request_no_cache

use std::time::{Duration, SystemTime};

use http::{header, request, response, HeaderMap, HeaderName, Method, StatusCode};

use super::layer::Config;

/// Request headers that ask the origin to act as another method: such requests are not cached.
const METHOD_OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Whether a request may be answered from (and fill) the cache.
pub(crate) fn request_is_cacheable(config: &Config, parts: &request::Parts) -> bool {
    let method = &parts.method;
    let allowed = if method == Method::HEAD {
        config.methods.contains(&Method::HEAD) && config.methods.contains(&Method::GET)
    } else {
        config.methods.contains(method)
    };
    if !allowed {
        return false;
    }
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
    .any(|name| headers.contains_key(name))
        || METHOD_OVERRIDES
            .iter()
            .any(|name| headers.contains_key(name))
    {
        return false;
    }
    if has_body(headers) {
        return false;
    }
    if config.respect_request_no_cache && asks_for_fresh(headers) {
        return false;
    }
    true
}

/// A request body ("fat GET"): not part of the key, and some frameworks read parameters from it,
/// so a cached response could depend on it (a known cache-poisoning vector).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() != b"0")
}

/// `Authorization` or `Cookie` present.
pub(crate) fn has_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || headers.contains_key(header::COOKIE)
}

/// `Cache-Control: no-cache | no-store | max-age=0` or `Pragma: no-cache` on a request.
fn asks_for_fresh(headers: &HeaderMap) -> bool {
    let cc = CacheControl::parse(headers);
    if cc.no_cache || cc.no_store || cc.max_age == Some(0) {
        return true;
    }
    headers
        .get_all(header::PRAGMA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
}

/// Why a response is not stored (reported in `Cache-Status` as `detail=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotStored {
    Status,
    SetCookie,
    CacheControl,
    Expired,
    VaryStar,
    /// `Vary` names request headers the key did not include (lowercase names).
    VaryUnkeyed(Vec<HeaderName>),
    ContentRange,
}

impl NotStored {
    pub(crate) fn detail(&self) -> &'static str {
        match self {
            NotStored::Status => "status",
            NotStored::SetCookie => "set-cookie",
            NotStored::CacheControl => "cache-control",
            NotStored::Expired => "expired",
            NotStored::VaryStar => "vary",
            NotStored::VaryUnkeyed(_) => "vary",
            NotStored::ContentRange => "content-range",
        }
    }
}

/// What storing a response needs: its own TTL (when the origin gave one) and the `Age` it came
/// with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Storable {
    pub(crate) ttl: Option<Duration>,
    pub(crate) upstream_age: u64,
}

/// Whether an origin response may be stored, given the request headers that are part of its key.
pub(crate) fn response_storability(
    config: &Config,
    parts: &response::Parts,
    keyed: &[HeaderName],
) -> Result<Storable, NotStored> {
    let status = parts.status;
    if status.is_server_error()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || !config.statuses.contains(&status)
    {
        return Err(NotStored::Status);
    }
    let headers = &parts.headers;
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if headers.contains_key(header::CONTENT_RANGE) {
        return Err(NotStored::ContentRange);
    }
    let cc = CacheControl::parse(headers);
    if cc.private || cc.no_store || cc.no_cache {
        return Err(NotStored::CacheControl);
    }
    vary_covered(headers, keyed)?;
    let upstream_age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let lifetime = match cc.s_maxage.or(cc.max_age) {
        Some(seconds) => Some(Duration::from_secs(seconds)),
        None => expires_lifetime(headers)?,
    };
    let ttl = match lifetime {
        Some(lifetime) => {
            let ttl = lifetime.saturating_sub(Duration::from_secs(upstream_age));
            if ttl.is_zero() {
                return Err(NotStored::Expired);
            }
            Some(ttl)
        }
        None => None,
    };
    Ok(Storable { ttl, upstream_age })
}

/// `Expires` relative to `Date` (or now): `Ok(None)` without `Expires`, an error when it is in
/// the past or invalid (RFC 9111 §5.3: an invalid date means already expired).
fn expires_lifetime(headers: &HeaderMap) -> Result<Option<Duration>, NotStored> {
    let Some(expires) = headers.get(header::EXPIRES) else {
        return Ok(None);
    };
    let parse = |v: &http::HeaderValue| {
        v.to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok())
    };
    let expires = parse(expires).ok_or(NotStored::Expired)?;
    let date = headers
        .get(header::DATE)
        .and_then(parse)
        .unwrap_or_else(SystemTime::now);
    match expires.duration_since(date) {
        Ok(lifetime) if !lifetime.is_zero() => Ok(Some(lifetime)),
        _ => Err(NotStored::Expired),
    }
}

/// Checks that every header the response `Vary`s on is part of the key.
fn vary_covered(headers: &HeaderMap, keyed: &[HeaderName]) -> Result<(), NotStored> {
    let mut missing = Vec::new();
    for value in headers.get_all(header::VARY) {
        let Ok(value) = value.to_str() else {
            return Err(NotStored::VaryStar);
        };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Err(NotStored::VaryStar);
            }
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                return Err(NotStored::VaryStar);
            };
            if !keyed.contains(&name) && !missing.contains(&name) {
                missing.push(name);
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(NotStored::VaryUnkeyed(missing))
    }
}

/// The `Cache-Control` directives the layer acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
}

impl CacheControl {
    /// Parses every `Cache-Control` field line. Quoted arguments may contain commas; unknown
    /// directives are ignored; a malformed `max-age` counts as 0 (stale), and a repeated one keeps
    /// the smallest value.
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            for (name, arg) in directives(value.as_bytes()) {
                let seconds = || {
                    std::str::from_utf8(arg.unwrap_or_default())
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                let min = |old: Option<u64>, new: u64| Some(old.map_or(new, |o| o.min(new)));
                match name.to_ascii_lowercase().as_slice() {
                    b"no-store" => cc.no_store = true,
                    b"no-cache" => cc.no_cache = true,
                    b"private" => cc.private = true,
                    b"max-age" => cc.max_age = min(cc.max_age, seconds()),
                    b"s-maxage" => cc.s_maxage = min(cc.s_maxage, seconds()),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// Splits a `Cache-Control` value into `(name, argument)` pairs, honouring quoted strings.
fn directives(value: &[u8]) -> Vec<(&[u8], Option<&[u8]>)> {
    let mut out = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        // Name: up to '=' or ','.
        let end = rest
            .iter()
            .position(|&b| b == b'=' || b == b',')
            .unwrap_or(rest.len());
        let name = trim(&rest[..end]);
        rest = &rest[end..];
        let mut arg = None;
        if let [b'=', tail @ ..] = rest {
            let tail = trim_start(tail);
            if let [b'"', quoted @ ..] = tail {
                let mut i = 0;
                while i < quoted.len() && quoted[i] != b'"' {
                    if quoted[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                let close = i.min(quoted.len());
                arg = Some(&quoted[..close]);
                rest = quoted.get(close + 1..).unwrap_or_default();
                // Skip anything up to the next comma.
                let next = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
                rest = &rest[next..];
            } else {
                let next = tail.iter().position(|&b| b == b',').unwrap_or(tail.len());
                arg = Some(trim(&tail[..next]));
                rest = &tail[next..];
            }
        }
        if let [b',', tail @ ..] = rest {
            rest = tail;
        }
        if !name.is_empty() {
            out.push((name, arg));
        }
    }
    out
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn trim(bytes: &[u8]) -> &[u8] {
    let bytes = trim_start(bytes);
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{http::CacheLayer, Cache};
    use http::{Request, Response};

    fn config() -> Config {
        (*CacheLayer::new(Cache::in_memory()).config).clone()
    }

    fn response(headers: &[(&str, &str)]) -> response::Parts {
        let mut builder = Response::builder().status(200);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut builder = Request::builder().method(method).uri("/x");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn cc(value: &str) -> CacheControl {
        let mut headers = HeaderMap::new();
        headers.insert(header::CACHE_CONTROL, value.parse().unwrap());
        CacheControl::parse(&headers)
    }

    #[test]
    fn cache_control_parsing() {
        assert_eq!(cc("max-age=60").max_age, Some(60));
        assert_eq!(cc("public, s-maxage=10, max-age=60").s_maxage, Some(10));
        assert!(cc("PRIVATE").private);
        assert!(cc("private=\"set-cookie, x\"").private);
        let quoted = cc("no-cache=\"a, max-age=5\", max-age=7");
        assert!(quoted.no_cache);
        assert_eq!(quoted.max_age, Some(7));
        assert_eq!(cc("max-age=abc").max_age, Some(0));
        assert_eq!(cc("max-age=60, max-age=5").max_age, Some(5));
        assert_eq!(cc("max-age=\"30\"").max_age, Some(30));
        assert_eq!(cc(",,  ,").max_age, None);
        assert!(cc("no-store").no_store);
    }

    #[test]
    fn requests() {
        let config = config();
        assert!(request_is_cacheable(&config, &request("GET", &[])));
        assert!(request_is_cacheable(&config, &request("HEAD", &[])));
        assert!(!request_is_cacheable(&config, &request("POST", &[])));
        assert!(!request_is_cacheable(
            &config,
            &request("GET", &[("cookie", "s=1")])
        ));
        assert!(!request_is_cacheable(
            &config,
            &request("GET", &[("authorization", "Bearer x")])
        ));
        assert!(!request_is_cacheable(
            &config,
            &request("GET", &[("range", "bytes=0-1")])
        ));
        assert!(!request_is_cacheable(
            &config,
            &request("GET", &[("x-http-method-override", "DELETE")])
        ));
        // no-cache is ignored unless asked for.
        let no_cache = request("GET", &[("cache-control", "no-cache")]);
        assert!(request_is_cacheable(&config, &no_cache));
        let mut respecting = config.clone();
        respecting.respect_request_no_cache = true;
        assert!(!request_is_cacheable(&respecting, &no_cache));
        assert!(!request_is_cacheable(
            &respecting,
            &request("GET", &[("pragma", "no-cache")])
        ));
        let mut authorized = config;
        authorized.cache_authorized = true;
        assert!(request_is_cacheable(
            &authorized,
            &request("GET", &[("cookie", "s=1")])
        ));
    }

    #[test]
    fn responses() {
        let config = config();
        let ok = |headers: &[(&str, &str)]| response_storability(&config, &response(headers), &[]);
        assert_eq!(
            ok(&[]),
            Ok(Storable {
                ttl: None,
                upstream_age: 0
            })
        );
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
        assert_eq!(
            ok(&[("cache-control", "max-age=0")]),
            Err(NotStored::Expired)
        );
        assert_eq!(
            ok(&[("cache-control", "max-age=100, s-maxage=30"), ("age", "10")]),
            Ok(Storable {
                ttl: Some(Duration::from_secs(20)),
                upstream_age: 10
            })
        );
        assert_eq!(ok(&[("vary", "*")]), Err(NotStored::VaryStar));
        assert_eq!(
            ok(&[("vary", "Accept-Language")]),
            Err(NotStored::VaryUnkeyed(vec![HeaderName::from_static(
                "accept-language"
            )]))
        );
        let keyed = [HeaderName::from_static("accept-language")];
        assert!(
            response_storability(&config, &response(&[("vary", "accept-language")]), &keyed)
                .is_ok()
        );
        assert_eq!(
            ok(&[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]),
            Err(NotStored::Expired)
        );
        assert_eq!(ok(&[("expires", "garbage")]), Err(NotStored::Expired));
        assert_eq!(
            ok(&[
                ("date", "Fri, 27 Nov 2026 10:00:00 GMT"),
                ("expires", "Fri, 27 Nov 2026 10:01:00 GMT")
            ]),
            Ok(Storable {
                ttl: Some(Duration::from_secs(60)),
                upstream_age: 0
            })
        );
        let mut parts = response(&[]);
        parts.status = StatusCode::INTERNAL_SERVER_ERROR;
        assert_eq!(
            response_storability(&config, &parts, &[]),
            Err(NotStored::Status)
        );
        parts.status = StatusCode::NOT_FOUND;
        assert_eq!(
            response_storability(&config, &parts, &[]),
            Err(NotStored::Status)
        );
    }
}

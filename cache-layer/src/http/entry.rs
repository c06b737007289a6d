//! What a cached response is made of, how it is stored, and how responses are built from it.

use std::sync::Arc;

use bytes::Bytes;
use http::{
    header::{self, HeaderName},
    HeaderMap, HeaderValue, Response, StatusCode,
};
use http_body::Body;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::{
    body::CacheBody,
    directives::SURROGATE_CONTROL,
    key,
    policy::{http_date, Freshness},
};

/// The RFC 9211 `Cache-Status` response header.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// Tag headers read from origin responses (and stripped from what the client sees).
pub(crate) const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");
pub(crate) const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

/// Hop-by-hop headers (RFC 9110 §7.6.1): never stored.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Response headers never stored: this cache's own bookkeeping and the origin's view of age.
const NOT_STORED: [HeaderName; 2] = [header::AGE, CACHE_STATUS];

/// Response headers a `304` never replaces in the stored response (RFC 9111 §3.2: the stored
/// content's own metadata), plus `Set-Cookie`, which a shared entry must never pick up.
const NOT_FRESHENED: [HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    HeaderName::from_static("content-md5"),
    header::CONTENT_RANGE,
    header::ETAG,
    header::SET_COOKIE,
];

/// A cached response: status, end-to-end headers (with `Content-Length`), body, and what the
/// cache needs to age, match and revalidate it.
///
/// Cheap to clone (shared), which is what an L1 hit or a coalesced waiter does.
#[derive(Clone, Debug)]
pub(crate) struct StoredResponse(Arc<Stored>);

#[derive(Debug)]
struct Stored {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    meta: Meta,
}

/// What the cache records about a stored response besides the response itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// When the response (or the `304` that last freshened it) was received, ms since the epoch.
    pub(crate) received_ms: u64,
    pub(crate) freshness: Freshness,
    /// The request's values of the headers the response's `Vary` names (`None`: absent),
    /// normalised; a later request is served this response only if its values are the same.
    pub(crate) vary: Vec<(String, Option<Bytes>)>,
    /// The entry's tags (kept so that a freshened entry is stored with them again).
    pub(crate) tags: Vec<String>,
    /// The `ETag` was computed by this layer, not sent by the origin: never sent upstream.
    pub(crate) synthetic_etag: bool,
}

impl StoredResponse {
    /// Builds the entry from an origin response whose body was read whole. With
    /// `synthesize_etag`, a response without `ETag` gets one computed from the body.
    pub(crate) fn new(
        status: StatusCode,
        origin_headers: &HeaderMap,
        body: Bytes,
        mut meta: Meta,
        synthesize_etag: bool,
    ) -> Self {
        let mut headers = end_to_end(origin_headers);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if synthesize_etag && !headers.contains_key(header::ETAG) {
            headers.insert(header::ETAG, strong_etag(&body));
            meta.synthetic_etag = true;
        }
        StoredResponse(Arc::new(Stored {
            status,
            headers,
            body,
            meta,
        }))
    }

    /// An empty entry standing in for a response that is passed through (never stored).
    pub(crate) fn placeholder() -> Self {
        StoredResponse(Arc::new(Stored {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            meta: Meta::default(),
        }))
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.0.status
    }

    #[cfg(test)]
    fn headers(&self) -> &HeaderMap {
        &self.0.headers
    }

    pub(crate) fn meta(&self) -> &Meta {
        &self.0.meta
    }

    pub(crate) fn etag(&self) -> Option<&HeaderValue> {
        self.0.headers.get(header::ETAG)
    }

    /// The entry's current age (RFC 9111 §4.2.3), in ms.
    pub(crate) fn age_ms(&self, now_ms: u64) -> u64 {
        let meta = &self.0.meta;
        meta.freshness
            .initial_age_ms
            .saturating_add(now_ms.saturating_sub(meta.received_ms))
    }

    /// Remaining freshness in ms: negative once stale.
    pub(crate) fn fresh_ms(&self, now_ms: u64) -> i64 {
        let lifetime = i128::from(self.0.meta.freshness.lifetime_ms);
        let age = i128::from(self.age_ms(now_ms));
        i64::try_from(lifetime - age).unwrap_or(i64::MIN)
    }

    /// Whether `request` selects this response under the `Vary` it was stored with.
    pub(crate) fn vary_matches(&self, request: &HeaderMap) -> bool {
        self.0.meta.vary.iter().all(|(name, stored)| {
            let current = HeaderName::from_bytes(name.as_bytes())
                .ok()
                .and_then(|name| vary_value(request, &name));
            current == *stored
        })
    }

    /// The validators to send upstream: the origin's `ETag` and `Last-Modified`.
    pub(crate) fn validators(&self) -> (Option<&HeaderValue>, Option<&HeaderValue>) {
        let etag = if self.0.meta.synthetic_etag {
            None
        } else {
            self.etag()
        };
        (etag, self.0.headers.get(header::LAST_MODIFIED))
    }

    /// This entry with the headers of a `304` merged in (RFC 9111 §3.2) and `meta` (the new
    /// freshness) recorded.
    pub(crate) fn freshened(&self, not_modified: &HeaderMap, meta: Meta) -> Self {
        let mut headers = self.0.headers.clone();
        let update = end_to_end(not_modified);
        for name in update.keys() {
            if NOT_FRESHENED.contains(name) {
                continue;
            }
            headers.remove(name);
            for value in update.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        StoredResponse(Arc::new(Stored {
            status: self.0.status,
            headers,
            body: self.0.body.clone(),
            meta,
        }))
    }

    /// The headers a freshened entry would have (to compute its freshness before building it).
    pub(crate) fn merged_headers(&self, not_modified: &HeaderMap) -> HeaderMap {
        self.freshened(not_modified, Meta::default())
            .0
            .headers
            .clone()
    }

    /// The client response: `304 Not Modified` when the request's `If-None-Match` (or, without
    /// it, `If-Modified-Since`) matches, else the stored one (without a body for HEAD). `age_ms`
    /// becomes the `Age` header: always on a response served from the cache (`from_cache`),
    /// else (a response just received) when it is at least a second.
    pub(crate) fn to_response<B: Body>(
        &self,
        head: bool,
        conditions: &Conditions,
        status: &CacheStatus,
        age_ms: u64,
        from_cache: bool,
    ) -> Response<CacheBody<B>> {
        let stored = &*self.0;
        let mut response = if conditions.not_modified(self) {
            let mut response = Response::new(CacheBody::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            // RFC 9110 §15.4.5: the fields a 200 would have carried that describe validators and
            // caching; none of the content's.
            for name in [
                header::CACHE_CONTROL,
                header::CONTENT_LOCATION,
                header::DATE,
                header::ETAG,
                header::EXPIRES,
                header::VARY,
            ] {
                for value in stored.headers.get_all(&name) {
                    response.headers_mut().append(name.clone(), value.clone());
                }
            }
            response
        } else {
            stored_response(
                stored.status,
                stored.headers.clone(),
                stored.body.clone(),
                head,
            )
        };
        finish_response(&mut response, status, age_ms, from_cache);
        response
    }

    /// [`to_response`](Self::to_response) for an entry nobody else holds (decoded from the store
    /// for this request, not shared with L1 or another request): its headers and body are moved
    /// into the response instead of copied.
    pub(crate) fn into_response<B: Body>(
        self,
        head: bool,
        conditions: &Conditions,
        status: &CacheStatus,
        age_ms: u64,
        from_cache: bool,
    ) -> Response<CacheBody<B>> {
        if conditions.not_modified(&self) {
            return self.to_response(head, conditions, status, age_ms, from_cache);
        }
        let stored = match Arc::try_unwrap(self.0) {
            Ok(stored) => stored,
            Err(shared) => {
                return StoredResponse(shared)
                    .to_response(head, conditions, status, age_ms, from_cache)
            }
        };
        let mut response = stored_response(stored.status, stored.headers, stored.body, head);
        finish_response(&mut response, status, age_ms, from_cache);
        response
    }
}

/// The full response a stored one answers with (no body for HEAD; `Surrogate-Control` is for
/// this cache only).
fn stored_response<B: Body>(
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    head: bool,
) -> Response<CacheBody<B>> {
    let body = if head {
        CacheBody::empty()
    } else {
        CacheBody::full(body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.headers_mut().remove(SURROGATE_CONTROL);
    response
}

/// Adds `Age` (always on a response served from the cache, else from a second on) and
/// `Cache-Status`.
fn finish_response<B>(
    response: &mut Response<B>,
    status: &CacheStatus,
    age_ms: u64,
    from_cache: bool,
) {
    let headers = response.headers_mut();
    if from_cache || age_ms >= 1000 {
        headers.insert(header::AGE, HeaderValue::from(age_ms / 1000));
    }
    status.append_to(headers);
}

/// The request's conditional headers, answered from the entry.
#[derive(Debug, Default)]
pub(crate) struct Conditions {
    pub(crate) if_none_match: Option<HeaderValue>,
    pub(crate) if_modified_since: Option<HeaderValue>,
}

impl Conditions {
    /// Takes the conditionals out of a request (the origin is asked for the full response).
    pub(crate) fn take(headers: &mut HeaderMap) -> Self {
        // Most requests carry neither: a scan of their few names costs less than hashing.
        let mut take = |name: HeaderName| {
            if key::has_header(headers, &name) {
                headers.remove(name)
            } else {
                None
            }
        };
        Conditions {
            if_none_match: take(header::IF_NONE_MATCH),
            if_modified_since: take(header::IF_MODIFIED_SINCE),
        }
    }

    /// RFC 9110 §13.2.2: `If-None-Match` when present, else `If-Modified-Since`; only for 200.
    fn not_modified(&self, entry: &StoredResponse) -> bool {
        if entry.0.status != StatusCode::OK {
            return false;
        }
        if let Some(condition) = &self.if_none_match {
            return entry
                .etag()
                .is_some_and(|etag| etag_matches(condition, etag));
        }
        // Without a valid `If-Modified-Since`, nothing of the entry needs reading.
        let Some(since) = self.if_modified_since.as_ref().and_then(http_date) else {
            return false;
        };
        // RFC 9111 §4.3.2: without `Last-Modified`, the stored response's `Date`.
        entry
            .0
            .headers
            .get(header::LAST_MODIFIED)
            .or_else(|| entry.0.headers.get(header::DATE))
            .and_then(http_date)
            .is_some_and(|modified| modified <= since)
    }
}

/// The end-to-end headers of an origin response: without hop-by-hop fields (and those named by
/// `Connection`), `Age` and `Cache-Status`.
fn end_to_end(origin: &HeaderMap) -> HeaderMap {
    let mut headers = origin.clone();
    for name in HOP_BY_HOP.iter().chain(&NOT_STORED) {
        headers.remove(name);
    }
    let named: Vec<HeaderName> = origin
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers
}

/// A request header's value for `Vary` matching (RFC 9111 §4.1): all field lines combined, with
/// the whitespace around commas normalised; `None` when absent.
pub(crate) fn vary_value(headers: &HeaderMap, name: &HeaderName) -> Option<Bytes> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let mut out: Vec<u8> = Vec::new();
    for value in values {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if !out.is_empty() {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(part);
        }
    }
    Some(Bytes::from(out))
}

/// A strong ETag computed from the body (xxh3-128; `"cl-<32 hex digits>"`).
pub(crate) fn strong_etag(body: &[u8]) -> HeaderValue {
    let hash = xxhash_rust::xxh3::xxh3_128(body);
    HeaderValue::from_str(&format!("\"cl-{hash:032x}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"cl-0\""))
}

/// `If-None-Match` evaluation (RFC 9110 §13.1.2): `*`, or any listed entity-tag that matches `etag`
/// under weak comparison.
pub(crate) fn etag_matches(condition: &HeaderValue, etag: &HeaderValue) -> bool {
    let Some(etag) = opaque_tag(etag.as_bytes()) else {
        return false;
    };
    let mut rest = condition.as_bytes();
    loop {
        while let [b' ' | b'\t' | b',', tail @ ..] = rest {
            rest = tail;
        }
        match rest {
            [] => return false,
            [b'*', ..] => return true,
            _ => {}
        }
        let tail = rest.strip_prefix(b"W/").unwrap_or(rest);
        let Some(after_quote) = tail.strip_prefix(b"\"") else {
            return false; // malformed list: no match
        };
        let Some(end) = after_quote.iter().position(|&b| b == b'"') else {
            return false;
        };
        if &after_quote[..end] == etag {
            return true;
        }
        rest = &after_quote[end + 1..];
    }
}

/// The opaque-tag (between the quotes) of an entity-tag, weak or strong.
fn opaque_tag(etag: &[u8]) -> Option<&[u8]> {
    let etag = etag.strip_prefix(b"W/").unwrap_or(etag);
    etag.strip_prefix(b"\"")?.strip_suffix(b"\"")
}

/// One `Cache-Status` member for this cache (RFC 9211).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CacheStatus {
    /// `hit; ttl=N`
    Hit { ttl: i64 },
    /// `hit; ttl=-N`: served stale (stale-while-revalidate, stale-if-error, `max-stale`).
    Stale { ttl: i64 },
    /// `fwd=stale; fwd-status=N[; stored]`: a stale entry was revalidated with the origin.
    Revalidated { status: u16, stored: bool },
    /// `fwd=vary-miss[; stored]`: an entry exists but for other values of its `Vary` headers.
    VaryMiss { stored: bool },
    /// `fwd=request[; stored]`: the request's `Cache-Control` sent it to the origin.
    Requested { stored: bool },
    /// `fwd=miss; collapsed`: answered by another request's load.
    Collapsed,
    /// `fwd=miss; stored` or `fwd=miss`
    Miss { stored: bool },
    /// `fwd=miss; detail=<why>`: the response was not cacheable.
    Uncacheable(&'static str),
    /// `fwd=bypass`: the request was not cacheable.
    Bypass,
}

impl CacheStatus {
    /// Remaining freshness in whole seconds (rounded down, so a stale entry is negative).
    pub(crate) fn ttl_seconds(fresh_ms: i64) -> i64 {
        fresh_ms.div_euclid(1000)
    }

    pub(crate) fn header_value(&self) -> HeaderValue {
        match self {
            // Every hit: written without the formatting machinery.
            CacheStatus::Hit { ttl } | CacheStatus::Stale { ttl } => {
                let mut text = String::with_capacity(40);
                text.push_str("cache-layer; hit; ttl=");
                crate::util::push_signed_decimal(&mut text, *ttl);
                value(text)
            }
            CacheStatus::Revalidated { status, stored } => value(format!(
                "cache-layer; fwd=stale; fwd-status={status}{}",
                if *stored { "; stored" } else { "" }
            )),
            CacheStatus::VaryMiss { stored } => value(format!(
                "cache-layer; fwd=vary-miss{}",
                if *stored { "; stored" } else { "" }
            )),
            CacheStatus::Requested { stored } => value(format!(
                "cache-layer; fwd=request{}",
                if *stored { "; stored" } else { "" }
            )),
            CacheStatus::Collapsed => HeaderValue::from_static("cache-layer; fwd=miss; collapsed"),
            CacheStatus::Miss { stored: true } => {
                HeaderValue::from_static("cache-layer; fwd=miss; stored")
            }
            CacheStatus::Miss { stored: false } => {
                HeaderValue::from_static("cache-layer; fwd=miss")
            }
            CacheStatus::Uncacheable(why) => value(format!("cache-layer; fwd=miss; detail={why}")),
            CacheStatus::Bypass => HeaderValue::from_static("cache-layer; fwd=bypass"),
        }
    }

    /// Adds this cache's member after any an inner cache set (RFC 9211 §2: closest to the origin
    /// first).
    pub(crate) fn append_to(&self, headers: &mut HeaderMap) {
        headers.append(CACHE_STATUS, self.header_value());
    }
}

fn value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("cache-layer"))
}

// ---- storage format -------------------------------------------------------------------------

/// Version of the stored response layout (inside the engine's envelope). Entries of another
/// layout read as misses.
const LAYOUT: u8 = 2;

/// Serializes a byte slice as bytes (not as a sequence of numbers).
struct AsBytes<'a>(&'a [u8]);

impl Serialize for AsBytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// [`Meta`] on the wire: `(received_ms, lifetime_ms, initial_age_ms, must_revalidate, swr_ms,
/// sie_ms, keep_ms, synthetic_etag)`.
type WireMeta = (u64, u64, u64, bool, u64, u64, u64, bool);

impl Meta {
    /// The fixed fields on the wire, in [`WireMeta`] order.
    fn wire(&self) -> WireMeta {
        let f = &self.freshness;
        (
            self.received_ms,
            f.lifetime_ms,
            f.initial_age_ms,
            f.must_revalidate,
            f.swr_ms,
            f.sie_ms,
            f.keep_ms,
            self.synthetic_etag,
        )
    }

    /// The inverse of [`Meta::wire`], with the stored `Vary` values and tags.
    fn from_wire(wire: WireMeta, vary: Vec<(String, Option<Bytes>)>, tags: Vec<String>) -> Meta {
        Meta {
            received_ms: wire.0,
            freshness: Freshness {
                lifetime_ms: wire.1,
                initial_age_ms: wire.2,
                must_revalidate: wire.3,
                swr_ms: wire.4,
                sie_ms: wire.5,
                keep_ms: wire.6,
            },
            vary,
            tags,
            synthetic_etag: wire.7,
        }
    }
}

#[derive(Serialize)]
struct WireRef<'a> {
    layout: u8,
    status: u16,
    headers: Vec<(&'a str, AsBytes<'a>)>,
    body: AsBytes<'a>,
    meta: WireMeta,
    vary: Vec<(&'a str, Option<AsBytes<'a>>)>,
    tags: &'a [String],
}

#[derive(Deserialize)]
struct Wire {
    layout: u8,
    status: u16,
    headers: Vec<(WireName, Bytes)>,
    body: Bytes,
    meta: WireMeta,
    vary: Vec<(String, Option<Bytes>)>,
    tags: Vec<String>,
}

/// A stored header name, decoded straight from the entry's bytes (no `String` per header).
struct WireName(HeaderName);

impl<'de> Deserialize<'de> for WireName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl de::Visitor<'_> for Name {
            type Value = WireName;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a header name")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<WireName, E> {
                self.visit_bytes(name.as_bytes())
            }

            fn visit_bytes<E: de::Error>(self, name: &[u8]) -> Result<WireName, E> {
                HeaderName::from_bytes(name)
                    .map(WireName)
                    .map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Name)
    }
}

impl Serialize for StoredResponse {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let stored = &*self.0;
        let m = &stored.meta;
        WireRef {
            layout: LAYOUT,
            status: stored.status.as_u16(),
            headers: stored
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), AsBytes(value.as_bytes())))
                .collect(),
            body: AsBytes(&stored.body),
            meta: m.wire(),
            vary: m
                .vary
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_deref().map(AsBytes)))
                .collect(),
            tags: &m.tags,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for StoredResponse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        if wire.layout != LAYOUT {
            return Err(de::Error::custom("unknown stored response layout"));
        }
        let status = StatusCode::from_u16(wire.status).map_err(de::Error::custom)?;
        // Room for the `Age` and `Cache-Status` a response from it gets (no regrowing then).
        let mut headers = HeaderMap::with_capacity(wire.headers.len() + 2);
        for (WireName(name), value) in wire.headers {
            let value = HeaderValue::from_maybe_shared(value).map_err(de::Error::custom)?;
            headers.append(name, value);
        }
        Ok(StoredResponse(Arc::new(Stored {
            status,
            headers,
            body: wire.body,
            meta: Meta::from_wire(wire.meta, wire.vary, wire.tags),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_lists() {
        assert!(etag_matches(&hv("\"a\""), &hv("\"a\"")));
        assert!(etag_matches(&hv("W/\"a\""), &hv("\"a\"")));
        assert!(etag_matches(&hv("\"a\""), &hv("W/\"a\"")));
        assert!(etag_matches(&hv("\"x\", \"a\""), &hv("\"a\"")));
        assert!(etag_matches(&hv("\"x,y\",\"a\""), &hv("\"a\"")));
        assert!(etag_matches(&hv("*"), &hv("\"a\"")));
        assert!(!etag_matches(&hv("\"b\""), &hv("\"a\"")));
        assert!(!etag_matches(&hv("a"), &hv("\"a\"")));
        assert!(!etag_matches(&hv(""), &hv("\"a\"")));
        assert!(!etag_matches(&hv("\"a"), &hv("\"a\"")));
    }

    #[test]
    fn if_modified_since_compares_with_last_modified_else_date() {
        let entry = |headers: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.insert(*name, hv(value));
            }
            StoredResponse::new(StatusCode::OK, &map, Bytes::new(), Meta::default(), false)
        };
        let since = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_MODIFIED_SINCE, hv(value));
            let conditions = Conditions::take(&mut headers);
            assert!(headers.is_empty(), "taken out of the request");
            conditions
        };
        let modified = entry(&[
            ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
            ("date", "Wed, 02 Dec 2026 10:00:00 GMT"),
        ]);
        assert!(since("Tue, 01 Dec 2026 10:00:00 GMT").not_modified(&modified));
        assert!(since("Tue, 01 Dec 2026 11:00:00 GMT").not_modified(&modified));
        assert!(!since("Tue, 01 Dec 2026 09:59:59 GMT").not_modified(&modified));
        assert!(
            !since("yesterday").not_modified(&modified),
            "an invalid date is ignored"
        );
        assert!(!Conditions::default().not_modified(&modified));
        let dated = entry(&[("date", "Wed, 02 Dec 2026 10:00:00 GMT")]);
        assert!(since("Wed, 02 Dec 2026 10:00:00 GMT").not_modified(&dated));
        assert!(!since("Tue, 01 Dec 2026 10:00:00 GMT").not_modified(&dated));
        assert!(!since("Tue, 01 Dec 2026 10:00:00 GMT").not_modified(&entry(&[])));
    }

    #[test]
    fn cache_status_renders_as_in_the_design() {
        assert_eq!(
            CacheStatus::Hit { ttl: 42 }.header_value(),
            "cache-layer; hit; ttl=42"
        );
        assert_eq!(
            CacheStatus::Stale { ttl: -17 }.header_value(),
            "cache-layer; hit; ttl=-17"
        );
        assert_eq!(
            CacheStatus::Miss { stored: true }.header_value(),
            "cache-layer; fwd=miss; stored"
        );
        assert_eq!(
            CacheStatus::Stale { ttl: -3 }.header_value(),
            "cache-layer; hit; ttl=-3"
        );
        assert_eq!(
            CacheStatus::Bypass.header_value(),
            "cache-layer; fwd=bypass"
        );
        assert_eq!(CacheStatus::ttl_seconds(1), 0);
        assert_eq!(CacheStatus::ttl_seconds(9_000), 9);
        assert_eq!(CacheStatus::ttl_seconds(-2_500), -3);
        assert_eq!(
            CacheStatus::Revalidated {
                status: 304,
                stored: true
            }
            .header_value(),
            "cache-layer; fwd=stale; fwd-status=304; stored"
        );
    }

    #[test]
    fn entries_round_trip_through_both_codecs() {
        let response = Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .header("x-multi", "1")
            .header("x-multi", "2")
            .header("connection", "x-hop")
            .header("x-hop", "gone")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        let (parts, ()) = response.into_parts();
        let meta = Meta {
            received_ms: 7,
            freshness: Freshness {
                initial_age_ms: 3_000,
                ..Freshness::default()
            },
            vary: vec![
                ("accept".into(), None),
                ("x-v".into(), Some(Bytes::from_static(b"a, b"))),
            ],
            tags: vec!["t".into()],
            synthetic_etag: false,
        };
        let entry = StoredResponse::new(
            parts.status,
            &parts.headers,
            Bytes::from_static(b"\x00\xffbody"),
            meta.clone(),
            true,
        );
        assert!(entry.0.headers.get("x-hop").is_none());
        assert!(entry.0.headers.get("transfer-encoding").is_none());
        assert_eq!(entry.0.headers["content-length"], "6");
        assert!(entry.etag().is_some());
        assert!(entry.meta().synthetic_etag);
        assert_eq!(
            entry.validators().0,
            None,
            "a computed ETag is never sent upstream"
        );
        for codec in [crate::Codec::MessagePack, crate::Codec::Json] {
            let bytes = codec.encode(&entry).unwrap();
            let back: StoredResponse = codec.decode(&bytes).unwrap();
            assert_eq!(back.0.status, entry.0.status);
            assert_eq!(back.0.headers, entry.0.headers);
            assert_eq!(back.0.body, entry.0.body);
            assert_eq!(back.0.meta, StoredResponse::meta(&entry).clone());
        }
    }

    fn entry(headers: &[(&str, &str)], vary: Vec<(String, Option<Bytes>)>) -> StoredResponse {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let meta = Meta {
            vary,
            ..Meta::default()
        };
        StoredResponse::new(
            StatusCode::OK,
            &map,
            Bytes::from_static(b"body"),
            meta,
            false,
        )
    }

    #[test]
    fn vary_is_matched_on_normalised_values() {
        let stored = entry(
            &[],
            vec![(
                "accept-language".into(),
                Some(Bytes::from_static(b"en, de")),
            )],
        );
        let request = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append("accept-language", HeaderValue::from_str(value).unwrap());
            }
            headers
        };
        assert!(stored.vary_matches(&request(&["en, de"])));
        assert!(stored.vary_matches(&request(&["en,de"])));
        assert!(
            stored.vary_matches(&request(&["en", " de"])),
            "field lines combine"
        );
        assert!(!stored.vary_matches(&request(&["de, en"])));
        assert!(!stored.vary_matches(&request(&[])));
        let absent = entry(&[], vec![("accept-language".into(), None)]);
        assert!(absent.vary_matches(&request(&[])));
        assert!(!absent.vary_matches(&request(&[""])), "empty is not absent");
    }

    #[test]
    fn a_304_freshens_all_but_the_contents_metadata() {
        let stored = entry(
            &[
                ("etag", "\"a\""),
                ("x-v", "1"),
                ("content-type", "text/plain"),
                ("cache-status", "inner; hit"),
            ],
            Vec::new(),
        );
        assert!(
            stored.headers().get("cache-status").is_none(),
            "never replayed"
        );
        let mut update = HeaderMap::new();
        for (name, value) in [
            ("etag", "\"b\""),
            ("x-v", "2"),
            ("content-length", "99"),
            ("set-cookie", "s=1"),
            ("connection", "close"),
        ] {
            update.insert(name, HeaderValue::from_static(value));
        }
        let fresh = stored.freshened(&update, Meta::default());
        assert_eq!(fresh.headers()["x-v"], "2");
        assert_eq!(fresh.headers()["etag"], "\"a\"");
        assert_eq!(fresh.headers()["content-length"], "4");
        assert_eq!(fresh.headers()["content-type"], "text/plain");
        assert!(fresh.headers().get("set-cookie").is_none());
        assert!(fresh.headers().get("connection").is_none());
    }

    #[test]
    fn malformed_entries_do_not_decode() {
        let codec = crate::Codec::Json;
        let meta = r#""meta":[0,0,0,false,0,0,0,false],"vary":[],"tags":[]"#;
        let doc = |layout: u8, status: u16, headers: &str| {
            format!(
                r#"{{"layout":{layout},"status":{status},"headers":{headers},"body":[],{meta}}}"#
            )
        };
        assert!(codec
            .decode::<StoredResponse>(doc(2, 200, "[]").as_bytes())
            .is_ok());
        let bad_header = doc(2, 200, r#"[["bad name",[]]]"#);
        assert!(codec
            .decode::<StoredResponse>(bad_header.as_bytes())
            .is_err());
        assert!(codec
            .decode::<StoredResponse>(doc(2, 1000, "[]").as_bytes())
            .is_err());
        assert!(codec
            .decode::<StoredResponse>(doc(1, 200, "[]").as_bytes())
            .is_err());
        assert!(codec
            .decode::<StoredResponse>(doc(9, 200, "[]").as_bytes())
            .is_err());
    }
}

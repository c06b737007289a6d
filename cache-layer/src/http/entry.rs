//! What a cached response is made of, how it is stored, and how responses are built from it.

use std::sync::Arc;

use bytes::Bytes;
use http::{
    header::{self, HeaderName},
    response, HeaderMap, HeaderValue, Response, StatusCode,
};
use http_body::Body;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::body::CacheBody;
use crate::envelope::Timing;

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

/// A cached response: status, end-to-end headers (with `Content-Length` and `ETag`), body.
///
/// Cheap to clone (shared), which is what an L1 hit or a coalesced waiter does.
#[derive(Clone, Debug)]
pub(crate) struct StoredResponse(Arc<Stored>);

#[derive(Debug)]
struct Stored {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The origin's `Age` (seconds) when it was stored; added to ours on hits.
    upstream_age: u64,
}

impl StoredResponse {
    /// Builds the entry from an origin response whose body was read whole.
    pub(crate) fn new(parts: &response::Parts, body: Bytes, upstream_age: u64) -> Self {
        let mut headers = parts.headers.clone();
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
        // Headers named by `Connection` are hop-by-hop too.
        let named: Vec<HeaderName> = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::AGE);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if !headers.contains_key(header::ETAG) {
            headers.insert(header::ETAG, strong_etag(&body));
        }
        StoredResponse(Arc::new(Stored {
            status: parts.status,
            headers,
            body,
            upstream_age,
        }))
    }

    /// An empty entry standing in for a response that is passed through (never stored).
    pub(crate) fn placeholder() -> Self {
        StoredResponse(Arc::new(Stored {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            upstream_age: 0,
        }))
    }

    pub(crate) fn etag(&self) -> Option<&HeaderValue> {
        self.0.headers.get(header::ETAG)
    }

    /// The client response: `304 Not Modified` when `if_none_match` matches the entry's ETag,
    /// else the stored one (without a body for HEAD). `age_ms` (hits) becomes an `Age` header.
    pub(crate) fn to_response<B: Body>(
        &self,
        head: bool,
        if_none_match: Option<&HeaderValue>,
        status: &CacheStatus,
        age_ms: Option<u64>,
    ) -> Response<CacheBody<B>> {
        let stored = &*self.0;
        let not_modified = match (if_none_match, self.etag()) {
            (Some(condition), Some(etag)) => etag_matches(condition, etag),
            _ => false,
        };
        let mut response = if not_modified {
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
            let body = if head {
                CacheBody::empty()
            } else {
                CacheBody::full(stored.body.clone())
            };
            let mut response = Response::new(body);
            *response.status_mut() = stored.status;
            *response.headers_mut() = stored.headers.clone();
            response
        };
        let headers = response.headers_mut();
        if let Some(age_ms) = age_ms {
            headers.insert(
                header::AGE,
                HeaderValue::from(stored.upstream_age.saturating_add(age_ms / 1000)),
            );
        }
        status.append_to(headers);
        response
    }
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
    /// `fwd=stale; ttl=-N`
    Stale { ttl: i64 },
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
    /// The status of a value from the engine with `timing`, at `now_ms`.
    pub(crate) fn ttl_seconds(timing: &Timing, now_ms: u64) -> i64 {
        let remaining = i128::from(timing.fresh_until_ms) - i128::from(now_ms);
        i64::try_from(remaining.div_euclid(1000)).unwrap_or(0)
    }

    pub(crate) fn header_value(&self) -> HeaderValue {
        match self {
            CacheStatus::Hit { ttl } => value(format!("cache-layer; hit; ttl={ttl}")),
            CacheStatus::Stale { ttl } => value(format!("cache-layer; fwd=stale; ttl={ttl}")),
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

/// Version of the stored response layout (inside the engine's envelope).
const LAYOUT: u8 = 1;

/// Serializes a byte slice as bytes (not as a sequence of numbers).
struct AsBytes<'a>(&'a [u8]);

impl Serialize for AsBytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

#[derive(Serialize)]
struct WireRef<'a> {
    layout: u8,
    status: u16,
    headers: Vec<(&'a str, AsBytes<'a>)>,
    body: AsBytes<'a>,
    upstream_age: u64,
}

#[derive(Deserialize)]
struct Wire {
    layout: u8,
    status: u16,
    headers: Vec<(String, Bytes)>,
    body: Bytes,
    upstream_age: u64,
}

impl Serialize for StoredResponse {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let stored = &*self.0;
        WireRef {
            layout: LAYOUT,
            status: stored.status.as_u16(),
            headers: stored
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), AsBytes(value.as_bytes())))
                .collect(),
            body: AsBytes(&stored.body),
            upstream_age: stored.upstream_age,
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
        let mut headers = HeaderMap::with_capacity(wire.headers.len());
        for (name, value) in wire.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(de::Error::custom)?;
            let value = HeaderValue::from_maybe_shared(value).map_err(de::Error::custom)?;
            headers.append(name, value);
        }
        Ok(StoredResponse(Arc::new(Stored {
            status,
            headers,
            body: wire.body,
            upstream_age: wire.upstream_age,
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
    fn cache_status_renders_as_in_the_design() {
        assert_eq!(
            CacheStatus::Hit { ttl: 42 }.header_value(),
            "cache-layer; hit; ttl=42"
        );
        assert_eq!(
            CacheStatus::Miss { stored: true }.header_value(),
            "cache-layer; fwd=miss; stored"
        );
        assert_eq!(
            CacheStatus::Stale { ttl: -3 }.header_value(),
            "cache-layer; fwd=stale; ttl=-3"
        );
        assert_eq!(
            CacheStatus::Bypass.header_value(),
            "cache-layer; fwd=bypass"
        );
        let timing = Timing {
            created_ms: 0,
            fresh_until_ms: 10_000,
            stale_until_ms: 20_000,
            delta_ms: 0,
        };
        assert_eq!(CacheStatus::ttl_seconds(&timing, 9_999), 0);
        assert_eq!(CacheStatus::ttl_seconds(&timing, 1_000), 9);
        assert_eq!(CacheStatus::ttl_seconds(&timing, 12_500), -3);
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
        let entry = StoredResponse::new(&parts, Bytes::from_static(b"\x00\xffbody"), 3);
        assert!(entry.0.headers.get("x-hop").is_none());
        assert!(entry.0.headers.get("transfer-encoding").is_none());
        assert_eq!(entry.0.headers["content-length"], "6");
        assert!(entry.etag().is_some());
        for codec in [crate::Codec::MessagePack, crate::Codec::Json] {
            let bytes = codec.encode(&entry).unwrap();
            let back: StoredResponse = codec.decode(&bytes).unwrap();
            assert_eq!(back.0.status, entry.0.status);
            assert_eq!(back.0.headers, entry.0.headers);
            assert_eq!(back.0.body, entry.0.body);
            assert_eq!(back.0.upstream_age, 3);
        }
    }

    #[test]
    fn malformed_entries_do_not_decode() {
        let codec = crate::Codec::Json;
        let bad_header =
            br#"{"layout":1,"status":200,"headers":[["bad name",[]]],"body":[],"upstream_age":0}"#;
        assert!(codec.decode::<StoredResponse>(bad_header).is_err());
        let bad_status = br#"{"layout":1,"status":1000,"headers":[],"body":[],"upstream_age":0}"#;
        assert!(codec.decode::<StoredResponse>(bad_status).is_err());
        let future = br#"{"layout":9,"status":200,"headers":[],"body":[],"upstream_age":0}"#;
        assert!(codec.decode::<StoredResponse>(future).is_err());
    }
}

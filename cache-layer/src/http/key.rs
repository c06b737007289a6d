//! Request keys.
//!
//! A key is an injective encoding of everything a response may depend on:
//!
//! ```text
//! http:<len>:<method class>|<len>:<a|c>|<len>:<host>|<len>:<path>|<len>:<query>[|<len>:<name>=<n>:<values>]...
//! ```
//!
//! - method class: `GET` for GET and HEAD (HEAD is answered from the GET entry), else the method;
//! - `a`/`c`: anonymous or credentialed request (only differs with `cache_authorized`), so a
//!   response to a logged-in request is never served to an anonymous one;
//! - host: the `Host` header the application reads, else the target's authority (HTTP/2
//!   `:authority`), lowercased, after the scheme when the target has one (`https://shop.example`);
//! - path: exactly as received, never decoded or normalised: `/a%2Fb`, `/a/b`, `/x/../a` and
//!   `/a.css` are four different keys, whatever the router makes of them;
//! - query: as received; parameters are stably sorted by name only when every name is plain
//!   (`[A-Za-z0-9._~-]`) and there is no `;`, so two queries share a key only when every common
//!   parser sees the same values for every name in the same order;
//! - then each keyed request header that is present: the configured `vary` headers, the headers
//!   the origin's `Vary` taught the layer for this URL, and the forwarding headers
//!   (`X-Forwarded-Host` and friends) that frameworks use to build URLs, so a request carrying
//!   them can never poison the entry of a request without them.
//!
//! Every field is length-prefixed and escaped (`%XX` for `%`, `{`, `}`, spaces, controls and
//! non-ASCII bytes), so distinct requests never share a key. Keys longer than
//! [`MAX_KEY_LEN`] are replaced by `http:#` and the SHA-256 of the encoding.
//! A custom [`key_fn`](super::CacheLayer::key_fn) replaces host, path and query.

use std::fmt::Write;

use http::{header, request, HeaderMap, HeaderName, Method};
use sha2::{Digest, Sha256};

/// Keys longer than this are hashed.
pub(crate) const MAX_KEY_LEN: usize = 200;

/// Request headers always part of the key when present: frameworks use them to build absolute
/// URLs, redirects and links, so leaving them out of the key would let one request poison the
/// entry of every other (unkeyed header poisoning).
pub(crate) const FORWARDING_HEADERS: [HeaderName; 17] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-http-host-override"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-forwarded-path"),
];

/// The primary part of a key (before request headers): method class, credential class, target.
pub(crate) fn primary(parts: &request::Parts, credentialed: bool, custom: Option<&str>) -> String {
    primary_for(
        &parts.method,
        &parts.uri,
        &parts.headers,
        credentialed,
        custom,
    )
}

/// [`primary`] for a method and target given separately (invalidation of `Location` targets).
pub(crate) fn primary_for(
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    credentialed: bool,
    custom: Option<&str>,
) -> String {
    let mut out = String::with_capacity(64);
    out.push_str("http:");
    let class = if method == Method::HEAD {
        Method::GET.as_str()
    } else {
        method.as_str()
    };
    field(&mut out, class.as_bytes());
    field(&mut out, if credentialed { b"c" } else { b"a" });
    match custom {
        Some(custom) => {
            field(&mut out, b"custom");
            field(&mut out, custom.as_bytes());
        }
        None => {
            // The host the application reads: `Host`, else the target's authority (HTTP/2
            // `:authority`). Requests where both are present and differ are never cached.
            let host = headers
                .get(header::HOST)
                .map(|h| h.as_bytes())
                .or_else(|| uri.authority().map(|a| a.as_str().as_bytes()))
                .unwrap_or_default();
            let mut scheme_host = Vec::with_capacity(host.len() + 16);
            if let Some(scheme) = uri.scheme_str() {
                scheme_host.extend(scheme.bytes().map(|b| b.to_ascii_lowercase()));
                scheme_host.extend_from_slice(b"://");
            }
            scheme_host.extend(host.iter().map(u8::to_ascii_lowercase));
            field(&mut out, &scheme_host);
            field(&mut out, uri.path().as_bytes());
            match uri.query() {
                None => field(&mut out, b"-"),
                Some(query) => {
                    // Prefixed so "no query" and "empty query" differ.
                    let mut q = String::with_capacity(query.len() + 1);
                    q.push('?');
                    q.push_str(&normalized_query(query));
                    field(&mut out, q.as_bytes());
                }
            }
        }
    }
    out
}

/// Up to this many distinct header names, [`has_header`] compares names instead of hashing.
const SCAN_LIMIT: usize = 12;

/// Whether `headers` has a field `name`. A request usually carries a handful of fields while
/// the layer asks about dozens of names it must key on or refuse (forwarding headers,
/// conditionals, credentials): comparing names costs less than hashing each one.
pub(crate) fn has_header(headers: &HeaderMap, name: &HeaderName) -> bool {
    if headers.keys_len() <= SCAN_LIMIT {
        headers.keys().any(|present| present == name)
    } else {
        headers.contains_key(name)
    }
}

/// The full key: the primary part plus the values of `keyed` request headers that are present.
/// `keyed` must be sorted and free of duplicates.
pub(crate) fn full(mut primary: String, headers: &HeaderMap, keyed: &[HeaderName]) -> String {
    for name in keyed {
        if !has_header(headers, name) {
            continue;
        }
        let mut values = headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            continue;
        }
        let mut encoded = Vec::with_capacity(32);
        encoded.extend_from_slice(name.as_str().as_bytes());
        encoded.push(b'=');
        for value in values {
            let _ = write!(Len(&mut encoded), "{}:", value.as_bytes().len());
            encoded.extend_from_slice(value.as_bytes());
        }
        field(&mut primary, &encoded);
    }
    if primary.len() > MAX_KEY_LEN {
        let digest = Sha256::digest(primary.as_bytes());
        let mut hashed = String::with_capacity(6 + 64);
        hashed.push_str("http:#");
        for byte in digest {
            let _ = write!(hashed, "{byte:02x}");
        }
        return hashed;
    }
    primary
}

/// A 64-bit hash of a key, for the layer's in-process maps (which never hold keys themselves).
pub(crate) fn hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

/// `Write` into a byte vector (for length prefixes).
struct Len<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Len<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends `<len>:<escaped bytes>|`, where `len` is the escaped length and bytes outside visible
/// ASCII, `%`, `{`, `}` and `|` are escaped as `%XX` (injective). Written straight into `out`,
/// without the formatting machinery: a key is built for every request.
fn field(out: &mut String, bytes: &[u8]) {
    let plain = |b: u8| b.is_ascii_graphic() && !matches!(b, b'%' | b'{' | b'}' | b'|');
    let escaped = bytes.iter().filter(|&&b| !plain(b)).count();
    out.reserve(bytes.len() + 2 * escaped + 8);
    crate::util::push_decimal(out, (bytes.len() + 2 * escaped) as u64);
    out.push(':');
    // All visible ASCII (the common case): one copy (the check cannot fail then).
    match std::str::from_utf8(bytes) {
        Ok(text) if escaped == 0 => out.push_str(text),
        _ => {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            for &b in bytes {
                if plain(b) {
                    out.push(char::from(b));
                } else {
                    out.push('%');
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 0xf)]));
                }
            }
        }
    }
    out.push('|');
}

/// The query with its parameters stably sorted by name, when that cannot change its meaning.
fn normalized_query(query: &str) -> std::borrow::Cow<'_, str> {
    if query.contains(';') || !query.contains('&') {
        return std::borrow::Cow::Borrowed(query);
    }
    let params: Vec<&str> = query.split('&').collect();
    fn name(param: &str) -> &str {
        param.split('=').next().unwrap_or_default()
    }
    let plain = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
    };
    if !params.iter().all(|p| plain(name(p))) {
        return std::borrow::Cow::Borrowed(query);
    }
    let mut sorted = params;
    sorted.sort_by(|a, b| name(a).cmp(name(b)));
    std::borrow::Cow::Owned(sorted.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Request};

    fn key(uri: &str, headers: &[(&str, &str)]) -> String {
        key_with(uri, "GET", headers, &[])
    }

    fn key_with(uri: &str, method: &str, headers: &[(&str, &str)], keyed: &[&str]) -> String {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        let mut keyed: Vec<HeaderName> = keyed
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
            .chain(FORWARDING_HEADERS)
            .collect();
        keyed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        full(primary(&parts, false, None), &parts.headers, &keyed)
    }

    #[test]
    fn header_presence_by_scan_and_by_hash_agree() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a"));
        headers.insert("x-forwarded-host", HeaderValue::from_static("b"));
        let names = [header::HOST, header::COOKIE, FORWARDING_HEADERS[1].clone()];
        for extra in 0..20 {
            for name in &names {
                assert_eq!(
                    has_header(&headers, name),
                    headers.contains_key(name),
                    "{name}"
                );
            }
            headers.insert(
                HeaderName::from_bytes(format!("x-extra-{extra}").as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
    }

    #[test]
    fn fields_are_length_prefixed_in_decimal() {
        for len in [0usize, 1, 9, 10, 99, 100, 12_345] {
            let bytes = "a".repeat(len);
            let mut out = String::from("x");
            field(&mut out, bytes.as_bytes());
            assert_eq!(out, format!("x{len}:{bytes}|"));
        }
        let mut out = String::new();
        field(&mut out, b"a|b");
        assert_eq!(out, "5:a%7Cb|");
    }

    #[test]
    fn readable_and_injective() {
        let k = key("/products/1?b=2&a=1", &[("host", "Shop.Example")]);
        assert_eq!(
            k,
            "http:3:GET|1:a|12:shop.example|11:/products/1|8:?a=1&b=2|"
        );
        assert_ne!(key("/a?", &[]), key("/a", &[]));
        assert_ne!(key("/a%7C", &[]), key("/a|", &[]));
        assert_ne!(
            key("/a", &[("host", "x|1:/b")]),
            key("/b", &[("host", "x")]),
            "separators inside fields are escaped"
        );
    }

    #[test]
    fn head_shares_the_get_key_other_methods_do_not() {
        assert_eq!(key_with("/a", "HEAD", &[], &[]), key("/a", &[]));
        assert_ne!(key_with("/a", "OPTIONS", &[], &[]), key("/a", &[]));
    }

    #[test]
    fn paths_are_never_normalised() {
        let keys = [
            key("/account", &[]),
            key("/account.css", &[]),
            key("/account/x.css", &[]),
            key("/static/../account", &[]),
            key("/static/%2e%2e/account", &[]),
            key("/files/a%2Fb", &[]),
            key("/files/a/b", &[]),
            key("/files/a%2fb", &[]),
            key("//account", &[]),
        ];
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:#?}");
    }

    #[test]
    fn query_order_is_normalised_only_when_safe() {
        assert_eq!(key("/s?a=1&b=2", &[]), key("/s?b=2&a=1", &[]));
        // Repeated names keep their order.
        assert_ne!(key("/s?a=1&a=2", &[]), key("/s?a=2&a=1", &[]));
        assert_eq!(key("/s?a=1&b=0&a=2", &[]), key("/s?b=0&a=1&a=2", &[]));
        // Encoded names or ';' separators: left as they are.
        assert_ne!(key("/s?%61=1&a=2", &[]), key("/s?a=2&%61=1", &[]));
        assert_ne!(key("/s?x=1;a=2&a=3", &[]), key("/s?a=3&x=1;a=2", &[]));
    }

    #[test]
    fn keyed_headers_split_entries() {
        let plain = key("/", &[]);
        let forwarded = key("/", &[("x-forwarded-host", "evil.example")]);
        assert_ne!(plain, forwarded);
        // An unkeyed header does not.
        assert_eq!(plain, key("/", &[("x-unrelated", "1")]));
        let en = key_with(
            "/",
            "GET",
            &[("accept-language", "en")],
            &["accept-language"],
        );
        let de = key_with(
            "/",
            "GET",
            &[("accept-language", "de")],
            &["accept-language"],
        );
        assert_ne!(en, de);
        // Multiple field lines are distinct from one combined line with a different split.
        let two = key_with("/", "GET", &[("x-v", "a"), ("x-v", "b")], &["x-v"]);
        let one = key_with("/", "GET", &[("x-v", "a1:b")], &["x-v"]);
        assert_ne!(two, one);
    }

    #[test]
    fn long_keys_are_hashed() {
        let long = format!("/{}", "x".repeat(500));
        let k = key(&long, &[]);
        assert!(k.starts_with("http:#") && k.len() == 6 + 64, "{k}");
        assert_ne!(k, key(&format!("{long}y"), &[]));
    }

    #[test]
    fn escaping_is_injective() {
        let encoded = |bytes: &[u8]| {
            let mut out = String::new();
            field(&mut out, bytes);
            out
        };
        assert_eq!(encoded(b"abc"), "3:abc|");
        assert_eq!(encoded(b"a b"), "5:a%20b|");
        assert_eq!(encoded(b"%20"), "5:%2520|");
        assert_eq!(encoded(b"a|b"), "5:a%7Cb|");
        assert_eq!(encoded(&[0xff, b'{']), "6:%FF%7B|");
        assert_eq!(encoded("é".as_bytes()), "6:%C3%A9|");
    }
}

//! Parsing of `Cache-Control` and its targeted variants (`CDN-Cache-Control`, RFC 9213;
//! `Surrogate-Control`, W3C Edge Architecture) into the directives the layer acts on.

use http::{header, HeaderMap, HeaderName};

/// `CDN-Cache-Control` (RFC 9213): directives for CDN caches, overriding `Cache-Control`.
pub(crate) const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
/// `Surrogate-Control` (W3C Edge Architecture): directives for surrogates, removed before the
/// response leaves them.
pub(crate) const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");
/// The device token this cache answers to in `Surrogate-Control` (`max-age=60;cache-layer`),
/// announced to the origin in `Surrogate-Capability`.
pub(crate) const SURROGATE_TOKEN: &str = "cache-layer";

/// RFC 9111 §1.2.2: delta-seconds larger than this are treated as this.
const MAX_DELTA_SECONDS: u64 = 2_147_483_648;

/// The directives of one caching field that the layer acts on (request and response
/// directives share the parser).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) must_understand: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
    /// Request: `max-stale` (`u64::MAX` without an argument).
    pub(crate) max_stale: Option<u64>,
    /// Request: `min-fresh`.
    pub(crate) min_fresh: Option<u64>,
    /// Request: `only-if-cached`.
    pub(crate) only_if_cached: bool,
    /// Whether the field had any directive at all.
    pub(crate) present: bool,
}

impl CacheControl {
    /// Parses every `Cache-Control` field line. Quoted arguments may contain commas; unknown
    /// directives are ignored; a malformed `max-age` counts as 0 (stale), and a repeated one keeps
    /// the smallest value.
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        Self::parse_field(headers, &header::CACHE_CONTROL, None)
    }

    /// The directives a shared cache obeys for a response: `CDN-Cache-Control` when present,
    /// else the `Surrogate-Control` directives meant for this cache when there are any, else
    /// `Cache-Control` (RFC 9213 §2.1: a targeted field replaces `Cache-Control` entirely).
    pub(crate) fn for_response(headers: &HeaderMap) -> Self {
        let cdn = Self::parse_field(headers, &CDN_CACHE_CONTROL, None);
        if cdn.present {
            return cdn;
        }
        let surrogate = Self::parse_field(headers, &SURROGATE_CONTROL, Some(SURROGATE_TOKEN));
        if surrogate.present {
            return surrogate;
        }
        Self::parse(headers)
    }

    /// Parses `name`. With `target`, directives carrying a `;device-token` apply only when the
    /// token is `target`.
    pub(crate) fn parse_field(
        headers: &HeaderMap,
        name: &HeaderName,
        target: Option<&str>,
    ) -> Self {
        let mut cc = CacheControl::default();
        for value in headers.get_all(name) {
            for (name, arg) in directives(value.as_bytes()) {
                let (name, arg) = match target {
                    Some(target) => match split_target(name, arg) {
                        (name, arg, Some(token))
                            if !token.eq_ignore_ascii_case(target.as_bytes()) =>
                        {
                            let _ = (name, arg);
                            continue;
                        }
                        (name, arg, _) => (name, arg),
                    },
                    None => (name, arg),
                };
                cc.present = true;
                let seconds = || delta_seconds(arg).unwrap_or(0);
                let min = |old: Option<u64>, new: u64| Some(old.map_or(new, |o| o.min(new)));
                match name.to_ascii_lowercase().as_slice() {
                    b"no-store" => cc.no_store = true,
                    b"no-cache" => cc.no_cache = true,
                    b"private" => cc.private = true,
                    b"public" => cc.public = true,
                    b"must-revalidate" => cc.must_revalidate = true,
                    b"proxy-revalidate" => cc.proxy_revalidate = true,
                    b"must-understand" => cc.must_understand = true,
                    b"only-if-cached" => cc.only_if_cached = true,
                    b"max-age" => cc.max_age = min(cc.max_age, seconds()),
                    b"s-maxage" => cc.s_maxage = min(cc.s_maxage, seconds()),
                    b"stale-while-revalidate" => {
                        cc.stale_while_revalidate = delta_seconds(arg).or(cc.stale_while_revalidate)
                    }
                    b"stale-if-error" => {
                        cc.stale_if_error = delta_seconds(arg).or(cc.stale_if_error)
                    }
                    b"max-stale" => {
                        cc.max_stale = Some(match arg {
                            None => u64::MAX,
                            Some(_) => seconds(),
                        })
                    }
                    b"min-fresh" => cc.min_fresh = min(cc.min_fresh, seconds()),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// `delta-seconds` (RFC 9111 §1.2.2): digits only, capped at 2^31.
fn delta_seconds(arg: Option<&[u8]>) -> Option<u64> {
    let arg = arg?;
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        std::str::from_utf8(arg)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(MAX_DELTA_SECONDS)
            .min(MAX_DELTA_SECONDS),
    )
}

/// Splits `directive[=arg][;token]` (the `Surrogate-Control` targeting syntax).
fn split_target<'a>(
    name: &'a [u8],
    arg: Option<&'a [u8]>,
) -> (&'a [u8], Option<&'a [u8]>, Option<&'a [u8]>) {
    match arg {
        Some(arg) => match arg.iter().position(|&b| b == b';') {
            Some(i) => (name, Some(trim(&arg[..i])), Some(trim(&arg[i + 1..]))),
            None => (name, Some(arg), None),
        },
        None => match name.iter().position(|&b| b == b';') {
            Some(i) => (trim(&name[..i]), None, Some(trim(&name[i + 1..]))),
            None => (name, None, None),
        },
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
        assert_eq!(cc("max-age=99999999999").max_age, Some(MAX_DELTA_SECONDS));
        assert_eq!(cc("max-age=1.5").max_age, Some(0));
        let swr = cc("max-age=1, stale-while-revalidate=30, stale-if-error=60, must-revalidate");
        assert_eq!(swr.stale_while_revalidate, Some(30));
        assert_eq!(swr.stale_if_error, Some(60));
        assert!(swr.must_revalidate);
        assert_eq!(cc("max-stale").max_stale, Some(u64::MAX));
        assert_eq!(cc("max-stale=5, min-fresh=2").min_fresh, Some(2));
    }

    #[test]
    fn targeted_fields_replace_cache_control() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
        headers.insert(SURROGATE_CONTROL, "max-age=60;cache-layer".parse().unwrap());
        let cc = CacheControl::for_response(&headers);
        assert!(!cc.no_store);
        assert_eq!(cc.max_age, Some(60));
        // Aimed at another device: ignored, Cache-Control applies.
        headers.insert(SURROGATE_CONTROL, "max-age=60;not-for-you".parse().unwrap());
        assert!(CacheControl::for_response(&headers).no_store);
        headers.insert(CDN_CACHE_CONTROL, "max-age=5".parse().unwrap());
        assert_eq!(CacheControl::for_response(&headers).max_age, Some(5));
    }
}

//! Redis key layout.
//!
//! Every key of a cache starts with its namespace, verbatim, so operators can find them:
//!
//! ```text
//! <namespace>:{<user key>}            an entry while the namespace version is 0 (never bumped)
//! <namespace>:{<user key>}:v<N>       an entry under namespace version N >= 1
//! <entry key>:lock                    its distributed lock (same hash slot as the entry)
//! <namespace>:__ver                   the namespace version (INCR; never expires)
//! <namespace>:__tag:<tag>             a tag's invalidation times (expires, see `l1`)
//! <namespace>:__bus                   the pub/sub channel of the invalidation bus
//! ```
//!
//! The braces make the user key a Redis Cluster hash tag: an entry and its lock share a slot (so a
//! Lua script may touch both), while the entries of one namespace spread over all masters (the
//! hash tag is per entry, never per namespace, and the version is outside the braces). User keys
//! are binary-safe (Redis keys are byte strings); very long keys keep a readable head and replace
//! the tail by a SHA-256 digest of the whole key, so keys stay bounded and distinct.
//!
//! The layout is injective: a namespace may contain neither braces nor `":__"`, so the namespace
//! of any key is the text before its first `"{"` (entries) or first `":__"` (bookkeeping), and an
//! entry key ends in `}` (version 0), `:v<digits>` or `:lock`.
//!
//! The user key of a `#[cached]` fn without `key = "..."` is built by [`args`].

pub(crate) mod args;

use sha2::{Digest, Sha256};

/// User keys longer than this many bytes are shortened.
pub(crate) const MAX_USER_KEY: usize = 200;
/// How many leading bytes of a long key are kept readable.
const KEPT_HEAD: usize = 96;

/// Builds the Redis keys of one cache.
#[derive(Debug, Clone)]
pub(crate) struct KeySpace {
    namespace: String,
}

impl KeySpace {
    pub(crate) fn new(namespace: &str) -> Result<Self, crate::Error> {
        if namespace.is_empty() {
            return Err(crate::Error::Config("namespace must not be empty".into()));
        }
        if namespace.contains(['{', '}']) {
            return Err(crate::Error::Config(format!(
                "namespace {namespace:?} must not contain '{{' or '}}': they would turn it into a \
                 Redis Cluster hash tag and put every entry on one node"
            )));
        }
        if namespace.contains(":__") {
            return Err(crate::Error::Config(format!(
                "namespace {namespace:?} must not contain \":__\": it separates a namespace from \
                 its bookkeeping keys (versions, tags, bus channel)"
            )));
        }
        Ok(KeySpace {
            namespace: namespace.to_owned(),
        })
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Redis key of an entry under namespace version `version`.
    pub(crate) fn entry(&self, user_key: &str, version: u64) -> String {
        let user_key = bounded(user_key);
        let mut key = String::with_capacity(self.namespace.len() + user_key.len() + 24);
        key.push_str(&self.namespace);
        key.push_str(":{");
        key.push_str(&user_key);
        key.push('}');
        if version > 0 {
            key.push_str(":v");
            crate::util::push_decimal(&mut key, version);
        }
        key
    }

    /// The Redis key of an entry's distributed lock (same hash slot as the entry).
    pub(crate) fn lock(&self, entry_key: &str) -> String {
        format!("{entry_key}:lock")
    }

    /// A key for cache-wide bookkeeping (`<namespace>:__<what>`).
    pub(crate) fn meta(&self, what: &str) -> String {
        format!("{}:__{what}", self.namespace)
    }

    /// The key holding the namespace version (an integer, `INCR`ed by `invalidate_namespace`).
    pub(crate) fn version(&self) -> String {
        self.meta("ver")
    }

    /// The key holding a tag's invalidation times. Each tag has its own key (and so its own slot).
    pub(crate) fn tag(&self, tag: &str) -> String {
        self.meta(&format!("tag:{}", bounded(tag)))
    }

    /// The pub/sub channel of the invalidation bus.
    pub(crate) fn bus_channel(&self) -> String {
        self.meta("bus")
    }
}

/// Returns the key unchanged when short, else a readable head plus a digest of the whole key
/// (`<head>#<sha256 hex>`).
///
/// A short key that already has that shape (ends in `#` and 64 lowercase hex digits) is digested
/// too, so no short key can spell the stored form of a long one: every stored form of that shape
/// is a digest of its whole key, and distinct keys have distinct digests.
pub(crate) fn bounded(user_key: &str) -> std::borrow::Cow<'_, str> {
    if user_key.len() <= MAX_USER_KEY && !looks_digested(user_key) {
        return std::borrow::Cow::Borrowed(user_key);
    }
    let mut head_end = KEPT_HEAD;
    while !user_key.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let digest = Sha256::digest(user_key.as_bytes());
    let mut out = String::with_capacity(head_end + 1 + 64);
    out.push_str(&user_key[..head_end]);
    out.push('#');
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    std::borrow::Cow::Owned(out)
}

/// Whether `key` ends like a digested key: `#` followed by 64 lowercase hex digits.
fn looks_digested(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() >= 65
        && bytes[bytes.len() - 65] == b'#'
        && bytes[bytes.len() - 64..]
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_appears_verbatim_and_key_is_hash_tagged() {
        let keys = KeySpace::new("shop-eu").unwrap();
        assert_eq!(keys.entry("product:42", 0), "shop-eu:{product:42}");
        assert_eq!(
            keys.lock(&keys.entry("product:42", 0)),
            "shop-eu:{product:42}:lock"
        );
        assert_eq!(keys.entry("product:42", 7), "shop-eu:{product:42}:v7");
        assert_eq!(
            keys.lock(&keys.entry("product:42", 7)),
            "shop-eu:{product:42}:v7:lock"
        );
        assert_eq!(keys.version(), "shop-eu:__ver");
        assert_eq!(keys.tag("product:42"), "shop-eu:__tag:product:42");
        assert_eq!(keys.bus_channel(), "shop-eu:__bus");
    }

    #[test]
    fn namespaces_with_braces_separator_or_empty_are_rejected() {
        assert!(KeySpace::new("a{b}").is_err());
        assert!(KeySpace::new("").is_err());
        assert!(KeySpace::new("shop:__tag").is_err());
        assert!(KeySpace::new("shop:_x:y__z").is_ok());
    }

    #[test]
    fn versions_and_user_keys_do_not_collide() {
        let keys = KeySpace::new("ns").unwrap();
        let mut seen = std::collections::HashSet::new();
        for user_key in ["a", "a}", "a}:v1", "a}:v1}", "a:v1", "}", ""] {
            for version in [0, 1, 2, 10] {
                let entry = keys.entry(user_key, version);
                assert!(seen.insert(entry.clone()), "{entry}");
                assert!(seen.insert(keys.lock(&entry)), "{entry}:lock");
            }
        }
    }

    #[test]
    fn long_keys_are_bounded_and_distinct() {
        let a = "k".repeat(10_000);
        let mut b = a.clone();
        b.push('x');
        let (ka, kb) = (bounded(&a), bounded(&b));
        assert!(ka.len() <= KEPT_HEAD + 1 + 64);
        assert_ne!(ka, kb);
        assert!(ka.starts_with("kkkk"));
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn a_short_key_spelling_a_digest_is_digested_too() {
        let long = "k".repeat(300);
        let stored = bounded(&long).into_owned();
        assert!(looks_digested(&stored));
        // Spelled as a short key, the stored form is another key.
        assert_ne!(bounded(&stored), stored.as_str());
        assert!(looks_digested(&bounded(&stored)));
        // Keys that merely contain '#' or hex stay readable.
        for plain in ["a#b", "sha:#0123", &format!("x#{}", "A".repeat(64))] {
            assert_eq!(bounded(plain), plain);
        }
    }

    #[test]
    fn long_multibyte_keys_cut_on_a_char_boundary() {
        let key = "é".repeat(500);
        let b = bounded(&key);
        assert!(b.len() < key.len());
    }
}

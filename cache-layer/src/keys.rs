//! Redis key layout.
//!
//! Every key of a cache starts with its namespace, verbatim, so operators can find them:
//!
//! ```text
//! <namespace>:{<user key>}          the entry
//! <namespace>:{<user key>}:lock     its distributed lock (same hash slot as the entry)
//! ```
//!
//! The braces make the user key a Redis Cluster hash tag: an entry and its lock share a slot (so a
//! Lua script may touch both), while the entries of one namespace spread over all masters. User keys
//! are binary-safe (Redis keys are byte strings); very long keys keep a readable head and replace
//! the tail by a SHA-256 digest of the whole key, so keys stay bounded and distinct.

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
        Ok(KeySpace {
            namespace: namespace.to_owned(),
        })
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Redis key of an entry.
    pub(crate) fn entry(&self, user_key: &str) -> String {
        let user_key = bounded(user_key);
        let mut key = String::with_capacity(self.namespace.len() + user_key.len() + 3);
        key.push_str(&self.namespace);
        key.push_str(":{");
        key.push_str(&user_key);
        key.push('}');
        key
    }

    /// The Redis key of an entry's distributed lock (same hash slot as the entry).
    pub(crate) fn lock(&self, entry_key: &str) -> String {
        format!("{entry_key}:lock")
    }

    /// A key for cache-wide bookkeeping (`<namespace>:__<what>`), e.g. namespace versions or tags.
    pub(crate) fn meta(&self, what: &str) -> String {
        format!("{}:__{what}", self.namespace)
    }
}

/// Returns the key unchanged when short, else a readable head plus a digest of the whole key.
pub(crate) fn bounded(user_key: &str) -> std::borrow::Cow<'_, str> {
    if user_key.len() <= MAX_USER_KEY {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_appears_verbatim_and_key_is_hash_tagged() {
        let keys = KeySpace::new("shop-eu").unwrap();
        assert_eq!(keys.entry("product:42"), "shop-eu:{product:42}");
        assert_eq!(
            keys.lock(&keys.entry("product:42")),
            "shop-eu:{product:42}:lock"
        );
    }

    #[test]
    fn namespaces_with_braces_or_empty_are_rejected() {
        assert!(KeySpace::new("a{b}").is_err());
        assert!(KeySpace::new("").is_err());
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
    fn long_multibyte_keys_cut_on_a_char_boundary() {
        let key = "é".repeat(500);
        let b = bounded(&key);
        assert!(b.len() < key.len());
    }
}

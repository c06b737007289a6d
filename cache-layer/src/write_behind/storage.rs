//! Where a counter set's data lives: the key layout in the store (the operations on it are
//! [`Store`](crate::store::Store)'s `counters_*` methods; the Redis scripts are in
//! `store/scripts.rs`, the in-process twin in `store/memory.rs`).
//!
//! Redis keys of the counter set `views` in namespace `shop` (one hash tag, so one cluster slot):
//!
//! ```text
//! shop:__counters:{views}                  live hash: id -> accumulated delta (HINCRBY target)
//! shop:__counters:{views}:batch:<id>       a sealed batch (the live hash, renamed)
//! shop:__counters:{views}:batches          zset of sealed batch ids (score: sealing time, ms)
//! shop:__counters:{views}:leases           hash: batch id -> "<expiry ms>:<owner token>"
//! shop:__counters:{views}:writer:<token>   last push sequence number applied for one writer
//! ```

use crate::{keys, store::CounterKeys};

/// The keys of counter set `name` in `keys`' namespace.
pub(crate) fn counter_keys(keys: &keys::KeySpace, name: &str) -> CounterKeys {
    CounterKeys::new(keys.meta(&format!("counters:{{{}}}", hash_tag(name))))
}

/// The counter-set name as a Redis Cluster hash tag: never empty, no braces (they would end the
/// tag early), bounded in length. Injective: `%`, `{` and `}` are percent-encoded and the empty
/// name becomes `%00`, which no other name encodes to.
pub(crate) fn hash_tag(name: &str) -> String {
    if name.is_empty() {
        return "%00".to_owned();
    }
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    keys::bounded(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster uses for `key` (the first non-empty `{...}`), or the whole key.
    fn cluster_tag(key: &str) -> &str {
        if let Some(open) = key.find('{') {
            if let Some(len) = key[open + 1..].find('}') {
                if len > 0 {
                    return &key[open + 1..open + 1 + len];
                }
            }
        }
        key
    }

    #[test]
    fn every_key_of_a_set_shares_one_hash_tag() {
        let space = keys::KeySpace::new("shop").unwrap();
        for name in ["views", "", "a}b", "{x}", "%", "}", &"n".repeat(500)] {
            let k = counter_keys(&space, name);
            let tag = cluster_tag(k.live());
            assert!(!tag.is_empty() && tag != k.live(), "{name:?}: {}", k.live());
            for key in [k.index(), k.leases(), &k.batch("1-2"), &k.writer("t")] {
                assert_eq!(cluster_tag(key), tag, "{name:?}: {key}");
            }
            assert!(k.live().starts_with("shop:__counters:{"));
        }
        assert_eq!(
            counter_keys(&space, "views").live(),
            "shop:__counters:{views}"
        );
    }

    #[test]
    fn hash_tags_are_injective_on_awkward_names() {
        let names = ["", "%00", "%", "%25", "{", "%7B", "}", "%7D", "a"];
        let tags: std::collections::HashSet<_> = names.iter().map(|n| hash_tag(n)).collect();
        assert_eq!(tags.len(), names.len());
    }
}

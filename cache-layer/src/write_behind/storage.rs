//! Where counters live between `incr` and the sink: the Redis key layout and Lua scripts, and an
//! in-process twin used when the cache has no Redis (same protocol, same semantics).
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

use std::{
    collections::{BTreeMap, HashMap},
    sync::OnceLock,
    time::{Duration, Instant},
};

use redis::Script;

use crate::{keys, Error};

/// The Redis keys of one counter set.
#[derive(Debug, Clone)]
pub(crate) struct KeyNames {
    pub(crate) live: String,
    pub(crate) index: String,
    pub(crate) leases: String,
    batch_prefix: String,
    writer_prefix: String,
}

impl KeyNames {
    pub(crate) fn new(keys: &keys::KeySpace, name: &str) -> Self {
        let live = keys.meta(&format!("counters:{{{}}}", hash_tag(name)));
        KeyNames {
            index: format!("{live}:batches"),
            leases: format!("{live}:leases"),
            batch_prefix: format!("{live}:batch:"),
            writer_prefix: format!("{live}:writer:"),
            live,
        }
    }

    pub(crate) fn batch(&self, id: &str) -> String {
        format!("{}{id}", self.batch_prefix)
    }

    pub(crate) fn writer(&self, token: &str) -> String {
        format!("{}{token}", self.writer_prefix)
    }
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

/// Applies one push of a writer exactly once. KEYS: live hash, writer key. ARGV: sequence number,
/// writer-key TTL (ms), then field/delta pairs. Returns `{applied (0|1), {fields that failed}}`.
///
/// A push whose sequence number the writer key already holds (or exceeds) is a retry of one that
/// landed (its reply was lost): it is acknowledged without being applied again. The check, the
/// increments and the new sequence number are one script, so they land (and reach the AOF)
/// together or not at all. HINCRBY runs under `pcall` so one field that would overflow cannot
/// abort the script halfway (scripts are not rolled back).
const PUSH: &str = r#"
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if seq <= last then return {0, {}} end
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE write-behind counters key holds a ' .. kind)
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local failed = {}
for i = 3, #ARGV, 2 do
  local r = redis.pcall('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  if type(r) == 'table' and r.err then failed[#failed + 1] = ARGV[i] end
end
return {1, failed}
"#;

/// Server time in ms (lease clocks are Redis's, so flushers on skewed hosts agree).
const NOW_MS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// Seals the live hash into a batch leased by the caller. KEYS: live, index, leases, batch key.
/// ARGV: batch id, owner token, lease (ms). Returns 1 when sealed, 0 when there was nothing.
const SEAL: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return redis.error_reply('ERR write-behind batch id collision')
end
redis.call('RENAME', KEYS[1], KEYS[4])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], string.format('%d:%s', now + tonumber(ARGV[3]), ARGV[2]))
return 1
"#;

/// Claims the oldest sealed batch that nobody holds (no lease, an expired one, or one held by the
/// caller's own token: a flush of this process that was interrupted). KEYS: index, leases.
/// ARGV: owner token, lease (ms). Returns the batch id or nil.
const CLAIM: &str = r#"
local ids = redis.call('ZRANGE', KEYS[1], 0, 99)
for _, id in ipairs(ids) do
  local lease = redis.call('HGET', KEYS[2], id)
  local free = true
  if lease then
    local sep = string.find(lease, ':', 1, true)
    local expiry = tonumber(string.sub(lease, 1, sep - 1)) or 0
    free = expiry <= now or string.sub(lease, sep + 1) == ARGV[1]
  end
  if free then
    redis.call('HSET', KEYS[2], id, string.format('%d:%s', now + tonumber(ARGV[2]), ARGV[1]))
    return id
  end
end
return false
"#;

/// Extends the caller's lease. KEYS: leases. ARGV: batch id, token, lease (ms). 1 if still held.
const RENEW: &str = r#"
local lease = redis.call('HGET', KEYS[1], ARGV[1])
if not lease then return 0 end
local sep = string.find(lease, ':', 1, true)
if string.sub(lease, sep + 1) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d:%s', now + tonumber(ARGV[3]), ARGV[2]))
return 1
"#;

/// Gives a batch back (its sink failed) so any flusher may retry it. KEYS: leases.
/// ARGV: batch id, token.
const RELEASE: &str = r#"
local lease = redis.call('HGET', KEYS[1], ARGV[1])
if lease and string.sub(lease, string.find(lease, ':', 1, true) + 1) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

/// Deletes a delivered batch. KEYS: batch key, index, leases. ARGV: batch id. Unconditional: a
/// batch is immutable once sealed, so once any flusher delivered it nothing is lost by deleting it.
const COMPLETE: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"#;

fn script(cell: &'static OnceLock<Script>, body: &str, needs_time: bool) -> &'static Script {
    cell.get_or_init(|| {
        if needs_time {
            Script::new(&format!("{NOW_MS}{body}"))
        } else {
            Script::new(body)
        }
    })
}

pub(crate) fn push_script() -> &'static Script {
    static CELL: OnceLock<Script> = OnceLock::new();
    script(&CELL, PUSH, false)
}

pub(crate) fn seal_script() -> &'static Script {
    static CELL: OnceLock<Script> = OnceLock::new();
    script(&CELL, SEAL, true)
}

pub(crate) fn claim_script() -> &'static Script {
    static CELL: OnceLock<Script> = OnceLock::new();
    script(&CELL, CLAIM, true)
}

pub(crate) fn renew_script() -> &'static Script {
    static CELL: OnceLock<Script> = OnceLock::new();
    script(&CELL, RENEW, true)
}

pub(crate) fn release_script() -> &'static Script {
    static CELL: OnceLock<Script> = OnceLock::new();
    script(&CELL, RELEASE, false)
}

pub(crate) fn complete_script() -> &'static Script {
    static CELL: OnceLock<Script> = OnceLock::new();
    script(&CELL, COMPLETE, false)
}

/// Parses one page of an `HSCAN` reply's field/value list into `out` (a map: HSCAN may return a
/// field twice while the hash is being rehashed).
pub(crate) fn collect_pairs(
    flat: Vec<String>,
    out: &mut HashMap<String, i64>,
    key: &str,
) -> Result<(), Error> {
    let mut items = flat.into_iter();
    while let (Some(field), Some(value)) = (items.next(), items.next()) {
        let value: i64 = value.parse().map_err(|_| {
            Error::Redis(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "write-behind batch holds a non-integer value",
                format!("{key} field {field:?} = {value:?}"),
            )))
        })?;
        out.insert(field, value);
    }
    Ok(())
}

/// The in-process twin of the Redis layout, for caches without Redis.
#[derive(Debug, Default)]
pub(crate) struct MemoryCounters {
    live: HashMap<String, i64>,
    batches: BTreeMap<String, MemoryBatch>,
}

#[derive(Debug)]
struct MemoryBatch {
    entries: Vec<(String, i64)>,
    lease: Option<(Instant, String)>,
}

impl MemoryCounters {
    pub(crate) fn incr(&mut self, id: &str, by: i64) -> Result<(), Error> {
        let slot = match self.live.get_mut(id) {
            Some(slot) => slot,
            None => self.live.entry(id.to_owned()).or_insert(0),
        };
        *slot = slot.checked_add(by).ok_or_else(overflow)?;
        Ok(())
    }

    pub(crate) fn seal(&mut self, id: &str, token: &str, lease: Duration) -> bool {
        if self.live.is_empty() {
            return false;
        }
        let entries = std::mem::take(&mut self.live).into_iter().collect();
        let lease = Some((Instant::now() + lease, token.to_owned()));
        self.batches
            .insert(id.to_owned(), MemoryBatch { entries, lease });
        true
    }

    pub(crate) fn claim(&mut self, token: &str, lease: Duration) -> Option<String> {
        let now = Instant::now();
        let (id, batch) = self.batches.iter_mut().find(|(_, b)| match &b.lease {
            None => true,
            Some((expiry, owner)) => *expiry <= now || owner == token,
        })?;
        batch.lease = Some((now + lease, token.to_owned()));
        Some(id.clone())
    }

    pub(crate) fn renew(&mut self, id: &str, token: &str, lease: Duration) -> bool {
        match self.batches.get_mut(id) {
            Some(MemoryBatch {
                lease: Some((expiry, owner)),
                ..
            }) if owner == token => {
                *expiry = Instant::now() + lease;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn release(&mut self, id: &str, token: &str) {
        if let Some(batch) = self.batches.get_mut(id) {
            if batch
                .lease
                .as_ref()
                .is_some_and(|(_, owner)| owner == token)
            {
                batch.lease = None;
            }
        }
    }

    pub(crate) fn read(&self, id: &str) -> Vec<(String, i64)> {
        self.batches
            .get(id)
            .map(|b| b.entries.clone())
            .unwrap_or_default()
    }

    pub(crate) fn complete(&mut self, id: &str) {
        self.batches.remove(id);
    }
}

pub(crate) fn overflow() -> Error {
    Error::Encode("write-behind counter delta overflows i64".to_owned())
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
            let k = KeyNames::new(&space, name);
            let tag = cluster_tag(&k.live);
            assert!(!tag.is_empty() && tag != k.live, "{name:?}: {}", k.live);
            for key in [&k.index, &k.leases, &k.batch("1-2"), &k.writer("t")] {
                assert_eq!(cluster_tag(key), tag, "{name:?}: {key}");
            }
            assert!(k.live.starts_with("shop:__counters:{"));
        }
        assert_eq!(
            KeyNames::new(&space, "views").live,
            "shop:__counters:{views}"
        );
    }

    #[test]
    fn hash_tags_are_injective_on_awkward_names() {
        let names = ["", "%00", "%", "%25", "{", "%7B", "}", "%7D", "a"];
        let tags: std::collections::HashSet<_> = names.iter().map(|n| hash_tag(n)).collect();
        assert_eq!(tags.len(), names.len());
    }

    #[test]
    fn memory_twin_follows_the_protocol() {
        let mut m = MemoryCounters::default();
        let lease = Duration::from_secs(60);
        m.incr("a", 2).unwrap();
        m.incr("a", 3).unwrap();
        assert!(m.seal("b1", "me", lease));
        assert!(!m.seal("b2", "me", lease), "nothing left to seal");
        assert_eq!(m.claim("other", lease), None, "leased to me");
        assert_eq!(
            m.claim("me", lease).as_deref(),
            Some("b1"),
            "own lease reclaimed"
        );
        m.release("b1", "me");
        assert_eq!(m.claim("other", lease).as_deref(), Some("b1"));
        assert!(!m.renew("b1", "me", lease));
        assert_eq!(m.read("b1"), vec![("a".to_owned(), 5)]);
        m.complete("b1");
        assert_eq!(m.claim("me", lease), None);
        m.incr("x", i64::MAX).unwrap();
        assert!(m.incr("x", 1).is_err());
    }
}

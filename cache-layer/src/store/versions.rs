//! The store operations behind versioned validity: reading an entry together with its tags'
//! records (one round trip), repairing lost records, the conditional fill, the tombstoning delete
//! and the namespace epoch. Each runs on Redis (a one-key script where it must be atomic, so it
//! is cluster-safe), on Redis Cluster, and on the in-memory store with the same semantics.
//!
//! Lost bookkeeping is repaired, never read as "never invalidated": a missing tag record is
//! recreated as if the tag had been invalidated just now (both versions = the store's time in
//! ms), and a missing (or regressed) namespace epoch becomes a fresh one above every epoch this
//! process knows and above the store's time in ms. Both are then larger than any version an older
//! entry recorded (versions are `max(previous + 1, store time)`), so nothing written before the
//! loss is valid again; it costs one reload per entry.

use std::time::Duration;

use super::{
    memory::{MemoryStore, Update},
    Backend,
};
use crate::{envelope::Seen, tags::TagTimes, Error};

/// Repairs the tag record at `KEYS[1]` when it is missing, unreadable or older than what the
/// caller knows (`ARGV[1]` = known hard version): it becomes `"<v>:<v>"` with
/// `v = max(known + 1, Redis TIME ms)` for `PX ARGV[2]`. Returns the record's two versions.
const REPAIR_TAG: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known = tonumber(ARGV[1])
local cur = redis.call('GET', KEYS[1])
if cur then
  local h, s = string.match(cur, '^(%d+):(%d+)$')
  if h and tonumber(h) >= known then return {tonumber(h), tonumber(s)} end
end
local v = math.max(known + 1, now)
redis.call('SET', KEYS[1], string.format('%.0f:%.0f', v, v), 'PX', ARGV[2])
return {v, v}
"#;

/// Conditional fill: stores `ARGV[1]` at `KEYS[1]` for `PX ARGV[3]` only if the key still holds
/// what the load saw when it started: nothing (`ARGV[2] == ''`), the entry or tombstone with write
/// id `ARGV[2]` (8 bytes at offset 32 of a format-2 value), or something of another format or
/// Redis type (`ARGV[2] == 'x'`). Returns 1 when stored.
const FILL_IF: &str = r#"
local cur = redis.pcall('GET', KEYS[1])
local seen = ARGV[2]
local ok
if type(cur) == 'table' then
  ok = (seen == 'x')
elseif not cur then
  ok = (seen == '')
elseif string.sub(cur, 1, 3) == 'CL\2' and #cur >= 40 then
  ok = (#seen == 8 and string.sub(cur, 33, 40) == seen)
else
  ok = (seen == 'x')
end
if ok then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
"#;

/// Delete that leaves the tombstone `ARGV[1]` at `KEYS[1]` for `PX ARGV[2]`, so a fill whose load
/// started before it is refused. Returns 1 if a live entry (not a tombstone) was there.
const DELETE_TO_TOMBSTONE: &str = r#"
local cur = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if not cur then return 0 end
if string.sub(cur, 1, 3) == 'CL\2' and #cur >= 40 and string.byte(cur, 4) == 128 then return 0 end
return 1
"#;

/// The namespace epoch at `KEYS[1]`, repaired when missing or below what the caller knows
/// (`ARGV[1]`): it becomes `max(known + 1, Redis TIME ms)`. With `ARGV[2] == 'bump'` the epoch is
/// raised by one first (and repaired the same way when missing or regressed). Returns
/// `{epoch, Redis TIME ms}`.
const NAMESPACE_EPOCH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '')
local v
if cur and cur >= known then
  v = cur
  if ARGV[2] == 'bump' then v = cur + 1 end
else
  v = math.max(known + 1, now)
end
if v ~= cur then redis.call('SET', KEYS[1], string.format('%.0f', v)) end
return {v, now}
"#;

fn script(
    cell: &'static std::sync::OnceLock<redis::Script>,
    source: &str,
) -> &'static redis::Script {
    cell.get_or_init(|| redis::Script::new(source))
}

fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn now_ms() -> u64 {
    crate::cache::now_ms()
}

/// The in-memory form of [`REPAIR_TAG`]'s decision.
fn repaired_tag(current: Option<&[u8]>, known_hard: u64) -> Result<TagTimes, TagTimes> {
    match current.and_then(TagTimes::parse) {
        Some(times) if times.hard_ms >= known_hard => Ok(times),
        _ => {
            let v = known_hard.saturating_add(1).max(now_ms());
            Err(TagTimes {
                hard_ms: v,
                soft_ms: v,
            })
        }
    }
}

impl MemoryStore {
    fn repair_tag_local(&self, key: &str, known_hard: u64, ttl: Duration) -> TagTimes {
        self.update(key, |current| match repaired_tag(current, known_hard) {
            Ok(times) => (Update::Keep, times),
            Err(repaired) => (Update::Put(repaired.render().into_bytes(), ttl), repaired),
        })
    }

    fn fill_if_local(&self, key: &str, value: Vec<u8>, ttl: Duration, seen: &Seen) -> bool {
        self.update(key, |current| {
            if Seen::of(current) == *seen {
                (Update::Put(value, ttl), true)
            } else {
                (Update::Keep, false)
            }
        })
    }

    fn tombstone_local(&self, key: &str, tombstone: Vec<u8>, ttl: Duration) -> bool {
        self.update(key, |current| {
            let live = current.is_some_and(|bytes| {
                !matches!(
                    crate::envelope::Envelope::parse(bytes),
                    Err(crate::envelope::DecodeError::Deleted)
                )
            });
            (Update::Put(tombstone, ttl), live)
        })
    }

    fn namespace_epoch_local(&self, key: &str, known: u64, bump: bool) -> (u64, u64) {
        let now = now_ms();
        self.update(key, |current| {
            let current = current
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<u64>().ok());
            let epoch = match current {
                Some(cur) if cur >= known => cur + u64::from(bump),
                _ => known.saturating_add(1).max(now),
            };
            if Some(epoch) == current {
                (Update::Keep, (epoch, now))
            } else {
                // The epoch never expires (an in-memory store may still evict it: then repaired).
                let forever = Duration::from_secs(100 * 365 * 24 * 3600);
                (
                    Update::Put(epoch.to_string().into_bytes(), forever),
                    (epoch, now),
                )
            }
        })
    }
}

impl Backend {
    /// The entry at `entry` and the raw records at `tags`, in one round trip (a pipeline on one
    /// node; concurrent reads on a cluster, where the keys live in different slots).
    pub(crate) async fn read_with_tags(
        &self,
        entry: &str,
        tags: &[String],
    ) -> Result<(Option<Vec<u8>>, Vec<Option<Vec<u8>>>), Error> {
        if tags.is_empty() {
            return Ok((self.get(entry).await?, Vec::new()));
        }
        match self {
            Backend::Redis(store) => {
                let mut pipe = redis::pipe();
                pipe.cmd("GET").arg(entry);
                for tag in tags {
                    pipe.cmd("GET").arg(tag);
                }
                let mut values: Vec<Option<Vec<u8>>> = store.query_pipeline(&pipe, true).await?;
                if values.len() != tags.len() + 1 {
                    return Err(Error::Config("pipeline reply of the wrong length".into()));
                }
                let first = values.remove(0);
                Ok((first, values))
            }
            store => {
                let entry = store.get(entry);
                let records = futures_util::future::join_all(tags.iter().map(|t| store.get(t)));
                let (entry, records) = futures_util::join!(entry, records);
                Ok((entry?, records.into_iter().collect::<Result<_, _>>()?))
            }
        }
    }

    /// Repairs the tag records at `keys` (see [`REPAIR_TAG`]): `known[i]` is the hard version
    /// this process knows for `keys[i]` (0 if none). Returns the records as they are now.
    pub(crate) async fn repair_tags(
        &self,
        keys: &[String],
        known: &[u64],
        ttl: Duration,
    ) -> Result<Vec<TagTimes>, Error> {
        if let Backend::Memory(store) = self {
            return Ok(keys
                .iter()
                .zip(known)
                .map(|(key, &known)| store.repair_tag_local(key, known, ttl))
                .collect());
        }
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let runs = keys.iter().zip(known).map(|(key, &known)| async move {
            let mut invocation = script(&SCRIPT, REPAIR_TAG).prepare_invoke();
            invocation.key(key).arg(known).arg(px(ttl));
            // Idempotent: a resend finds the repaired record.
            let (hard_ms, soft_ms): (u64, u64) = self.invoke(&invocation, true).await?;
            Ok::<_, Error>(TagTimes { hard_ms, soft_ms })
        });
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .collect()
    }

    /// Stores `value` at `key` only if the key still holds what the load saw (see [`FILL_IF`]).
    pub(crate) async fn fill_if(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
        seen: &Seen,
    ) -> Result<bool, Error> {
        if let Backend::Memory(store) = self {
            return Ok(store.fill_if_local(key, value, ttl, seen));
        }
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let mut invocation = script(&SCRIPT, FILL_IF).prepare_invoke();
        invocation
            .key(key)
            .arg(value)
            .arg(seen.as_arg())
            .arg(px(ttl));
        // Idempotent: a resend after a lost reply finds its own write and is refused (no harm).
        let stored: i64 = self.invoke(&invocation, true).await?;
        Ok(stored == 1)
    }

    /// Replaces whatever is at `key` by `tombstone` for `ttl`; `true` if a live entry was there.
    pub(crate) async fn delete_to_tombstone(
        &self,
        key: &str,
        tombstone: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, Error> {
        if let Backend::Memory(store) = self {
            return Ok(store.tombstone_local(key, tombstone, ttl));
        }
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let mut invocation = script(&SCRIPT, DELETE_TO_TOMBSTONE).prepare_invoke();
        invocation.key(key).arg(tombstone).arg(px(ttl));
        let removed: i64 = self.invoke(&invocation, true).await?;
        Ok(removed == 1)
    }

    /// The namespace epoch at `key` (repaired when missing or below `known`), raised by one first
    /// when `bump`. Returns the epoch and the store's time in ms.
    pub(crate) async fn namespace_epoch(
        &self,
        key: &str,
        known: u64,
        bump: bool,
    ) -> Result<(u64, u64), Error> {
        if let Backend::Memory(store) = self {
            return Ok(store.namespace_epoch_local(key, known, bump));
        }
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let mut invocation = script(&SCRIPT, NAMESPACE_EPOCH).prepare_invoke();
        invocation
            .key(key)
            .arg(known)
            .arg(if bump { "bump" } else { "read" });
        // A read is idempotent; a bump is not (a resend would bump twice: harmless but wasteful,
        // so it is not resent).
        self.invoke(&invocation, !bump).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_in_memory_store_keeps_the_same_semantics() {
        let backend = Backend::Memory(MemoryStore::default());
        let ttl = Duration::from_secs(60);
        // A missing tag record is repaired to "now", above anything known.
        let [repaired] = backend.repair_tags(&["t".into()], &[5], ttl).await.unwrap()[..] else {
            unreachable!()
        };
        assert!(repaired.hard_ms >= now_ms() - 1_000 && repaired.hard_ms == repaired.soft_ms);
        let again = backend.repair_tags(&["t".into()], &[5], ttl).await.unwrap();
        assert_eq!(again, vec![repaired], "a present record is kept");

        // Conditional fill and tombstones.
        assert!(backend
            .fill_if("k", b"x1".to_vec(), ttl, &Seen::Absent)
            .await
            .unwrap());
        assert!(!backend
            .fill_if("k", b"x2".to_vec(), ttl, &Seen::Absent)
            .await
            .unwrap());
        assert!(backend
            .fill_if("k", b"x3".to_vec(), ttl, &Seen::Foreign)
            .await
            .unwrap());
        let tomb = crate::envelope::tombstone();
        assert!(backend
            .delete_to_tombstone("k", tomb.clone(), ttl)
            .await
            .unwrap());
        assert!(!backend
            .delete_to_tombstone("k", tomb.clone(), ttl)
            .await
            .unwrap());
        assert!(!backend
            .fill_if("k", b"x4".to_vec(), ttl, &Seen::Absent)
            .await
            .unwrap());
        let seen = Seen::of(Some(&tomb));
        assert!(backend
            .fill_if("k", b"x5".to_vec(), ttl, &seen)
            .await
            .unwrap());

        // The namespace epoch: repaired above what is known, bumped by one, never reset.
        let (first, _) = backend.namespace_epoch("v", 0, false).await.unwrap();
        assert!(first >= now_ms() - 1_000);
        let (bumped, _) = backend.namespace_epoch("v", first, true).await.unwrap();
        assert_eq!(bumped, first + 1);
        let (read, _) = backend.namespace_epoch("v", 0, false).await.unwrap();
        assert_eq!(read, bumped);
        let (repaired, _) = backend
            .namespace_epoch("v", bumped + 10, false)
            .await
            .unwrap();
        assert!(
            repaired > bumped + 10,
            "a regressed epoch is repaired upward"
        );
    }
}

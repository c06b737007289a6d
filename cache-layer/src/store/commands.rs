//! The domain operations of [`Store`](super::Store) as Redis commands and scripts, written once
//! for both networked stores. [`RedisStore`](super::RedisStore) and
//! [`ClusterStore`](super::ClusterStore) only say how to run a command ([`Raw`]: retries,
//! deadlines, routing); [`impl_store!`] turns that into the whole `Store` trait.

use std::{collections::HashMap, future::Future, time::Duration};

use bb8_redis::redis::{self, Cmd, FromRedisValue};

use super::{
    scripts::{self, Invocation},
    CounterKeys, LockToken, NamespaceBump, PushOutcome, PushStatus, ReplicaAck, Subscription,
    TagField, TagTimes,
};
use crate::{util::millis_at_least_one, Error};

/// Whether a command may be sent again on another connection when the first one turns out to
/// have been dropped (its reply lost: it may or may not have run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resend {
    /// Running it twice has the effect of running it once (reads, `SET`, time-raising scripts).
    Safe,
    /// Its first attempt may have landed and a second would differ (`SET NX`, `INCR`).
    Never,
}

/// How a networked store runs one command or script.
pub(super) trait Raw: Send + Sync {
    /// Runs one command within the store's op timeout.
    fn query<T: FromRedisValue + Send>(
        &self,
        cmd: &Cmd,
        resend: Resend,
    ) -> impl Future<Output = Result<T, Error>> + Send;

    /// Invokes a Lua script (all its keys in one hash slot) within the op timeout.
    fn invoke<T: FromRedisValue + Send>(
        &self,
        invocation: &Invocation,
        resend: Resend,
    ) -> impl Future<Output = Result<T, Error>> + Send;

    /// Invokes a write-behind script (all its keys in `key`'s hash slot) and, where the server
    /// owning them has connected replicas, `WAIT`s for one to acknowledge it (see
    /// `store/replicas.rs`); all within the op timeout.
    fn invoke_acked<T: FromRedisValue + Send>(
        &self,
        invocation: &Invocation,
        key: &str,
        resend: Resend,
    ) -> impl Future<Output = Result<(T, ReplicaAck), Error>> + Send;

    /// `GET` of keys that may live in different hash slots.
    fn get_many(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>, Error>> + Send;

    /// A client for a connection of its own (pub/sub): for Sentinel, the current master's.
    fn pubsub_client(&self) -> impl Future<Output = Result<redis::Client, Error>> + Send;
}

pub(super) fn get_cmd(key: &str) -> Cmd {
    // Sized up front: `redis::cmd` grows both buffers as the arguments come.
    let mut cmd = Cmd::with_capacity(2, "GET".len() + key.len());
    cmd.arg("GET").arg(key);
    cmd
}

pub(super) async fn get<R: Raw>(raw: &R, key: &str) -> Result<Option<Vec<u8>>, Error> {
    raw.query(&get_cmd(key), Resend::Safe).await
}

pub(super) async fn set<R: Raw>(
    raw: &R,
    key: &str,
    value: Vec<u8>,
    ttl: Duration,
) -> Result<(), Error> {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key)
        .arg(value)
        .arg("PX")
        .arg(millis_at_least_one(ttl));
    raw.query(&cmd, Resend::Safe).await
}

pub(super) async fn delete<R: Raw>(raw: &R, key: &str) -> Result<bool, Error> {
    let mut cmd = redis::cmd("DEL");
    cmd.arg(key);
    let removed: u64 = raw.query(&cmd, Resend::Safe).await?;
    Ok(removed > 0)
}

pub(super) async fn set_if_absent<R: Raw>(
    raw: &R,
    key: &str,
    value: Vec<u8>,
    ttl: Duration,
) -> Result<bool, Error> {
    // Not resent: the first attempt may have taken the key before its connection dropped.
    set_nx(raw, key, value, ttl, Resend::Never).await
}

/// `SET key value NX PX ttl`: whether the key was absent and is now set.
async fn set_nx<R: Raw>(
    raw: &R,
    key: &str,
    value: Vec<u8>,
    ttl: Duration,
    resend: Resend,
) -> Result<bool, Error> {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key)
        .arg(value)
        .arg("NX")
        .arg("PX")
        .arg(millis_at_least_one(ttl));
    let reply: Option<String> = raw.query(&cmd, resend).await?;
    Ok(reply.is_some())
}

pub(super) async fn lock_acquire<R: Raw>(
    raw: &R,
    lock: &LockToken,
    ttl: Duration,
) -> Result<bool, Error> {
    set_if_absent(raw, &lock.key, lock.token.clone(), ttl).await
}

pub(super) async fn lock_renew<R: Raw>(
    raw: &R,
    lock: &LockToken,
    ttl: Duration,
) -> Result<bool, Error> {
    let mut invocation = scripts::COMPARE_AND_EXPIRE.invocation(&[&lock.key]);
    invocation
        .arg(&lock.token[..])
        .arg(millis_at_least_one(ttl));
    let extended: u64 = raw.invoke(&invocation, Resend::Safe).await?;
    Ok(extended > 0)
}

pub(super) async fn lock_release<R: Raw>(raw: &R, lock: &LockToken) -> Result<bool, Error> {
    let mut invocation = scripts::COMPARE_AND_DELETE.invocation(&[&lock.key]);
    invocation.arg(&lock.token[..]);
    let removed: u64 = raw.invoke(&invocation, Resend::Safe).await?;
    Ok(removed > 0)
}

pub(super) async fn bump_tag<R: Raw>(
    raw: &R,
    key: &str,
    field: TagField,
    ttl: Duration,
) -> Result<TagTimes, Error> {
    let mut invocation = scripts::BUMP_TAG.invocation(&[key]);
    invocation
        .arg(match field {
            TagField::Hard => "hard",
            TagField::Soft => "soft",
        })
        .arg(millis_at_least_one(ttl));
    // Resending after a dropped connection only moves the time forward: safe.
    let (hard_ms, soft_ms): (u64, u64) = raw.invoke(&invocation, Resend::Safe).await?;
    Ok(TagTimes { hard_ms, soft_ms })
}

pub(super) async fn tag_times<R: Raw>(
    raw: &R,
    keys: &[String],
) -> Result<Vec<Option<TagTimes>>, Error> {
    let values = raw.get_many(keys).await?;
    Ok(values
        .iter()
        .map(|value| value.as_deref().and_then(TagTimes::parse))
        .collect())
}

pub(super) async fn repair_tags<R: Raw>(
    raw: &R,
    keys: &[String],
    known_hard: &[u64],
    ttl: Duration,
) -> Result<Vec<TagTimes>, Error> {
    let runs = keys.iter().zip(known_hard).map(|(key, &known)| async move {
        let mut invocation = scripts::REPAIR_TAG.invocation(&[key]);
        invocation.arg(known).arg(millis_at_least_one(ttl));
        // Resending finds the repaired record: safe.
        let (hard_ms, soft_ms): (u64, u64) = raw.invoke(&invocation, Resend::Safe).await?;
        Ok::<_, Error>(TagTimes { hard_ms, soft_ms })
    });
    futures_util::future::join_all(runs)
        .await
        .into_iter()
        .collect()
}

async fn namespace_epoch<R: Raw>(
    raw: &R,
    key: &str,
    known: u64,
    bump: bool,
) -> Result<(u64, u64), Error> {
    let mut invocation = scripts::NAMESPACE_EPOCH.invocation(&[key]);
    invocation
        .arg(known)
        .arg(if bump { "bump" } else { "read" });
    // A bump resent after it landed would bump twice (harmless, but not the contract).
    let resend = if bump { Resend::Never } else { Resend::Safe };
    raw.invoke(&invocation, resend).await
}

pub(super) async fn bump_namespace<R: Raw>(
    raw: &R,
    key: &str,
    known: u64,
) -> Result<NamespaceBump, Error> {
    let (version, bumped_ms) = namespace_epoch(raw, key, known, true).await?;
    Ok(NamespaceBump { version, bumped_ms })
}

pub(super) async fn repair_namespace<R: Raw>(raw: &R, key: &str, known: u64) -> Result<u64, Error> {
    Ok(namespace_epoch(raw, key, known, false).await?.0)
}

pub(super) async fn namespace_version<R: Raw>(raw: &R, key: &str) -> Result<Option<u64>, Error> {
    Ok(parse_version(get(raw, key).await?.as_deref()))
}

/// A stored namespace epoch (`None`: absent or unreadable).
pub(super) fn parse_version(bytes: Option<&[u8]>) -> Option<u64> {
    bytes
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse::<u64>().ok())
}

pub(super) async fn fill_if<R: Raw>(
    raw: &R,
    key: &str,
    value: Vec<u8>,
    ttl: Duration,
    seen: &[u8],
) -> Result<bool, Error> {
    if seen.is_empty() {
        // The load saw no key (the common miss): the script's condition is then exactly "the key
        // does not exist", which `SET NX` checks without running Lua. A resend after a lost reply
        // finds its own write and is refused, as the script's would be: safe.
        return set_nx(raw, key, value, ttl, Resend::Safe).await;
    }
    let mut invocation = scripts::FILL_IF.invocation(&[key]);
    invocation
        .arg(value)
        .arg(seen)
        .arg(millis_at_least_one(ttl));
    // A resend after a lost reply finds its own write and is refused: safe.
    let stored: i64 = raw.invoke(&invocation, Resend::Safe).await?;
    Ok(stored == 1)
}

pub(super) async fn delete_to_tombstone<R: Raw>(
    raw: &R,
    key: &str,
    tombstone: Vec<u8>,
    ttl: Duration,
) -> Result<bool, Error> {
    let mut invocation = scripts::DELETE_TO_TOMBSTONE.invocation(&[key]);
    invocation.arg(tombstone).arg(millis_at_least_one(ttl));
    let removed: i64 = raw.invoke(&invocation, Resend::Safe).await?;
    Ok(removed == 1)
}

pub(super) async fn server_time<R: Raw>(raw: &R) -> Result<Duration, Error> {
    let (secs, micros): (u64, u64) = raw.query(&redis::cmd("TIME"), Resend::Safe).await?;
    Ok(Duration::from_secs(secs) + Duration::from_micros(micros))
}

pub(super) async fn publish<R: Raw>(raw: &R, channel: &str, message: &[u8]) -> Result<(), Error> {
    let mut cmd = redis::cmd("PUBLISH");
    cmd.arg(channel).arg(message);
    let _receivers: i64 = raw.query(&cmd, Resend::Safe).await?;
    Ok(())
}

pub(super) async fn ping<R: Raw>(raw: &R) -> Result<(), Error> {
    let _pong: String = raw.query(&redis::cmd("PING"), Resend::Safe).await?;
    Ok(())
}

pub(super) async fn eviction_settings<R: Raw>(
    raw: &R,
) -> Result<Option<super::EvictionSettings>, Error> {
    let info: String = raw
        .query(redis::cmd("INFO").arg("memory"), Resend::Safe)
        .await?;
    Ok(parse_eviction_settings(&info))
}

/// `maxmemory_policy` and `maxmemory` out of an `INFO memory` reply.
pub(super) fn parse_eviction_settings(info: &str) -> Option<super::EvictionSettings> {
    let field = |name: &str| {
        info.lines().find_map(|line| {
            let (key, value) = line.trim().split_once(':')?;
            (key == name).then(|| value.trim().to_owned())
        })
    };
    Some(super::EvictionSettings {
        policy: field("maxmemory_policy")?,
        maxmemory: field("maxmemory")?.parse().ok()?,
    })
}

pub(super) async fn subscribe<R: Raw>(raw: &R, channel: &str) -> Result<Subscription, Error> {
    let client = raw.pubsub_client().await?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(Subscription::redis(pubsub))
}

pub(super) async fn counters_push<R: Raw>(
    raw: &R,
    keys: &CounterKeys,
    token: &str,
    seq: u64,
    after: u64,
    writer_ttl: Duration,
    entries: &[(String, i64)],
) -> Result<PushOutcome, Error> {
    let writer = keys.writer(token);
    let mut invocation = scripts::COUNTERS_PUSH.invocation(&[keys.live(), &writer]);
    invocation
        .arg(seq)
        .arg(after)
        .arg(millis_at_least_one(writer_ttl));
    for (id, delta) in entries {
        invocation.arg(id).arg(*delta);
    }
    // Resending is safe: the sequence number makes the push idempotent.
    let ((status, rejected), replica): ((i64, Vec<String>), ReplicaAck) = raw
        .invoke_acked(&invocation, keys.live(), Resend::Safe)
        .await?;
    let status = match status {
        1 => PushStatus::Applied,
        0 => PushStatus::AlreadyApplied,
        2 => PushStatus::OutOfOrder,
        other => {
            return Err(Error::Redis(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected write-behind push status",
                other.to_string(),
            ))))
        }
    };
    Ok(PushOutcome {
        status,
        rejected,
        replica,
    })
}

pub(super) async fn counters_seal<R: Raw>(
    raw: &R,
    keys: &CounterKeys,
    id: &str,
    token: &str,
    lease: Duration,
) -> Result<bool, Error> {
    let mut invocation = scripts::COUNTERS_SEAL.invocation(&[
        keys.live(),
        keys.index(),
        keys.leases(),
        &keys.batch(id),
    ]);
    invocation
        .arg(id)
        .arg(token)
        .arg(millis_at_least_one(lease));
    // Not resent: a resend after it landed would fail on the batch-id check (and the next cycle
    // claims the batch this one sealed anyway).
    let (sealed, replica): (i64, ReplicaAck) = raw
        .invoke_acked(&invocation, keys.live(), Resend::Never)
        .await?;
    if sealed == 1 {
        // Unacknowledged: not handed to the sink now (a failover could bring the live hash back
        // and count it twice); the claim of the next cycle waits for the replica again.
        replica.check()?;
    }
    Ok(sealed == 1)
}

pub(super) async fn counters_claim<R: Raw>(
    raw: &R,
    keys: &CounterKeys,
    token: &str,
    lease: Duration,
) -> Result<Option<String>, Error> {
    let mut invocation = scripts::COUNTERS_CLAIM.invocation(&[keys.index(), keys.leases()]);
    invocation.arg(token).arg(millis_at_least_one(lease));
    let (claimed, replica): (Option<String>, ReplicaAck) = raw
        .invoke_acked(&invocation, keys.live(), Resend::Never)
        .await?;
    if claimed.is_some() {
        // The claim wrote its lease, so the acknowledgement covers the batch's sealing too.
        replica.check()?;
    }
    Ok(claimed)
}

pub(super) async fn counters_renew<R: Raw>(
    raw: &R,
    keys: &CounterKeys,
    id: &str,
    token: &str,
    lease: Duration,
) -> Result<bool, Error> {
    let mut invocation = scripts::COUNTERS_RENEW.invocation(&[keys.leases()]);
    invocation
        .arg(id)
        .arg(token)
        .arg(millis_at_least_one(lease));
    let held: i64 = raw.invoke(&invocation, Resend::Safe).await?;
    Ok(held == 1)
}

pub(super) async fn counters_release<R: Raw>(
    raw: &R,
    keys: &CounterKeys,
    id: &str,
    token: &str,
) -> Result<(), Error> {
    let mut invocation = scripts::COUNTERS_RELEASE.invocation(&[keys.leases()]);
    invocation.arg(id).arg(token);
    let _: i64 = raw.invoke(&invocation, Resend::Safe).await?;
    Ok(())
}

pub(super) async fn counters_complete<R: Raw>(
    raw: &R,
    keys: &CounterKeys,
    id: &str,
) -> Result<(), Error> {
    let mut invocation =
        scripts::COUNTERS_COMPLETE.invocation(&[&keys.batch(id), keys.index(), keys.leases()]);
    invocation.arg(id);
    let _: i64 = raw.invoke(&invocation, Resend::Safe).await?;
    Ok(())
}

/// Reads a sealed batch with `HSCAN` pages (no single long command for big batches).
pub(super) async fn counters_read<R: Raw>(
    raw: &R,
    keys: &CounterKeys,
    id: &str,
) -> Result<Vec<(String, i64)>, Error> {
    let key = keys.batch(id);
    let mut found = HashMap::new();
    let mut cursor = "0".to_owned();
    loop {
        let mut cmd = redis::cmd("HSCAN");
        cmd.arg(&key).arg(&cursor).arg("COUNT").arg(1000);
        let (next, page): (String, Vec<String>) = raw.query(&cmd, Resend::Safe).await?;
        collect_pairs(page, &mut found, &key)?;
        if next == "0" {
            break;
        }
        cursor = next;
    }
    Ok(found.into_iter().collect())
}

/// Parses one page of an `HSCAN` reply's field/value list into `out` (a map: HSCAN may return a
/// field twice while the hash is being rehashed).
fn collect_pairs(
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

/// Implements [`Store`](super::Store) for a [`Raw`] store with the functions of this module.
macro_rules! impl_store {
    ($store:ty) => {
        impl $crate::store::Store for $store {
            fn is_shared(&self) -> bool {
                true
            }

            async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
                commands::get(self, key).await
            }

            async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
                commands::Raw::get_many(self, keys).await
            }

            async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), Error> {
                commands::set(self, key, value, ttl).await
            }

            $crate::store::forward_ops!(commands);
        }
    };
}
pub(super) use impl_store;

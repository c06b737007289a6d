//! Every Lua script the crate runs on Redis, in one place, each with the contract it keeps and a
//! unit test against a real Redis.
//!
//! Each script touches keys of one hash slot only (cluster-safe), is loaded once per connection
//! (`EVALSHA` through [`Invocation`], which reloads it on `NOSCRIPT`) and is documented with its `KEYS`, `ARGV` and
//! reply. Whether a script may be resent after a dropped connection is decided where it is called
//! ([`super::commands`]).

use std::sync::OnceLock;

use bb8_redis::redis::{self, aio::ConnectionLike, Cmd, FromRedisValue, Script, ToRedisArgs};

/// A Lua script compiled (hashed) on first use.
pub(crate) struct Lua {
    source: &'static str,
    script: OnceLock<Script>,
}

impl Lua {
    const fn new(source: &'static str) -> Self {
        Lua {
            source,
            script: OnceLock::new(),
        }
    }

    /// The script, hashed on first use.
    fn script(&self) -> &Script {
        self.script.get_or_init(|| Script::new(self.source))
    }

    /// A call of this script on `keys` (all in one hash slot); add its `ARGV` with
    /// [`Invocation::arg`].
    pub(crate) fn invocation(&'static self, keys: &[&str]) -> Invocation {
        let mut eval = Cmd::new();
        eval.arg("EVALSHA")
            .arg(self.script().get_hash())
            .arg(keys.len());
        for key in keys {
            eval.arg(*key);
        }
        Invocation { lua: self, eval }
    }
}

/// One call of a script: its `EVALSHA` command, with the keys and arguments written straight
/// into it as they are added (redis-rs' `ScriptInvocation` keeps a buffer per argument and copies
/// them into a new command per send: a write-behind push has two per counter), and the script to
/// load when the server answers `NOSCRIPT` (a restarted or flushed server).
pub(crate) struct Invocation {
    lua: &'static Lua,
    eval: Cmd,
}

impl Invocation {
    /// Adds `ARGV[n + 1]`.
    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.eval.arg(arg);
        self
    }

    /// The `EVALSHA` command.
    pub(crate) fn eval_cmd(&self) -> &Cmd {
        &self.eval
    }

    /// `SCRIPT LOAD`s the script on `connection`.
    pub(crate) async fn load_async(
        &self,
        connection: &mut impl ConnectionLike,
    ) -> redis::RedisResult<()> {
        let _sha = self.lua.script().load_async(connection).await?;
        Ok(())
    }

    /// Sends the `EVALSHA`; on `NOSCRIPT`, loads the script and sends it once more.
    pub(crate) async fn invoke_async<T: FromRedisValue>(
        &self,
        connection: &mut impl ConnectionLike,
    ) -> redis::RedisResult<T> {
        match self.eval.query_async(connection).await {
            Err(err) if err.code() == Some("NOSCRIPT") => {
                self.load_async(connection).await?;
                self.eval.query_async(connection).await
            }
            reply => reply,
        }
    }
}

/// Sets the local `now` to the Redis server time in milliseconds (prefix of scripts that need it:
/// lease and tag clocks are Redis's, so hosts with skewed clocks agree).
macro_rules! redis_now_ms {
    () => {
        "local t = redis.call('TIME')\n\
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    };
}

/// `DEL KEYS[1]` if it holds `ARGV[1]`: releases a lock only for its owner. Returns 1 if deleted.
pub(crate) static COMPARE_AND_DELETE: Lua = Lua::new(
    r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"#,
);

/// `PEXPIRE KEYS[1] ARGV[2]` if it holds `ARGV[1]`: extends a lock only for its owner. Returns 1
/// if extended.
pub(crate) static COMPARE_AND_EXPIRE: Lua = Lua::new(
    r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
"#,
);

/// One-key script: raises a tag's hard (`ARGV[1] == "hard"`) or soft time to
/// `max(previous + 1, Redis TIME)`, stores `"<hard>:<soft>"` with `PX ARGV[2]`, returns both.
/// Re-running it only moves a time forward (safe to resend).
pub(crate) static BUMP_TAG: Lua = Lua::new(concat!(
    redis_now_ms!(),
    r#"
local hard, soft = 0, 0
local cur = redis.call('GET', KEYS[1])
if cur then
  local h, s = string.match(cur, '^(%d+):(%d+)$')
  if h then hard = tonumber(h); soft = tonumber(s) end
end
if ARGV[1] == 'soft' then soft = math.max(soft + 1, now) else hard = math.max(hard + 1, now) end
redis.call('SET', KEYS[1], string.format('%.0f:%.0f', hard, soft), 'PX', ARGV[2])
return {hard, soft}
"#
));

/// The namespace epoch at `KEYS[1]`, repaired when missing, unreadable or below what the caller
/// knows (`ARGV[1]`): it becomes `max(known + 1, Redis TIME ms)`, above every epoch used before.
/// With `ARGV[2] == 'bump'` a present epoch is raised by one. Returns `{epoch, Redis TIME ms}`.
/// A read is safe to resend; a bump is not (it would bump twice).
pub(crate) static NAMESPACE_EPOCH: Lua = Lua::new(concat!(
    redis_now_ms!(),
    r#"
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
"#
));

/// Repairs the tag record at `KEYS[1]` when it is missing, unreadable or older than what the
/// caller knows (`ARGV[1]` = known hard version): it becomes `"<v>:<v>"` with
/// `v = max(known + 1, Redis TIME ms)` for `PX ARGV[2]` (as if the tag had been invalidated just
/// now). Returns the record's two versions. Safe to resend.
pub(crate) static REPAIR_TAG: Lua = Lua::new(concat!(
    redis_now_ms!(),
    r#"
local known = tonumber(ARGV[1])
local cur = redis.call('GET', KEYS[1])
if cur then
  local h, s = string.match(cur, '^(%d+):(%d+)$')
  if h and tonumber(h) >= known then return {tonumber(h), tonumber(s)} end
end
local v = math.max(known + 1, now)
redis.call('SET', KEYS[1], string.format('%.0f:%.0f', v, v), 'PX', ARGV[2])
return {v, v}
"#
));

/// Conditional fill: stores `ARGV[1]` at `KEYS[1]` for `PX ARGV[3]` only if the key still holds
/// what the load saw when it started (`ARGV[2]`, see [`Seen`](crate::envelope::Seen)): nothing
/// (`''`), the entry or tombstone with that 8-byte write id (offset 32 of a value starting
/// `CL\x02`, at least 40 bytes), or something of another format or Redis type (`'x'`). Returns 1
/// when stored. Safe to resend (a resend finds its own write and is refused). A fill that saw nothing does not run it:
/// its condition is then "the key does not exist", which `SET NX` checks (`commands.rs`).
pub(crate) static FILL_IF: Lua = Lua::new(
    r#"
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
"#,
);

/// Delete that leaves the tombstone `ARGV[1]` at `KEYS[1]` for `PX ARGV[2]`, so a fill whose load
/// started before it is refused. Returns 1 if a live entry (not a tombstone) was there.
pub(crate) static DELETE_TO_TOMBSTONE: Lua = Lua::new(
    r#"
local cur = redis.pcall('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if type(cur) == 'table' or not cur then return 0 end
if string.sub(cur, 1, 3) == 'CL\2' and #cur >= 40 and string.byte(cur, 4) == 128 then return 0 end
return 1
"#,
);

/// Applies one push of a writer exactly once, in the writer's order. KEYS: live hash, writer key.
/// ARGV: sequence number, `after` (the sequence number of the writer's push sent just before this
/// one and not yet acknowledged to it, or 0), writer-key TTL (ms), then field/delta pairs. Returns
/// `{status, {fields that failed}}`, status 1 applied, 0 already applied, 2 refused.
///
/// The writer key holds the writer's highest applied sequence number. A push whose number it
/// already holds (or exceeds) is a retry of one that landed (its reply was lost, or no replica
/// acknowledged it): it is acknowledged without being applied again. The retry still rewrites
/// the writer key (same value, fresh TTL): a write `WAIT` can count, so a `WAIT` after the retry
/// returns only once a replica has everything up to it, the original push included (`WAIT` waits
/// for the connection's last *write*; a retry that wrote nothing would be acknowledged at once on
/// a fresh connection).
///
/// A writer may have two pushes in flight. The second carries the first's number as `after`, and
/// is refused (status 2, nothing written) while the writer key is below it: the first has not
/// landed (lost, or still on its way on another connection). Applying the second first would
/// raise the writer's number past the first, and the first would then be taken for a retry and
/// dropped. The writer resends a refused push after the one before it was acknowledged.
///
/// The checks, the increments and the new sequence number are one script, so they land (and
/// reach the AOF and the replicas) together or not at all. HINCRBY runs under `pcall` so one
/// field that would overflow cannot abort the script halfway (scripts are not rolled back).
pub(crate) static COUNTERS_PUSH: Lua = Lua::new(
    r#"
local seq = tonumber(ARGV[1])
local last = redis.call('GET', KEYS[2])
local applied = tonumber(last or '0')
if seq <= applied then
  redis.call('SET', KEYS[2], last, 'PX', ARGV[3])
  return {0, {}}
end
if tonumber(ARGV[2]) > applied then
  return {2, {}}
end
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE write-behind counters key holds a ' .. kind)
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
local failed = {}
for i = 4, #ARGV, 2 do
  local r = redis.pcall('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  if type(r) == 'table' and r.err then failed[#failed + 1] = ARGV[i] end
end
return {1, failed}
"#,
);

/// Seals the live hash into a batch leased by the caller. KEYS: live, index, leases, batch key.
/// ARGV: batch id, owner token, lease (ms). Returns 1 when sealed, 0 when there was nothing.
pub(crate) static COUNTERS_SEAL: Lua = Lua::new(concat!(
    redis_now_ms!(),
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return redis.error_reply('ERR write-behind batch id collision')
end
redis.call('RENAME', KEYS[1], KEYS[4])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], string.format('%d:%s', now + tonumber(ARGV[3]), ARGV[2]))
return 1
"#
));

/// Claims the oldest sealed batch that nobody holds (no lease, an expired one, or one held by the
/// caller's own token: a flush of this process that was interrupted). KEYS: index, leases.
/// ARGV: owner token, lease (ms). Returns the batch id or nil.
pub(crate) static COUNTERS_CLAIM: Lua = Lua::new(concat!(
    redis_now_ms!(),
    r#"
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
"#
));

/// Extends the caller's lease. KEYS: leases. ARGV: batch id, token, lease (ms). 1 if still held.
pub(crate) static COUNTERS_RENEW: Lua = Lua::new(concat!(
    redis_now_ms!(),
    r#"
local lease = redis.call('HGET', KEYS[1], ARGV[1])
if not lease then return 0 end
local sep = string.find(lease, ':', 1, true)
if string.sub(lease, sep + 1) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d:%s', now + tonumber(ARGV[3]), ARGV[2]))
return 1
"#
));

/// Gives a batch back (its sink failed) so any flusher may retry it. KEYS: leases.
/// ARGV: batch id, token. Returns 1 if the caller held it.
pub(crate) static COUNTERS_RELEASE: Lua = Lua::new(
    r#"
local lease = redis.call('HGET', KEYS[1], ARGV[1])
if lease and string.sub(lease, string.find(lease, ':', 1, true) + 1) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"#,
);

/// Deletes a delivered batch. KEYS: batch key, index, leases. ARGV: batch id. Unconditional: a
/// batch is immutable once sealed, so once any flusher delivered it nothing is lost by deleting it.
pub(crate) static COUNTERS_COMPLETE: Lua = Lua::new(
    r#"
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"#,
);

#[cfg(test)]
mod tests {
    //! Each script against a real Redis: `$REDIS_URL` or the shared `127.0.0.1:6379`, under a key
    //! prefix unique to the test. Without a reachable Redis the tests are skipped with a message,
    //! except under `CI=true`, where they fail.

    use bb8_redis::redis::{self, aio::MultiplexedConnection, AsyncCommands};

    use super::*;

    async fn redis() -> Option<(MultiplexedConnection, String)> {
        let url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let connected = async {
            let client = redis::Client::open(url.as_str())?;
            client.get_multiplexed_async_connection().await
        };
        match tokio::time::timeout(std::time::Duration::from_secs(2), connected).await {
            Ok(Ok(conn)) => {
                let prefix = format!("scripts-test:{:016x}", rand::random::<u64>());
                Some((conn, prefix))
            }
            _ if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("no Redis at {url}: the script tests need one under CI")
            }
            _ => {
                eprintln!("skipping: no Redis at {url} (set REDIS_URL or start redis-server)");
                None
            }
        }
    }

    #[test]
    fn an_invocation_is_the_same_evalsha_as_redis_rs_builds() {
        let mut ours = COUNTERS_PUSH.invocation(&["live", "writer:w"]);
        ours.arg(7).arg(6).arg(60_000).arg("page:1").arg(-3_i64);
        let mut theirs = COUNTERS_PUSH.script().prepare_invoke();
        theirs
            .key("live")
            .key("writer:w")
            .arg(7)
            .arg(6)
            .arg(60_000)
            .arg("page:1")
            .arg(-3_i64);
        let mut pipe = redis::pipe();
        pipe.invoke_script(&theirs);
        let expected = pipe.cmd_iter().next().map(redis::Cmd::get_packed_command);
        assert_eq!(Some(ours.eval_cmd().get_packed_command()), expected);
    }

    #[tokio::test]
    async fn a_script_the_server_does_not_have_is_loaded_and_run() {
        let Some((mut conn, p)) = redis().await else {
            return;
        };
        // A source no server has seen (the test's unique prefix is in it): the first EVALSHA is
        // answered NOSCRIPT.
        let source = format!("-- {p}\nreturn redis.call('INCR', KEYS[1])");
        let lua: &'static Lua = Box::leak(Box::new(Lua::new(Box::leak(source.into_boxed_str()))));
        let key = format!("{p}:n");
        let invocation = lua.invocation(&[&key]);
        let first: redis::RedisResult<i64> = invocation.eval_cmd().query_async(&mut conn).await;
        assert_eq!(
            first.err().and_then(|err| err.code().map(str::to_owned)),
            Some("NOSCRIPT".to_owned())
        );
        assert_eq!(invocation.invoke_async::<i64>(&mut conn).await.unwrap(), 1);
        assert_eq!(invocation.invoke_async::<i64>(&mut conn).await.unwrap(), 2);
        let _: () = conn.del(&key).await.unwrap();
    }

    #[tokio::test]
    async fn compare_and_delete_removes_only_the_owners_lock() {
        let Some((mut conn, p)) = redis().await else {
            return;
        };
        let key = format!("{p}:lock");
        let _: () = conn.set(&key, "mine").await.unwrap();
        let run = |token: &'static str| {
            let mut invocation = COMPARE_AND_DELETE.invocation(&[&key]);
            invocation.arg(token);
            invocation
        };
        let removed: i64 = run("theirs").invoke_async(&mut conn).await.unwrap();
        assert_eq!(removed, 0);
        let removed: i64 = run("mine").invoke_async(&mut conn).await.unwrap();
        assert_eq!(removed, 1);
        assert!(!conn.exists::<_, bool>(&key).await.unwrap());
    }

    #[tokio::test]
    async fn compare_and_expire_extends_only_the_owners_lock() {
        let Some((mut conn, p)) = redis().await else {
            return;
        };
        let key = format!("{p}:lock");
        let _: () = conn.set_ex(&key, "mine", 10).await.unwrap();
        let run = |token: &'static str| {
            let mut invocation = COMPARE_AND_EXPIRE.invocation(&[&key]);
            invocation.arg(token).arg(60_000);
            invocation
        };
        let extended: i64 = run("theirs").invoke_async(&mut conn).await.unwrap();
        assert_eq!(extended, 0);
        assert!(conn.pttl::<_, i64>(&key).await.unwrap() <= 10_000);
        let extended: i64 = run("mine").invoke_async(&mut conn).await.unwrap();
        assert_eq!(extended, 1);
        assert!(conn.pttl::<_, i64>(&key).await.unwrap() > 10_000);
        let _: () = conn.del(&key).await.unwrap();
    }

    #[tokio::test]
    async fn bump_tag_raises_one_time_monotonically_with_the_tag_ttl() {
        let Some((mut conn, p)) = redis().await else {
            return;
        };
        let key = format!("{p}:tag");
        let bump = |field: &'static str| {
            let mut invocation = BUMP_TAG.invocation(&[&key]);
            invocation.arg(field).arg(60_000);
            invocation
        };
        let (hard, soft): (u64, u64) = bump("hard").invoke_async(&mut conn).await.unwrap();
        assert!(hard > 1_600_000_000_000, "Redis time in ms: {hard}");
        assert_eq!(soft, 0);
        let (hard2, soft2): (u64, u64) = bump("hard").invoke_async(&mut conn).await.unwrap();
        assert!(
            hard2 > hard,
            "two bumps in one millisecond still move forward"
        );
        assert_eq!(soft2, 0);
        let (hard3, soft3): (u64, u64) = bump("soft").invoke_async(&mut conn).await.unwrap();
        assert_eq!(hard3, hard2);
        assert!(soft3 >= hard);
        let stored: String = conn.get(&key).await.unwrap();
        assert_eq!(stored, format!("{hard3}:{soft3}"));
        assert!(conn.pttl::<_, i64>(&key).await.unwrap() > 0);
        let _: () = conn.del(&key).await.unwrap();
    }

    #[tokio::test]
    async fn namespace_epoch_is_repaired_above_what_is_known_and_bumped_by_one() {
        let Some((mut conn, p)) = redis().await else {
            return;
        };
        let key = format!("{p}:version");
        let (v1, at1): (u64, u64) = NAMESPACE_EPOCH
            .invocation(&[&key])
            .arg(0)
            .arg("read")
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert!(
            v1 >= at1 && at1 > 1_600_000_000_000,
            "missing: repaired to the time"
        );
        let (v2, _): (u64, u64) = NAMESPACE_EPOCH
            .invocation(&[&key])
            .arg(v1)
            .arg("bump")
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(v2, v1 + 1);
        let (v3, _): (u64, u64) = NAMESPACE_EPOCH
            .invocation(&[&key])
            .arg(0)
            .arg("read")
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(v3, v2, "a present epoch is kept");
        let (v4, _): (u64, u64) = NAMESPACE_EPOCH
            .invocation(&[&key])
            .arg(v2 + 100)
            .arg("read")
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert!(
            v4 > v2 + 100,
            "an epoch behind what is known is repaired upward"
        );
        let _: () = conn.del(&key).await.unwrap();
    }

    #[tokio::test]
    async fn fill_if_stores_only_over_what_the_load_saw_and_tombstones_refuse_it() {
        let Some((mut conn, p)) = redis().await else {
            return;
        };
        let key = format!("{p}:entry");
        let fill = |value: &'static str, seen: &'static [u8]| {
            let mut invocation = FILL_IF.invocation(&[&key]);
            invocation.arg(value).arg(seen).arg(60_000);
            invocation
        };
        let stored: i64 = fill("a", b"").invoke_async(&mut conn).await.unwrap();
        assert_eq!(stored, 1, "absent, as seen");
        let stored: i64 = fill("b", b"").invoke_async(&mut conn).await.unwrap();
        assert_eq!(stored, 0, "no longer absent");
        let stored: i64 = fill("c", b"x").invoke_async(&mut conn).await.unwrap();
        assert_eq!(stored, 1, "foreign bytes, as seen");
        let mut tomb = b"CL\x02\x80".to_vec();
        tomb.extend_from_slice(&[0; 28]);
        tomb.extend_from_slice(b"12345678");
        let removed: i64 = DELETE_TO_TOMBSTONE
            .invocation(&[&key])
            .arg(&tomb[..])
            .arg(60_000)
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(removed, 1);
        let stored: i64 = fill("d", b"").invoke_async(&mut conn).await.unwrap();
        assert_eq!(stored, 0, "the tombstone refuses a load that saw nothing");
        let stored: i64 = fill("e", b"12345678")
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            stored, 1,
            "a load that started after the delete saw the tombstone"
        );
        let _: () = conn.del(&key).await.unwrap();
    }

    #[tokio::test]
    async fn counters_push_applies_each_sequence_number_once() {
        let Some((mut conn, p)) = redis().await else {
            return;
        };
        let (live, writer) = (format!("{p}:{{c}}"), format!("{p}:{{c}}:writer:w"));
        let push_after = |seq: u64, after: u64, field: &'static str, delta: i64| {
            let mut invocation = COUNTERS_PUSH.invocation(&[&live, &writer]);
            invocation
                .arg(seq)
                .arg(after)
                .arg(60_000)
                .arg(field)
                .arg(delta);
            invocation
        };
        let push = |seq: u64, field: &'static str, delta: i64| push_after(seq, 0, field, delta);
        let (applied, failed): (i64, Vec<String>) =
            push(1, "a", 2).invoke_async(&mut conn).await.unwrap();
        assert_eq!((applied, failed.len()), (1, 0));
        let _: () = conn.pexpire(&writer, 1_000).await.unwrap();
        let (applied, _): (i64, Vec<String>) =
            push(1, "a", 2).invoke_async(&mut conn).await.unwrap();
        assert_eq!(applied, 0, "a resent push is not applied twice");
        // ... but it still writes (the writer key, same value, fresh TTL), so a WAIT after it
        // covers the original push.
        assert_eq!(conn.get::<_, String>(&writer).await.unwrap(), "1");
        assert!(conn.pttl::<_, i64>(&writer).await.unwrap() > 1_000);
        let _: () = conn.hset(&live, "big", i64::MAX).await.unwrap();
        let (applied, failed): (i64, Vec<String>) =
            push(2, "big", 1).invoke_async(&mut conn).await.unwrap();
        assert_eq!((applied, failed), (1, vec!["big".to_owned()]));
        assert_eq!(conn.hget::<_, _, i64>(&live, "a").await.unwrap(), 2);
        // Two pushes in flight, arriving out of order: the second (4, after 3) is refused while
        // 3 has not landed, and writes nothing; once 3 landed, its resend applies.
        let (status, _): (i64, Vec<String>) = push_after(4, 3, "a", 10)
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(status, 2, "refused: the push before it has not landed");
        assert_eq!(conn.get::<_, String>(&writer).await.unwrap(), "2");
        assert_eq!(conn.hget::<_, _, i64>(&live, "a").await.unwrap(), 2);
        let (status, _): (i64, Vec<String>) = push_after(3, 2, "a", 100)
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(status, 1);
        let (status, _): (i64, Vec<String>) = push_after(4, 3, "a", 10)
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(status, 1);
        assert_eq!(conn.hget::<_, _, i64>(&live, "a").await.unwrap(), 112);
        // A writer whose record expired (or was lost with a Redis restart) and has nothing in
        // flight sends `after` 0: applied.
        let _: () = conn.del(&writer).await.unwrap();
        let (status, _): (i64, Vec<String>) = push_after(5, 0, "a", 1)
            .invoke_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(status, 1);
        let _: () = conn.del(&[&live, &writer]).await.unwrap();
    }

    #[tokio::test]
    async fn counters_batches_are_sealed_claimed_renewed_released_and_completed() {
        let Some((mut conn, p)) = redis().await else {
            return;
        };
        let live = format!("{p}:{{c}}");
        let (index, leases, batch) = (
            format!("{live}:batches"),
            format!("{live}:leases"),
            format!("{live}:batch:b1"),
        );
        let seal = || {
            let mut invocation = COUNTERS_SEAL.invocation(&[&live, &index, &leases, &batch]);
            invocation.arg("b1").arg("me").arg(60_000);
            invocation
        };
        let sealed: i64 = seal().invoke_async(&mut conn).await.unwrap();
        assert_eq!(sealed, 0, "nothing to seal");
        let _: () = conn.hset(&live, "a", 5).await.unwrap();
        let sealed: i64 = seal().invoke_async(&mut conn).await.unwrap();
        assert_eq!(sealed, 1);
        assert_eq!(conn.hget::<_, _, i64>(&batch, "a").await.unwrap(), 5);

        let claim = |token: &'static str| {
            let mut invocation = COUNTERS_CLAIM.invocation(&[&index, &leases]);
            invocation.arg(token).arg(60_000);
            invocation
        };
        let claimed: Option<String> = claim("other").invoke_async(&mut conn).await.unwrap();
        assert_eq!(claimed, None, "leased to me");
        let claimed: Option<String> = claim("me").invoke_async(&mut conn).await.unwrap();
        assert_eq!(claimed.as_deref(), Some("b1"), "own lease reclaimed");

        let renew = |token: &'static str| {
            let mut invocation = COUNTERS_RENEW.invocation(&[&leases]);
            invocation.arg("b1").arg(token).arg(60_000);
            invocation
        };
        assert_eq!(
            renew("other").invoke_async::<i64>(&mut conn).await.unwrap(),
            0
        );
        assert_eq!(renew("me").invoke_async::<i64>(&mut conn).await.unwrap(), 1);

        let release = |token: &'static str| {
            let mut invocation = COUNTERS_RELEASE.invocation(&[&leases]);
            invocation.arg("b1").arg(token);
            invocation
        };
        assert_eq!(
            release("other")
                .invoke_async::<i64>(&mut conn)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            release("me").invoke_async::<i64>(&mut conn).await.unwrap(),
            1
        );
        let claimed: Option<String> = claim("other").invoke_async(&mut conn).await.unwrap();
        assert_eq!(
            claimed.as_deref(),
            Some("b1"),
            "released: anyone may claim it"
        );

        let mut complete = COUNTERS_COMPLETE.invocation(&[&batch, &index, &leases]);
        complete.arg("b1");
        assert_eq!(complete.invoke_async::<i64>(&mut conn).await.unwrap(), 1);
        assert!(!conn.exists::<_, bool>(&batch).await.unwrap());
        let claimed: Option<String> = claim("me").invoke_async(&mut conn).await.unwrap();
        assert_eq!(claimed, None, "completed batches are gone");
        let _: () = conn.del(&[&live, &index, &leases]).await.unwrap();
    }

    /// Every script of this module.
    const ALL: &[(&str, &Lua)] = &[
        ("COMPARE_AND_DELETE", &COMPARE_AND_DELETE),
        ("COMPARE_AND_EXPIRE", &COMPARE_AND_EXPIRE),
        ("BUMP_TAG", &BUMP_TAG),
        ("NAMESPACE_EPOCH", &NAMESPACE_EPOCH),
        ("REPAIR_TAG", &REPAIR_TAG),
        ("FILL_IF", &FILL_IF),
        ("DELETE_TO_TOMBSTONE", &DELETE_TO_TOMBSTONE),
        ("COUNTERS_PUSH", &COUNTERS_PUSH),
        ("COUNTERS_SEAL", &COUNTERS_SEAL),
        ("COUNTERS_CLAIM", &COUNTERS_CLAIM),
        ("COUNTERS_RENEW", &COUNTERS_RENEW),
        ("COUNTERS_RELEASE", &COUNTERS_RELEASE),
        ("COUNTERS_COMPLETE", &COUNTERS_COMPLETE),
    ];

    /// How many leading arguments of a command are keys (`None`: all of them).
    fn key_arguments(command: &str) -> Option<usize> {
        match command.to_ascii_uppercase().as_str() {
            "TIME" => Some(0),
            "DEL" | "UNLINK" | "EXISTS" | "MGET" => None,
            "RENAME" => Some(2),
            "GET" | "SET" | "TYPE" | "INCR" | "PEXPIRE" | "HGET" | "HSET" | "HDEL" | "HINCRBY"
            | "HGETALL" | "ZADD" | "ZRANGE" | "ZREM" => Some(1),
            other => panic!(
                "a script calls {other}: add it to key_arguments (how many leading arguments are keys)"
            ),
        }
    }

    /// The `redis.call(..)` / `redis.pcall(..)` argument lists of a script, split at top-level
    /// commas.
    fn calls(source: &str) -> Vec<Vec<String>> {
        let mut calls = Vec::new();
        let mut rest = source;
        while let Some(at) = [rest.find("redis.call("), rest.find("redis.pcall(")]
            .into_iter()
            .flatten()
            .min()
        {
            let open = at + rest[at..].find('(').expect("an opening parenthesis");
            let (mut depth, mut quote, mut args, mut current) =
                (0usize, None, Vec::new(), String::new());
            let mut end = open;
            for (i, c) in rest[open + 1..].char_indices() {
                match (quote, c) {
                    (Some(q), c) if c == q => {
                        quote = None;
                        current.push(c);
                    }
                    (Some(_), c) => current.push(c),
                    (None, '\'' | '"') => {
                        quote = Some(c);
                        current.push(c);
                    }
                    (None, '(' | '[' | '{') => {
                        depth += 1;
                        current.push(c);
                    }
                    (None, ')') if depth == 0 => {
                        end = open + 1 + i;
                        break;
                    }
                    (None, ')' | ']' | '}') => {
                        depth -= 1;
                        current.push(c);
                    }
                    (None, ',') if depth == 0 => args.push(std::mem::take(&mut current)),
                    (None, c) => current.push(c),
                }
            }
            args.push(current);
            calls.push(args.into_iter().map(|a| a.trim().to_owned()).collect());
            rest = &rest[end..];
        }
        calls
    }

    /// Every key a script touches is declared: each key argument of each `redis.call` /
    /// `redis.pcall` is a `KEYS[n]`, never a name built inside the script. Redis Cluster routes a
    /// script by its declared keys, and stores such as Dragonfly and Garnet refuse undeclared
    /// ones.
    #[test]
    fn every_key_a_script_touches_is_declared() {
        let mut checked = 0;
        for (name, lua) in ALL {
            let calls = calls(lua.source);
            assert!(!calls.is_empty(), "{name}: no redis.call found");
            for args in calls {
                let command = args[0].trim_matches(|c| c == '\'' || c == '"');
                let keys = key_arguments(command).unwrap_or(args.len() - 1);
                for key in args.iter().skip(1).take(keys) {
                    let declared = key
                        .strip_prefix("KEYS[")
                        .and_then(|k| k.strip_suffix(']'))
                        .is_some_and(|n| n.parse::<usize>().is_ok());
                    assert!(declared, "{name}: {command} touches {key}, not a KEYS[n]");
                    checked += 1;
                }
            }
        }
        assert!(checked >= ALL.len(), "checked {checked} key arguments");
    }

    #[test]
    fn the_declared_keys_check_catches_an_undeclared_key() {
        let calls = calls("local k = ARGV[1] .. ':x'\nredis.call('SET', k, ARGV[2], 'PX', 5)\nredis.pcall(\"GET\", KEYS[1])");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0][..2], ["'SET'".to_owned(), "k".to_owned()]);
        assert_eq!(calls[1], ["\"GET\"".to_owned(), "KEYS[1]".to_owned()]);
    }
}

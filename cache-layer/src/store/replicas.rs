//! Replica acknowledgement of the write-behind writes (a push of increments, the sealing or
//! claiming of a batch): which servers have replicas, and a script followed by `WAIT` on a
//! connection of its own.
//!
//! - Whether a server has replicas is its `INFO replication` `connected_slaves`, remembered for
//!   [`REPLICA_INFO_TTL`] per node (a Cluster asks the master owning the keys' slot). Without
//!   replicas nothing changes: the script runs as every other, no command is added.
//! - With replicas the script and `WAIT 1 <timeout>` go out pipelined, on a connection used by one
//!   operation at a time: `WAIT` blocks its connection until a replica acknowledged or the
//!   timeout passed, so it must never run on a multiplexed connection other callers' commands
//!   queue behind. The client keeps the timeout (the server's is coarse); a connection whose
//!   `WAIT` was cut short is closed, acknowledged ones are kept idle (a few per node) for the next
//!   operation.
//! - The timeout is a third of the op timeout ([`ack_timeout`]), so the whole operation (script,
//!   `WAIT`, round trips) still fits in one op timeout.
//!
//! `WAIT` counts the replicas that have everything up to the connection's last *write*: every
//! script run here writes (a replayed push rewrites its writer key for that reason, see
//! `scripts::COUNTERS_PUSH`), so the acknowledgement covers the operation and what it builds on.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    task::Poll,
    time::{Duration, Instant},
};

use bb8_redis::redis::{self, aio::MultiplexedConnection, FromRedisValue, Value};

use super::{commands::Resend, scripts::Invocation, ReplicaAck};
use crate::{util::lock, Error};

/// How long a node's replica count is trusted before `INFO replication` is read again.
pub(super) const REPLICA_INFO_TTL: Duration = Duration::from_secs(10);

/// Idle `WAIT` connections kept per node (more are closed after use).
const IDLE_PER_NODE: usize = 2;

/// How long a write waits for a replica: a third of the op timeout (at least 1 ms: `WAIT` with 0
/// would block forever).
pub(super) fn ack_timeout(op_timeout: Duration) -> Duration {
    (op_timeout / 3).max(Duration::from_millis(1))
}

/// `connected_slaves` out of an `INFO replication` reply.
pub(super) fn connected_replicas(info: &str) -> Option<u32> {
    info.lines().find_map(|line| {
        let (key, value) = line.trim().split_once(':')?;
        (key == "connected_slaves").then(|| value.trim().parse().ok())?
    })
}

/// What a store knows about each node's replicas, and the idle `WAIT` connections to it.
#[derive(Default)]
pub(super) struct Replicas {
    nodes: Mutex<HashMap<String, Node>>,
    /// `INFO` was refused once (an ACL without `+info`): logged once.
    info_refused_logged: AtomicBool,
}

#[derive(Default)]
struct Node {
    /// The replica count and when it was read.
    replicas: Option<(Instant, u32)>,
    idle: Vec<MultiplexedConnection>,
}

impl Replicas {
    /// The replica count of `node`, if read within [`REPLICA_INFO_TTL`].
    pub(super) fn cached(&self, node: &str) -> Option<u32> {
        let nodes = lock(&self.nodes);
        let (read_at, count) = nodes.get(node)?.replicas?;
        (read_at.elapsed() < REPLICA_INFO_TTL).then_some(count)
    }

    /// Remembers the replica count read from `node`'s `INFO replication` (`reply`). A server that
    /// refuses `INFO` (an ACL without `+info`, a proxy without the command) counts as having
    /// none, logged once: the writes then go unacknowledged instead of failing.
    pub(super) fn learn(&self, node: &str, reply: Result<String, Error>) -> Result<u32, Error> {
        let count = match reply {
            Ok(info) => connected_replicas(&info).unwrap_or(0),
            Err(Error::Redis(err)) if matches!(err.code(), Some("NOPERM" | "ERR")) => {
                if !self.info_refused_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %Error::Redis(err),
                        "INFO replication refused: write-behind counters cannot tell whether redis \
                         has replicas and do not wait for a replica to acknowledge their writes");
                }
                0
            }
            Err(err) => return Err(err),
        };
        lock(&self.nodes)
            .entry(node.to_owned())
            .or_default()
            .replicas = Some((Instant::now(), count));
        Ok(count)
    }

    /// Makes the next write to `node` read its replica count again (no replica acknowledged:
    /// maybe it left; or the node changed role).
    pub(super) fn forget(&self, node: &str) {
        if let Some(state) = lock(&self.nodes).get_mut(node) {
            state.replicas = None;
        }
    }

    /// An idle `WAIT` connection to `node`, if one is kept.
    pub(super) fn take_idle(&self, node: &str) -> Option<MultiplexedConnection> {
        lock(&self.nodes).get_mut(node)?.idle.pop()
    }

    /// Keeps `connection` (which just completed an operation) for the next one, unless enough are
    /// kept.
    pub(super) fn put_idle(&self, node: &str, connection: MultiplexedConnection) {
        let mut nodes = lock(&self.nodes);
        let idle = &mut nodes.entry(node.to_owned()).or_default().idle;
        if idle.len() < IDLE_PER_NODE {
            idle.push(connection);
        }
    }

    /// Closes every idle connection to `node` (it failed over or stopped answering).
    pub(super) fn drop_idle(&self, node: &str) {
        if let Some(state) = lock(&self.nodes).get_mut(node) {
            state.idle.clear();
        }
    }
}

/// Whether the script of a failed replicated write cannot have run, so it may be sent again to
/// the (new) owner of its keys: the node no longer owns the slot, or is a replica now.
pub(super) fn not_run_here(err: &redis::RedisError) -> bool {
    matches!(err.code(), Some("MOVED" | "ASK" | "READONLY"))
}

/// Whether a failed replicated write may be sent again on a new connection: its script cannot
/// have run ([`not_run_here`]), or it may have but running it twice is safe and the connection
/// dropped (a kept idle connection the server had closed, a restart).
pub(super) fn may_resend(err: &redis::RedisError, resend: Resend) -> bool {
    not_run_here(err) || (resend == Resend::Safe && err.is_connection_dropped())
}

/// Runs `invocation` followed by `WAIT` ([`invoke_then_wait`]) on a connection to `node` used by
/// nothing else meanwhile: a kept idle one, or a new one from `connect`. The connection is kept
/// for the next write only when a replica acknowledged (a `WAIT` cut short by the client may
/// still block it on the server); after a failure it and the other idle ones to `node` are
/// closed. `NOSCRIPT` (a restarted server): the script is loaded on a new connection and sent
/// once more. No replica acknowledging makes the next write read the replica count again (maybe
/// the replica left).
pub(super) async fn invoke_on_own_connection<T, C, CF>(
    replicas: &Replicas,
    node: &str,
    connect: C,
    invocation: &Invocation,
    timeout: Duration,
) -> redis::RedisResult<(T, ReplicaAck)>
where
    T: FromRedisValue,
    C: Fn() -> CF,
    CF: std::future::Future<Output = redis::RedisResult<MultiplexedConnection>>,
{
    let mut connection = match replicas.take_idle(node) {
        Some(connection) => connection,
        None => connect().await?,
    };
    let mut result = invoke_then_wait(&mut connection, invocation, timeout).await;
    if matches!(&result, Err(err) if err.code() == Some("NOSCRIPT")) {
        // The script did not run; this connection may be blocked in the WAIT sent after it.
        connection = connect().await?;
        invocation.load_async(&mut connection).await?;
        result = invoke_then_wait(&mut connection, invocation, timeout).await;
    }
    match result {
        Ok((reply, ack)) => {
            if let ReplicaAck::Acknowledged(_) = ack {
                replicas.put_idle(node, connection);
            } else {
                replicas.forget(node);
            }
            Ok((reply, ack))
        }
        Err(err) => {
            replicas.drop_idle(node);
            if not_run_here(&err) {
                replicas.forget(node);
            }
            Err(err)
        }
    }
}

/// Sends `invocation` (`EVALSHA`) and `WAIT 1 <timeout>` back to back on `connection` (pipelined:
/// the script's request is queued before `WAIT`'s, so `WAIT` covers what the script wrote), then
/// waits for the script's reply and at most `timeout` for `WAIT`'s. The deadline is kept here,
/// not by the server: Redis checks blocked clients' timeouts only on its cron tick (every 100 ms
/// at the default `hz 10`), so a `WAIT 1 100` can take 200 ms. A `WAIT` cut short is
/// [`ReplicaAck::TimedOut`]; the connection must then not be reused.
pub(super) async fn invoke_then_wait<T: FromRedisValue>(
    connection: &mut MultiplexedConnection,
    invocation: &Invocation,
    timeout: Duration,
) -> redis::RedisResult<(T, ReplicaAck)> {
    let script = invocation.eval_cmd();
    let millis = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut wait = redis::cmd("WAIT");
    wait.arg(1).arg(millis);

    let mut waiting = connection.clone();
    let script_reply = script.query_async::<Value>(connection);
    let wait_reply = wait.query_async::<i64>(&mut waiting);
    tokio::pin!(script_reply, wait_reply);
    // First polls, in this order, queue the two requests on the connection (its queue is FIFO),
    // so they go out in this order without waiting for each other.
    let script_early = futures_util::poll!(script_reply.as_mut());
    let wait_early = futures_util::poll!(wait_reply.as_mut());
    let script_value = match script_early {
        Poll::Ready(reply) => reply,
        Poll::Pending => script_reply.await,
    }?;
    let reply = T::from_redis_value(script_value)?;
    let acknowledged = match wait_early {
        Poll::Ready(reply) => reply?,
        Poll::Pending => match tokio::time::timeout(timeout, wait_reply).await {
            Ok(reply) => reply?,
            Err(_elapsed) => 0,
        },
    };
    let ack = match u32::try_from(acknowledged) {
        Ok(n) if n > 0 => ReplicaAck::Acknowledged(n),
        _ => ReplicaAck::TimedOut(timeout),
    };
    Ok((reply, ack))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_count_is_read_from_info_replication() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=127.0.0.1,port=1,state=online,offset=1,lag=0\r\n";
        assert_eq!(connected_replicas(info), Some(2));
        assert_eq!(connected_replicas("role:master\r\n"), None);
        assert_eq!(connected_replicas("connected_slaves:x\r\n"), None);
    }

    #[test]
    fn the_ack_timeout_is_a_third_of_the_op_timeout_and_never_zero() {
        assert_eq!(
            ack_timeout(Duration::from_millis(300)),
            Duration::from_millis(100)
        );
        assert_eq!(
            ack_timeout(Duration::from_micros(10)),
            Duration::from_millis(1)
        );
    }

    /// Against the shared Redis (`$REDIS_URL` or `127.0.0.1:6379`, no replicas): the script runs
    /// and its reply comes back; `WAIT` is cut short by the client at the timeout.
    #[tokio::test]
    async fn a_script_and_wait_are_pipelined_and_the_wait_is_cut_at_the_timeout() {
        let url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let connected = async {
            redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await
        };
        let mut conn = match tokio::time::timeout(Duration::from_secs(2), connected).await {
            Ok(Ok(conn)) => conn,
            _ if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("no Redis at {url}: this test needs one under CI")
            }
            _ => {
                eprintln!("skipping: no Redis at {url}");
                return;
            }
        };
        let key = format!("replicas-test:{:016x}", rand::random::<u64>());
        let mut invocation = crate::store::scripts::BUMP_TAG.invocation(&[&key]);
        invocation.arg("hard").arg(60_000);
        invocation.load_async(&mut conn).await.unwrap();
        let timeout = Duration::from_millis(30);
        let started = Instant::now();
        let ((hard_ms, _soft_ms), ack): ((u64, u64), ReplicaAck) =
            invoke_then_wait(&mut conn, &invocation, timeout)
                .await
                .unwrap();
        assert!(hard_ms > 0, "the script ran and bumped the tag");
        assert_eq!(
            ack,
            ReplicaAck::TimedOut(timeout),
            "no replica acknowledges"
        );
        assert!(started.elapsed() >= timeout);
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    #[test]
    fn replica_counts_expire_and_can_be_forgotten() {
        let replicas = Replicas::default();
        assert_eq!(replicas.cached("a"), None);
        let count = replicas
            .learn("a", Ok("connected_slaves:1\r\n".to_owned()))
            .unwrap();
        assert_eq!((count, replicas.cached("a")), (1, Some(1)));
        assert_eq!(replicas.cached("b"), None, "per node");
        replicas.forget("a");
        assert_eq!(replicas.cached("a"), None);
        // A refused INFO (an ACL without +info) counts as no replicas; a connection error is
        // an error.
        let refused = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm),
            "NOPERM",
        ));
        assert_eq!(replicas.learn("a", Err(Error::Redis(refused))).unwrap(), 0);
        assert!(replicas
            .learn("a", Err(Error::Timeout(Duration::from_millis(1))))
            .is_err());
    }
}

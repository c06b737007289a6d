//! Redis Cluster via redis-rs' async cluster connection.
//!
//! A `ClusterConnection` is multiplexed and routes each command to the master owning its key's
//! slot, following `MOVED`/`ASK` redirects and refreshing the slot map on failover, so one shared
//! connection serves every caller (the cluster counterpart of cloning a multiplexed connection out
//! of the pool). It is created lazily on first use and re-created after it fails, so building a
//! cache never connects. Every operation runs under the cache's op timeout.
//!
//! Keys that one script or transaction touches share a hash tag (see `keys.rs`), so no command here
//! is cross-slot.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;

use bb8_redis::redis::{
    self,
    aio::MultiplexedConnection,
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
    AsyncConnectionConfig, ConnectionAddr, FromRedisValue, IntoConnectionInfo, Value,
};
use tokio::sync::Mutex;

use super::{
    commands::{self, impl_store, Raw, Resend},
    endpoint::{self, TlsConfig},
    redis::RedisStoreConfig,
    replicas::{self, Replicas, REPLICA_INFO_TTL},
    scripts::Invocation,
    ReplicaAck,
};
use crate::{util::lock, Error};

/// A Redis Cluster [`Store`](super::Store).
///
/// ```
/// use cache_layer::store::{ClusterStore, RedisStoreConfig};
///
/// // No I/O happens here: the cluster is contacted on first use.
/// let store = ClusterStore::new(&["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"], RedisStoreConfig::default())?;
/// # Ok::<(), cache_layer::Error>(())
/// ```
#[derive(Clone)]
pub struct ClusterStore {
    client: ClusterClient,
    nodes: Vec<String>,
    tls: TlsConfig,
    config: RedisStoreConfig,
    /// The shared connection, read lock-free by every operation (a clone of it is what runs the
    /// command).
    connection: Arc<ArcSwapOption<ClusterConnection>>,
    /// Held while connecting, so concurrent first uses (or uses after a failure) make one
    /// connection, not one each.
    connecting: Arc<Mutex<()>>,
    /// Which master serves which slots (`CLUSTER SLOTS`, read at most every 10 s), for the
    /// write-behind writes that wait for a replica on a connection of their own.
    slots: Arc<std::sync::Mutex<Option<SlotMap>>>,
    /// Each master's replicas, and idle connections for writes that wait for one.
    replicas: Arc<Replicas>,
}

/// The slot ranges of the cluster and when they were read.
type SlotMap = (Instant, Vec<SlotRange>);

/// Slots `first..=last` are served by the master at `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotRange {
    first: u16,
    last: u16,
    host: String,
    port: u16,
}

impl std::fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStore")
            .field("nodes", &self.nodes.len())
            .field("config", &self.config)
            .finish()
    }
}

impl ClusterStore {
    /// A store for the cluster reachable through any of `nodes` (`redis://host:port` or
    /// `rediss://host:port` each).
    ///
    /// Fails only when a URL is invalid.
    pub fn new<S: AsRef<str>>(nodes: &[S], config: RedisStoreConfig) -> Result<Self, Error> {
        Self::with_tls(nodes, &TlsConfig::default(), config)
    }

    /// [`new`](Self::new) with TLS settings (applied to every node).
    pub(crate) fn with_tls<S: AsRef<str>>(
        nodes: &[S],
        tls: &TlsConfig,
        config: RedisStoreConfig,
    ) -> Result<Self, Error> {
        let nodes: Vec<String> = nodes.iter().map(|n| n.as_ref().to_owned()).collect();
        if nodes.is_empty() {
            return Err(Error::Config(
                "redis_cluster needs at least one node URL".into(),
            ));
        }
        endpoint::check_tls(&nodes, tls)?;
        #[allow(unused_mut)]
        let mut builder = ClusterClientBuilder::new(nodes.clone());
        #[cfg(feature = "tls")]
        if !tls.is_default() {
            builder = builder.certs(tls.certificates());
        }
        let client = builder
            .connection_timeout(config.connect_timeout)
            // Bounds each request, its redirects, slot refreshes and retries included (redis-rs'
            // overall response timeout defaults to this): `run` relies on it for the op timeout.
            .response_timeout(config.op_timeout)
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(50)
            .build()
            .map_err(|e| Error::Config(format!("invalid redis cluster configuration: {e}")))?;
        Ok(ClusterStore {
            client,
            nodes,
            tls: tls.clone(),
            config,
            connection: Default::default(),
            connecting: Default::default(),
            slots: Default::default(),
            replicas: Default::default(),
        })
    }

    /// A client for one node, for pub/sub (cluster pub/sub messages reach every node).
    fn node_client(&self) -> Option<redis::Client> {
        self.nodes
            .iter()
            .find_map(|url| endpoint::node_client(url, &self.tls).ok())
    }

    /// The node URLs the store was built with.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Connects (or takes the connection another caller made meanwhile) and shares it.
    async fn connect(&self) -> Result<ClusterConnection, Error> {
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.connection.load().as_deref() {
            return Ok(conn.clone());
        }
        let conn = self
            .client
            .get_async_connection()
            .await
            .map_err(Error::Redis)?;
        self.connection.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    /// Drops the shared connection after a transport failure, so the next call reconnects.
    fn forget_connection(&self) {
        self.connection.store(None);
    }

    /// Runs `op` on the shared connection within the op timeout.
    ///
    /// On the shared connection redis-rs enforces the timeout itself: it bounds each request, its
    /// redirects and retries included, by the response timeout, which is the op timeout (`new`),
    /// so a timer of our own would cost every operation a second one. Only when the connection
    /// must be made first (first use, after a failure) does one timer of ours bound the connect
    /// and the operation together.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: FnOnce(ClusterConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let shared = self.connection.load().as_deref().cloned();
        let result = match shared {
            Some(conn) => op(conn).await.map_err(Error::Redis),
            // Rare: boxed, so every operation's future stays small.
            None => Box::pin(self.connect_and_run(op)).await,
        };
        match result {
            Err(Error::Redis(err)) if err.is_timeout() => {
                Err(Error::Timeout(self.config.op_timeout))
            }
            Err(Error::Redis(err)) => {
                if err.is_io_error() || err.is_connection_dropped() || err.is_unrecoverable_error()
                {
                    self.forget_connection();
                }
                Err(Error::Redis(err))
            }
            other => other,
        }
    }

    /// Connects, then runs `op`, both within one op timeout.
    async fn connect_and_run<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: FnOnce(ClusterConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let timeout = self.config.op_timeout;
        let attempt = async {
            let conn = self.connect().await?;
            op(conn).await.map_err(Error::Redis)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Error::Timeout(timeout)),
        }
    }
}

impl ClusterStore {
    /// The master serving `key`'s slot (`None`: the slot map does not say).
    async fn master_of(&self, key: &str) -> Result<Option<(String, u16)>, Error> {
        let slot = key_slot(key.as_bytes());
        let find = |ranges: &[SlotRange]| {
            ranges
                .iter()
                .find(|r| (r.first..=r.last).contains(&slot))
                .map(|r| (r.host.clone(), r.port))
        };
        if let Some((read_at, ranges)) = lock(&self.slots).as_ref() {
            if read_at.elapsed() < REPLICA_INFO_TTL {
                return Ok(find(ranges));
            }
        }
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let reply: Value = Raw::query(self, &cmd, Resend::Safe).await?;
        let ranges = parse_cluster_slots(reply);
        let master = find(&ranges);
        *lock(&self.slots) = Some((Instant::now(), ranges));
        Ok(master)
    }

    /// Makes the next replicated write read the slot map again (a slot moved, a failover).
    fn forget_slots(&self) {
        *lock(&self.slots) = None;
    }

    /// The connected replicas of the master at `host:port` (`INFO replication` on that node,
    /// remembered for 10 s).
    async fn replica_count(&self, node: &str, host: &str, port: u16) -> Result<u32, Error> {
        if let Some(count) = self.replicas.cached(node) {
            return Ok(count);
        }
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port,
        });
        let reply = self
            .run(|mut conn| async move {
                let mut cmd = redis::cmd("INFO");
                cmd.arg("replication");
                let value = conn.route_command(cmd, routing).await?;
                Ok(String::from_redis_value(value)?)
            })
            .await;
        self.replicas.learn(node, reply)
    }

    /// A connection of its own to the node at `host:port`, with the settings (credentials, TLS)
    /// of the first seed URL.
    async fn own_connection(
        &self,
        host: &str,
        port: u16,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let seed = self.nodes[0].as_str().into_connection_info()?;
        let addr = match seed.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        let info = seed.set_addr(addr);
        #[cfg(feature = "tls")]
        let client = if self.tls.is_default() {
            redis::Client::open(info)?
        } else {
            redis::Client::build_with_tls(info, self.tls.certificates())?
        };
        #[cfg(not(feature = "tls"))]
        let client = redis::Client::open(info)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.op_timeout));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// [`Raw::invoke_acked`] within one op timeout.
    async fn invoke_acked_now<T: FromRedisValue + Send>(
        &self,
        invocation: &Invocation,
        key: &str,
        resend: Resend,
    ) -> Result<(T, ReplicaAck), Error> {
        let timeout = replicas::ack_timeout(self.config.op_timeout);
        let mut retries = 1;
        loop {
            let master = self.master_of(key).await?;
            let Some((host, port)) = master.filter(|(host, _)| !host.is_empty() && host != "?")
            else {
                // No usable address for the slot's master: run it as any other script.
                let reply = Raw::invoke(self, invocation, resend).await?;
                return Ok((reply, ReplicaAck::NoReplicas));
            };
            let node = format!("{host}:{port}");
            if self.replica_count(&node, &host, port).await? == 0 {
                let reply = Raw::invoke(self, invocation, resend).await?;
                return Ok((reply, ReplicaAck::NoReplicas));
            }
            let connect = || self.own_connection(&host, port);
            match replicas::invoke_on_own_connection(
                &self.replicas,
                &node,
                connect,
                invocation,
                timeout,
            )
            .await
            {
                Ok(done) => return Ok(done),
                Err(err) => {
                    if replicas::not_run_here(&err) {
                        // The slot moved or its master failed over: read the slot map again.
                        self.forget_slots();
                    }
                    if retries > 0 && replicas::may_resend(&err, resend) {
                        retries -= 1;
                        tracing::debug!(error = %err, node = %node,
                            "write-behind write retried on a new connection");
                        continue;
                    }
                    return Err(if err.is_timeout() {
                        Error::Timeout(self.config.op_timeout)
                    } else {
                        Error::Redis(err)
                    });
                }
            }
        }
    }
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the first non-empty
/// `{...}`) or of the whole key, modulo 16384.
fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let len = rest.iter().position(|&b| b == b'}')?;
        (len > 0).then(|| &rest[..len])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot ranges and their masters out of a `CLUSTER SLOTS` reply (entries it cannot read are
/// skipped).
fn parse_cluster_slots(reply: Value) -> Vec<SlotRange> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(fields) = entry else {
                return None;
            };
            let mut fields = fields.into_iter();
            let first = u16::from_redis_value(fields.next()?).ok()?;
            let last = u16::from_redis_value(fields.next()?).ok()?;
            let Value::Array(master) = fields.next()? else {
                return None;
            };
            let mut master = master.into_iter();
            let host = String::from_redis_value(master.next()?).ok()?;
            let port = u16::from_redis_value(master.next()?).ok()?;
            Some(SlotRange {
                first,
                last,
                host,
                port,
            })
        })
        .collect()
}

/// The cluster connection never resends on its own: redis-rs already retries a command whose
/// node moved or failed over, so `Resend` is not needed here.
impl Raw for ClusterStore {
    async fn query<T: FromRedisValue + Send>(
        &self,
        cmd: &redis::Cmd,
        _resend: Resend,
    ) -> Result<T, Error> {
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    async fn invoke<T: FromRedisValue + Send>(
        &self,
        invocation: &Invocation,
        _resend: Resend,
    ) -> Result<T, Error> {
        self.run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    async fn invoke_acked<T: FromRedisValue + Send>(
        &self,
        invocation: &Invocation,
        key: &str,
        resend: Resend,
    ) -> Result<(T, ReplicaAck), Error> {
        let op_timeout = self.config.op_timeout;
        // Boxed: the nested futures would otherwise make every caller's future type too deep
        // (one allocation per push, seal or claim).
        let attempt = Box::pin(self.invoke_acked_now(invocation, key, resend));
        match tokio::time::timeout(op_timeout, attempt).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Error::Timeout(op_timeout)),
        }
    }

    /// Keys live in different slots: one `GET` each, concurrently (no cross-slot command).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let reads = keys.iter().map(|key| commands::get(self, key));
        futures_util::future::join_all(reads)
            .await
            .into_iter()
            .collect()
    }

    async fn pubsub_client(&self) -> Result<redis::Client, Error> {
        self.node_client()
            .ok_or_else(|| Error::Config("no cluster node URL to subscribe on".into()))
    }
}

impl_store!(ClusterStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis_cluster() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b"foo{hash_tag}"), 2515);
        assert_eq!(key_slot(b"{hash_tag}:x"), 2515);
        assert_eq!(
            key_slot(b"foo{}{bar}"),
            8363,
            "an empty tag: the whole key is hashed"
        );
        assert_eq!(key_slot(b"bar"), 5061);
    }

    #[test]
    fn cluster_slots_replies_are_parsed_into_masters() {
        let node = |host: &str, port: i64, id: &str| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(id.as_bytes().to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 30001, "a"),
                node("127.0.0.1", 30004, "d"),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 30002, "b"),
            ]),
            Value::Int(7),
        ]);
        assert_eq!(
            parse_cluster_slots(reply),
            vec![
                SlotRange {
                    first: 0,
                    last: 5460,
                    host: "127.0.0.1".into(),
                    port: 30001
                },
                SlotRange {
                    first: 5461,
                    last: 16383,
                    host: "10.0.0.2".into(),
                    port: 30002
                },
            ]
        );
        assert!(parse_cluster_slots(Value::Nil).is_empty());
    }
}

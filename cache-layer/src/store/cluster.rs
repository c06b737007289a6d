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

use std::{future::Future, sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;

use bb8_redis::redis::{
    self,
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    FromRedisValue,
};
use tokio::sync::Mutex;

use super::{
    commands::{self, impl_store, Raw, Resend},
    endpoint::{self, TlsConfig},
    redis::RedisStoreConfig,
};
use crate::Error;

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
            .response_timeout(config.op_timeout)
            // Redirects and slot refreshes must fit in one op timeout; the breaker handles the rest.
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

    async fn connection(&self) -> Result<ClusterConnection, Error> {
        if let Some(conn) = self.connection.load().as_deref() {
            return Ok(conn.clone());
        }
        // Rare (first use, after a failure): boxed, so every operation's future stays small.
        Box::pin(self.connect()).await
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
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: FnOnce(ClusterConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let timeout = self.config.op_timeout;
        let attempt = async {
            let conn = self.connection().await?;
            op(conn).await.map_err(Error::Redis)
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Error::Timeout(timeout)),
        };
        if let Err(Error::Redis(err)) = &result {
            if err.is_io_error() || err.is_connection_dropped() || err.is_unrecoverable_error() {
                self.forget_connection();
            }
        }
        result
    }
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
        invocation: &redis::ScriptInvocation<'_>,
        _resend: Resend,
    ) -> Result<T, Error> {
        self.run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
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

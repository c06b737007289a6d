//! Redis via a bb8 pool of multiplexed redis-rs connections.
//!
//! The pool follows the measurements in DESIGN.md "Redis access":
//!
//! - no `PING` on checkout (`test_on_check_out(false)`): health comes from errors and the breaker;
//! - a short checkout timeout and no connect retries, so a dead Redis fails fast;
//! - the pool is built lazily (`build_unchecked`, no background tasks), so building never touches
//!   the network and works outside a Tokio runtime;
//! - a connection that saw an I/O error or a timeout is flagged and replaced at its next checkout
//!   (bb8-redis' own manager reports connections as never broken);
//! - the multiplexed connection is cloned out of the checkout and the checkout released at once,
//!   so any number of commands share the pool's connections concurrently.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bb8_redis::{
    bb8::{self, ManageConnection, RunError},
    redis::{self, aio::MultiplexedConnection, AsyncConnectionConfig, FromRedisValue},
};

use super::Store;
use crate::Error;

/// Connection settings of a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    /// Longest time one command may take before it fails (and counts against the breaker).
    pub op_timeout: Duration,
    /// Longest time to wait for a pooled connection (including connecting).
    pub checkout_timeout: Duration,
    /// Longest time to establish a new TCP connection and handshake.
    pub connect_timeout: Duration,
    /// Number of multiplexed connections in the pool.
    pub pool_size: u32,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        RedisStoreConfig {
            op_timeout: Duration::from_millis(250),
            checkout_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_millis(250),
            pool_size: 4,
        }
    }
}

/// A pooled connection plus the flag that retires it after an I/O error or timeout.
pub(crate) struct PooledConnection {
    connection: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

struct Manager {
    client: redis::Client,
    connection_config: AsyncConnectionConfig,
}

impl ManageConnection for Manager {
    type Connection = PooledConnection;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<PooledConnection, redis::RedisError> {
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.connection_config)
            .await?;
        Ok(PooledConnection {
            connection,
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn is_valid(&self, conn: &mut PooledConnection) -> Result<(), redis::RedisError> {
        redis::cmd("PING")
            .query_async::<()>(&mut conn.connection)
            .await
    }

    fn has_broken(&self, conn: &mut PooledConnection) -> bool {
        conn.broken.load(Ordering::Relaxed)
    }
}

/// A connection cloned out of the pool, with the handle that marks it broken.
pub(crate) struct Connection {
    pub(crate) inner: MultiplexedConnection,
    broken: Arc<AtomicBool>,
    op_timeout: Duration,
}

impl Connection {
    /// Runs a command, retiring the connection if it failed at the transport level.
    pub(crate) async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, Error> {
        let result = cmd.query_async(&mut self.inner).await;
        self.check(result)
    }

    /// Runs a pipeline, retiring the connection if it failed at the transport level.
    pub(crate) async fn query_pipeline<T: FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<T, Error> {
        let result = pipe.query_async(&mut self.inner).await;
        self.check(result)
    }

    /// Invokes a Lua script (EVALSHA, falling back to EVAL/loading on NOSCRIPT).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &mut self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let result = invocation.invoke_async(&mut self.inner).await;
        self.check(result)
    }

    fn check<T>(&self, result: redis::RedisResult<T>) -> Result<T, Error> {
        result.map_err(|err| {
            if err.is_timeout() {
                self.broken.store(true, Ordering::Relaxed);
                Error::Timeout(self.op_timeout)
            } else {
                if err.is_io_error() || err.is_connection_dropped() || err.is_unrecoverable_error()
                {
                    self.broken.store(true, Ordering::Relaxed);
                }
                Error::Redis(err)
            }
        })
    }
}

/// A Redis [`Store`] on a bb8 pool of multiplexed connections.
///
/// Creating it does no I/O; connections are made on first use.
///
/// ```
/// use cache_layer::store::{RedisStore, RedisStoreConfig};
///
/// // Never fails because Redis is down: connecting is lazy.
/// let store = RedisStore::new("redis://127.0.0.1:1", RedisStoreConfig::default())?;
/// # Ok::<(), cache_layer::Error>(())
/// ```
#[derive(Clone)]
pub struct RedisStore {
    pool: bb8::Pool<Manager>,
    client: redis::Client,
    config: RedisStoreConfig,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("server", &self.client.get_connection_info().addr())
            .field("config", &self.config)
            .finish()
    }
}

impl RedisStore {
    /// A store for the Redis at `url` (`redis://[user:password@]host:port[/db]`).
    ///
    /// Fails only when the URL is invalid; a Redis that is down is noticed on use.
    pub fn new(url: &str, config: RedisStoreConfig) -> Result<Self, Error> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::Config(format!("invalid redis url {url:?}: {e}")))?;
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.op_timeout));
        let manager = Manager {
            client: client.clone(),
            connection_config,
        };
        let pool = bb8::Pool::builder()
            .max_size(config.pool_size.max(1))
            .min_idle(None)
            .test_on_check_out(false)
            .connection_timeout(config.checkout_timeout)
            .retry_connection(false)
            // No reaper task: building must work outside a runtime. Multiplexed connections are
            // long-lived by design; broken ones are retired through `has_broken`.
            .max_lifetime(None)
            .idle_timeout(None)
            .build_unchecked(manager);
        Ok(RedisStore {
            pool,
            client,
            config,
        })
    }

    /// The redis-rs client (for pub/sub connections, which are not pooled).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The store's settings.
    pub fn config(&self) -> &RedisStoreConfig {
        &self.config
    }

    /// A multiplexed connection cloned out of the pool; the checkout is released immediately.
    pub(crate) async fn connection(&self) -> Result<Connection, Error> {
        // Each broken connection found is dropped (bb8 asks `has_broken` and discards it), so this
        // loop ends after at most `pool_size` retirements.
        for _ in 0..=self.config.pool_size {
            let checkout = match self.pool.get().await {
                Ok(checkout) => checkout,
                Err(RunError::TimedOut) => {
                    return Err(Error::Timeout(self.config.checkout_timeout))
                }
                Err(RunError::User(err)) => return Err(Error::Redis(err)),
            };
            if checkout.broken.load(Ordering::Relaxed) {
                continue;
            }
            return Ok(Connection {
                inner: checkout.connection.clone(),
                broken: checkout.broken.clone(),
                op_timeout: self.config.op_timeout,
            });
        }
        Err(Error::Timeout(self.config.checkout_timeout))
    }

    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Error> {
        self.connection().await?.query(cmd).await
    }
}

/// `DEL key` if it holds `ARGV[1]`: releases a lock only for its owner.
const COMPARE_AND_DELETE: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
"#;

fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), Error> {
        self.query(redis::cmd("SET").arg(key).arg(value).arg("PX").arg(px(ttl)))
            .await
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        let removed: u64 = self.query(redis::cmd("DEL").arg(key)).await?;
        Ok(removed > 0)
    }

    async fn set_if_absent(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool, Error> {
        let reply: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(px(ttl)),
            )
            .await?;
        Ok(reply.is_some())
    }

    async fn delete_if_equals(&self, key: &str, expected: &[u8]) -> Result<bool, Error> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(COMPARE_AND_DELETE));
        let mut invocation = script.prepare_invoke();
        invocation.key(key).arg(expected);
        let removed: u64 = self.connection().await?.invoke(&invocation).await?;
        Ok(removed > 0)
    }
}
